using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// y = x·Wᵀ + b for a <see cref="Linear"/>'s parameters, computed on a CPU in fp32 as a 1×1 convolution over a
/// channels-last view of the tokens: x [P, N, K] is viewed (no copy) as the image [P, K, 1, N] with NHWC strides, so
/// libtorch hands it to oneDNN, whose AVX-512 kernels beat the GEMM libtorch's bundled MKL picks on AMD CPUs, and the
/// NHWC output [P, C, 1, N] is already y [P, N, C]. Forward + backward of an lvvit_t block measured ~10 % faster
/// (its MLP ~16 %) on 2 Zen 4 cores, paired runs (BENCHMARKS.md). bf16 takes it too, in inference and training (see
/// <see cref="TakesConvPath(Linear, Tensor)"/>); other devices and dtypes and inputs with few rows use the plain linear.
/// Same maths, other float rounding; <c>ALLTOKENS_LINEAR=plain</c> turns it off for comparisons.
/// </summary>
public static class Dense
{
    public static bool UseConvKernel { get; set; } = SpeedSwitch.On("ALLTOKENS_LINEAR", "plain");

    /// <summary>bf16 training through the convolution too (<see cref="TakesConvPath(Linear, Tensor)"/>); comparisons.</summary>
    internal static bool Bf16Training { get; set; } = true;

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
        return UseConvKernel && TakesConvPath(linear, x) ? AsConvolution(linear, x) : linear.call(x);
    }

    /// <summary>y = x·Wᵀ + b for a weight [C, K] and bias that are not a module's own (Layers/NormLinear's folded ones).</summary>
    public static Tensor Forward(Tensor x, Tensor weight, Tensor? bias) =>
        UseConvKernel && TakesConvPath(weight, x) ? AsConvolution(weight, bias, x) : nn.functional.linear(x, weight, bias);

    /// <summary>
    /// Sees every linear called here with its input (the convolution path skips the module's forward hooks);
    /// Training.StepBreakdown sets it while it captures each part's input.
    /// </summary>
    internal static Action<Linear, Tensor>? Probe { get; set; }

    /// <summary>
    /// Whether <see cref="AsConvolution"/> applies and pays: on a CPU with ≥ <see cref="MinRows"/> rows and ≥
    /// <see cref="MinMacs"/> multiply-adds, fp32 and bf16 (bf16 training from <see cref="Bf16TrainingMinMacs"/>).
    /// bf16 linears would run in oneDNN anyway, but as a matmul whose bias is a separate pass over the output, and in
    /// training a bias gradient summed by libtorch's slow bf16 column reduction; the convolution adds the bias in its
    /// own kernel and sums its gradient inside the weight-gradient kernel: 5–10 % faster forward on lvvit_t's linears;
    /// in training (session 13) t2t_vit_7's T2T module forward + backward ×1.08, a block ×1.05, whole forward + backward
    /// ×1.04 (lvvit_t ×1.015). Session 9 had found the two level in training, before the step's other changes
    /// (BENCHMARKS.md).
    /// </summary>
    internal static bool TakesConvPath(Linear linear, Tensor x) => TakesConvPath(linear.weight!, x);

    private static bool TakesConvPath(Tensor w, Tensor x)
    {
        if (x.dim() < 2 || x.device_type != DeviceType.CPU || x.dtype != w.dtype) return false;
        long inFeatures = w.shape[1], rows = x.numel() / Math.Max(1, inFeatures);
        long macs = rows * inFeatures * w.shape[0];
        bool dtypeTakes = x.dtype == ScalarType.Float32
            || (x.dtype == ScalarType.BFloat16 && (!torch.is_grad_enabled() || (Bf16Training && macs >= Bf16TrainingMinMacs)));
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
