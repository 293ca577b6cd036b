using AllTokens.Data;
using AllTokens.Data.Datasets;
using AllTokens.Data.Transforms;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Data;

/// <summary>An in-memory dataset of small noise images; listed indices fail to decode like a corrupt file.</summary>
internal sealed class FakeDataset(int count, int classes, int[]? corrupt = null, Func<int, int>? label = null) : IImageDataset
{
    private readonly HashSet<int> bad = [.. corrupt ?? []];
    public int Count => count;
    public IReadOnlyList<string> ClassNames { get; } = Enumerable.Range(0, classes).Select(i => $"class{i}").ToArray();
    public int GetLabel(int index) => label?.Invoke(index) ?? index % classes;
    public string GetKey(int index) => $"img_{index:D3}.png";
    public string Source => "fake";

    public RgbImage Load(int index)
    {
        if (bad.Contains(index)) throw new ImageDecodeException($"/data/{GetKey(index)}", "corrupt PNG image data");
        var rng = new SeededRandom((ulong)index + 100);
        int w = 20 + index % 7, h = 16 + index % 5;
        var px = new byte[w * h * 3];
        for (int i = 0; i < px.Length; i++) px[i] = (byte)rng.NextInt(0, 255);
        return new RgbImage(w, h, px);
    }
}

public sealed class DataLoaderTests
{
    private static readonly TrainTransformOptions Train = new() { ImgSize = 16, ReProb = 0.5, RecordAugments = true };

    private static List<(int[] Indices, float[] Images, long[] Labels, int Records)> Collect(IEnumerable<Batch> batches)
    {
        var list = new List<(int[], float[], long[], int)>();
        foreach (var b in batches)
            using (b)
                list.Add((b.Indices, b.Images.data<float>().ToArray(), b.Labels.data<long>().ToArray(), b.Augments?.Count ?? 0));
        return list;
    }

    private static void AssertSame(List<(int[] Indices, float[] Images, long[] Labels, int Records)> a, List<(int[] Indices, float[] Images, long[] Labels, int Records)> b)
    {
        Assert.Equal(a.Count, b.Count);
        for (int i = 0; i < a.Count; i++)
        {
            Assert.Equal(a[i].Indices, b[i].Indices);
            Assert.Equal(a[i].Labels, b[i].Labels);
            Assert.Equal(a[i].Images, b[i].Images);
            Assert.Equal(a[i].Records, b[i].Records);
        }
    }

    [Fact]
    public void SameSeedSameBatchesForAnyWorkerCount()
    {
        var ds = new FakeDataset(37, 4);
        var runs = new[] { 0, 1, 3 }.Select(w =>
            Collect(new DataLoader(ds, new TrainTransform(Train), new LoaderOptions(8, w, Seed: 42, Prefetch: 1)).Epoch(1))).ToList();
        Assert.Equal(4, runs[0].Count); // 37 // 8 with drop_last
        Assert.All(runs[0], b => Assert.Equal(8, b.Indices.Length));
        Assert.All(runs[0], b => Assert.Equal(8, b.Records));
        AssertSame(runs[0], runs[1]);
        AssertSame(runs[0], runs[2]);
        // Labels follow the indices, and the epoch is a shuffled subset without repeats.
        Assert.All(runs[0], b => Assert.Equal(b.Indices.Select(i => (long)(i % 4)), b.Labels));
        var all = runs[0].SelectMany(b => b.Indices).ToList();
        Assert.Equal(all.Count, all.Distinct().Count());
        Assert.NotEqual(Enumerable.Range(0, 32), all);
        // Another epoch or seed shuffles differently.
        var loader = new DataLoader(ds, new TrainTransform(Train), new LoaderOptions(8, 2, Seed: 42));
        Assert.NotEqual(all, Collect(loader.Epoch(2)).SelectMany(b => b.Indices));
        Assert.Equal(loader.EpochOrder(1), new DataLoader(ds, new TrainTransform(Train), new LoaderOptions(8, 0, Seed: 42)).EpochOrder(1));
    }

    [Fact]
    public void ResumeAtBatchKEqualsTheTailOfTheEpoch()
    {
        var ds = new FakeDataset(30, 3);
        var loader = new DataLoader(ds, new TrainTransform(Train), new LoaderOptions(4, 2, Seed: 7));
        var full = Collect(loader.Epoch(3));
        Assert.Equal(7, full.Count);
        AssertSame(full.Skip(5).ToList(), Collect(loader.Epoch(3, startBatch: 5)));
        AssertSame(full.Skip(2).ToList(), Collect(new DataLoader(ds, new TrainTransform(Train), new LoaderOptions(4, 0, Seed: 7)).Epoch(3, 2)));
        Assert.Empty(Collect(loader.Epoch(3, 7)));
        Assert.Throws<ArgumentOutOfRangeException>(() => loader.Epoch(3, 8));
    }

