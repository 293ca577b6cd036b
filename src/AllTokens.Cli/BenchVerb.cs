using System.Globalization;
using System.Text.Json;
using AllTokens.Data.Datasets;
using AllTokens.Data.Evaluation;
using AllTokens.Data.Transforms;
using TorchSharp;

namespace AllTokens.Cli;

public static class BenchVerb
{
    public static readonly Verb Verb = new(new VerbSpec("bench", "measure throughput: a model's train step and inference, or the data loader (images/s)",
        "--model M [--res R] [--batch B] [--steps N] [--warmup W] [--fixed-warmup] [--threads T] [--bf16 | --paired-bf16] [--breakdown] [--json]  |  --data PATH [--res R] [--workers W] [--batch B] [--batches N] [--json]",
    [
        new OptionSpec("model", "M", "benchmark this model's train step and inference on synthetic data"),
        new OptionSpec("steps", "N", "timed steps (model mode)", "10"),
        new OptionSpec("warmup", "W", "untimed steps first (model mode); then more, up to 40, until a step runs without the .NET JIT compiling (its background recompiles slow the first seconds)", "3"),
        new OptionSpec("fixed-warmup", null, "model mode: exactly --warmup untimed steps, without waiting for the JIT"),
        new OptionSpec("num-classes", "N", "classifier width (model mode)", "1000"),
        new OptionSpec("bf16", null, "bf16 compute with fp32 master weights (model mode)"),
        new OptionSpec("paired-task", null, "model mode (LV-ViT models): train the token-labeling + MixToken step and the plain cross-entropy step of one model in turn, and print what token labeling costs over cross-entropy, pair by pair (median and quartiles); --steps counts pairs"),
        new OptionSpec("paired-bf16", null, "model mode: train an fp32 and a bf16 copy of the model in one process, one step of each in turn, and print how many times faster bf16 trains, pair by pair (median and quartiles): steadier than separate runs on a machine whose speed drifts; --steps counts pairs"),
        new OptionSpec("breakdown", null, "model mode: also time each part of the train step alone (stem or T2T module, every block, head, optimizer), forward + backward; with --bf16 in bf16, the optimizer on fp32 masters"),
        new OptionSpec("task", "ce|auto", "model mode: 'auto' uses the token-labeling step for LV-ViT models (as in their training), 'ce' plain cross-entropy", "auto"),
        CliCommon.ThreadsOption,
        CliCommon.DeviceOption,
        new OptionSpec("data", "PATH", "dataset folder: ImageFolder, IDX (MNIST/Fashion-MNIST) or CIFAR-10/100 binary"),
        new OptionSpec("split", "S", "train or val", "train"),
        new OptionSpec("res", "R", "resolution (default: the model's, or 224 for --data)"),
        new OptionSpec("workers", "W", "loader threads (0 = on the main thread; default: the core count)"),
        new OptionSpec("batch", "B", "batch size (default: 8 for --model, 64 for --data)"),
        new OptionSpec("batches", "N", "batches to time", "20"),
        new OptionSpec("aa", "CONFIG", "RandAugment string, or 'none'", "rand-m9-mstd0.5-inc1"),
        new OptionSpec("reprob", "P", "RandomErasing probability", "0.25"),
        new OptionSpec("order", "O", "timm (crop first) or token-label (RandAugment on the full image first)", "timm"),
        new OptionSpec("seed", "S", "seed of the shuffle and the transforms", "0"),
        new OptionSpec("json", null, "print the result as JSON"),
    ], details: "Model mode: a train step is forward + loss + backward + AdamW step; inference is the eval forward without gradients; " +
                "figures are medians over --steps after --warmup. Data mode: the full training transform (RandomResizedCrop, flip, " +
                "RandAugment, normalise, RandomErasing) on worker threads, collated into batches."), Run);

