using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using AllTokens.Checkpoints;
using AllTokens.Data;
using AllTokens.Data.Datasets;
using AllTokens.Data.Evaluation;
using AllTokens.Data.Transforms;
using AllTokens.TokenLabeling;
using AllTokens.Training;
using AllTokens.Visualization;
using SkiaSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Cli;

/// <summary>
/// The main job: both papers' story on Fashion-MNIST in one command. Trains a machine annotator, writes token labels,
/// trains an LV-ViT student without and with token labeling + MixToken, a T2T-ViT and a plain ViT on the same budget,
/// evaluates all on the test set and writes report.md with plots. Each stage leaves a marker, so a rerun with --resume
/// continues where an interrupted demo stopped (a half-trained stage resumes from its last checkpoint).
/// </summary>
public static class DemoVerb
{
    public static readonly Verb Verb = new(new VerbSpec("demo", "the whole story on Fashion-MNIST: annotator → token labels → LV-ViT with/without TL, T2T-ViT, ViT → report",
        "[--out DIR] [--data PATH | --download] [--quick] [--resume] [--threads T] [--workers W] [--seed S]",
    [
        new OptionSpec("out", "DIR", "run folder (default: runs/demo-<time>)"),
        new OptionSpec("data", "PATH", $"Fashion-MNIST IDX folder (default: {DoctorVerb.FashionMnistDir} when present)"),
        new OptionSpec("download", null, "fetch the official Fashion-MNIST files into ~/.cache/alltokens/fashion-mnist when no data is found"),
        new OptionSpec("quick", null, "a tiny version for smoke tests (a few minutes): small subsets, one epoch each"),
        new OptionSpec("resume", null, "continue the demo in --out: finished stages are kept, an interrupted one resumes"),
        new OptionSpec("workers", "W", "loader threads", "1"),
        new OptionSpec("seed", "S", "seed of every run (recorded in the report)", "42"),
        CliCommon.ThreadsOption,
        CliCommon.DeviceOption,
    ], details: "Budget: about 20–30 minutes on 2 CPU cores (--quick: a few minutes). Writes report.md, results.json, PNG plots and\n" +
                "every run's folder (metrics.jsonl, checkpoints, weights) under --out."), Run);

    /// <summary>The demo's sizes. <see cref="Full"/> fits ~30 minutes on 2 cores; <see cref="Quick"/> is the smoke test.</summary>
    public sealed record Plan(int TrainImages, int ValImages, int TestImages, int StudentEpochs, int AnnotatorEpochs, int ImgSize, int Batch)
    {
        public static readonly Plan Full = new(TrainImages: 15_000, ValImages: 2_000, TestImages: 10_000, StudentEpochs: 4, AnnotatorEpochs: 6, ImgSize: 64, Batch: 64);
        public static readonly Plan Quick = new(TrainImages: 1_280, ValImages: 500, TestImages: 1_000, StudentEpochs: 2, AnnotatorEpochs: 3, ImgSize: 64, Batch: 32);
    }

    /// <summary>One trained model of the demo.</summary>
    private sealed record Stage(string Name, string Model, string Title, string Note, Action<TrainConfig> Configure, int Epochs);

