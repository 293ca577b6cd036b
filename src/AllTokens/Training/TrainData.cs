using AllTokens.Data;

namespace AllTokens.Training;

/// <summary>The data of a run: train and validation batches and the class names.</summary>
public sealed record TrainDataSources(IBatchSource Train, IBatchSource? Val, IReadOnlyList<string> ClassNames);

/// <summary>
/// The one place where a run's datasets and loaders are built from the config. For now it reads MNIST-style IDX
/// folders (Fashion-MNIST) into memory; the real loader (ImageFolder, CIFAR, timm train transforms) replaces the body.
/// </summary>
public static class TrainData
{
    /// <summary>Builds the train (shuffled, flipped, drop-last) and validation sources for <paramref name="imgSize"/> inputs.</summary>
    public static TrainDataSources Open(TrainConfig config, int imgSize)
    {
        string path = config.Data ?? throw new ArgumentException("no dataset given: pass --data PATH (or set 'data' in the recipe)");
        if (!Directory.Exists(path)) throw new DirectoryNotFoundException($"{path}: no such dataset folder");
        bool isIdx = Directory.EnumerateFiles(path).Any(f => Path.GetFileName(f).StartsWith("train-images-idx3-ubyte", StringComparison.Ordinal));
        if (!isIdx)
            throw new NotSupportedException($"{path}: this build reads MNIST-style IDX folders only (train-images-idx3-ubyte.gz …); ImageFolder and CIFAR come with the data loader");
        var train = IdxReader.Open(path, "train");
        var test = IdxReader.Open(path, "test");
        ulong seed = (ulong)config.Seed;
        var trainIdx = config.Subset is { } n ? BalancedSubset.Take(train, n, seed) : null;
        var valIdx = config.ValSubset is { } v ? BalancedSubset.Take(test, v, seed + 1) : null;
        float[]? mean = config.Mean?.Select(x => (float)x).ToArray(), std = config.Std?.Select(x => (float)x).ToArray();
        double hflip = config.TrainTransform == "none" ? 0 : config.Hflip;
        var trainSource = new InMemoryBatchSource(train, config.BatchSize, imgSize, train: true, seed, trainIdx, hflip, mean, std);
        var valSource = new InMemoryBatchSource(test, config.ValBatchSize ?? config.BatchSize * 2, imgSize, train: false, seed, valIdx, 0, mean, std);
        return new TrainDataSources(trainSource, valSource, train.ClassNames);
    }
}
