using System.Diagnostics;
using System.Globalization;
using AllTokens.Checkpoints;
using AllTokens.Data.Transforms;
using AllTokens.TokenLabeling;
using TorchSharp;

namespace AllTokens.Cli;

public static class LabelVerb
{
    public static readonly Verb Verb = new(new VerbSpec("label", "make, import or inspect token labels (dense top-k annotator maps)",
        "--annotator M [--weights F] --data PATH --out LABELS [--img-size R] [--topk 5] [--batch B] [--split train]\n" +
        "       alltokens label import OFFICIAL_DIR --out LABELS --classes N\n" +
        "       alltokens label inspect LABELS [--image KEY] [--png OUT]",
    [
        new OptionSpec("annotator", "M", "registered model name of the annotator (optional when --weights names it)"),
        new OptionSpec("weights", "F", "annotator weights (.safetensors/.pth); without them the annotator is random (for tests)"),
        new OptionSpec("num-classes", "N", "annotator classes when no weights say it (default: the dataset's)"),
        new OptionSpec("data", "PATH", "dataset: ImageFolder (PATH/[split/]class/image) or IDX files (Fashion-MNIST)"),
        new OptionSpec("split", "S", "dataset split", "train"),
        new OptionSpec("out", "LABELS", "label store to write (resumed when it exists)"),
        new OptionSpec("img-size", "R", "annotator resolution: shorter side resized to R, centre crop R (crop_pct 1.0, as official)"),
        new OptionSpec("topk", "K", "classes kept per location (all of them when the annotator has fewer)", "5"),
        new OptionSpec("batch", "B", "images per forward pass", "32"),
        new OptionSpec("classes", "N", "class count of official label data (label import)"),
        new OptionSpec("image", "KEY", "label inspect: print this image's map (dataset key, e.g. Coat/img_1.png or train/000017)"),
        new OptionSpec("png", "OUT", "label inspect --image: draw its top-class map with a legend"),
        new OptionSpec("ema", null, "use state_dict_ema from a training checkpoint"),
        CliCommon.DeviceOption,
        CliCommon.ThreadsOption,
    ], positional: "[import DIR | inspect LABELS]", minPositional: 0,
        details: "Annotating keeps, at every location of the annotator's token grid, the top-k logits of its classifier (aux_head for LV-ViT)\n" +
                 "applied to the patch tokens, and a checksum of each source image (training checks a sample of them, so labels\n" +
                 "made from other pictures under the same keys are refused). An interrupted run resumes: images already in the store are skipped.\n" +
                 "`label import` reads official <class>/<stem>.pt files ([2, k, h, w] fp16) into a store keyed <class>/<stem>."), Run);

    private static int Run(ParsedArgs a, Console2 io)
    {
        CliCommon.ApplyThreads(a);
        if (a.Positional.Count == 0) return Annotate(a, io);
        return a.Positional[0] switch
        {
            "import" => Import(a, io),
            "inspect" => Inspect(a, io),
            var other => throw new UsageException($"unknown sub-command '{other}' (expected import or inspect, or no positional argument to annotate)"),
        };
    }

    private static string One(ParsedArgs a, string what)
    {
        if (a.Positional.Count != 2) throw new UsageException($"label {a.Positional[0]} needs exactly one {what}");
        return a.Positional[1];
    }

    private static int Annotate(ParsedArgs a, Console2 io)
    {
        var device = CliCommon.ResolveDevice(a);
        string data = a.Required("data"), outPath = a.Required("out");
        if (!a.Has("annotator") && !a.Has("weights"))
            throw new UsageException("label needs --annotator M (a registered model) and/or --weights F (AllTokens weights name their model)");
        var dataset = LabelDatasets.Open(data, a.Required("split"));
        int topk = a.Int("topk", 1, 1_000_000)!.Value, batch = a.Int("batch", 1, 65536)!.Value;
        var loaded = ModelWeights.Load(new ModelRequest(a.String("annotator"), a.String("weights"),
            a.Int("num-classes", 1, 1_000_000) ?? (a.Has("weights") ? null : dataset.ClassNames.Count),
            a.Int("img-size", 16, 8192), PreferEma: a.Flag("ema")));
        using var model = loaded.Model;
        // The default top-5 cannot exceed the annotator's classes (a 2-class dataset keeps both); an explicit --topk is checked as given.
        if (!a.Has("topk")) topk = Math.Min(topk, model.NumClasses);
        CliCommon.PrintReport(loaded.Report, io);
        if (loaded.Report is null) io.Err.WriteLine($"note: no --weights given; {loaded.Name} is randomly initialised");
        var pre = CliCommon.PreprocessingFor(loaded, io);
        // crop_pct 1.0 (the whole image is labelled, as the official label generation); mean/std from the weights.
        var transform = new EvalTransform(new EvalTransformOptions(model.Options.ImgSize, CropPct: 1.0,
            Interpolation: CliCommon.ParseInterpolation(pre.Interpolation),
            Mean: pre.Mean, Std: pre.Std));
        model.to(device);
        var annotator = new Annotator(model);
        string name = loaded.Name + (a.String("weights") is { } w ? "@" + Path.GetFileName(w) : "");
        io.Err.WriteLine($"annotating {dataset.Source}: {dataset.Count} images, {loaded.Name} ({annotator.ClassifierName} per token) at {transform.Size}px " +
                         $"→ {annotator.GridSize}×{annotator.GridSize} top-{topk} → {outPath}");
        var sw = Stopwatch.StartNew();
        var last = TimeSpan.Zero;
        var progress = new SyncProgress<LabelProgress>(p =>
        {
            if (p.Done < p.Total && sw.Elapsed - last < TimeSpan.FromSeconds(2)) return;
            last = sw.Elapsed;
            double rate = (p.Done - p.Skipped) / Math.Max(sw.Elapsed.TotalSeconds, 1e-9);
            io.Err.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  {p.Done}/{p.Total} ({100.0 * p.Done / Math.Max(p.Total, 1):F1}%){(p.Skipped > 0 ? $", {p.Skipped} already labelled" : "")}, {rate:F1} img/s"));
        });
        var header = LabelGeneration.Run(annotator, dataset, transform, outPath,
            new LabelRunOptions(topk, batch, name), device, progress);
        io.Out.WriteLine($"wrote {outPath}: {dataset.Count} images, {header.NumClasses} classes, top-{header.K}, {header.Height}×{header.Width}");
        return 0;
    }

