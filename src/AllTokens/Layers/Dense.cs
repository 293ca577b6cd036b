using System.Collections.Concurrent;
using System.Globalization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// y = x·Wᵀ + b for a <see cref="Linear"/>'s parameters, computed on a CPU in fp32 as a 1×1 convolution over a
/// channels-last view of the tokens: x [P, N, K] is viewed (no copy) as the image [P, K, 1, N] with NHWC strides, so
/// libtorch hands it to oneDNN, whose AVX-512 kernels beat the GEMM libtorch's bundled MKL picks on AMD CPUs, and the
/// NHWC output [P, C, 1, N] is already y [P, N, C]. Forward + backward of an lvvit_t block measured ~10 % faster
/// (its MLP ~16 %) on 2 Zen 4 cores, paired runs (BENCHMARKS.md). bf16 takes it too, in inference and training, on
/// the CPUs where it wins (see <see cref="Bf16Convolution"/> and <see cref="TakesConvPath(Linear, Tensor)"/>); other
/// devices and dtypes and inputs with few rows use the plain linear.
/// Same maths, other float rounding; <c>ALLTOKENS_LINEAR=plain</c> turns it off for comparisons.
/// </summary>
public static class Dense
{
    public static bool UseConvKernel { get; set; } = SpeedSwitch.On("ALLTOKENS_LINEAR", "plain");

    /// <summary>bf16 training through the convolution too (<see cref="TakesConvPath(Linear, Tensor)"/>); comparisons.</summary>
    internal static bool Bf16Training { get; set; } = true;

    /// <summary>
    /// Whether bf16 linears take the convolution at all. Which of oneDNN's two bf16 kernels wins depends on the core:
    /// on Zen 4 the convolution (session 13: t2t_vit_7 forward + backward ×1.04, see <see cref="TakesConvPath(Tensor, Tensor)"/>),
    /// on Zen 5 libtorch's matmul (oneDNN's brgemm matmul) by far: forward + backward of t2t_vit_7's linears at batch 8
    /// (fp32 [8, 197, 256] → 768 and the like, and the T2T module's [8, 3136, 147] → 192, [8, 784, 576] → 192), 21
    /// alternating reps: matmul 0.68–0.84 of the convolution's time, level only at [8, 3136, 64] → 64 (0.98); forward
    /// alone 0.72–0.80. On by default except on AMD family 1Ah and later (<see cref="CpuModel"/>);
    /// <c>ALLTOKENS_BF16_LINEAR=conv</c> or <c>=matmul</c> decides instead. fp32 keeps the convolution on both (its matmul
    /// is MKL's AVX2 sgemm on AMD CPUs: 1.6× slower on Zen 5).
    /// </summary>
    internal static bool Bf16Convolution { get; set; } = DefaultBf16Convolution(Environment.GetEnvironmentVariable("ALLTOKENS_BF16_LINEAR"), CpuModel.IsAmdZen5OrLater);

    internal static bool DefaultBf16Convolution(string? setting, bool zen5OrLater) => setting?.Trim().ToLowerInvariant() switch
    {
        "conv" => true,
        "matmul" => false,
        _ => !zen5OrLater,
    };

    /// <summary>Where bf16 linears run on a CPU, for reports: "convolution" or "matmul".</summary>
    public static string Bf16Path => UseConvKernel && Bf16Convolution ? "convolution" : "matmul";

    /// <summary>
    /// Multiply-adds (rows × in × out) from which bf16 training takes the convolution; below, its per-call cost (weight
    /// reorders, the primitive's setup) outweighs what it saves: t2t_vit_nano at 32 px, batch 64 (linears of 2–58 M
    /// multiply-adds) ran bf16 forward + backward ×0.81 slower with all its linears on the convolution, ×0.96 from
    /// 1,024 rows, level with this bound.
    /// </summary>
    internal static long Bf16TrainingMinMacs { get; set; } = 1L << 25;

    /// <summary>
    /// Multiply-adds (rows × in × out) from which the convolution pays at all. Below, libtorch's matmul is faster: the
    /// 32-px t2t_vit_nano (batch 64; linears of 2–58 M multiply-adds) ran fp32 forward + backward ×0.86 slower with all
    /// its linears on the convolution, level with this bound (session 13). t2t_vit_7's and lvvit_t's linears at batch 8
    /// are all above it.
    /// </summary>
    public const long MinMacs = 1L << 24;

    /// <summary>Token rows below which the plain GEMM is kept (a head on [B, D], say).</summary>
    public const long MinRows = 64;

    /// <summary>A head that is a <see cref="Linear"/> or an Identity (no classes).</summary>
    public static Tensor Forward(nn.Module<Tensor, Tensor> module, Tensor x) => module is Linear l ? Forward(l, x) : module.call(x);

    public static Tensor Forward(Linear linear, Tensor x)
    {
        Probe?.Invoke(linear, x);
        return TakesSoundConvolution(linear.weight!, linear.bias, x) ? AsConvolution(linear, x) : linear.call(x);
    }

