using System.Globalization;
using AllTokens.Distributed;
using AllTokens.Training;

namespace AllTokens.Cli;

public static class TrainVerb
{
    /// <summary>Flags that map to one recipe key each (flag → key).</summary>
    private static readonly (string Flag, string Key)[] KeyFlags =
    [
        ("model", "model"), ("data", "data"), ("epochs", "epochs"), ("batch", "batch_size"), ("lr", "lr"), ("seed", "seed"),
        ("init-from", "init_from"), ("img-size", "img_size"), ("num-classes", "num_classes"), ("workers", "workers"),
        ("subset", "subset"), ("val-subset", "val_subset"), ("grad-accum", "grad_accum"), ("warmup-epochs", "warmup_epochs"),
        ("cooldown-epochs", "cooldown_epochs"), ("opt", "opt"), ("weight-decay", "weight_decay"), ("clip-grad", "clip_grad"),
        ("token-labels", "token_label_data"), ("teacher", "teacher"), ("teacher-weights", "teacher_weights"), ("dense-weight", "dense_weight"),
        ("distributed", "distributed"),
    ];

    public static readonly Verb Verb = new(new VerbSpec("train", "train a model (timm recipes: AdamW/SGD, cosine lr, EMA, mixup; resumable)",
        "--model M --data PATH [--recipe FILE] [--epochs E] [--batch B] [--lr LR] [--seed S] [--init-from W] [--img-size R] [--num-classes N] [--out RUN_DIR] [--resume] [--bf16] [--set KEY=VALUE]...",
    [
        new OptionSpec("model", "M", "registered model name (or the recipe's 'model')"),
        new OptionSpec("data", "PATH", "dataset folder: ImageFolder (train/, val/), MNIST-style IDX or CIFAR-10/100 binary"),
        new OptionSpec("strict-data", null, "stop at a corrupt or unreadable image instead of skipping it with a warning"),
        new OptionSpec("recipe", "FILE", "YAML recipe (recipes/*.yaml); flags override its values"),
        new OptionSpec("epochs", "E", "cosine epochs (cooldown epochs are added on top)"),
        new OptionSpec("batch", "B", "images per micro-batch (batch_size)"),
        new OptionSpec("lr", "LR", "base learning rate"),
        new OptionSpec("seed", "S", "random seed"),
        new OptionSpec("init-from", "W", "start from these weights (pos-embed resized, head re-initialised on a class-count change)"),
        new OptionSpec("img-size", "R", "input resolution"),
        new OptionSpec("num-classes", "N", "classifier width (default: the dataset's classes)"),
        new OptionSpec("out", "RUN_DIR", "run folder", "runs/<model>-<time>"),
        new OptionSpec("resume", null, "continue the run in --out from its last checkpoint"),
        new OptionSpec("bf16", null, "bf16 compute with fp32 master weights and optimizer state"),
        new OptionSpec("workers", "W", "loader worker threads"),
        new OptionSpec("subset", "N", "train on a class-balanced subset of N images"),
        new OptionSpec("val-subset", "N", "validate on a class-balanced subset of N images"),
        new OptionSpec("grad-accum", "K", "micro-batches per optimizer step"),
        new OptionSpec("warmup-epochs", "E", "linear warmup epochs"),
        new OptionSpec("cooldown-epochs", "E", "epochs at min_lr after the cosine"),
        new OptionSpec("opt", "adamw|sgd", "optimizer"),
        new OptionSpec("weight-decay", "WD", "weight decay"),
        new OptionSpec("clip-grad", "NORM", "clip gradients to this global L2 norm"),
        new OptionSpec("distributed", "auto|mpi|none", "data parallelism over Open MPI ranks (auto: when launched by mpirun)"),
        new OptionSpec("token-labels", "LABELS", "train with token labels from this store (`alltokens label`; sets token_label)"),
        new OptionSpec("teacher", "M", "train with token labels computed online by this annotator model (sets token_label)"),
        new OptionSpec("teacher-weights", "F", "weights of --teacher"),
        new OptionSpec("dense-weight", "BETA", "weight of the mean token loss (paper 0.5; official recipes 1.0)"),
        new OptionSpec("set", "KEY=VALUE", "set any recipe key (repeatable), e.g. --set model_ema=true", Repeatable: true),
        new OptionSpec("print-config", null, "print the effective config and exit"),
        new OptionSpec("keys", null, "list every recipe key with its default and exit"),
        CliCommon.DeviceOption,
        CliCommon.ThreadsOption,
    ], details: "Recipes: recipes/*.yaml (each cites its source). The run folder gets config.yaml, metrics.jsonl, loss/accuracy/lr plots,\n" +
                "checkpoints/last.ckpt (single-file, atomic; --resume reads it), last.safetensors and best.safetensors (load with `predict`).\n" +
                "Data parallel: mpirun -np N ./alltokens train ... (batch is per rank; the global batch is N × batch; rank 0 writes the run folder)."), Run);

