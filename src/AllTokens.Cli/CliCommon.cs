using System.Globalization;
using AllTokens.Checkpoints;
using AllTokens.Data.Transforms;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Cli;

/// <summary>Options and helpers several verbs share.</summary>
public static class CliCommon
{
    public static OptionSpec DeviceOption => new("device", "cpu|cuda", "where to run", "cpu");
    public static OptionSpec ThreadsOption => new("threads", "T", "intra-op threads (default: all cores)");

    public static Device ResolveDevice(ParsedArgs a)
    {
        string d = a.Choice("device", "cpu", "cuda");
        if (d == "cuda" && !torch.cuda.is_available())
            throw new UsageException("--device cuda: no CUDA device is available to this build (it ships libtorch-cpu); " +
                                     "reference a libtorch-cuda package and run on a machine with an NVIDIA GPU");
        return d == "cuda" ? torch.CUDA : torch.CPU;
    }

    /// <summary>libtorch's thread count and this thread's denormal setting before <see cref="ApplyThreads"/> changed them.</summary>
    [ThreadStatic] private static (int Threads, bool? Flush)? before;

    /// <summary>--threads for libtorch, and denormals flushed on this thread and its team; <see cref="RestoreThreads"/> undoes both.</summary>
    public static void ApplyThreads(ParsedArgs a)
    {
        int? t = a.Int("threads", 1, 1024);
        before ??= (torch.get_num_threads(), Layers.Denormals.SetOnThisThread);
        if (t is not null) torch.set_num_threads(t.Value);
        Layers.Denormals.Flush();
    }

    /// <summary>
    /// Puts back what <see cref="ApplyThreads"/> changed, when it ran on this thread: Program.Run calls it as a verb ends,
    /// so an in-process caller (a test, a host program) gets the process as it was. Verbs that never touch libtorch leave
    /// nothing to undo (and <c>doctor</c> can still report a libtorch that does not load).
    /// </summary>
    public static void RestoreThreads()
    {
        if (before is not { } b) return;
        before = null;
        if (torch.get_num_threads() != b.Threads) torch.set_num_threads(b.Threads);
        if (Layers.Denormals.SetOnThisThread != b.Flush) Layers.Denormals.Flush(b.Flush ?? false);
    }

    /// <summary>
    /// The eval preprocessing a loaded model expects: what training wrote into its weights (mean/std, crop_pct,
    /// interpolation) when present, else the registry's defaults for the model. Says so on stderr when the weights decide.
    /// </summary>
    public static Models.PretrainedDefaults PreprocessingFor(Checkpoints.LoadedModel loaded, Console2 io)
    {
        var defaults = Models.ModelRegistry.Get(loaded.Name).Defaults;
        if (loaded.Metadata?.Preprocess is not { } p) return defaults;
        io.Err.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"preprocessing from the weights: mean [{string.Join(", ", p.Mean)}], std [{string.Join(", ", p.Std)}], crop_pct {p.CropPct}, {p.Interpolation}"));
        return p.Apply(defaults);
    }

    /// <summary>timm eval preprocessing for a model: --crop-pct and --interpolation override <paramref name="defaults"/>.</summary>
    public static EvalTransform EvalTransformFor(ParsedArgs a, Models.PretrainedDefaults defaults, int imgSize) =>
        new(EvalOptionsFor(a, defaults, imgSize));

    public static EvalTransformOptions EvalOptionsFor(ParsedArgs a, Models.PretrainedDefaults defaults, int imgSize)
    {
        return new EvalTransformOptions(
            ImgSize: imgSize,
            CropPct: a.Double("crop-pct", 0, 1.0, minExclusive: true) ?? defaults.CropPct,
            Interpolation: ParseInterpolation(a.String("interpolation") ?? defaults.Interpolation),
            Mean: defaults.Mean, Std: defaults.Std);
    }

    /// <summary>An eval resize filter by name (--interpolation, a model's default, the weights' preprocessing).</summary>
    public static Interpolation ParseInterpolation(string name)
    {
        try
        {
            return EvalInterpolation.Parse(name);
        }
        catch (ArgumentException)
        {
            throw new UsageException($"--interpolation must be bicubic or bilinear, got '{name}'");
        }
    }

    public static OptionSpec CropPctOption => new("crop-pct", "P", "resize the shorter side to floor(R/P), then centre-crop R (default: the model's)");
    public static OptionSpec InterpolationOption => new("interpolation", "I", "bicubic or bilinear resize (default: the model's)");

    public static void PrintReport(LoadReport? report, Console2 io)
    {
        if (report is null) return;
        io.Err.WriteLine(report.ToString());
    }
}