    /// <summary>y = x·Wᵀ + b for a weight [C, K] and bias that are not a module's own (Layers/NormLinear's folded ones).</summary>
    public static Tensor Forward(Tensor x, Tensor weight, Tensor? bias) =>
        TakesSoundConvolution(weight, bias, x) ? AsConvolution(weight, bias, x) : nn.functional.linear(x, weight, bias);

    /// <summary>
    /// Check each shape's convolution against the plain linear before using it (<c>ALLTOKENS_CONV_CHECK=off</c>: trust
    /// it). oneDNN's 1×1 convolution is not right everywhere: on a 2-core Zen 5 VM (AMD family 1Ah, whose CPUID reports
    /// no cache topology) the fp32 forward kernel, with its weight blocked by 48 output channels, wrote wrong values for
    /// 2 threads at [B ≥ 2, 197, 256] → 512 (t2t_vit_7's MLP), [B, 196, 384] → 1000 (an LV-ViT aux head) and any
    /// output width of 33–45 or 65–77, and for 1 thread from batch 16; on Zen 4 every shape was right. The check costs one
    /// forward (and, with autograd, one backward) of both paths the first time a shape comes; a shape that disagrees
    /// keeps the plain linear, said once on stderr.
    /// </summary>
    public static bool CheckConvolution { get; set; } = SpeedSwitch.On("ALLTOKENS_CONV_CHECK", "off");

    /// <summary>What decides whether a convolution's values hold: the kernel oneDNN picks depends on all of it.</summary>
    internal readonly record struct ConvShape(ScalarType DType, long Images, long Tokens, long InFeatures, long OutFeatures, bool Bias,
        bool Gradient, int Threads)
    {
        public override string ToString() => string.Create(CultureInfo.InvariantCulture,
            $"[{Images}, {Tokens}, {InFeatures}] → {OutFeatures}{(Bias ? "" : " without bias")} ({DType switch { ScalarType.BFloat16 => "bf16", ScalarType.Float32 => "fp32", _ => DType.ToString().ToLowerInvariant() }}{(Gradient ? ", with gradients" : "")}, {Threads} thread{(Threads == 1 ? "" : "s")})");
    }

    private static readonly ConcurrentDictionary<ConvShape, bool> soundness = new();

    /// <summary>The shapes checked so far in this process and whether the convolution agreed with the linear.</summary>
    internal static IReadOnlyDictionary<ConvShape, bool> CheckedShapes => soundness;

    /// <summary>The convolution the check runs (tests put a wrong one here to see the fallback).</summary>
    internal static Func<Tensor, Tensor?, Tensor, Tensor> CheckedConvolution { get; set; } = AsConvolution;

    internal static void ForgetCheckedShapes() => soundness.Clear();

    internal static ConvShape ShapeOf(Tensor weight, Tensor? bias, Tensor x)
    {
        long k = x.shape[^1], n = x.dim() >= 2 ? x.shape[^2] : 1;
        bool gradient = torch.is_grad_enabled() && (x.requires_grad || weight.requires_grad || bias?.requires_grad == true);
        return new ConvShape(x.dtype, x.numel() / Math.Max(1, k * n), n, k, weight.shape[0], bias is not null, gradient, torch.get_num_threads());
    }

    /// <summary>
    /// Whether a product of these dimensions was checked in this process (same dtype, autograd and thread count) and its
    /// convolution found wrong: a caller can then skip building an input only the convolution would have used.
    /// </summary>
    internal static bool KnownUnsound(ScalarType dtype, long images, long tokens, long inFeatures, long outFeatures, bool bias, bool gradient) =>
        UseConvKernel && CheckConvolution
        && soundness.TryGetValue(new ConvShape(dtype, images, tokens, inFeatures, outFeatures, bias, gradient, torch.get_num_threads()), out bool sound)
        && !sound;

    /// <summary>Whether the Forward methods run this product as the (checked) convolution.</summary>
    internal static bool TakesSoundConvolution(Tensor weight, Tensor? bias, Tensor x) =>
        UseConvKernel && TakesConvPath(weight, x) && IsSound(weight, bias, x);

    private static bool IsSound(Tensor weight, Tensor? bias, Tensor x)
    {
        if (!CheckConvolution) return true;
        var shape = ShapeOf(weight, bias, x);
        if (soundness.TryGetValue(shape, out bool sound)) return sound;
        if (Agrees(weight, bias, x, shape.Gradient) is not { } agrees) return true; // not finite: decide on a later call
        if (soundness.TryAdd(shape, agrees) && !agrees)
            Console.Error.WriteLine($"alltokens: oneDNN's 1×1 convolution gave wrong values for a linear of {shape} on this CPU ({CpuModel.Describe()}); that linear runs as a plain matmul");
        return agrees;
    }

