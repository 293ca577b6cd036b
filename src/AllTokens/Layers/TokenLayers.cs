// T2T layers of Tokens-to-Token ViT (Yuan et al., ICCV 2021, arXiv 2101.11986; github.com/yitu-opensource/T2T-ViT,
// models/token_performer.py and models/token_transformer.py). Exact semantics: shared/reference/T2T_VIT.md §3.2–3.3.
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// Single-head Performer T2T layer. Keys in PyTorch order: <c>w</c> (frozen random features, the module's own
/// parameter, so first), <c>kqv.*</c>, <c>proj.*</c>, <c>norm1.*</c>, <c>norm2.*</c>, <c>mlp.0.*</c>, <c>mlp.2.*</c>.
/// Quirks kept for parity: split order k, q, v; φ(z) = exp(W z − ‖z‖²/2)/√m with the squared norm; ε = 1e-8;
/// residual through v (input and output widths differ); dropouts of 0.1 always present in training.
/// </summary>
public sealed class TokenPerformer : nn.Module<Tensor, Tensor>
{
    private readonly Parameter w;
    private readonly Linear kqv;
    private readonly Dropout dp;
    private readonly Linear proj;
    private readonly LayerNorm norm1;
    private readonly LayerNorm norm2;
    private readonly Sequential mlp;
    private readonly (Linear Fc1, GELU Act, Linear Fc2, Dropout Drop) mlpLayers; // mlp's children, called through Dense

    private readonly long emb;
    private readonly long m;
    private const double Epsilon = 1e-8;

    /// <summary>Σ_t φ(k_t) ⊗ v_t through <see cref="FeatureValues"/> (off, <c>ALLTOKENS_PERFORMER_PRODUCT=bmm</c>: the
    /// original's orientation as a plain batched product).</summary>
    public static bool FeatureValuesFunction { get; set; } = SpeedSwitch.On("ALLTOKENS_PERFORMER_PRODUCT", "bmm");

    public TokenPerformer(long dim, long inDim, double kernelRatio = 0.5, double dropout = 0.1) : base(nameof(TokenPerformer))
    {
        emb = inDim;
        m = (long)(inDim * kernelRatio);
        kqv = nn.Linear(dim, 3 * emb);
        dp = nn.Dropout(dropout);
        proj = nn.Linear(emb, emb);
        norm1 = nn.LayerNorm(dim, eps: 1e-5);
        norm2 = nn.LayerNorm(emb, eps: 1e-5);
        mlpLayers = (nn.Linear(emb, emb), nn.GELU(), nn.Linear(emb, emb), nn.Dropout(dropout));
        mlp = nn.Sequential(mlpLayers.Fc1, mlpLayers.Act, mlpLayers.Fc2, mlpLayers.Drop);
        // Orthogonal rows scaled by √m, frozen but stored (W·Wᵀ = m·I). Checkpoints always carry it; load it, never re-sample.
        w = nn.Parameter(Init.Orthogonal(m, emb).mul_(Math.Sqrt(m)), requires_grad: false);
        RegisterComponents();
    }