    private static int Run(ParsedArgs a, Console2 io)
    {
        CliCommon.ApplyThreads(a);
        var device = CliCommon.ResolveDevice(a);
        bool quick = a.Flag("quick"), resume = a.Flag("resume");
        var plan = quick ? Plan.Quick : Plan.Full;
        int workers = a.Int("workers", 0, 64)!.Value;
        int seed = a.Int("seed", 0, int.MaxValue)!.Value;
        string data = ResolveData(a.String("data"), a.Flag("download"), io);
        string outDir = a.String("out") ?? (resume
            ? throw new UsageException("--resume needs --out DIR (the demo folder to continue)")
            : Path.Combine("runs", $"demo-{DateTime.Now.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture)}"));
        if (!resume && Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any())
            throw new UsageException($"{outDir} is not empty; pass --resume to continue that demo, or choose another --out");
        Directory.CreateDirectory(outDir);
        var total = Stopwatch.StartNew();
        io.Err.WriteLine($"demo: Fashion-MNIST from {data}; {(quick ? "quick" : "full")} plan: {plan.TrainImages} training images, " +
                         $"{plan.ImgSize} px, students {plan.StudentEpochs} epochs, annotator {plan.AnnotatorEpochs}; seed {seed}; {torch.get_num_threads()} threads → {outDir}");

        string labels = Path.Combine(outDir, "labels.tls");
        var stages = new List<Stage>
        {
            new("annotator", "lvvit_nano", "Annotator: LV-ViT nano, longer budget",
                "every token learns the image label (2-D targets) with MixToken; its per-token predictions become the token labels",
                c =>
                {
                    c.TokenLabel = true;
                    c.TokenLabelData = TrainSetup.GroundTruthLabels;
                    c.DenseWeight = 1.0;
                }, plan.AnnotatorEpochs),
            new("lvvit", "lvvit_nano", "LV-ViT nano", "class labels only (cross-entropy with label smoothing)", _ => { }, plan.StudentEpochs),
            new("lvvit_tl", "lvvit_nano", "LV-ViT nano + token labeling + MixToken",
                "cls loss + 0.5 · mean token loss on the annotator's dense labels (β = 0.5 as in the paper); the class token's target " +
                "is the annotator's crop label blended with the ground truth (ground_truth: corrected), since this annotator is far weaker than the paper's",
                c =>
                {
                    c.TokenLabel = true;
                    c.TokenLabelData = labels;
                    c.DenseWeight = 0.5;
                    c.GroundTruth = "corrected";
                }, plan.StudentEpochs),
            new("t2t_vit", "t2t_vit_nano", "T2T-ViT nano", "class labels only", _ => { }, plan.StudentEpochs),
            new("vit", "vit_nano", "ViT nano (16×16 patches)", "class labels only", _ => { }, plan.StudentEpochs),
        };

        var results = new List<JsonObject>();
        foreach (var stage in stages)
        {
            if (stage.Name == "lvvit_tl") MakeLabels(outDir, labels, data, plan, seed, device, io);
            results.Add(TrainStage(stage, outDir, data, plan, seed, workers, device, io));
        }

        io.Err.WriteLine("demo: evaluating on the test set and drawing pictures…");
        var testSet = Subset.Balanced(DatasetFactory.Open(data, "val"), Math.Min(plan.TestImages, 10_000), seed + 7);
        foreach (var r in results) Evaluate(r, outDir, testSet, plan, workers, device);
        var pictures = DrawPictures(outDir, results, data, labels, plan, seed, device);
        double minutes = total.Elapsed.TotalMinutes;
        var summary = new JsonObject
        {
            ["data"] = data,
            ["plan"] = JsonSerializer.SerializeToNode(plan),
            ["seed"] = seed,
            ["threads"] = torch.get_num_threads(),
            ["minutes"] = Math.Round(minutes, 2),
            ["runs"] = new JsonArray(results.Select(r => (JsonNode)r.DeepClone()).ToArray()),
        };
        AtomicFile.WriteAllText(Path.Combine(outDir, "results.json"), summary.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        string report = Report(results, pictures, plan, seed, data, minutes, quick);
        AtomicFile.WriteAllText(Path.Combine(outDir, "report.md"), report);
        io.Out.WriteLine();
        io.Out.WriteLine(Table(results));
        io.Out.WriteLine();
        io.Out.WriteLine($"report: {Path.Combine(outDir, "report.md")} ({minutes:F1} min)");
        return 0;
    }

    // ---- data ----

    private static readonly string[] IdxFiles =
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"];

    /// <summary>--data, else the Debian package's folder, else (with --download) the official files, else a clear message.</summary>
    public static string ResolveData(string? given, bool download, Console2 io)
    {
        if (given is not null)
        {
            if (!Directory.Exists(given)) throw new UsageException($"--data {given}: no such folder");
            return given;
        }
        if (File.Exists(Path.Combine(DoctorVerb.FashionMnistDir, IdxFiles[0]))) return DoctorVerb.FashionMnistDir;
        string cache = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "alltokens", "fashion-mnist");
        if (IdxFiles.All(f => File.Exists(Path.Combine(cache, f)))) return cache;
        if (!download)
            throw new UsageException("Fashion-MNIST not found. Either install Debian's package (sudo apt-get install dataset-fashion-mnist, " +
                                     $"into {DoctorVerb.FashionMnistDir}), pass --data PATH to a folder with the four *-ubyte.gz files, " +
                                     $"or add --download to fetch them from github.com/zalandoresearch/fashion-mnist into {cache}");
        Download(cache, io);
        return cache;
    }