    [Fact]
    public void EvalModeKeepsOrderAndTheShortLastBatch()
    {
        var ds = new FakeDataset(11, 3);
        var loader = DataLoader.ForEval(ds, new EvalTransformOptions(ImgSize: 8, CropPct: 1.0), 4, workers: 2);
        Assert.Equal(3, loader.BatchesPerEpoch);
        var batches = Collect(loader.Epoch(0));
        Assert.Equal(Enumerable.Range(0, 11), batches.SelectMany(b => b.Indices));
        Assert.Equal(3, batches[^1].Indices.Length);
        Assert.All(batches, b => Assert.Equal(0, b.Records));
        var expected = new EvalTransform(new EvalTransformOptions(ImgSize: 8, CropPct: 1.0)).Apply(ds.Load(9));
        Assert.Equal(expected, batches[2].Images[(1 * 3 * 64)..(2 * 3 * 64)]);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void CorruptFilesAreSkippedAndCountedOrFatalWhenStrict(int workers)
    {
        var ds = new FakeDataset(12, 3, corrupt: [2, 5, 6, 7]);
        var loader = DataLoader.ForEval(ds, new EvalTransformOptions(ImgSize: 8, CropPct: 1.0), 4, workers);
        var warnings = new List<SkippedSample>();
        int thread = Environment.CurrentManagedThreadId;
        loader.Skipped += s =>
        {
            Assert.Equal(thread, Environment.CurrentManagedThreadId);
            warnings.Add(s);
        };
        var batches = Collect(loader.Epoch(0));
        // Batch 0 shrinks to 3, batch 1 (4..7) keeps only sample 4, batch 2 is whole.
        Assert.Equal([[0, 1, 3], [4], [8, 9, 10, 11]], batches.Select(b => b.Indices));
        Assert.Equal(4, loader.SkippedCount);
        Assert.Equal([2, 5, 6, 7], warnings.Select(w => w.Index));
        Assert.Contains("img_005.png", warnings[1].Message);
        Assert.Equal("img_005.png", warnings[1].Key);

        var strict = new DataLoader(ds, new EvalSampleTransform(new EvalTransform(new EvalTransformOptions(ImgSize: 8))),
            new LoaderOptions(4, workers, Shuffle: false, DropLast: false, StrictData: true));
        var e = Assert.Throws<ImageDecodeException>(() => Collect(strict.Epoch(0)));
        Assert.Contains("img_002.png", e.Message);

        // A batch whose samples all fail is left out.
        var allBad = DataLoader.ForEval(new FakeDataset(8, 2, corrupt: [4, 5, 6, 7]), new EvalTransformOptions(ImgSize: 8), 4, workers);
        Assert.Single(Collect(allBad.Epoch(0)));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    public void LabelOutsideTheClassRangeIsAnErrorNamingTheSample(int workers)
    {
        var ds = new FakeDataset(10, 3, label: i => i == 6 ? 3 : 0);
        var loader = DataLoader.ForEval(ds, new EvalTransformOptions(ImgSize: 8), 2, workers);
        var e = Assert.Throws<DatasetException>(() => Collect(loader.Epoch(0)));
        Assert.Contains("img_006.png", e.Message);
        Assert.Contains("label 3", e.Message);
    }

    [Fact]
    public void EarlyBreakStopsWorkersAndLeaksNoTensors()
    {
        var ds = new FakeDataset(64, 4);
        var loader = new DataLoader(ds, new TrainTransform(Train), new LoaderOptions(4, 3, Seed: 1, Prefetch: 2));
        // Warm up (JIT, thread pool) so the counts below only see this test's work.
        foreach (var b in loader.Epoch(0)) { b.Dispose(); break; }
        // Tensor.TotalCount counts live tensor handles on every thread (the per-thread scope statistics do not see tensors
        // made on a worker and disposed on this thread).
        // Earlier tests' garbage tensors are finalized now, not while this test counts (the finalizer lowers the count).
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        long liveBefore = torch.Tensor.TotalCount;
        int threadsBefore = System.Diagnostics.Process.GetCurrentProcess().Threads.Count;
        for (int round = 0; round < 5; round++)
        {
            int n = 0;
            foreach (var b in loader.Epoch(round))
            {
                using (b)
                {
                    using var scope = torch.NewDisposeScope();
                    _ = (b.Images * 2).sum().item<float>();
                }
                if (++n == 2) break;
            }
        }
        var workerThreads = System.Diagnostics.Process.GetCurrentProcess().Threads.Count;
        // Batches made on workers and never taken were disposed when the loop was left.
        Assert.Equal(liveBefore, torch.Tensor.TotalCount);
        Assert.True(workerThreads <= threadsBefore + 1, $"{workerThreads - threadsBefore} threads left running");
    }

    [Fact]
    public void BatchTensorsBelongToTheConsumerNotAWorkerScope()
    {
        var ds = new FakeDataset(8, 2);
        var loader = new DataLoader(ds, new TrainTransform(Train), new LoaderOptions(4, 2, Seed: 1));
        var kept = new List<Batch>();
        using (var scope = torch.NewDisposeScope())
        {
            foreach (var b in loader.Epoch(0)) kept.Add(b);
        }
        // The consumer's scope ended and the workers have finished: the tensors are still alive until the batch is disposed.
        Assert.All(kept, b => Assert.False(b.Images.IsInvalid));
        Assert.Equal(new long[] { 4, 3, 16, 16 }, kept[0].Images.shape);
        Assert.Equal(ScalarType.Int64, kept[0].Labels.dtype);
        foreach (var b in kept) b.Dispose();
        Assert.All(kept, b => Assert.True(b.Images.IsInvalid));
    }
}