    /// <summary>Positive random features [B, T, m] of z [B, T, e], in fp32 whatever z's dtype.</summary>
    private Tensor PrmExp(Tensor z)
    {
        // exp(W z − ‖z‖²/2)/√m, with the 1/√m folded into the exponent (one pass over [B, T, m] fewer, forward and back).
        // The whole exponent is fp32, as the original's .float(): an error in it is multiplied into the feature by exp.
        double lnRootM = 0.5 * Math.Log(m);
        // One fused AVX-512 pass forward and one backward on libtorch's OpenMP team (Layers/RandomFeatures), where it applies.
        if (RandomFeatures.Applies(z, w)) return RandomFeatures.Exp(z, w, lnRootM);
        using Scalar two = 2.0.ToScalar(), logRootM = lnRootM.ToScalar(); // held for the calls (see Held)
        var zf = z.to(ScalarType.Float32);
        var shift = Held.Add((zf * zf).sum(-1, keepdim: true).div(two), logRootM); // [B, T, 1]
        // W z: in a bf16 model zf is the cast's fresh contiguous copy, and Layers/Dense (oneDNN's multi-threaded 1×1
        // convolution) beats MKL, which ran this [B·T, e] × [e, m] product on one thread (that part of a Performer,
        // forward + backward: 9.7–11.4 vs 10.5–11.9 ms). In an fp32 model zf is kqv's strided slice, which the
        // convolution's channels-last view cannot take without a reorder (11.6–13.9 vs 12.4–14.9 ms), so matmul stays.
        var wf = w.to(ScalarType.Float32);
        var wtx = zf.is_contiguous() ? Dense.Forward(zf, wf, null) : zf.matmul(wf.t()); // [B, T, m]
        return (wtx - shift).exp();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope(); // frees what backward does not need on return (see Block)
        // kqv(norm1(x)); on the image's soft split in training, with norm1's affine folded into kqv (Layers/NormLinear).
        return scope.MoveToOuter(Attend(NormLinear.Forward(norm1, kqv, x)));
    }

    /// <summary>
    /// The layer on the image's soft split (k, s, p), and the split itself where it was made (null where not): in
    /// training, where norm1 folds into kqv (the image needs no gradient), the split comes normalised from the window
    /// copy (Layers/SoftSplit.NormalizedFromImage) and the raw windows are never written.
    /// </summary>
    internal (Tensor? Windows, Tensor Output) ForwardOnImage(Tensor image, int kernel, int stride, int padding)
    {
        if (!NormLinear.Folds(norm1, image) || !SoftSplit.NormalizesWindows(image))
        {
            var windows = SoftSplit.FromImage(image, kernel, stride, padding);
            return (windows, call(windows));
        }
        using var scope = torch.NewDisposeScope();
        var xhat = SoftSplit.NormalizedFromImage(image, kernel, stride, padding, norm1.eps);
        return (null, scope.MoveToOuter(Attend(NormLinear.OnNormalized(norm1, kqv, xhat))));
    }

    /// <summary>The rest of the layer from kqv(norm1(x)) [B, T, 3e] (in the caller's dispose scope).</summary>
    private Tensor Attend(Tensor kqvOut)
    {
        var parts = kqvOut.split(emb, -1);
        Tensor k = parts[0], q = parts[1], v = parts[2];                      // each [B, T, e]
        var kp = PrmExp(k);
        var qp = PrmExp(q);
        // y = (φ(q)·Mᵀ)/d with M = Σ_t v_t ⊗ φ(k_t). Under bf16 the two token-wide products take bf16 inputs (fp32
        // accumulation), as autocast runs the original's einsums (bmm) in reduced precision whatever .float() says; the
        // exponent and the normaliser d stay fp32. An fp32 model computes them in fp32 and casts y back.
        var productType = v.dtype == ScalarType.BFloat16 ? ScalarType.BFloat16 : ScalarType.Float32;
        // (qp·kptvᵀ)/(d + ε) with d_t = φ(q_t)·Σ_s φ(k_s), the row scaling applied to qp [B, T, m] rather than the wider
        // product [B, T, e], in one pass forward and one backward (Layers/FeatureNormalizer; as a broadcast multiply and
        // a row sum where it does not apply: libtorch ran the batched matrix-vector product on one thread).
        var qpn = FeatureNormalizer.Normalize(qp, kp.sum(1), Epsilon, productType);                               // [B, T, m]
        var kpv = FeatureValuesFunction ? FeatureValues.Product(kp.to(productType), v.to(productType))                   // [B, m, e]
            : v.to(productType).transpose(1, 2).matmul(kp.to(productType)).transpose(1, 2);
        var y = qpn.matmul(kpv).to(v.dtype);                                                                           // [B, T, e]
        y = Held.Add(v, FastDropout.Apply(dp, Dense.Forward(proj, y)));
        var (fc1, act, fc2, drop) = mlpLayers;
        return Held.Add(y, FastDropout.Apply(drop, Dense.Forward(fc2, act.call(NormLinear.Forward(norm2, fc1, y)))));
    }

