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

    public static void ApplyThreads(ParsedArgs a)
    {
        int? t = a.Int("threads", 1, 1024);
        if (t is not null) torch.set_num_threads(t.Value);
    }

    /// <summary>timm eval preprocessing for a model: --crop-pct and --interpolation override the model's defaults.</summary>
    public static EvalTransform EvalTransformFor(ParsedArgs a, Models.ModelInfo info, int imgSize)
    {
        string interp = a.String("interpolation") ?? info.Defaults.Interpolation;
        return new EvalTransform(new EvalTransformOptions(
            ImgSize: imgSize,
            CropPct: a.Double("crop-pct", 0, 1.0, minExclusive: true) ?? info.Defaults.CropPct,
            Interpolation: interp switch
            {
                "bicubic" => Interpolation.Bicubic,
                "bilinear" => Interpolation.Bilinear,
                _ => throw new UsageException($"--interpolation must be bicubic or bilinear, got '{interp}'"),
            },
            Mean: info.Defaults.Mean, Std: info.Defaults.Std));
    }

    public static OptionSpec CropPctOption => new("crop-pct", "P", "resize the shorter side to floor(R/P), then centre-crop R (default: the model's)");
    public static OptionSpec InterpolationOption => new("interpolation", "I", "bicubic or bilinear resize (default: the model's)");

    public static void PrintReport(LoadReport? report, Console2 io)
    {
        if (report is null) return;
        io.Err.WriteLine(report.ToString());
    }
}