    private static int Import(ParsedArgs a, Console2 io)
    {
        string dir = One(a, "OFFICIAL_DIR"), outPath = a.Required("out");
        int classes = a.Int("classes", 1, 1_000_000) ?? throw new UsageException("label import needs --classes N");
        var progress = new SyncProgress<LabelProgress>(p => io.Err.WriteLine($"  {p.Done}/{p.Total}"));
        var header = OfficialLabelImport.Import(dir, outPath, classes, "official:" + Path.GetFileName(Path.GetFullPath(dir).TrimEnd('/')), progress: progress);
        using var store = LabelStore.Open(outPath);
        io.Out.WriteLine($"wrote {outPath}: {store.Count} images, {header.NumClasses} classes, top-{header.K}, {header.Height}×{header.Width} (keys <class>/<stem>)");
        return 0;
    }

    private static int Inspect(ParsedArgs a, Console2 io)
    {
        string path = One(a, "LABELS");
        string? key = a.String("image");
        if (a.Has("png") && key is null) throw new UsageException("--png draws one image's map: give --image KEY");
        using var store = LabelStore.Open(path);
        var h = store.Header;
        if (key is not null)
        {
            if (!store.Contains(key))
            {
                if (store.Count == 0) throw new KeyNotFoundException($"{path}: no labels for '{key}': the store holds no images");
                // Edit distance over every key would be slow on ImageNet-size stores; the first 20,000 are plenty to show the form.
                var near = store.Keys.Take(20_000).Select(k => (k, d: EditDistance.Between(key, k))).OrderBy(x => x.d).First().k;
                throw new KeyNotFoundException($"{path}: no labels for '{key}' among its {store.Count} images (keys look like '{store.Keys[0]}'; nearest: '{near}')");
            }
            var map = store.Get(key);
            io.Out.WriteLine($"{key}: top-{map.K} over {h.NumClasses} classes on {map.Height}×{map.Width}; top class per location:");
            for (int r = 0; r < map.Height; r++)
                io.Out.WriteLine("  " + string.Join(" ", Enumerable.Range(0, map.Width).Select(c => map.Index(0, r, c).ToString(CultureInfo.InvariantCulture).PadLeft(4))));
            double mean = Enumerable.Range(0, map.Height * map.Width).Average(p => LabelInspection.Top1Probability(map, p, h.NumClasses));
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  mean top-1 probability {mean:F4}"));
            if (a.String("png") is { } png)
            {
                LabelInspection.RenderPng(map, png);
                io.Out.WriteLine($"  drew {png}");
            }
            return 0;
        }
        var s = LabelInspection.Statistics(store);
        var inv = CultureInfo.InvariantCulture;
        io.Out.WriteLine($"{path}");
        io.Out.WriteLine($"  images      {s.Count}");
        io.Out.WriteLine($"  classes     {h.NumClasses}");
        io.Out.WriteLine($"  top-k       {h.K}");
        io.Out.WriteLine($"  map         {h.Height}×{h.Width}");
        io.Out.WriteLine($"  annotator   {h.Annotator} at {h.Resolution}px");
        io.Out.WriteLine($"  keys        {(h.KeyStyle == LabelKeyStyle.Full ? "dataset keys" : "official <class>/<stem>")}");
        io.Out.WriteLine($"  checksums   {(h.ImageChecksums ? "of every source image (training checks a sample of its images against them)" : "none (imported or older store: training cannot tell images of another dataset)")}");
        io.Out.WriteLine(string.Create(inv, $"  mean top-1 probability {s.MeanTop1Probability:F4} (softmax over all classes, unstored logits 0)"));
        long total = s.Top1Histogram.Sum();
        io.Out.WriteLine("  top-1 class histogram (locations):");
        foreach (var (c, n) in s.Top1Histogram.Select((n, c) => (c, n)).Where(x => x.n > 0).OrderByDescending(x => x.n).ThenBy(x => x.c).Take(20))
            io.Out.WriteLine(string.Create(inv, $"    {c,6} {n,10} {100.0 * n / total,6:F2}%"));
        int shown = s.Top1Histogram.Count(n => n > 0);
        if (shown > 20) io.Out.WriteLine($"    … {shown - 20} more classes");
        return 0;
    }

}