    /// <summary>
    /// Fᵀ·V for features F [B, T, m] and values V [B, T, e] (V a strided slice of kqv), as an autograd function whose
    /// backward writes both gradients contiguous: ∂F = V·Gᵀ [B, T, m] and ∂V = F·G [B, T, e]. As a plain bmm one operand
    /// is a transposed view, and bmm's backward hands it a transposed gradient; for V that gradient then met the
    /// residual's in autograd's accumulation, an add that cannot vectorise across the transposed layout (in bf16 a
    /// scalar conversion per element; Performer 1 forward + backward, batch 8: bf16 ×1.04–1.08, fp32 ×0.99–1.01).
    /// </summary>
    internal sealed class FeatureValues : torch.autograd.SingleTensorFunction<FeatureValues>
    {
        public override string Name => "PerformerFeatureValues";

        public static Tensor Product(Tensor features, Tensor values) =>
            torch.is_grad_enabled() && (features.requires_grad || values.requires_grad)
                ? apply(features, values)
                : features.transpose(1, 2).matmul(values);

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            var features = (Tensor)vars[0];
            var values = (Tensor)vars[1];
            ctx.save_for_backward([features, values]);
            return features.transpose(1, 2).matmul(values);
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var saved = ctx.get_saved_variables();
            Tensor features = saved[0], values = saved[1];
            return [values.matmul(gradOutput.transpose(1, 2)), features.matmul(gradOutput)];
        }
    }
}

/// <summary>
/// The token-transformer T2T layer's attention: qkv without bias (order q, k, v), one head of width in_dim,
/// scale from the <em>input</em> width (147^-0.5, 576^-0.5, a kept quirk), q scaled first, residual through v.
/// Keys: <c>qkv.weight</c>, <c>proj.*</c>.
/// </summary>
public sealed class TokenAttention : nn.Module<Tensor, Tensor>
{
    private readonly Linear qkv;
    private readonly Dropout attn_drop;
    private readonly Linear proj;
    private readonly Dropout proj_drop;
    private readonly long inDim;
    private readonly double scale;

    public TokenAttention(long dim, long inDim, int numHeads = 1) : base(nameof(TokenAttention))
    {
        if (numHeads != 1) throw new ArgumentException("the T2T token transformer works with a single head only (T2T_VIT.md §3.3)");
        this.inDim = inDim;
        scale = Math.Pow(dim / numHeads, -0.5);
        qkv = nn.Linear(dim, inDim * 3, hasBias: false);
        attn_drop = nn.Dropout(0);
        proj = nn.Linear(inDim, inDim);
        proj_drop = nn.Dropout(0);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => Attend(Dense.Forward(qkv, x));

    /// <summary>The attention of <c>norm(x)</c>, its qkv through Layers/NormLinear (the layer's norm1 folded in where it pays).</summary>
    internal Tensor ForwardNormalized(LayerNorm norm, Tensor x) => Attend(NormLinear.Forward(norm, qkv, x));

    /// <summary>The rest of the layer from qkv(x) [B, N, 3e].</summary>
    private Tensor Attend(Tensor qkvOut)
    {
        using var scope = torch.NewDisposeScope();
        long b = qkvOut.shape[0], n = qkvOut.shape[1];
        var parts = qkvOut.reshape(b, n, 3, 1, inDim).permute(2, 0, 3, 1, 4).unbind(0); // 3 × [B, 1, N, e] (unbind: see Attention)
        var q = parts[0];
        var k = parts[1];
        var v = parts[2];
        using Scalar scaleScalar = scale.ToScalar(); // held for the call (see Held)
        var attn = attn_drop.call(q.mul(scaleScalar).matmul(k.transpose(-2, -1)).softmax(-1)); // [B, 1, N, N]
        var y = attn.matmul(v).transpose(1, 2).reshape(b, n, inDim);
        y = proj_drop.call(Dense.Forward(proj, y));
        return scope.MoveToOuter(Held.Add(v.squeeze(1), y));
    }
}

/// <summary>Token-transformer T2T layer: y = attn(LN1 x) (residual through v); out = y + DropPath(MLP(LN2 y)).
/// Keys: <c>norm1.*</c>, <c>attn.*</c>, <c>norm2.*</c>, <c>mlp.fc1.*</c>, <c>mlp.fc2.*</c>.</summary>
public sealed class TokenTransformer : nn.Module<Tensor, Tensor>
{
    private readonly LayerNorm norm1;
    private readonly TokenAttention attn;
    private readonly DropPath drop_path;
    private readonly LayerNorm norm2;
    private readonly Mlp mlp;