    private static int Run(ParsedArgs a, Console2 io)
    {
        if (a.String("model") is not null)
        {
            if (a.String("data") is not null) throw new UsageException("give either --model or --data, not both");
            return RunModel(a, io);
        }
        if (a.String("data") is null) throw new UsageException("bench needs --model M (train/inference speed) or --data PATH (loader speed)");
        string data = a.Required("data");
        string split = a.Choice("split", "train", "val");
        int res = a.Int("res", 8, 4096) ?? 224;
        int workers = a.Int("workers", 0, 256) ?? Environment.ProcessorCount;
        int batch = a.Int("batch", 1, 65536) ?? 64;
        int batches = a.Int("batches", 1, 1_000_000)!.Value;
        string aa = a.Required("aa");
        string order = a.Choice("order", "timm", "token-label");
        var options = new TrainTransformOptions
        {
            ImgSize = res,
            AutoAugment = aa == "none" ? null : aa,
            ReProb = a.Double("reprob", 0, 1)!.Value,
            Order = order == "timm" ? Data.AugmentOrder.Timm : Data.AugmentOrder.TokenLabel,
        };
        try
        {
            _ = new TrainTransform(options);
        }
        catch (FormatException e)
        {
            throw new UsageException($"--aa: {e.Message}");
        }
        var dataset = DatasetFactory.Open(data, split);
        var bar = new ProgressLine(io.Err, "bench");
        var r = LoaderBenchmark.Run(dataset, options, batch, workers, batches,
            long.Parse(a.Required("seed"), CultureInfo.InvariantCulture), new SyncProgress<int>(done => bar.Report(done, batches)));
        bar.Finish();
        if (a.Flag("json"))
        {
            io.Out.WriteLine(JsonSerializer.Serialize(new
            {
                data,
                source = dataset.Source,
                res = r.Resolution,
                workers = r.Workers,
                batch = r.BatchSize,
                batches = r.Batches,
                images = r.Images,
                seconds = r.Seconds,
                images_per_second = r.ImagesPerSecond,
                skipped = r.Skipped,
            }));
        }
        else
        {
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{r.Images} images in {r.Seconds:F2} s: {r.ImagesPerSecond:F1} images/s ({r.Workers} workers, {r.Resolution} px, batch {r.BatchSize}, {dataset.Source})"));
        }
        return 0;
    }