    private static int Run(ParsedArgs a, Console2 io)
    {
        try
        {
            return RunChecked(a, io);
        }
        catch (RecipeException e)
        {
            throw new UsageException(e.Message); // a bad recipe key or value is a usage error (exit 2)
        }
    }

    private static int RunChecked(ParsedArgs a, Console2 io)
    {
        if (a.Flag("keys"))
        {
            var defaults = new TrainConfig();
            foreach (var k in TrainConfig.Keys) io.Out.WriteLine($"{k.Name}: {TrainConfig.Format(k.Property.GetValue(defaults))}");
            return 0;
        }
        CliCommon.ApplyThreads(a);
        var device = CliCommon.ResolveDevice(a);
        var overrides = Overrides(a);
        bool resume = a.Flag("resume");
        TrainConfig config;
        string runDir;
        if (resume)
        {
            if (a.String("recipe") is not null) throw new UsageException("--resume continues with the run's saved config; drop --recipe");
            runDir = a.String("out") is { } o && !o.StartsWith("runs/<", StringComparison.Ordinal) ? o : throw new UsageException("--resume needs --out RUN_DIR");
            config = TrainSetup.ResumeConfig(runDir, overrides);
        }
        else
        {
            config = new TrainConfig();
            if (a.String("recipe") is { } recipe) config.ApplyFile(recipe);
            foreach (var (k, v) in overrides) config.Set(k, v, "command line");
            runDir = a.String("out") is { } o && !o.StartsWith("runs/<", StringComparison.Ordinal) ? o
                : Path.Combine("runs", $"{config.Model ?? "model"}-{DateTime.Now.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture)}");
        }
        config.Validate(a.String("recipe") ?? "config");
        if (a.Flag("print-config"))
        {
            io.Out.Write(config.ToYaml());
            return 0;
        }
        IProcessGroup group;
        try
        {
            group = ProcessGroups.Create(config.Distributed);
        }
        catch (MpiUnavailableException e)
        {
            io.Err.WriteLine($"alltokens train: error: distributed: {config.Distributed}: {e.Message}");
            return 1;
        }
        using (group)
        {
            if (group.Size == 1) return RunSession(config, runDir, resume, device, group, io);
            // Only rank 0 prints; the others stay silent except for their errors and skipped files.
            var realErr = io.Err;
            var quiet = group.Rank == 0 ? io : new Console2(TextWriter.Null, TextWriter.Null);
            try
            {
                return RunSession(config, runDir, resume, device, group, quiet, group.Rank == 0 ? null : line => realErr.WriteLine($"[rank {group.Rank}] {line}"));
            }
            catch (PeerFailureException e)
            {
                if (group.Rank == 0) realErr.WriteLine($"alltokens train: error: {e.Message}");
                return 1;
            }
            catch (Exception e) when (e is not UsageException)
            {
                realErr.WriteLine($"alltokens train: rank {group.Rank}: error: {e.Message}");
                if (Environment.GetEnvironmentVariable("ALLTOKENS_DEBUG") == "1") realErr.WriteLine(e);
                if (Collective.IsAgreed(e)) return 1; // every rank stopped at the same point: finalize cleanly
                // The other ranks may be waiting in a collective for this one: end the whole job.
                realErr.Flush();
                group.Abort(1);
                return 1;
            }
        }
    }

