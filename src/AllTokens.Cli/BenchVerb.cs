using System.Globalization;
using System.Text.Json;
using AllTokens.Data.Datasets;
using AllTokens.Data.Evaluation;
using AllTokens.Data.Transforms;

namespace AllTokens.Cli;

public static class BenchVerb
{
    public static readonly Verb Verb = new(new VerbSpec("bench", "measure loader throughput (decode + full train transform + collate), images/s",
        "--data PATH [--res R] [--workers W] [--batch B] [--batches N] [--json]",
    [
        new OptionSpec("data", "PATH", "dataset folder: ImageFolder, IDX (MNIST/Fashion-MNIST) or CIFAR-10/100 binary"),
        new OptionSpec("split", "S", "train or val", "train"),
        new OptionSpec("res", "R", "output resolution", "224"),
        new OptionSpec("workers", "W", "loader threads (0 = on the main thread; default: the core count)"),
        new OptionSpec("batch", "B", "batch size", "64"),
        new OptionSpec("batches", "N", "batches to time", "20"),
        new OptionSpec("aa", "CONFIG", "RandAugment string, or 'none'", "rand-m9-mstd0.5-inc1"),
        new OptionSpec("reprob", "P", "RandomErasing probability", "0.25"),
        new OptionSpec("order", "O", "timm (crop first) or token-label (RandAugment on the full image first)", "timm"),
        new OptionSpec("seed", "S", "seed of the shuffle and the transforms", "0"),
        new OptionSpec("json", null, "print the result as JSON"),
    ], details: "The transform is the full training one (RandomResizedCrop, flip, RandAugment, normalise, RandomErasing)."), Run);

    private static int Run(ParsedArgs a, Console2 io)
    {
        string data = a.Required("data");
        string split = a.Choice("split", "train", "val");
        int res = a.Int("res", 8, 4096)!.Value;
        int workers = a.Int("workers", 0, 256) ?? Environment.ProcessorCount;
        int batch = a.Int("batch", 1, 65536)!.Value;
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
}