    public TokenTransformer(long dim, long inDim, double mlpRatio = 1.0) : base(nameof(TokenTransformer))
    {
        norm1 = nn.LayerNorm(dim, eps: 1e-5);
        attn = new TokenAttention(dim, inDim);
        drop_path = new DropPath(0);
        norm2 = nn.LayerNorm(inDim, eps: 1e-5);
        mlp = new Mlp(inDim, (long)(inDim * mlpRatio), inDim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        x = attn.ForwardNormalized(norm1, x); // attn(norm1(x)), Layers/NormLinear's fold where it pays
        return scope.MoveToOuter(Held.Add(x, drop_path.call(mlp.ForwardNormalized(norm2, x))));
    }
}

/// <summary>
/// T2T-ViT-Ghost attention (t2t_vit_ghost.py): q, k, v each Linear(E, E/2) without bias plus a depthwise 1×1
/// "cheap" copy (a per-channel scale), concatenated to E; then standard MHA, scale applied after q·kᵀ.
/// Keys in order: q, k, v, cheap_operation_q/k/v, proj.
/// </summary>
public sealed class GhostAttention : nn.Module<Tensor, Tensor>, IAttention
{
    private readonly Linear q;
    private readonly Linear k;
    private readonly Linear v;
    private readonly Conv1d cheap_operation_q;
    private readonly Conv1d cheap_operation_k;
    private readonly Conv1d cheap_operation_v;
    private readonly Dropout attn_drop;
    private readonly Linear proj;
    private readonly Dropout proj_drop;
    private readonly int numHeads;
    private readonly double scale;

    public GhostAttention(long dim, int numHeads, double attnDrop = 0, double projDrop = 0) : base(nameof(GhostAttention))
    {
        this.numHeads = numHeads;
        scale = Math.Pow(dim / numHeads, -0.5);
        long half = dim / 2;
        q = nn.Linear(dim, half, hasBias: false);
        k = nn.Linear(dim, half, hasBias: false);
        v = nn.Linear(dim, half, hasBias: false);
        cheap_operation_q = nn.Conv1d(half, half, 1, groups: half, bias: false);
        cheap_operation_k = nn.Conv1d(half, half, 1, groups: half, bias: false);
        cheap_operation_v = nn.Conv1d(half, half, 1, groups: half, bias: false);
        attn_drop = nn.Dropout(attnDrop);
        proj = nn.Linear(dim, dim);
        proj_drop = nn.Dropout(projDrop);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => Forward(x, out _, false);

    public Tensor Forward(Tensor x, out Tensor? attention, bool captureAttention)
    {
        long b = x.shape[0], n = x.shape[1], c = x.shape[2];
        Tensor Ghost(Linear lin, Conv1d cheap)
        {
            var h = lin.call(x);                                                  // [B, N, E/2]
            var h1 = cheap.call(h.transpose(1, 2)).transpose(1, 2);
            return torch.cat([h, h1], 2).reshape(b, n, numHeads, c / numHeads).permute(0, 2, 1, 3); // [B, H, N, hd]
        }
        var qh = Ghost(q, cheap_operation_q);
        var kh = Ghost(k, cheap_operation_k);
        var vh = Ghost(v, cheap_operation_v);
        using Scalar scaleScalar = scale.ToScalar(); // held for the call (see Held)
        var attn = qh.matmul(kh.transpose(-2, -1)).mul(scaleScalar).softmax(-1);
        attention = captureAttention ? attn.detach() : null;
        var y = attn_drop.call(attn).matmul(vh).transpose(1, 2).reshape(b, n, c);
        return proj_drop.call(proj.call(y));
    }
}

/// <summary>
/// T2T-ViT-Ghost MLP: x1 = GELU(fc1 x) with fc1 E→E; x2, x3 = GELU(per-channel scale of x1); fc2 over concat(x1, x2, x3)
/// (3E → E, so mlp_ratio must be 3). Keys in order: fc1, fc2, cheap_operation2, cheap_operation3.
/// </summary>
public sealed class GhostMlp : nn.Module<Tensor, Tensor>
{
    private readonly Linear fc1;
    private readonly GELU act;
    private readonly Linear fc2;
    private readonly Dropout drop;
    private readonly Conv1d cheap_operation2;
    private readonly Conv1d cheap_operation3;