    private static int RunSession(TrainConfig config, string runDir, bool resume, TorchSharp.torch.Device? device, IProcessGroup group, Console2 io,
        Action<string>? warn = null)
    {
        var bar = new ProgressPrinter(io.Err, IsTerminal(io.Err));
        using var session = TrainSetup.Create(config, runDir, resume, device, bar, warn ?? (line => io.Err.WriteLine(line)), group);
        if (session.InitReport is not null) io.Err.WriteLine(session.InitReport.ToString());
        int global = session.Trainer.GlobalBatchSize;
        io.Err.WriteLine($"training {config.Model} on {session.Data.Train.Dataset.Source}: {session.Data.Train.BatchesPerEpoch * global} of {session.Data.Train.Dataset.Count} images, " +
                         $"{session.Data.Train.BatchesPerEpoch} batches of {global}" + (group.Size > 1 ? $" ({group.Size} ranks × {config.BatchSize})" : "") +
                         $" per epoch, {config.Epochs}+{config.CooldownEpochs} epochs → {runDir}");
        using var cancel = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            cancel.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            var result = session.Run(cancel.Token);
            bar.Finish();
            var inv = CultureInfo.InvariantCulture;
            string ema = result.LastEmaEval is { } e ? string.Create(inv, $", EMA top-1 {e.Top1:F2}") : "";
            if (result.LastEval is null) // no validation split: nothing to rank epochs by, so no best.safetensors
                io.Out.WriteLine($"done: {result.EpochsDone} epochs, {result.GlobalStep} steps; no validation set; weights: {Path.Combine(runDir, "last.safetensors")}");
            else
                io.Out.WriteLine(string.Create(inv, $"done: {result.EpochsDone} epochs, {result.GlobalStep} steps; val top-1 {result.LastEval.Top1:F2}") + ema +
                                 string.Create(inv, $"; best {result.BestMetric:F2} (epoch {result.BestEpoch}); weights: {Path.Combine(runDir, "best.safetensors")}"));
            return 0;
        }
        catch (OperationCanceledException)
        {
            bar.Finish();
            io.Err.WriteLine($"alltokens train: interrupted; continue with: alltokens train --resume --out {runDir}");
            return 130;
        }
        catch (NonFiniteLossException e)
        {
            bar.Finish();
            io.Err.WriteLine($"alltokens train: error: {e.Message}");
            return 1;
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    private static Dictionary<string, string> Overrides(ParsedArgs a)
    {
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (flag, key) in KeyFlags)
            if (a.String(flag) is { } v && a.Has(flag)) d[key] = v;
        if (a.Flag("bf16")) d["bf16"] = "true";
        if (a.Flag("strict-data")) d["strict_data"] = "true";
        if (a.Has("token-labels") || a.Has("teacher")) d["token_label"] = "true";
        foreach (var kv in a.All("set"))
        {
            int eq = kv.IndexOf('=');
            if (eq <= 0) throw new UsageException($"--set expects KEY=VALUE, got '{kv}'");
            d[kv[..eq].Trim()] = kv[(eq + 1)..];
        }
        return d;
    }

    private static bool IsTerminal(TextWriter w) => ReferenceEquals(w, Console.Error) && !Console.IsErrorRedirected;
}

/// <summary>Draws trainer progress: one redrawn line on a terminal (\r), plain lines otherwise (CI logs).</summary>
internal sealed class ProgressPrinter(TextWriter w, bool tty) : IProgress<TrainProgress>
{
    private DateTime lastPlain = DateTime.MinValue;
    private bool open;

    public void Report(TrainProgress p)
    {
        switch (p.Kind)
        {
            case TrainProgressKind.Message:
                Line(p.Message ?? "");
                break;
            case TrainProgressKind.Epoch:
            {
                var r = p.Record!;
                string F(string k) => MetricsLog.ToDouble(r[k]) is { } v ? v.ToString("F2", CultureInfo.InvariantCulture) : "-";
                Line($"epoch {p.Epoch + 1}/{p.TotalEpochs}: train loss {F("train_loss")}, val top-1 {F("val_top1")} top-5 {F("val_top5")} loss {F("val_loss")}" +
                     (r["ema_top1"] is not null ? $", EMA top-1 {F("ema_top1")}" : "") + $", best {F("best_top1")}");
                break;
            }
            default:
            {
                string text = string.Create(CultureInfo.InvariantCulture,
                    $"epoch {p.Epoch + 1}/{p.TotalEpochs} {Bar(p.Batch, p.BatchesPerEpoch)} {p.Batch}/{p.BatchesPerEpoch} step {p.GlobalStep} loss {p.Loss:F4} lr {p.Lr:E2} {p.ImagesPerSecond:F0} img/s ETA {Eta(p.Eta)}");
                if (tty)
                {
                    w.Write("\r" + text.PadRight(Console.WindowWidth > 0 ? Math.Min(Console.WindowWidth - 1, 160) : 120));
                    open = true;
                }
                else if ((DateTime.UtcNow - lastPlain).TotalSeconds >= 10 || p.Batch == p.BatchesPerEpoch)
                {
                    w.WriteLine(text);
                    lastPlain = DateTime.UtcNow;
                }
                break;
            }
        }
    }

    private void Line(string s)
    {
        if (open) w.WriteLine();
        open = false;
        w.WriteLine(s);
    }

    public void Finish()
    {
        if (open) w.WriteLine();
        open = false;
    }

    private static string Bar(int done, int total)
    {
        const int width = 20;
        int filled = total > 0 ? (int)((long)done * width / total) : 0;
        return "[" + new string('#', filled) + new string('.', width - filled) + "]";
    }

    private static string Eta(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:D2}m" : $"{t.Minutes}m{t.Seconds:D2}s";
}
