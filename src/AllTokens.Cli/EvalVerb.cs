using System.Globalization;
using System.Text.Json;
using AllTokens.Checkpoints;
using AllTokens.Data;
using AllTokens.Data.Datasets;
using AllTokens.Data.Evaluation;
using AllTokens.Data.Transforms;
using AllTokens.Models;
using TorchSharp;

namespace AllTokens.Cli;

public static class EvalVerb
{
    public static readonly Verb Verb = new(new VerbSpec("eval", "evaluate a model on a dataset: top-1, top-5, loss, per-class accuracy, confusion matrix",
        "--model M --weights F --data PATH [--split val] [--batch B] [--workers W] [--subset N] [--img-size R] [--crop-pct P] [--out DIR] [--json]",
    [
        new OptionSpec("model", "M", "registered model name (optional when --weights is an AllTokens safetensors file)"),
        new OptionSpec("weights", "F", ".pth/.pth.tar/.safetensors weights; without it the model is randomly initialised"),
        new OptionSpec("data", "PATH", "dataset folder: ImageFolder, IDX (MNIST/Fashion-MNIST) or CIFAR-10/100 binary"),
        new OptionSpec("split", "S", "train or val (IDX/CIFAR: val = the test files)", "val"),
        new OptionSpec("batch", "B", "images per forward pass", "64"),
        new OptionSpec("workers", "W", "loader threads (0 = decode on the main thread)", "2"),
        new OptionSpec("subset", "N", "evaluate a per-class balanced subset of N samples"),
        new OptionSpec("num-classes", "N", "classifier width when no --weights are given (default: the dataset's)"),
        new OptionSpec("img-size", "R", "input resolution (default: the weights' or the model's)"),
        new OptionSpec("crop-pct", "P", "resize the shorter side to floor(R/P), then centre-crop R (default: the model's)"),
        new OptionSpec("interpolation", "I", "bicubic or bilinear resize (default: the model's)"),
        new OptionSpec("out", "DIR", "write eval.json and confusion.png there (default: confusion.png in the current folder)"),
        new OptionSpec("json", null, "print the JSON summary on stdout instead of the table"),
        new OptionSpec("strict-data", null, "stop at a corrupt image instead of skipping it"),
        new OptionSpec("ema", null, "use state_dict_ema from a training checkpoint"),
        new OptionSpec("allow-mismatch", null, "load what fits when the weights do not match the model"),
        CliCommon.DeviceOption,
        CliCommon.ThreadsOption,
    ], details: "Preprocessing is timm's eval transform with the mean/std, crop_pct and interpolation the weights were trained with (AllTokens weights written by train), else the model's defaults; --crop-pct/--interpolation override. LV-ViT models score head(cls) + 0.5·max over tokens of aux_head."), Run);