    /// <summary>
    /// Whether the convolution gives the plain linear's output (and, with <paramref name="gradient"/>, its input, weight
    /// and bias gradients for the plain output as the incoming gradient: no random numbers drawn) within float rounding:
    /// 10⁻³ of the largest value in fp32, 1/32 in bf16 (both paths round once to bf16; a broken kernel is off by the
    /// values' own size). Null when the plain results are not all finite (nothing to compare).
    /// </summary>
    internal static bool? Agrees(Tensor weight, Tensor? bias, Tensor x, bool gradient)
    {
        using var scope = torch.NewDisposeScope();
        var conv = CheckedConvolution;
        if (!gradient)
        {
            using var noGrad = torch.no_grad();
            return Close(nn.functional.linear(x, weight, bias), conv(weight, bias, x));
        }
        using var withGrad = torch.enable_grad();
        var xd = x.detach().requires_grad_(true);
        var wd = weight.detach().requires_grad_(true);
        var bd = bias?.detach().requires_grad_(true);
        Tensor[] inputs = bd is null ? [xd, wd] : [xd, wd, bd];
        var plain = nn.functional.linear(xd, wd, bd);
        var viaConv = conv(wd, bd, xd);
        var upstream = plain.detach();
        var plainGrads = torch.autograd.grad([plain], inputs, [upstream]);
        var convGrads = torch.autograd.grad([viaConv], inputs, [upstream]);
        bool? all = Close(plain, viaConv);
        for (int i = 0; i < inputs.Length && all != false; i++)
            all = Close(plainGrads[i], convGrads[i]) is not { } c ? null : all is null ? null : c;
        return all;
    }

    private static bool? Close(Tensor expected, Tensor actual)
    {
        if (!expected.shape.SequenceEqual(actual.shape)) return false;
        var e = expected.detach().to(ScalarType.Float32);
        double scale = e.abs().max().item<float>();
        if (!double.IsFinite(scale)) return null;
        double err = (actual.detach().to(ScalarType.Float32) - e).abs().max().item<float>();
        double tol = expected.dtype == ScalarType.BFloat16 ? 1.0 / 32 : 1e-3;
        return err <= tol * scale + 1e-6; // false for NaN too
    }

    /// <summary>
    /// Sees every linear called here with its input (the convolution path skips the module's forward hooks);
    /// Training.StepBreakdown sets it while it captures each part's input.
    /// </summary>
    internal static Action<Linear, Tensor>? Probe { get; set; }

    /// <summary>
    /// Whether <see cref="AsConvolution"/> applies and pays: on a CPU with ≥ <see cref="MinRows"/> rows and ≥
    /// <see cref="MinMacs"/> multiply-adds, fp32 and bf16 (bf16 training from <see cref="Bf16TrainingMinMacs"/>; bf16
    /// only where <see cref="Bf16Convolution"/>). bf16 linears would run in oneDNN anyway, but as a matmul whose bias is
    /// a separate pass over the output, and in training a bias gradient summed by libtorch's slow bf16 column reduction;
    /// the convolution adds the bias in its own kernel and sums its gradient inside the weight-gradient kernel: 5–10 %
    /// faster forward on lvvit_t's linears on Zen 4; in training (session 13) t2t_vit_7's T2T module forward + backward
    /// ×1.08, a block ×1.05, whole forward + backward ×1.04 (lvvit_t ×1.015). Session 9 had found the two level in
    /// training, before the step's other changes (BENCHMARKS.md). Whether the kernel's values hold is checked apart
    /// (<see cref="CheckConvolution"/>).
    /// </summary>
    internal static bool TakesConvPath(Linear linear, Tensor x) => TakesConvPath(linear.weight!, x);

    private static bool TakesConvPath(Tensor w, Tensor x)
    {
        if (x.dim() < 2 || x.device_type != DeviceType.CPU || x.dtype != w.dtype) return false;
        long inFeatures = w.shape[1], rows = x.numel() / Math.Max(1, inFeatures);
        long macs = rows * inFeatures * w.shape[0];
        bool dtypeTakes = x.dtype == ScalarType.Float32
            || (x.dtype == ScalarType.BFloat16 && Bf16Convolution && (!torch.is_grad_enabled() || (Bf16Training && macs >= Bf16TrainingMinMacs)));
        return dtypeTakes && x.shape[^1] == inFeatures && rows >= MinRows && macs >= MinMacs;
    }

    /// <summary>The linear as a 1×1 convolution over [P, K, 1, N] (any input of shape [..., N, K]).</summary>
    internal static Tensor AsConvolution(Linear linear, Tensor x) => AsConvolution(linear.weight!, linear.bias, x);

    private static Tensor AsConvolution(Tensor weight, Tensor? bias, Tensor x)
    {
        long k = x.shape[^1], n = x.dim() >= 2 ? x.shape[^2] : 1;
        long p = x.numel() / Math.Max(1, k * n);
        long c = weight.shape[0];
        var outShape = x.shape.ToArray();
        outShape[^1] = c;
        using var image = x.reshape(p, 1, n, k).permute(0, 3, 1, 2);            // [P, K, 1, N], NHWC strides
        using var kernel = weight.view(c, k, 1, 1);
        using var y = nn.functional.conv2d(image, kernel, bias);                // [P, C, 1, N], NHWC
        return y.permute(0, 2, 3, 1).reshape(outShape);
    }
}
