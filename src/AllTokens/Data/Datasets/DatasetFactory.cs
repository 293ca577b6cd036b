namespace AllTokens.Data.Datasets;

/// <summary>Opens a dataset folder of any supported format, detected from its files.</summary>
public static class DatasetFactory
{
    /// <summary>
    /// Opens split <paramref name="split"/> ("train" or "val") of the dataset at <paramref name="path"/>: IDX
    /// (MNIST/Fashion-MNIST), CIFAR-10/100 binary or ImageFolder, tried in that order. IDX and CIFAR serve "val" from their
    /// test files. Throws a <see cref="DatasetException"/> listing what it looked for when nothing matches.
    /// </summary>
    public static IImageDataset Open(string path, string split)
    {
        ArgumentNullException.ThrowIfNull(path);
        DatasetFiles.CheckSplit(split);
        if (File.Exists(path))
            throw new DatasetException($"{path}: is a file; --data takes the folder that holds the dataset");
        if (!Directory.Exists(path))
            throw new DatasetException($"{path}: no such folder");
        return (IImageDataset?)IdxDataset.TryOpen(path, split)
            ?? (IImageDataset?)CifarDataset.TryOpen(path, split)
            ?? ImageFolderDataset.TryOpen(path, split)
            ?? throw new DatasetException(
                $"{path}: no dataset found. Looked for IDX files ({(split == "train" ? "train" : "t10k")}-images-idx3-ubyte[.gz] + " +
                $"{(split == "train" ? "train" : "t10k")}-labels-idx1-ubyte[.gz]), CIFAR-10 binary (data_batch_1..5.bin, test_batch.bin), " +
                "CIFAR-100 binary (train.bin, test.bin), and an ImageFolder (train/<class>/*, val/<class>/*, or <class>/* with " +
                "jpg/jpeg/png/bmp/webp/gif images)");
    }
}