    public GhostMlp(long dim, long hidden, double drop = 0) : base(nameof(GhostMlp))
    {
        if (hidden != 3 * dim) throw new ArgumentException("the Ghost MLP concatenates three copies: hidden width must be 3·dim (mlp_ratio 3)");
        fc1 = nn.Linear(dim, dim);
        act = nn.GELU();
        fc2 = nn.Linear(hidden, dim);
        this.drop = nn.Dropout(drop);
        cheap_operation2 = nn.Conv1d(dim, dim, 1, groups: dim, bias: false);
        cheap_operation3 = nn.Conv1d(dim, dim, 1, groups: dim, bias: false);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var x1 = act.call(fc1.call(x));                                        // [B, N, E]
        var x2 = act.call(cheap_operation2.call(x1.transpose(1, 2)).transpose(1, 2));
        var x3 = act.call(cheap_operation3.call(x1.transpose(1, 2)).transpose(1, 2));
        var h = drop.call(torch.cat([x1, x2, x3], 2));                        // [B, N, 3E]
        return drop.call(fc2.call(h));
    }
}

/// <summary>
/// T2T-ViT-Dense block (t2t_vit_dense.py): a pre-norm block on the current width d, then dense_linear d → growth,
/// concatenated to the input (width grows by growth). Scale applied after q·kᵀ.
/// </summary>
public sealed class DenseBlock : nn.Module<Tensor, Tensor>
{
    private readonly LayerNorm norm1;
    private readonly Attention attn;
    private readonly DropPath drop_path;
    private readonly LayerNorm norm2;
    private readonly Mlp mlp;
    private readonly Linear dense_linear;

    public DenseBlock(long growth, long dim, int numHeads, double mlpRatio, double drop = 0, double attnDrop = 0, double dropPath = 0)
        : base(nameof(DenseBlock))
    {
        norm1 = nn.LayerNorm(dim, eps: 1e-5);
        attn = new Attention(dim, numHeads, false, null, attnDrop, drop, scaleQueryFirst: false);
        drop_path = new DropPath(dropPath);
        norm2 = nn.LayerNorm(dim, eps: 1e-5);
        mlp = new Mlp(dim, (long)(dim * mlpRatio), drop: drop);
        dense_linear = nn.Linear(dim, growth);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var y = Held.Add(x, drop_path.call(attn.call(norm1.call(x))));
        y = Held.Add(y, drop_path.call(mlp.call(norm2.call(y))));
        return torch.cat([x, Dense.Forward(dense_linear, y)], 2);
    }
}

/// <summary>T2T-ViT-Dense transition: Linear(d, d/2) then GELU. Keys: <c>linear.*</c>.</summary>
public sealed class Transition : nn.Module<Tensor, Tensor>
{
    private readonly GELU act;
    private readonly Linear linear;

    public Transition(long inFeatures, long outFeatures) : base(nameof(Transition))
    {
        act = nn.GELU();
        linear = nn.Linear(inFeatures, outFeatures);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => act.call(Dense.Forward(linear, x));
}
