using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// Multi-head self-attention as in timm's ViT and LV-ViT (<c>tlt/models/layers.py</c>): one qkv Linear whose
/// output features are [q heads | k heads | v heads], q multiplied by the scale before q·kᵀ, softmax over keys,
/// then proj. Keys: <c>qkv.weight</c> (+ <c>qkv.bias</c> when qkvBias), <c>proj.*</c>.
/// </summary>
public sealed class Attention : nn.Module<Tensor, Tensor>, IAttention
{
    private readonly Linear qkv;
    private readonly Dropout attn_drop;
    private readonly Linear proj;
    private readonly Dropout proj_drop;
    private readonly SELayer? se_layer; // T2T-ViT-SE: channel attention after proj (t2t_vit_se.py)

    public int NumHeads { get; }
    public double Scale { get; }
    /// <summary>LV-ViT scales q before q·kᵀ; T2T-ViT's backbone (timm 0.3.4) scales the product. Same maths, other rounding.</summary>
    public bool ScaleQueryFirst { get; }

    /// <param name="qkScale">Overrides head_dim^-0.5 (T2T-ViT's ResNeXt variant keeps the default; see T2T_VIT.md §2.1).</param>
    public Attention(long dim, int numHeads, bool qkvBias = false, double? qkScale = null, double attnDrop = 0, double projDrop = 0,
        bool scaleQueryFirst = true, bool squeezeExcite = false)
        : base(nameof(Attention))
    {
        ScaleQueryFirst = scaleQueryFirst;
        if (dim % numHeads != 0) throw new ArgumentException($"dim {dim} is not divisible by {numHeads} heads");
        NumHeads = numHeads;
        Scale = qkScale ?? Math.Pow(dim / numHeads, -0.5);
        qkv = nn.Linear(dim, dim * 3, hasBias: qkvBias);
        attn_drop = nn.Dropout(attnDrop);
        proj = nn.Linear(dim, dim);
        proj_drop = nn.Dropout(projDrop);
        se_layer = squeezeExcite ? new SELayer(dim) : null;
        RegisterComponents();
    }

    /// <summary>
    /// Use libtorch's fused scaled_dot_product_attention when the probabilities are not wanted (default). Same maths
    /// as the explicit path within float rounding; <c>ALLTOKENS_ATTENTION=explicit</c> turns it off for comparisons.
    /// </summary>
    public static bool UseFused { get; set; } = SpeedSwitch.On("ALLTOKENS_ATTENTION", "explicit");

    /// <summary>
    /// Without gradients on a CPU, sequences shorter than <see cref="ExplicitInferenceTokens"/> (in batches whose
    /// probabilities fit <see cref="ExplicitInferenceElements"/>) take the explicit path:
    /// there libtorch's fused kernel loses to two batched matmuls and a softmax. Attention forward (qkv and proj
    /// included), batch 8, 41 alternating reps on 2 Zen 5 cores: [197, 240] 4 heads 6.0–6.3 vs 6.6–6.7 ms, [197, 256] 4
    /// heads 6.1–6.3 vs 6.7, [197, 384] 6 heads 10.9–11.1 vs 11.8, [401, 240] 17.1 vs 17.7–18.0; level at 577 tokens; a
    /// 3,136-token single head 612 vs 140 ms (the fused kernel never builds the [N, N] matrix). lvvit_t's inference
    /// forward 181–194 vs 195–204 ms. Training keeps the fused kernel: the explicit path would keep each block's
    /// [B, H, N, N] probabilities for the backward (~60 MiB more peak for lvvit_t at batch 8).
    /// <c>ALLTOKENS_ATTENTION=fused</c> turns this off for comparisons.
    /// </summary>
    public static bool ExplicitShortInference { get; set; } = SpeedSwitch.On("ALLTOKENS_ATTENTION", "fused");

    /// <summary>Sequences shorter than this take the explicit path in inference (<see cref="ExplicitShortInference"/>).</summary>
    public const long ExplicitInferenceTokens = 512;

    /// <summary>
    /// ... and only while the [B, H, N, N] probabilities stay within this many elements (64 MiB in fp32): a large
    /// evaluation batch keeps the fused kernel, which never builds them.
    /// </summary>
    public const long ExplicitInferenceElements = 1L << 24;

    /// <summary>Whether <see cref="Forward"/> takes libtorch's fused kernel for <paramref name="x"/> ([B, N, C]).</summary>
    internal bool TakesFused(Tensor x, bool captureAttention)
    {
        if (!UseFused || captureAttention) return false;
        if (x.device_type != DeviceType.CPU) return true;
        // libtorch's CPU flash-attention kernel is slow in bf16 (an lvvit_t attention forward + backward: 23 vs 16 ms
        // explicit, paired runs), so bf16 on a CPU takes the explicit path.
        if (x.dtype == ScalarType.BFloat16) return false;
        long n = x.shape[1];
        return !(ExplicitShortInference && !torch.is_grad_enabled() && n < ExplicitInferenceTokens
                 && x.shape[0] * NumHeads * n * n <= ExplicitInferenceElements);
    }