    private static void Download(string dir, Console2 io)
    {
        const string baseUrl = "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/";
        Directory.CreateDirectory(dir);
        using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(5) };
        foreach (var f in IdxFiles)
        {
            string target = Path.Combine(dir, f);
            if (File.Exists(target)) continue;
            io.Err.WriteLine($"demo: downloading {baseUrl}{f}");
            byte[] bytes;
            try
            {
                bytes = http.GetByteArrayAsync(baseUrl + f).GetAwaiter().GetResult();
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
            {
                throw new IOException($"downloading {baseUrl}{f} failed: {e.Message}. Install dataset-fashion-mnist or pass --data PATH instead", e);
            }
            if (bytes.Length < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b)
                throw new IOException($"{baseUrl}{f}: the download is not a gzip file ({bytes.Length} bytes)");
            AtomicFile.WriteAllBytes(target, bytes);
        }
        // Reading both splits checks magic numbers and counts; a bad file is deleted so a rerun fetches it again.
        try
        {
            _ = DatasetFactory.Open(dir, "train");
            _ = DatasetFactory.Open(dir, "val");
        }
        catch (DatasetException)
        {
            foreach (var f in IdxFiles) File.Delete(Path.Combine(dir, f));
            throw;
        }
    }

    // ---- stages ----

    private static TrainConfig BaseConfig(string model, string data, Plan plan, int epochs, int seed, int workers)
    {
        // Our small-data recipe (recipes/fashion_mnist_*.yaml shape): AdamW, 1 warmup epoch, per-step cosine, label
        // smoothing, EMA; light augmentation (crop scale 0.6–1, flip), no RandAugment/erasing for runs this short.
        var c = new TrainConfig
        {
            Model = model,
            Data = data,
            ImgSize = plan.ImgSize,
            Subset = plan.TrainImages,
            ValSubset = plan.ValImages,
            Workers = workers,
            Epochs = epochs,
            CooldownEpochs = 0,
            WarmupEpochs = Math.Min(1, epochs - 1 >= 1 ? 1 : 0),
            WarmupLr = 1e-5,
            Lr = 1e-3,
            MinLr = 1e-5,
            SchedPerStep = true,
            BatchSize = plan.Batch,
            ValBatchSize = 250,
            WeightDecay = 0.05,
            Smoothing = 0.1,
            DropPath = 0.0,
            ModelEma = true,
            // EMA horizon 1/(1−d) ≈ a tenth of the run: short runs need a short memory (0.992 for the full plan's 1,250 steps).
            ModelEmaDecay = Math.Clamp(1.0 - 10.0 / Math.Max(1, epochs * (plan.TrainImages / plan.Batch)), 0.9, 0.9998),
            Aa = null,
            Reprob = 0,
            Scale = [0.6, 1.0],
            ColorJitter = 0,
            Mean = [0.2860, 0.2860, 0.2860],
            Std = [0.3530, 0.3530, 0.3530],
            LogInterval = 20,
            Seed = seed,
        };
        return c;
    }

