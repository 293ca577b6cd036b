using AllTokens.Checkpoints;
using AllTokens.Data;
using AllTokens.Models;
using AllTokens.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Training;

/// <summary>Collects progress synchronously (System.Progress would post to the thread pool).</summary>
internal sealed class SyncProgress(Action<TrainProgress> onReport) : IProgress<TrainProgress>
{
    public void Report(TrainProgress value) => onReport(value);
}

/// <summary>Wraps a task and turns its loss into NaN from call <paramref name="nanFrom"/> on.</summary>
internal sealed class PoisonedTask(ITrainTask inner, int nanFrom) : ITrainTask
{
    private int calls;
    public ImageClassifier Model => inner.Model;
    public TaskOutput Step(Batch batch)
    {
        var o = inner.Step(batch);
        return ++calls >= nanFrom ? o with { Loss = o.Loss * double.NaN } : o;
    }
    public string SaveState() => inner.SaveState();
    public void LoadState(string state) => inner.LoadState(state);
}

public sealed class TrainerTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-train-").FullName;
    private readonly int threads = torch.get_num_threads();

    // One intra-op thread: these models are tiny, and on a busy 2-core runner libtorch's OpenMP barriers make
    // every step 100× slower with 2 threads (measured: 3 s vs 20 ms per step at load 8).
    public TrainerTests() => torch.set_num_threads(1);

    public void Dispose()
    {
        torch.set_num_threads(threads);
        Directory.Delete(dir, true);
    }

    internal static TrainConfig TinyConfig() => new()
    {
        Model = "tiny_t2t", ImgSize = 32, Epochs = 2, CooldownEpochs = 0, WarmupEpochs = 0.5, WarmupLr = 1e-5, Lr = 1e-3, MinLr = 1e-5,
        SchedPerStep = true, BatchSize = 8, Smoothing = 0.1, DropPath = 0.1, LogInterval = 1, Aa = null, Reprob = 0, Seed = 3,
    };

    internal static (ImageClassifier Model, InMemoryBatchSource Train, InMemoryBatchSource Val) Tiny(TrainConfig c, int images = 48, int classes = 4)
    {
        torch.manual_seed(11); // identical initial weights in every run of a test
        var options = new ModelOptions(classes, c.ImgSize!.Value, c.DropPath);
        // Test-sized members of the two families keep these tests fast; registered names build the real thing.
        ImageClassifier model = c.Model switch
        {
            "tiny_t2t" => new T2tVit("tiny_t2t", new T2tVitConfig(64, 2, 2, 2.0), options),
            "tiny_lvvit" => new LvVit("tiny_lvvit", new LvVitConfig(64, 2, 2, 2.0, 1.0, StemChannels: 16), options),
            _ => ModelRegistry.Create(c.Model!, options),
        };
        var data = SyntheticData.Create(images, classes, 16, 5);
        var val = SyntheticData.Create(16, classes, 16, 5);
        return (model, new InMemoryBatchSource(data, c.BatchSize, c.ImgSize.Value, true, 7),
            new InMemoryBatchSource(val, 16, c.ImgSize.Value, false, 7));
    }

    private List<KeyValuePair<string, float[]>> RunToEnd(TrainConfig c, string runDir, long killAfterStep = 0, bool resume = false, int images = 48)
    {
        var (model, train, val) = Tiny(c, images);
        using var _m = model;
        var task = new ClassificationTask(model, c.Smoothing, c.MixupOptions(), (ulong)c.Seed);
        using var cts = new CancellationTokenSource();
        var progress = new SyncProgress(p =>
        {
            if (killAfterStep > 0 && p.Kind == TrainProgressKind.Step && p.GlobalStep == killAfterStep) cts.Cancel();
        });
        using var trainer = new Trainer(c, task, train, val, new RunInfo(runDir, c.Model!, train.Dataset.ClassNames), progress);
        try
        {
            trainer.Run(resume, cts.Token);
        }
        catch (OperationCanceledException) when (killAfterStep > 0)
        {
            return [];
        }
        var ema = trainer.Ema?.State.Select(kv => KeyValuePair.Create("ema/" + kv.Key, kv.Value.to(ScalarType.Float32).data<float>().ToArray())) ?? [];
        return ModuleState.Ordered(model).Select(kv => KeyValuePair.Create(kv.Key, kv.Value.to(ScalarType.Float32).data<float>().ToArray())).Concat(ema).ToList();
    }

    [Fact]
    public void TinyModelLossFallsIn20Steps()
    {
        var c = TinyConfig();
        c.Epochs = 4; // 48 / 8 = 6 steps per epoch → 24 steps
        c.Sched = "constant";
        c.DropPath = 0;
        c.Smoothing = 0;
        var losses = new List<double>();
        var (model, train, val) = Tiny(c);
        using var _m = model;
        var task = new ClassificationTask(model);
        using var trainer = new Trainer(c, task, train, val, new RunInfo(Path.Combine(dir, "fall"), c.Model!),
            new SyncProgress(p => { if (p.Kind == TrainProgressKind.Step) losses.Add(p.Loss); }));
        var result = trainer.Run(cancel: TestContext.Current.CancellationToken);
        Assert.True(losses.Count >= 20);
        double first = losses.Take(3).Average(), last = losses.Skip(17).Take(3).Average();
        Assert.True(last < 0.7 * first, $"loss did not fall: first {first:F3}, steps 18-20 {last:F3}");
        Assert.True(result.LastEval!.Top1 > 50, $"val top-1 {result.LastEval.Top1}");
    }

    [Theory]
    [InlineData("tiny_t2t", 1, 7)]   // 4 steps per epoch: killed mid-epoch 2, after the step-6 save
    [InlineData("tiny_lvvit", 2, 3)] // BN buffers in the EMA, grad accumulation, 2 steps per epoch: resumed from the epoch-end checkpoint
    public void ResumeAfterKillEqualsUninterruptedRun(string modelName, int accum, long killAt)
    {
        var c = TinyConfig();
        c.Model = modelName;
        c.GradAccum = accum;
        c.ModelEma = true;
        c.ModelEmaDecay = 0.9;
        c.Mixup = 0.8;
        c.Cutmix = 1.0; // the task's generator must be restored too
        c.SaveEverySteps = 2;
        var straight = RunToEnd(c, Path.Combine(dir, "straight"), images: 32);
        string run = Path.Combine(dir, "killed");
        Assert.Empty(RunToEnd(c, run, killAfterStep: killAt, images: 32));
        var state = TrainCheckpoint.Load(Trainer.LastCheckpointPath(run)).State;
        Assert.True(state.GlobalStep < killAt && state.GlobalStep > 0, $"checkpoint at step {state.GlobalStep}");
        var resumed = RunToEnd(c, run, resume: true, images: 32);
        Assert.Equal(straight.Select(kv => kv.Key), resumed.Select(kv => kv.Key));
        for (int i = 0; i < straight.Count; i++)
            Assert.True(straight[i].Value.SequenceEqual(resumed[i].Value), $"{straight[i].Key} differs after resume");
        // The metrics log has no duplicated steps after the resume.
        var steps = File.ReadLines(Path.Combine(run, "metrics.jsonl")).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement)
            .Where(e => e.GetProperty("kind").GetString() == "step").Select(e => e.GetProperty("step").GetInt64()).ToList();
        Assert.Equal(steps.Distinct().Count(), steps.Count);
    }

    [Fact]
    public void LiveTensorCountIsFlatAcrossSteps()
    {
        var c = TinyConfig();
        c.Epochs = 1;
        c.ModelEma = true;
        c.Mixup = 0.8;
        c.ClipGrad = 1.0;
        c.LogInterval = 1000;
        var (model, _, val) = Tiny(c);
        using var _m = model;
        var train = new InMemoryBatchSource(SyntheticData.Create(96, 4, 16, 5), c.BatchSize, 32, true, 7);
        var counts = new List<long>();
        using var trainer = new Trainer(c, new ClassificationTask(model, 0.1, c.MixupOptions()), train, val, new RunInfo(Path.Combine(dir, "leak"), c.Model!),
            new SyncProgress(p => { if (p.Kind == TrainProgressKind.Step) counts.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount); }));
        trainer.Run(cancel: TestContext.Current.CancellationToken);
        Assert.Equal(12, counts.Count);
        Assert.All(counts.Skip(2), n => Assert.Equal(counts[2], n));
    }

    [Fact]
    public void NonFiniteLossStopsAndKeepsTheLastGoodCheckpoint()
    {
        var c = TinyConfig();
        c.SaveEverySteps = 2;
        var (model, train, val) = Tiny(c);
        using var _m = model;
        string run = Path.Combine(dir, "nan");
        var task = new PoisonedTask(new ClassificationTask(model), nanFrom: 5);
        using var trainer = new Trainer(c, task, train, val, new RunInfo(run, c.Model!));
        var e = Assert.Throws<NonFiniteLossException>(() => trainer.Run(cancel: TestContext.Current.CancellationToken));
        Assert.Contains("NaN", e.Message);
        Assert.Contains("step 5", e.Message);
        Assert.Contains(Trainer.LastCheckpointPath(run), e.Message);
        var state = TrainCheckpoint.Load(Trainer.LastCheckpointPath(run)).State;
        Assert.Equal(4, state.GlobalStep);
        Assert.Equal(4, state.Batch);
    }

    [Fact]
    public void CheckpointWriteIsAtomicAndExportsLoadForPredict()
    {
        var c = TinyConfig();
        c.Model = "t2t_vit_7"; // registered, so its exports load by name alone
        c.Epochs = 1;
        c.ModelEma = true;
        string run = Path.Combine(dir, "atomic");
        RunToEnd(c, run, images: 16);
        string ck = Trainer.LastCheckpointPath(run);
        var before = File.ReadAllBytes(ck);
        var loaded = TrainCheckpoint.Load(ck);
        Assert.Equal(1, loaded.State.Epoch);
        Assert.Equal(0, loaded.State.Batch);
        Assert.Equal(2, loaded.State.GlobalStep);
        Assert.NotNull(loaded.TorchRng);
        Assert.NotEmpty(loaded.Ema);
        Assert.Contains(loaded.Optimizer.Keys, k => k.EndsWith("/exp_avg_sq", StringComparison.Ordinal));
        // A save that fails half-way leaves the old checkpoint untouched and no temporary file behind.
        var bad = new RawTensor(TensorDType.Float32, [4], new byte[3]);
        Assert.ThrowsAny<ArgumentException>(() => TrainCheckpoint.Save(ck, loaded.State, [KeyValuePair.Create("w", bad)], [], [], null));
        Assert.Equal(before, File.ReadAllBytes(ck));
        Assert.Empty(Directory.EnumerateFiles(run, "*.tmp", SearchOption.AllDirectories));
        // Exported weights are our ModelWeights format: predict builds the right model from them alone.
        foreach (var name in new[] { "best.safetensors", "last.safetensors", "last_ema.safetensors" })
        {
            var m = ModelWeights.Load(new ModelRequest(Weights: Path.Combine(run, name)));
            using var model = m.Model;
            Assert.Equal("t2t_vit_7", m.Name);
            Assert.Equal(32, model.Options.ImgSize);
            Assert.Equal(4, model.NumClasses);
            Assert.True(m.Report!.IsClean);
            Assert.Equal(4, m.Metadata!.ClassNames!.Count);
        }
        Assert.True(File.Exists(Path.Combine(run, "config.yaml")));
        foreach (var png in new[] { "loss.png", "accuracy.png", "lr.png" })
            Assert.True(new FileInfo(Path.Combine(run, png)).Length > 1000, png);
        // A second run into the same folder without --resume is refused.
        var (model2, train2, val2) = Tiny(c, images: 16);
        using var _m2 = model2;
        using var t2 = new Trainer(c, new ClassificationTask(model2), train2, val2, new RunInfo(run, c.Model!));
        Assert.Contains("--resume", Assert.Throws<InvalidOperationException>(() => t2.Run(cancel: TestContext.Current.CancellationToken)).Message);
    }

    [Fact]
    public void Bf16KeepsFp32MastersAndTrains()
    {
        var c = TinyConfig();
        c.Epochs = 1;
        c.Bf16 = true;
        // LV-ViT: T2T-ViT's Performer keeps an fp32 island (TokenLayers.cs) that does not yet accept a bf16 model.
        c.Model = "lvvit_t";
        c.ModelEma = true;
        var (model, train, val) = Tiny(c);
        using var _m = model;
        var losses = new List<double>();
        using var trainer = new Trainer(c, new ClassificationTask(model), train, val, new RunInfo(Path.Combine(dir, "bf16"), c.Model!),
            new SyncProgress(p => { if (p.Kind == TrainProgressKind.Step) losses.Add(p.Loss); }));
        var result = trainer.Run(cancel: TestContext.Current.CancellationToken);
        Assert.All(losses, l => Assert.True(double.IsFinite(l)));
        Assert.Equal(ScalarType.BFloat16, model.parameters().First(p => p.requires_grad).dtype);
        Assert.All(trainer.Optimizer.Params, p => Assert.Equal(ScalarType.Float32, p.Value.dtype));
        // Every step went through the one-pass bf16 AdamW, and the bf16 model equals its masters rounded to bf16.
        Assert.True(((AdamW)trainer.Optimizer).MixedUpdates > 0);
        Assert.Equal(0, ((AdamW)trainer.Optimizer).FusedUpdates);
        var byName = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        Assert.All(trainer.Optimizer.Params, p =>
        {
            Assert.Same(byName[p.Name], p.Shadow);
            Assert.True((byName[p.Name] == p.Value.to(ScalarType.BFloat16)).all().item<bool>(), p.Name);
        });
        Assert.NotNull(result.LastEval);
        var w = ModelWeights.Read(Path.Combine(dir, "bf16", "last.safetensors"));
        Assert.All(w.StateDict, kv => Assert.NotEqual(TensorDType.BFloat16, kv.Value.DType));
    }

    [Fact]
    public void Bf16TrainsPerformerModelsWithTheirFp32Island()
    {
        // TinyConfig's model is a T2T-ViT with Performer T2T layers: their random features run in fp32 inside the
        // bf16 model and hand bf16 back (Layers/TokenLayers.cs).
        var c = TinyConfig();
        c.Epochs = 1;
        c.Bf16 = true;
        var (model, train, val) = Tiny(c, images: 16);
        using var _m = model;
        Assert.Contains(model.modules(), m => m is AllTokens.Layers.TokenPerformer);
        var losses = new List<double>();
        using var trainer = new Trainer(c, new ClassificationTask(model), train, val, new RunInfo(Path.Combine(dir, "bfp"), c.Model!),
            new SyncProgress(p => { if (p.Kind == TrainProgressKind.Step) losses.Add(p.Loss); }));
        var result = trainer.Run(cancel: TestContext.Current.CancellationToken);
        Assert.NotEmpty(losses);
        Assert.All(losses, l => Assert.True(double.IsFinite(l)));
        Assert.Equal(ScalarType.BFloat16, model.parameters().First(p => p.requires_grad).dtype);
        Assert.NotNull(result.LastEval);
    }

    /// <summary>A method the JIT has never seen: compiling it moves JitInfo's count for certain.</summary>
    private static void CompileAFreshMethod()
    {
        var method = new System.Reflection.Emit.DynamicMethod("fresh" + Guid.NewGuid().ToString("N"), typeof(int), [typeof(int)]);
        var il = method.GetILGenerator();
        il.Emit(System.Reflection.Emit.OpCodes.Ldarg_0);
        il.Emit(System.Reflection.Emit.OpCodes.Ldc_I4_1);
        il.Emit(System.Reflection.Emit.OpCodes.Add);
        il.Emit(System.Reflection.Emit.OpCodes.Ret);
        Assert.Equal(42, ((Func<int, int>)method.CreateDelegate(typeof(Func<int, int>)))(41));
    }

    [Fact]
    public void WarmupWaitsWhileTheJitCompilesUpToItsCap()
    {
        var none = new JitSettledWarmup(0, waitForJit: true);
        Assert.True(none.Done); // no warmup asked: time from the first step

        var fixedWarmup = new JitSettledWarmup(2, waitForJit: false);
        Assert.False(fixedWarmup.Done);
        CompileAFreshMethod(); fixedWarmup.StepRan();
        Assert.False(fixedWarmup.Done);
        CompileAFreshMethod(); fixedWarmup.StepRan();
        Assert.True(fixedWarmup.Done, "without waiting for the JIT, exactly the asked steps");

        var settling = new JitSettledWarmup(2, waitForJit: true);
        for (int i = 0; i < 2 + JitSettledWarmup.MaxExtraSteps - 1; i++)
        {
            CompileAFreshMethod(); settling.StepRan();
            Assert.False(settling.Done, $"step {i + 1} compiled a method, so warmup goes on");
        }
        CompileAFreshMethod(); settling.StepRan();
        Assert.True(settling.Done, "the cap ends the warmup even while the JIT still compiles");
        Assert.Equal(2 + JitSettledWarmup.MaxExtraSteps, settling.Steps);

        // A step that compiles nothing ends it (other threads' JIT work may delay that, never past the cap).
        var quiet = new JitSettledWarmup(1, waitForJit: true);
        CompileAFreshMethod(); quiet.StepRan();
        Assert.False(quiet.Done);
        while (!quiet.Done) quiet.StepRan();
        Assert.InRange(quiet.Steps, 2, 1 + JitSettledWarmup.MaxExtraSteps);
        Assert.Throws<ArgumentOutOfRangeException>(() => new JitSettledWarmup(-1, true));
    }

    [Fact]
    public void BenchReportsItsUntimedSteps()
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = AllTokens.Cli.Program.Run(["bench", "--model", "vit_nano", "--res", "32", "--batch", "2", "--steps", "2", "--warmup", "3",
            "--fixed-warmup", "--num-classes", "10", "--threads", "1", "--json"], o, e);
        Assert.True(code == 0, e.ToString());
        using (var doc = System.Text.Json.JsonDocument.Parse(o.ToString()))
        {
            Assert.Equal(3, doc.RootElement.GetProperty("train_warmup_steps").GetInt32());
            Assert.Equal(3, doc.RootElement.GetProperty("infer_warmup_steps").GetInt32());
        }
        o = new StringWriter();
        e = new StringWriter();
        code = AllTokens.Cli.Program.Run(["bench", "--model", "vit_nano", "--res", "32", "--batch", "2", "--steps", "2", "--warmup", "1",
            "--num-classes", "10", "--threads", "1"], o, e);
        Assert.True(code == 0, e.ToString());
        Assert.Contains("1+ warmup", e.ToString());
        var m = System.Text.RegularExpressions.Regex.Match(o.ToString(), @"untimed steps (\d+) train, (\d+) inference");
        Assert.True(m.Success, o.ToString());
        Assert.InRange(int.Parse(m.Groups[1].Value), 1, 1 + JitSettledWarmup.MaxExtraSteps);
        Assert.InRange(int.Parse(m.Groups[2].Value), 1, 1 + JitSettledWarmup.MaxExtraSteps);
    }

    [Fact]
    public void PairedBf16BenchStepsAnFp32AndABf16Copy()
    {
        torch.manual_seed(0);
        using var fp32 = ModelRegistry.Create("vit_nano", new ModelOptions(10, 32));
        torch.manual_seed(0);
        using var bf16 = ModelRegistry.Create("vit_nano", new ModelOptions(10, 32));
        var r = TrainBenchmark.RunPairedBf16(new ClassificationTask(fp32), new ClassificationTask(bf16), batch: 2, resolution: 32, steps: 3, warmup: 1,
            waitForJit: false);
        Assert.Equal(3, r.Pairs);
        Assert.Equal(1, r.WarmupPairs);
        Assert.True(r.MedianFp32StepSeconds > 0 && r.MedianBf16StepSeconds > 0);
        Assert.InRange(r.MedianRatio, r.LowerQuartileRatio, r.UpperQuartileRatio);
        Assert.True(r.LowerQuartileRatio > 0);
        Assert.Equal(ScalarType.Float32, fp32.parameters().First().dtype);
        Assert.Equal(ScalarType.BFloat16, bf16.parameters().First().dtype);
        // Both copies trained: their weights left the common start.
        torch.manual_seed(0);
        using var start = ModelRegistry.Create("vit_nano", new ModelOptions(10, 32));
        var w0 = start.parameters().First();
        Assert.False(fp32.parameters().First().allclose(w0));
        Assert.False(bf16.parameters().First().to(ScalarType.Float32).allclose(w0, rtol: 0, atol: 1e-6));
        var same = new ClassificationTask(fp32);
        Assert.Throws<ArgumentException>(() => TrainBenchmark.RunPairedBf16(same, same, 2, 32, 1, 0));
        Assert.Equal(2.5, TrainBenchmark.Quantile([1, 2, 3, 4], 0.5));
        Assert.Equal(1.75, TrainBenchmark.Quantile([1, 2, 3, 4], 0.25));
    }

    [Fact]
    public void PairedTaskBenchTimesTokenLabelingAgainstCrossEntropyOnOneModel()
    {
        var (code, output, err) = AllTokens.Tests.Cli.InProcessCli.Run("bench", "--model", "lvvit_nano", "--res", "32", "--batch", "2", "--steps", "3",
            "--warmup", "1", "--fixed-warmup", "--num-classes", "10", "--threads", "1", "--paired-task", "--json");
        Assert.True(code == 0, err);
        using (var doc = System.Text.Json.JsonDocument.Parse(output))
        {
            var root = doc.RootElement;
            Assert.Equal(3, root.GetProperty("pairs").GetInt32());
            Assert.Equal(1, root.GetProperty("warmup_pairs").GetInt32());
            Assert.Equal("token labeling + MixToken", root.GetProperty("task").GetString());
            Assert.Equal("cross-entropy", root.GetProperty("baseline").GetString());
            double ce = root.GetProperty("baseline_median_step_s").GetDouble(), tl = root.GetProperty("task_median_step_s").GetDouble();
            Assert.True(ce > 0 && tl > 0);
            double q1 = root.GetProperty("paired_overhead_q1").GetDouble(), q3 = root.GetProperty("paired_overhead_q3").GetDouble();
            Assert.InRange(root.GetProperty("paired_overhead_median").GetDouble(), q1, q3);
            Assert.True(q1 > -1);
        }
        foreach (var (args, says) in new (string[], string)[]
                 {
                     (["--model", "vit_nano", "--paired-task"], "no token head"),
                     (["--model", "lvvit_nano", "--paired-task", "--bf16"], "--paired-task"),
                     (["--model", "lvvit_nano", "--paired-task", "--task", "ce"], "leave --task out"),
                 })
        {
            (code, _, err) = AllTokens.Tests.Cli.InProcessCli.Run(["bench", "--res", "32", .. args]);
            Assert.Equal(2, code);
            Assert.Contains(says, err);
        }
        using var model = ModelRegistry.Create("lvvit_nano", new ModelOptions(10, 32));
        using var other = ModelRegistry.Create("lvvit_nano", new ModelOptions(10, 32));
        Assert.Throws<ArgumentException>(() => TrainBenchmark.RunPairedTasks(new ClassificationTask(model), new ClassificationTask(other), 2, 32, 1, 0));
    }

    [Fact]
    public void BenchPairedBf16FromTheCommandLine()
    {
        var (code, output, err) = AllTokens.Tests.Cli.InProcessCli.Run("bench", "--model", "vit_nano", "--res", "32", "--batch", "2", "--steps", "2",
            "--warmup", "1", "--fixed-warmup", "--num-classes", "10", "--threads", "1", "--paired-bf16", "--json");
        Assert.True(code == 0, err);
        using (var doc = System.Text.Json.JsonDocument.Parse(output))
        {
            var root = doc.RootElement;
            Assert.Equal(2, root.GetProperty("pairs").GetInt32());
            Assert.Equal(1, root.GetProperty("warmup_pairs").GetInt32());
            Assert.True(root.GetProperty("paired_ratio_median").GetDouble() > 0);
            Assert.True(root.GetProperty("bf16_train_images_per_s").GetDouble() > 0);
        }
        (code, _, err) = AllTokens.Tests.Cli.InProcessCli.Run("bench", "--model", "vit_nano", "--res", "32", "--paired-bf16", "--bf16");
        Assert.Equal(2, code);
        Assert.Contains("--paired-bf16", err);
    }

    [Fact]
    public void BenchmarkReportsThroughput()
    {
        torch.manual_seed(0);
        using var model = ModelRegistry.Create("t2t_vit_7", new ModelOptions(10, 32));
        var r = TrainBenchmark.Run(new ClassificationTask(model), batch: 4, resolution: 32, steps: 2, warmup: 1);
        Assert.True(r.TrainImagesPerSecond > 0 && double.IsFinite(r.TrainImagesPerSecond));
        Assert.True(r.InferImagesPerSecond > r.TrainImagesPerSecond * 0.5); // no backward: not much slower than training
        Assert.True(r.MedianTrainStepSeconds > 0);
        if (OperatingSystem.IsLinux())
        {
            Assert.True(r.PeakRssBytes > 10 << 20);
            Assert.True(r.PageFaultsPerStep >= 0, "page faults are read from /proc/self/stat on Linux");
            // A new anonymous mapping is always fresh memory: touching its 2,048 pages must show as minor faults.
            using var mapping = System.IO.MemoryMappedFiles.MemoryMappedFile.CreateNew(null, 8 << 20);
            using var view = mapping.CreateViewAccessor();
            long before = TrainBenchmark.MinorFaults();
            for (long i = 0; i < 8 << 20; i += 4096) view.Write(i, (byte)1);
            Assert.True(TrainBenchmark.MinorFaults() - before >= 1000, "touching 8 MiB of fresh memory shows as minor faults");
        }
    }
}
