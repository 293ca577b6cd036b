using System.Diagnostics;
using AllTokens.Data.Transforms;

namespace AllTokens.Data.Evaluation;

/// <summary>What <see cref="LoaderBenchmark.Run"/> measured.</summary>
public sealed record LoaderBenchmarkResult(int Images, int Batches, double Seconds, int Workers, int Resolution, int BatchSize, long Skipped)
{
    public double ImagesPerSecond => Images / Seconds;
}

/// <summary>Throughput of decode + full train transform + collate through the <see cref="DataLoader"/>.</summary>
public static class LoaderBenchmark
{
    /// <summary>
    /// Times <paramref name="batches"/> batches of epoch 0 with the given transform, batch size and worker count, from the
    /// start of the epoch (thread start-up included) to the arrival of the last one; batches are disposed as they arrive.
    /// </summary>
    public static LoaderBenchmarkResult Run(IImageDataset dataset, TrainTransformOptions transform, int batchSize, int workers, int batches,
        long seed = 0, IProgress<int>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(dataset);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batches);
        // Cycle the dataset when it is shorter than warm-up + the batches asked for.
        int need = batches * batchSize;
        IImageDataset source = dataset.Count >= need
            ? dataset
            : new Datasets.Subset(dataset, Enumerable.Range(0, need).Select(i => i % dataset.Count).ToArray());
        var loader = new DataLoader(source, new TrainTransform(transform),
            new LoaderOptions(batchSize, workers, Shuffle: true, DropLast: true, seed, Prefetch: Math.Max(2, workers)));
        int images = 0, counted = 0;
        var clock = Stopwatch.StartNew();
        foreach (var batch in loader.Epoch(0))
        {
            using (batch)
            {
                images += batch.Size;
                counted++;
                progress?.Report(counted);
                if (counted == batches) break;
            }
        }
        clock.Stop();
        return new LoaderBenchmarkResult(images, counted, clock.Elapsed.TotalSeconds, workers, transform.ImgSize, batchSize, loader.SkippedCount);
    }
}