    public Linear Qkv => qkv;
    public Linear Proj => proj;

    public override Tensor forward(Tensor x) => Forward(x, out _, captureAttention: false);

    /// <summary>Moves a power-of-two scale onto q (the same bits; see Forward); comparisons.</summary>
    internal static bool QueryScaleWhenExact { get; set; } = true;

    /// <summary>Whether x is ±2^e exactly (so multiplying by it only shifts exponents).</summary>
    internal static bool IsPowerOfTwo(double x)
    {
        if (!double.IsFinite(x) || x == 0) return false;
        long bits = BitConverter.DoubleToInt64Bits(Math.Abs(x));
        return (bits & 0xFFFFFFFFFFFFFL) == 0 && (bits >> 52) != 0; // no mantissa bits, not subnormal
    }

    /// <summary>Forward that can also hand back the attention probabilities [B, heads, N, N].</summary>
    public Tensor Forward(Tensor x, out Tensor? attention, bool captureAttention)
    {
        using var scope = torch.NewDisposeScope(); // frees what backward does not need on return (see Block)
        long b = x.shape[0], n = x.shape[1], c = x.shape[2];
        var qkvOut = Dense.Forward(qkv, x).reshape(b, n, 3, NumHeads, c / NumHeads).permute(2, 0, 3, 1, 4); // [3, B, H, N, hd]
        // unbind, not three selects: each select's backward writes its gradient into a zeroed [3, B, H, N, hd] tensor and
        // autograd adds the three; unbind's backward stacks them (attention forward + backward, 21 alternating reps at
        // [8, 197, 768]: fp32 ×1.02–1.04, bf16 ×1.06–1.09).
        var qkvParts = qkvOut.unbind(0);
        var q = qkvParts[0];
        var k = qkvParts[1];
        var v = qkvParts[2];
        if (TakesFused(x, captureAttention))
        {
            // SDPA scales by head_dim^-0.5 itself; fold any other scale into q.
            double hd = c / NumHeads, extra = Scale * Math.Sqrt(hd);
            var qs = q;
            if (Math.Abs(extra - 1.0) >= 1e-12)
            {
                using var extraScalar = extra.ToScalar(); // held for the call (see Held)
                qs = q.mul(extraScalar);
            }
            double p = training ? attn_drop.p : 0.0;
            var fused = nn.functional.scaled_dot_product_attention(qs, k, v, p: p).transpose(1, 2).reshape(b, n, c);
            attention = null;
            var yf = Dense.Forward(proj, fused);
            if (se_layer is not null) yf = se_layer.call(yf);
            return scope.MoveToOuter(proj_drop.call(yf));
        }
        using var scale = Scale.ToScalar(); // held for the call (see Held)
        // A power-of-two scale (head_dim 4, 16, 64, 256: 1/2, 1/4, 1/8, 1/16) multiplies exactly, so scaling q first gives
        // T2T-ViT's scaled product bit for bit (barring under/overflow) while the multiply runs over [B, H, N, hd]
        // instead of [B, H, N, N] forward and backward.
        var attn = ScaleQueryFirst || (QueryScaleWhenExact && IsPowerOfTwo(Scale))
            ? q.mul(scale).matmul(k.transpose(-2, -1)).softmax(-1)
            : q.matmul(k.transpose(-2, -1)).mul(scale).softmax(-1); // [B, H, N, N]
        attention = captureAttention ? scope.MoveToOuter(attn.detach()) : null;
        attn = attn_drop.call(attn);
        var y = attn.matmul(v).transpose(1, 2).reshape(b, n, c); // [B, N, D]
        y = Dense.Forward(proj, y);
        if (se_layer is not null) y = se_layer.call(y);
        return scope.MoveToOuter(proj_drop.call(y));
    }
}

/// <summary>Attention that can hand back its probabilities (for attention maps).</summary>
public interface IAttention
{
    Tensor Forward(Tensor x, out Tensor? attention, bool captureAttention);
}

/// <summary>
/// Squeeze-and-excitation over tokens (T2T-ViT-SE): mean over all tokens (class token included) → Linear(C, C/16)
/// → ReLU → Linear(C/16, C) → sigmoid → rescale channels. Keys: <c>fc.0.weight</c>, <c>fc.2.weight</c>.
/// </summary>
public sealed class SELayer : nn.Module<Tensor, Tensor>
{
    private readonly Sequential fc;

    public SELayer(long channels, int reduction = 16) : base(nameof(SELayer))
    {
        fc = nn.Sequential(nn.Linear(channels, channels / reduction, hasBias: false), nn.ReLU(),
            nn.Linear(channels / reduction, channels, hasBias: false), nn.Sigmoid());
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var y = fc.call(x.mean([1])); // [B, C]
        return x * y.unsqueeze(1);    // [B, N, C]
    }
}
