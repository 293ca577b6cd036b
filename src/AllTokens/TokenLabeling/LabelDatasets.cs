using AllTokens.Data;
using AllTokens.Data.Datasets;

namespace AllTokens.TokenLabeling;

/// <summary>
/// The datasets the <c>label</c> verb reads: the same readers and keys as training (<see cref="DatasetFactory"/>), so a
/// store written here matches the training set's keys. Split "test" is accepted as "val".
/// </summary>
public static class LabelDatasets
{
    /// <summary>Opens <paramref name="path"/>'s <paramref name="split"/> (train, val or test).</summary>
    public static IImageDataset Open(string path, string split = "train") =>
        DatasetFactory.Open(path, split == "test" ? "val" : split);
}