    private static int RunModel(ParsedArgs a, Console2 io)
    {
        CliCommon.ApplyThreads(a);
        var device = CliCommon.ResolveDevice(a);
        string name = a.Required("model");
        var info = Models.ModelRegistry.Get(name);
        int res = a.Int("res", 16, 4096) ?? info.Defaults.ImgSize;
        int batch = a.Int("batch", 1, 65536) ?? 8;
        int steps = a.Int("steps", 1, 1_000_000)!.Value, warmup = a.Int("warmup", 0, 1_000_000)!.Value;
        int classes = a.Int("num-classes", 1, 1_000_000)!.Value;
        bool bf16 = a.Flag("bf16");
        bool fixedWarmup = a.Flag("fixed-warmup");
        string taskKind = a.Choice("task", "auto", "ce");
        if (a.Flag("paired-task"))
        {
            if (bf16 || a.Flag("breakdown") || a.Flag("paired-bf16"))
                throw new UsageException("--paired-task times two fp32 steps itself; it does not combine with --bf16, --breakdown or --paired-bf16");
            if (a.Flag("task"))
                throw new UsageException("--paired-task times both tasks (token labeling and cross-entropy); leave --task out");
            return RunPairedTask(a, io, info, name, res, batch, steps, warmup, classes, fixedWarmup, device);
        }
        if (a.Flag("paired-bf16"))
        {
            if (bf16 || a.Flag("breakdown")) throw new UsageException("--paired-bf16 times both precisions itself; it does not combine with --bf16 or --breakdown");
            return RunPaired(a, io, info, name, res, batch, steps, warmup, classes, taskKind, fixedWarmup, device);
        }
        using var model = SeededModel(info, classes, res);
        var task = BenchTask(model, taskKind, out string taskName);
        io.Err.WriteLine(Banner(name, res, batch, bf16 ? "bf16" : "fp32", taskName, warmup, fixedWarmup, $"{steps} timed steps"));
        var r = Training.TrainBenchmark.Run(task, batch, res, steps, warmup, bf16, device, waitForJit: !fixedWarmup);
        IReadOnlyList<Training.StepPart>? parts = null;
        if (a.Flag("breakdown"))
        {
            io.Err.WriteLine("bench: timing each part of the step alone…");
            parts = Training.StepBreakdown.Run(model, batch, res, steps, warmup, device);
        }
        if (a.Flag("json"))
        {
            io.Out.WriteLine(JsonSerializer.Serialize(new
            {
                impl = "alltokens",
                model = name,
                res,
                batch,
                threads = torch.get_num_threads(),
                bf16,
                task = taskName,
                train_images_per_s = r.TrainImagesPerSecond,
                infer_images_per_s = r.InferImagesPerSecond,
                median_step_s = r.MedianTrainStepSeconds,
                median_infer_s = r.MedianInferStepSeconds,
                peak_rss_mb = r.PeakRssBytes / (1024.0 * 1024.0),
                page_faults_per_step = r.PageFaultsPerStep >= 0 ? r.PageFaultsPerStep : (double?)null,
                train_warmup_steps = r.TrainWarmupSteps,
                infer_warmup_steps = r.InferWarmupSteps,
                breakdown = parts?.Select(p => new { part = p.Name, input = p.Input, median_s = p.MedianSeconds }).ToArray(),
            }, new JsonSerializerOptions { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull }));
        }
        else
        {
            string faults = r.PageFaultsPerStep >= 0 ? string.Create(CultureInfo.InvariantCulture, $", {r.PageFaultsPerStep:F0} page faults per train step") : "";
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{name}: train {r.TrainImagesPerSecond:F1} img/s (median step {r.MedianTrainStepSeconds * 1000:F0} ms), " +
                $"inference {r.InferImagesPerSecond:F1} img/s (median {r.MedianInferStepSeconds * 1000:F0} ms), peak RSS {r.PeakRssBytes / 1048576.0:F0} MiB") + faults +
                string.Create(CultureInfo.InvariantCulture, $"; untimed steps {r.TrainWarmupSteps} train, {r.InferWarmupSteps} inference"));
            if (parts is not null) WriteBreakdown(io, parts, r.MedianTrainStepSeconds);
        }
        return 0;
    }

    /// <summary>The model with the weights torch seed 0 gives, as every bench run starts from.</summary>
    private static Models.ImageClassifier SeededModel(Models.ModelInfo info, int classes, int res)
    {
        torch.manual_seed(0);
        return info.Create(new Models.ModelOptions(classes, res));
    }

    /// <summary>The line bench writes to stderr before timing a model.</summary>
    private static string Banner(string name, int res, int batch, string precision, string taskName, int warmup, bool fixedWarmup, string timed) =>
        string.Create(CultureInfo.InvariantCulture,
            $"bench: {name} at {res} px, batch {batch}, {torch.get_num_threads()} threads, {precision}, {taskName}; {warmup}{(fixedWarmup || warmup == 0 ? "" : "+")} warmup + {timed}");

    private static int RunPairedTask(ParsedArgs a, Console2 io, Models.ModelInfo info, string name, int res, int batch, int steps, int warmup,
        int classes, bool fixedWarmup, torch.Device device)
    {
        using var model = SeededModel(info, classes, res);
        if (!model.HasTokenHead)
            throw new UsageException($"--paired-task: {name} has no token head, so no token-labeling step to time (use an LV-ViT model)");
        var tokenTask = BenchTask(model, "auto", out string taskName);
        var ceTask = BenchTask(model, "ce", out string ceName);
        io.Err.WriteLine(Banner(name, res, batch, $"fp32, {taskName} and {ceName} steps in turn", "one model", warmup, fixedWarmup, $"{steps} timed pairs"));
        var r = Training.TrainBenchmark.RunPairedTasks(ceTask, tokenTask, batch, res, steps, warmup, device, waitForJit: !fixedWarmup);
        if (a.Flag("json"))
        {
            io.Out.WriteLine(PairedJson(name, res, batch, taskName, r.Pairs, r.WarmupPairs, r.PeakRssBytes,
                ("baseline", ceName),
                ("baseline_median_step_s", r.MedianBaselineStepSeconds),
                ("task_median_step_s", r.MedianTaskStepSeconds),
                ("paired_overhead_median", r.MedianOverhead),
                ("paired_overhead_q1", r.LowerQuartileOverhead),
                ("paired_overhead_q3", r.UpperQuartileOverhead)));
        }
        else
        {
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{name}: {ceName} step {r.MedianBaselineStepSeconds * 1000:F0} ms, {taskName} step {r.MedianTaskStepSeconds * 1000:F0} ms; " +
                $"{taskName} costs {100 * r.MedianOverhead:+0.0;-0.0} % over {ceName} by the median of {r.Pairs} pairs " +
                $"(quartiles {100 * r.LowerQuartileOverhead:+0.0;-0.0} to {100 * r.UpperQuartileOverhead:+0.0;-0.0} %); untimed pairs {r.WarmupPairs}"));
        }
        return 0;
    }

    private static int RunPaired(ParsedArgs a, Console2 io, Models.ModelInfo info, string name, int res, int batch, int steps, int warmup,
        int classes, string taskKind, bool fixedWarmup, torch.Device device)
    {
        using var fp32Model = SeededModel(info, classes, res);
        using var bf16Model = SeededModel(info, classes, res); // the same weights in both copies
        var fp32Task = BenchTask(fp32Model, taskKind, out string taskName);
        var bf16Task = BenchTask(bf16Model, taskKind, out _);
        io.Err.WriteLine(Banner(name, res, batch, "fp32 and bf16 train steps in turn", taskName, warmup, fixedWarmup, $"{steps} timed pairs"));
        var r = Training.TrainBenchmark.RunPairedBf16(fp32Task, bf16Task, batch, res, steps, warmup, device, waitForJit: !fixedWarmup);
        if (a.Flag("json"))
        {
            io.Out.WriteLine(PairedJson(name, res, batch, taskName, r.Pairs, r.WarmupPairs, r.PeakRssBytes,
                ("fp32_median_step_s", r.MedianFp32StepSeconds),
                ("bf16_median_step_s", r.MedianBf16StepSeconds),
                ("fp32_train_images_per_s", batch / r.MedianFp32StepSeconds),
                ("bf16_train_images_per_s", batch / r.MedianBf16StepSeconds),
                ("paired_ratio_median", r.MedianRatio),
                ("paired_ratio_q1", r.LowerQuartileRatio),
                ("paired_ratio_q3", r.UpperQuartileRatio)));
        }
        else
        {
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{name}: fp32 train step {r.MedianFp32StepSeconds * 1000:F0} ms ({batch / r.MedianFp32StepSeconds:F1} img/s), bf16 {r.MedianBf16StepSeconds * 1000:F0} ms " +
                $"({batch / r.MedianBf16StepSeconds:F1} img/s); bf16 trains at ×{r.MedianRatio:F2} the fp32 speed by the median of {r.Pairs} pairs " +
                $"(quartiles ×{r.LowerQuartileRatio:F2}–×{r.UpperQuartileRatio:F2}); peak RSS {r.PeakRssBytes / 1048576.0:F0} MiB (both copies); untimed pairs {r.WarmupPairs}"));
        }
        return 0;
    }

    /// <summary>
    /// The JSON line of a paired run (--paired-bf16, --paired-task): what ran and how many pairs, the mode's own
    /// <paramref name="figures"/> in order, then the process's peak RSS.
    /// </summary>
    private static string PairedJson(string name, int res, int batch, string taskName, int pairs, int warmupPairs, long peakRssBytes,
        params (string Key, object Value)[] figures)
    {
        var line = new Dictionary<string, object>
        {
            ["impl"] = "alltokens",
            ["model"] = name,
            ["res"] = res,
            ["batch"] = batch,
            ["threads"] = torch.get_num_threads(),
            ["task"] = taskName,
            ["pairs"] = pairs,
            ["warmup_pairs"] = warmupPairs,
        };
        foreach (var (key, value) in figures) line[key] = value;
        line["peak_rss_mb"] = peakRssBytes / (1024.0 * 1024.0);
        return JsonSerializer.Serialize(line);
    }

    private static void WriteBreakdown(Console2 io, IReadOnlyList<Training.StepPart> parts, double stepSeconds)
    {
        double sum = parts.Sum(p => p.MedianSeconds);
        io.Out.WriteLine("part (forward + backward alone)          input                 median ms   share");
        foreach (var p in parts)
        {
            string input = p.Input.Length == 0 ? "" : "[" + string.Join(",", p.Input) + "]";
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {p.Name,-38} {input,-20} {p.MedianSeconds * 1000,10:F1} {100 * p.MedianSeconds / sum,6:F1} %"));
        }
        io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"  {"sum of parts",-38} {"",-20} {sum * 1000,10:F1}   (whole step above: {stepSeconds * 1000:F0} ms, with the loss and the glue between parts)"));
    }

    /// <summary>The step the model trains with: token labeling for LV-ViT models with an aux head (unless --task ce).</summary>
    internal static Training.ITrainTask BenchTask(Models.ImageClassifier model, string kind, out string taskName)
    {
        if (kind == "auto" && model.HasTokenHead)
        {
            // As in token-label training: dense targets from 18×18 top-5 maps (the official NFNet-F6 map size), MixToken,
            // cls + β·token soft CE with the official β = 1.
            var maps = TokenLabeling.StepBenchmark.SyntheticMaps(1, model.NumClasses);
            var source = new TokenLabeling.StoredTargetSource(_ => maps[0]);
            taskName = "token labeling + MixToken";
            return new TokenLabeling.TokenLabelTask(model, source, new TokenLabeling.TokenLabelTaskOptions(
                new TokenLabeling.DenseTargetOptions(model.NumClasses, model.GridSize), new TokenLabeling.TokenLabelLossOptions(DenseWeight: 1.0)));
        }
        taskName = "cross-entropy";
        return new Training.ClassificationTask(model, smoothing: 0.1);
    }
}
