using System.Diagnostics;
using System.Globalization;
using AllTokens.Data;
using AllTokens.Data.Transforms;
using AllTokens.Models;
using AllTokens.Tests.Training;
using AllTokens.Training;
using TorchSharp;

namespace AllTokens.Tests.Reliability;

/// <summary>
/// 2,000 training steps through the whole stack (loader worker thread with timm train transforms, mixup/cutmix, EMA,
/// clipping, step and epoch checkpoints, validation, plots): resident memory flat after warm-up and the live-tensor
/// count constant.
/// </summary>
public sealed class MemoryTests : IDisposable
{
    private const int Steps = 2000, StepsPerEpoch = 200, Epochs = Steps / StepsPerEpoch, WarmupEpochs = 2, Batch = 8;
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-mem-").FullName;
    private readonly int threads = torch.get_num_threads();

    public MemoryTests() => torch.set_num_threads(1);

    public void Dispose()
    {
        torch.set_num_threads(threads);
        Directory.Delete(dir, true);
    }

    /// <summary>Resident set size now (VmRSS), in bytes.</summary>
    private static long Rss()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line[6..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
        throw new InvalidOperationException("no VmRSS in /proc/self/status");
    }

    [Fact]
    public void TwoThousandStepsKeepMemoryFlat()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("reads VmRSS from /proc (Linux)");
        var clock = Stopwatch.StartNew();
        var c = new TrainConfig
        {
            Model = "tiny_t2t", ImgSize = 32, Epochs = Epochs, CooldownEpochs = 0, WarmupEpochs = 1, Lr = 1e-3, BatchSize = Batch,
            ModelEma = true, ModelEmaDecay = 0.99, Mixup = 0.8, Cutmix = 1.0, ClipGrad = 1.0, SaveEverySteps = 100, LogInterval = 50, Seed = 1,
        };
        torch.manual_seed(1);
        using var model = new T2tVit("tiny_t2t", new T2tVitConfig(32, 1, 2, 2.0, TokenDim: 16), new ModelOptions(4, 32, 0.1));
        var train = DataLoader.ForTraining(SyntheticData.Create(StepsPerEpoch * Batch, 4, 24, 3),
            new TrainTransformOptions { ImgSize = 32 }, Batch, workers: 1, seed: 1);
        var val = DataLoader.ForEval(SyntheticData.Create(16, 4, 24, 4), new EvalTransformOptions(ImgSize: 32), 16, workers: 0);
        // Live tensor handles on all threads (Tensor.TotalCount). The per-thread scope statistics cannot be used with a
        // loader worker: batch tensors are created on the worker and disposed here, so this thread's count falls by 2 a step.
        var stepLive = new List<long>();            // per step: varies only with the batches in flight (queue + worker)
        var epochLive = new List<long>();           // per epoch end: the loader has stopped, nothing is in flight
        var rss = new List<(long Step, long Bytes)>();
        long rssBase = 0, heapBase = 0;
        using var trainer = new Trainer(c, new ClassificationTask(model, 0.1, c.MixupOptions(), 1), train, val, new RunInfo(Path.Combine(dir, "run"), "tiny_t2t"),
            new SyncProgress(p =>
            {
                if (p.Kind == TrainProgressKind.Step)
                {
                    stepLive.Add(torch.Tensor.TotalCount);
                    if (p.GlobalStep % 50 == 0 && p.Epoch >= WarmupEpochs) rss.Add((p.GlobalStep, Rss()));
                }
                else if (p.Kind == TrainProgressKind.Epoch)
                {
                    epochLive.Add(torch.Tensor.TotalCount);
                    // The end of warm-up: everything has run at least once (epoch end, checkpoints, plots, validation).
                    if (p.Epoch == WarmupEpochs - 1)
                    {
                        rssBase = Rss();
                        heapBase = GC.GetGCMemoryInfo().HeapSizeBytes;
                    }
                    else if (p.Epoch >= WarmupEpochs) rss.Add((p.GlobalStep, Rss()));
                }
            }));
        var result = trainer.Run(cancel: TestContext.Current.CancellationToken);

        Assert.Equal(Steps, result.GlobalStep);
        Assert.Equal(Steps, stepLive.Count);
        Assert.Equal(Epochs, epochLive.Count);
        Assert.All(epochLive, n => Assert.Equal(epochLive[0], n));
        // In flight at most: the prefetch queue, the batch the worker is building and the one being trained (2 tensors each).
        int inFlight = 2 * (train.Options.Prefetch + train.Options.Workers + 1);
        var afterWarmup = stepLive.Skip(WarmupEpochs * StepsPerEpoch).ToList();
        Assert.All(afterWarmup, n => Assert.InRange(n, epochLive[0], epochLive[0] + inFlight));
        if (Environment.GetEnvironmentVariable("ALLTOKENS_MEM_TRACE") == "1") FaultReport.Line(string.Join(" ", rss.Select(r => $"{r.Step}:{r.Bytes >> 20}")));
        var (peakStep, peak) = rss.MaxBy(r => r.Bytes);
        double growth = (double)(peak - rssBase) / rssBase;
        FaultReport.Line(string.Create(CultureInfo.InvariantCulture,
            $"memory: {Steps} steps (batch {Batch}, loader worker thread, EMA, mixup, checkpoints every 100 steps and each epoch): RSS {rssBase / 1048576.0:F1} MiB after warm-up " +
            $"({WarmupEpochs * StepsPerEpoch} steps), peak {peak / 1048576.0:F1} MiB at step {peakStep} → growth {100 * growth:F2} %; " +
            $"managed heap {heapBase / 1048576.0:F1} → {GC.GetGCMemoryInfo().HeapSizeBytes / 1048576.0:F1} MiB; live tensors {epochLive[0]} at every epoch end, {afterWarmup.Min()}–{afterWarmup.Max()} at every step (batches in flight); {clock.Elapsed.TotalSeconds:F0} s"));
        Assert.True(growth < 0.05, $"RSS grew {100 * growth:F2} % after warm-up ({rssBase} → {peak} bytes at step {peakStep})");
    }
}