    private static JsonObject TrainStage(Stage stage, string outDir, string data, Plan plan, int seed, int workers, Device device, Console2 io)
    {
        string runDir = Path.Combine(outDir, stage.Name);
        string done = Path.Combine(runDir, "done.json");
        if (File.Exists(done))
        {
            io.Err.WriteLine($"demo: {stage.Name} already trained ({done})");
            return JsonNode.Parse(File.ReadAllText(done))!.AsObject();
        }
        var config = BaseConfig(stage.Model, data, plan, stage.Epochs, seed, workers);
        stage.Configure(config);
        bool resume = File.Exists(Trainer.LastCheckpointPath(runDir));
        if (resume) config = TrainSetup.ResumeConfig(runDir, new Dictionary<string, string>());
        io.Err.WriteLine($"demo: training {stage.Name} ({stage.Title}){(resume ? ", resuming" : "")}");
        var bar = new ProgressPrinter(io.Err, ReferenceEquals(io.Err, Console.Error) && !Console.IsErrorRedirected);
        var sw = Stopwatch.StartNew();
        TrainResult result;
        long parameters;
        using (var session = TrainSetup.Create(config, runDir, resume, device, bar, line => io.Err.WriteLine(line)))
        {
            parameters = session.Model.parameters().Sum(p => p.numel());
            result = session.Run();
        }
        bar.Finish();
        var record = new JsonObject
        {
            ["name"] = stage.Name,
            ["model"] = stage.Model,
            ["title"] = stage.Title,
            ["note"] = stage.Note,
            ["params"] = parameters,
            ["epochs"] = result.EpochsDone,
            ["steps"] = result.GlobalStep,
            ["train_images"] = plan.TrainImages,
            ["train_seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 1),
            ["resumed"] = resume,
            ["val_top1"] = result.LastEval?.Top1,
            ["ema_val_top1"] = result.LastEmaEval?.Top1,
            ["weights"] = Path.GetRelativePath(outDir, Path.Combine(runDir, File.Exists(Path.Combine(runDir, "last_ema.safetensors")) ? "last_ema.safetensors" : "last.safetensors")),
        };
        AtomicFile.WriteAllText(done, record.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return record;
    }

    private static void MakeLabels(string outDir, string labels, string data, Plan plan, int seed, Device device, Console2 io)
    {
        if (File.Exists(labels))
        {
            io.Err.WriteLine($"demo: token labels already written ({labels})");
            return;
        }
        string weights = Path.Combine(outDir, "annotator", "last_ema.safetensors");
        if (!File.Exists(weights)) weights = Path.Combine(outDir, "annotator", "last.safetensors");
        io.Err.WriteLine($"demo: writing token labels with the annotator ({weights}) for {plan.TrainImages} training images");
        var loaded = ModelWeights.Load(new ModelRequest(null, weights));
        using var model = loaded.Model;
        model.to(device);
        // The same class-balanced subset the students train on (TrainData uses Subset.Balanced with the run's seed).
        var train = Subset.Balanced(DatasetFactory.Open(data, "train"), plan.TrainImages, seed);
        var transform = new EvalTransform(new EvalTransformOptions(plan.ImgSize, 1.0, Interpolation.Bilinear,
            [0.2860f, 0.2860f, 0.2860f], [0.3530f, 0.3530f, 0.3530f]));
        var sw = Stopwatch.StartNew();
        var last = TimeSpan.Zero;
        var progress = new SyncProgress<LabelProgress>(p =>
        {
            if (p.Done != p.Total && (sw.Elapsed - last).TotalSeconds < 10) return;
            last = sw.Elapsed;
            io.Err.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  labels {p.Done}/{p.Total} ({100.0 * p.Done / Math.Max(1, p.Total):F0}%)"));
        });
        LabelGeneration.Run(new Annotator(model), train, transform, labels, new LabelRunOptions(5, 128, "lvvit_nano (demo annotator)"), device, progress);
    }

    private static void Evaluate(JsonObject run, string outDir, IImageDataset testSet, Plan plan, int workers, Device device)
    {
        if (run["test_top1"] is not null) return;
        var loaded = ModelWeights.Load(new ModelRequest(null, Path.Combine(outDir, run["weights"]!.GetValue<string>())));
        using var model = loaded.Model;
        var loader = DataLoader.ForEval(testSet, new EvalTransformOptions(plan.ImgSize, 1.0, Interpolation.Bilinear,
            [0.2860f, 0.2860f, 0.2860f], [0.3530f, 0.3530f, 0.3530f]), 250, workers);
        var sw = Stopwatch.StartNew();
        var r = Data.Evaluation.Evaluator.Evaluate(model, loader, device);
        run["test_images"] = r.Count;
        run["test_top1"] = Math.Round(100 * r.Top1, 2);
        run["test_top5"] = Math.Round(100 * r.Top5, 2);
        run["test_loss"] = Math.Round(r.MeanLoss, 4);
        run["test_seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 1);
        AtomicFile.WriteAllText(Path.Combine(outDir, run["name"]!.GetValue<string>(), "done.json"), run.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    // ---- pictures ----

    private static Dictionary<string, string> DrawPictures(string outDir, List<JsonObject> runs, string data, string labels, Plan plan, int seed, Device device)
    {
        var pictures = new Dictionary<string, string>();
        // Training curves: validation top-1 per epoch and the train loss per logged step, every run in one chart each.
        var colors = new[] { new SKColor(120, 120, 120), new SKColor(31, 119, 180), new SKColor(214, 39, 40), new SKColor(44, 160, 44), new SKColor(255, 127, 14) };
        var top1 = new List<PlotSeries>();
        var loss = new List<PlotSeries>();
        for (int i = 0; i < runs.Count; i++)
        {
            string name = runs[i]["name"]!.GetValue<string>();
            var records = ReadMetrics(Path.Combine(outDir, name, "metrics.jsonl"));
            var epochs = records.Where(r => r["kind"]?.GetValue<string>() == "epoch" && r["val_top1"] is not null).ToList();
            top1.Add(new PlotSeries(name, epochs.Select(r => r["epoch"]!.GetValue<double>() + 1).ToList(),
                epochs.Select(r => MetricsLog.ToDouble(r["ema_top1"] ?? r["val_top1"]) ?? double.NaN).ToList(), colors[i % colors.Length]));
            var steps = records.Where(r => r["kind"]?.GetValue<string>() == "step" && r["loss"] is not null).ToList();
            double perEpoch = Math.Max(1, plan.TrainImages / plan.Batch);
            loss.Add(new PlotSeries(name, steps.Select(r => r["step"]!.GetValue<double>() / perEpoch).ToList(),
                steps.Select(r => MetricsLog.ToDouble(r["loss"]) ?? double.NaN).ToList(), colors[i % colors.Length]));
        }
        Plots.Save(Path.Combine(outDir, "curves_top1.png"), "validation top-1 (EMA weights), %", "epoch", top1);
        Plots.Save(Path.Combine(outDir, "curves_loss.png"), "training loss", "epoch", loss);
        pictures["curves_top1"] = "curves_top1.png";
        pictures["curves_loss"] = "curves_loss.png";

        // One test image: its token-label map (annotated like the training images), and what the models see.
        var test = DatasetFactory.Open(data, "val");
        int index = Enumerable.Range(0, test.Count).First(i => test.GetLabel(i) == 0); // a T-shirt/top
        var image = test.Load(index);
        var evalTransform = new EvalTransform(new EvalTransformOptions(plan.ImgSize, 1.0, Interpolation.Bilinear,
            [0.2860f, 0.2860f, 0.2860f], [0.3530f, 0.3530f, 0.3530f]));
        var seen = evalTransform.ResizeAndCrop(image);
        var train = Subset.Balanced(DatasetFactory.Open(data, "train"), plan.TrainImages, seed);
        using (var store = LabelStore.Open(labels))
        {
            var sheet = new PanelSheet("token labels: training images and the annotator's dense top-1 labels");
            var panels = new List<Panel>();
            foreach (int i in Enumerable.Range(0, train.Count).Where(i => i % Math.Max(1, train.Count / 6) == 0).Take(6))
            {
                var map = store.Get(train.GetKey(i));
                using var img = Drawing.FromRgb(evalTransform.ResizeAndCrop(train.Load(i)), 2);
                panels.Add(new Panel(train.ClassNames[train.GetLabel(i)], img.Copy()));
                panels.Add(new Panel("labels", LabelGrid(map, train.ClassNames.Count, img.Width)));
            }
            sheet.AddRow("image → its 4×4 token labels (colour = top-1 class, brightness = its probability)", panels);
            sheet.AddRow("classes", Enumerable.Range(0, train.ClassNames.Count).Select(c => new Panel(train.ClassNames[c], Swatch(Drawing.ClassColor(c)))));
            sheet.SavePng(Path.Combine(outDir, "token_labels.png"), maxPerLine: 6);
            pictures["token_labels"] = "token_labels.png";
        }
        foreach (var name in new[] { "t2t_vit", "vit", "lvvit_tl" })
        {
            var run = runs.FirstOrDefault(r => r["name"]!.GetValue<string>() == name);
            if (run is null) continue;
            var loaded = ModelWeights.Load(new ModelRequest(null, Path.Combine(outDir, run["weights"]!.GetValue<string>())));
            using var model = loaded.Model;
            model.to(device);
            Inspection found;
            using (var scope = torch.NewDisposeScope())
                found = ModelInspector.Inspect(model, evalTransform.ToTensor(image).unsqueeze(0).to(device), -1, 8);
            int best = Array.IndexOf(found.Logits, found.Logits.Max());
            using var sheet = VisualizeVerb.Render($"{run["title"]}: test image {index} ({test.ClassNames[test.GetLabel(index)]}) → {test.ClassNames[best]}", seen, found);
            string file = $"features_{name}.png";
            sheet.SavePng(Path.Combine(outDir, file));
            pictures[$"features_{name}"] = file;
        }
        return pictures;
    }

    private static SKBitmap LabelGrid(LabelMap map, int numClasses, int side)
    {
        int cell = Math.Max(1, side / Math.Max(map.Width, map.Height));
        var bmp = new SKBitmap(map.Width * cell, map.Height * cell, SKColorType.Rgba8888, SKAlphaType.Opaque);
        using var canvas = new SKCanvas(bmp);
        using var paint = new SKPaint();
        int hw = map.Height * map.Width;
        for (int p = 0; p < hw; p++)
        {
            int row = p / map.Width, col = p % map.Width;
            double prob = LabelInspection.Top1Probability(map, p, numClasses);
            var c = Drawing.ClassColor(map.Index(0, row, col));
            float f = (float)(0.35 + 0.65 * Math.Clamp(prob, 0, 1));
            paint.Color = new SKColor((byte)(c.Red * f), (byte)(c.Green * f), (byte)(c.Blue * f));
            canvas.DrawRect(col * cell, row * cell, cell, cell, paint);
        }
        return bmp;
    }

    private static SKBitmap Swatch(SKColor color)
    {
        var bmp = new SKBitmap(96, 16, SKColorType.Rgba8888, SKAlphaType.Opaque);
        bmp.Erase(color);
        return bmp;
    }

    private static List<JsonObject> ReadMetrics(string path)
    {
        var list = new List<JsonObject>();
        if (!File.Exists(path)) return list;
        foreach (var line in File.ReadLines(path))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            try
            {
                if (JsonNode.Parse(line) is JsonObject o) list.Add(o);
            }
            catch (JsonException)
            {
                // A torn last line of a killed run: the complete records before it still count.
            }
        }
        return list;
    }

    // ---- report ----

    private static string Table(List<JsonObject> runs)
    {
        var inv = CultureInfo.InvariantCulture;
        var lines = new List<string>
        {
            "| run | model | params | epochs | train time | test top-1 | test top-5 |",
            "|---|---|---:|---:|---:|---:|---:|",
        };
        foreach (var r in runs)
        {
            double secs = r["train_seconds"]!.GetValue<double>();
            lines.Add(string.Create(inv, $"| {r["title"]} | `{r["model"]}` | {r["params"]!.GetValue<long>():N0} | {r["epochs"]} | {secs / 60:F1} min | ") +
                      string.Create(inv, $"{r["test_top1"]?.GetValue<double>():F2} % | {r["test_top5"]?.GetValue<double>():F2} % |"));
        }
        return string.Join('\n', lines);
    }

    private static string Report(List<JsonObject> runs, Dictionary<string, string> pictures, Plan plan, int seed, string data, double minutes, bool quick)
    {
        var inv = CultureInfo.InvariantCulture;
        double Top1(string name) => runs.First(r => r["name"]!.GetValue<string>() == name)["test_top1"]!.GetValue<double>();
        double gain = Top1("lvvit_tl") - Top1("lvvit");
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"# AllTokens demo{(quick ? " (--quick)" : "")}: token labeling and tokens-to-token on Fashion-MNIST");
        sb.AppendLine();
        sb.AppendLine(string.Create(inv, $"Data: `{data}` — {plan.TrainImages:N0} training images (class-balanced subset), {plan.ValImages:N0} validation images for the curves, ") +
                      string.Create(inv, $"{Math.Min(plan.TestImages, 10_000):N0} test images for the table; {plan.ImgSize} px inputs (4×4 tokens); seed {seed}; ") +
                      string.Create(inv, $"{torch.get_num_threads()} torch threads; {minutes:F1} minutes in all."));
        sb.AppendLine();
        sb.AppendLine(Table(runs));
        sb.AppendLine();
        sb.AppendLine(string.Create(inv, $"Token labeling + MixToken versus the same LV-ViT on class labels alone: **{gain:+0.00;-0.00} points** test top-1 at the same budget ") +
                      string.Create(inv, $"({plan.StudentEpochs} epochs). Test figures use the EMA weights at the end of training."));
        sb.AppendLine();
        sb.AppendLine("What each run is:");
        sb.AppendLine();
        foreach (var r in runs) sb.AppendLine($"- **{r["title"]}** (`{r["name"]}/`): {r["note"]}.");
        sb.AppendLine();
        sb.AppendLine("## Training curves");
        sb.AppendLine();
        sb.AppendLine($"![validation top-1]({pictures["curves_top1"]})");
        sb.AppendLine();
        sb.AppendLine($"![training loss]({pictures["curves_loss"]})");
        sb.AppendLine();
        sb.AppendLine("## Token labels");
        sb.AppendLine();
        sb.AppendLine("Each training image gets a location-specific soft label per token, cropped (RoIAlign) out of the annotator's dense map " +
                      "exactly where the augmented crop came from. Below: images and the annotator's top-1 class per token.");
        sb.AppendLine();
        sb.AppendLine($"![token labels]({pictures["token_labels"]})");
        sb.AppendLine();
        sb.AppendLine("## Feature maps and attention");
        sb.AppendLine();
        sb.AppendLine("Tokens reshaped to their grid (the T2T paper's Fig. 2 view) — for T2T-ViT also the 16×16 and 8×8 tokens of its two " +
                      "T2T layers — and the class token's attention to every patch in the last block.");
        foreach (var key in new[] { "features_t2t_vit", "features_vit", "features_lvvit_tl" })
            if (pictures.TryGetValue(key, out var file))
            {
                sb.AppendLine();
                sb.AppendLine($"![{key}]({file})");
            }
        sb.AppendLine();
        sb.AppendLine("Reproduce: `./alltokens demo" + (quick ? " --quick" : "") + $" --seed {seed}` (each run's config is in its folder's config.yaml).");
        return sb.ToString();
    }
}