    private static int Run(ParsedArgs a, Console2 io)
    {
        CliCommon.ApplyThreads(a);
        var device = CliCommon.ResolveDevice(a);
        string data = a.Required("data");
        string split = a.Choice("split", "train", "val");
        int batch = a.Int("batch", 1, 65536)!.Value;
        int workers = a.Int("workers", 0, 256)!.Value;
        int? subset = a.Int("subset", 1, int.MaxValue);
        string? outDir = a.String("out");
        bool json = a.Flag("json");

        IImageDataset dataset = DatasetFactory.Open(data, split);
        if (subset is int n) dataset = Subset.Balanced(dataset, n, seed: 0);
        string? weights = a.String("weights");
        int? numClasses = a.Int("num-classes", 1, 1_000_000);
        if (numClasses is int nc && nc != dataset.ClassNames.Count)
            throw new UsageException($"--num-classes {nc} does not match the {dataset.ClassNames.Count} classes of {dataset.Source}");
        var loaded = ModelWeights.Load(new ModelRequest(a.String("model"), weights,
            numClasses ?? (weights is null ? dataset.ClassNames.Count : null),
            a.Int("img-size", 16, 8192), AllowMismatch: a.Flag("allow-mismatch"), PreferEma: a.Flag("ema")));
        using var model = loaded.Model;
        CliCommon.PrintReport(loaded.Report, io);
        if (loaded.Report is null) io.Err.WriteLine($"note: no --weights given; {loaded.Name} is randomly initialised");
        if (model.NumClasses != dataset.ClassNames.Count)
            throw new UsageException($"the model has {model.NumClasses} classes but {dataset.Source} has {dataset.ClassNames.Count}");

        var transform = CliCommon.EvalOptionsFor(a, CliCommon.PreprocessingFor(loaded, io), model.Options.ImgSize);
        var loader = DataLoader.ForEval(dataset, transform, batch, workers, a.Flag("strict-data"));
        loader.Skipped += s => io.Err.WriteLine($"warning: skipped {s.Key}: {s.Message}");
        model.to(device);
        model.eval();

        var bar = new ProgressLine(io.Err, "eval");
        var result = Evaluator.Evaluate(model, loader, device, new SyncProgress<EvalProgress>(p => bar.Report(p.Samples, p.Total)));
        bar.Finish();

        string pngDir = outDir ?? Directory.GetCurrentDirectory();
        Directory.CreateDirectory(pngDir);
        string png = Path.Combine(pngDir, "confusion.png");
        ConfusionMatrixPng.Write(result, png, string.Create(CultureInfo.InvariantCulture,
            $"{loaded.Name} on {Path.GetFileName(Path.GetFullPath(data).TrimEnd('/'))} ({split}): {result.Count} samples, top-1 {result.Top1 * 100:F2}%"));

        var summary = Summary(result, loaded.Name, weights, data, split, png, loader.SkippedCount);
        string summaryJson = JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true });
        if (outDir is not null) WriteAtomic(Path.Combine(outDir, "eval.json"), summaryJson + "\n");
        if (json)
        {
            io.Out.WriteLine(JsonSerializer.Serialize(summary));
        }
        else
        {
            PrintTable(io.Out, result);
        }
        io.Err.WriteLine($"confusion matrix: {png}" + (outDir is null ? "" : $"; summary: {Path.Combine(outDir, "eval.json")}"));
        if (loader.SkippedCount > 0) io.Err.WriteLine($"warning: {loader.SkippedCount} unreadable file(s) skipped");
        return 0;
    }

    private static Dictionary<string, object?> Summary(EvalResult r, string model, string? weights, string data, string split, string png, long skipped) => new()
    {
        ["model"] = model,
        ["weights"] = weights,
        ["data"] = data,
        ["split"] = split,
        ["samples"] = r.Count,
        ["skipped"] = skipped,
        ["top1"] = r.Top1 * 100,
        ["top5"] = r.Top5 * 100,
        ["top_k"] = r.TopK,
        ["loss"] = r.MeanLoss,
        ["per_class"] = r.ClassNames.Select((name, i) => new Dictionary<string, object?>
        {
            ["index"] = i,
            ["name"] = name,
            ["count"] = r.PerClassCount[i],
            ["correct"] = r.PerClassCorrect[i],
            ["accuracy"] = r.PerClassCount[i] == 0 ? null : 100.0 * r.PerClassCorrect[i] / r.PerClassCount[i],
        }).ToList(),
        ["confusion"] = r.Confusion,
        ["confusion_png"] = png,
    };

    private static void PrintTable(TextWriter o, EvalResult r)
    {
        var inv = CultureInfo.InvariantCulture;
        o.WriteLine(string.Create(inv, $"samples  {r.Count}"));
        o.WriteLine(string.Create(inv, $"top-1    {r.Top1 * 100:F2}%"));
        o.WriteLine(string.Create(inv, $"top-{r.TopK}    {r.Top5 * 100:F2}%"));
        o.WriteLine(string.Create(inv, $"loss     {r.MeanLoss:F4}"));
        o.WriteLine();
        int w = Math.Max(5, r.ClassNames.Max(n => n.Length));
        o.WriteLine($"{"class".PadRight(w)}  {"count",7}  {"correct",7}  {"acc",7}");
        for (int i = 0; i < r.ClassNames.Count; i++)
        {
            string acc = r.PerClassCount[i] == 0 ? "-" : string.Create(inv, $"{100.0 * r.PerClassCorrect[i] / r.PerClassCount[i]:F2}%");
            o.WriteLine(string.Create(inv, $"{r.ClassNames[i].PadRight(w)}  {r.PerClassCount[i],7}  {r.PerClassCorrect[i],7}  {acc,7}"));
        }
    }

    internal static void WriteAtomic(string path, string text)
    {
        string tmp = path + ".tmp-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            f.Write(System.Text.Encoding.UTF8.GetBytes(text));
            f.Flush(flushToDisk: true);
        }
        File.Move(tmp, path, overwrite: true);
    }
}

/// <summary>An <see cref="IProgress{T}"/> that calls back on the reporting thread (Progress&lt;T&gt; would post to the thread pool).</summary>
public sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
