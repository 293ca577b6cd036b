using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// Pre-norm transformer block. LV-ViT divides each residual <em>branch</em> by <c>skip_lam</c> (LVVIT.md §3.3):
/// y = x + DropPath(Attn(LN1(x)))/skip_lam; out = y + DropPath(MLP(LN2(y)))/skip_lam. With skip_lam = 1 this is
/// the plain timm ViT block. Keys: <c>norm1.*</c>, <c>attn.*</c>, <c>norm2.*</c>, <c>mlp.*</c>.
/// </summary>
public sealed class Block : nn.Module<Tensor, Tensor>
{
    private readonly LayerNorm norm1;
    private readonly nn.Module<Tensor, Tensor> attn;
    private readonly DropPath drop_path;
    private readonly LayerNorm norm2;
    private readonly nn.Module<Tensor, Tensor> mlp;

    public double SkipLam { get; }

    public Block(long dim, int numHeads, double mlpRatio = 4.0, bool qkvBias = false, double? qkScale = null,
        double drop = 0, double attnDrop = 0, double dropPath = 0, double skipLam = 1.0, double layerNormEps = 1e-5,
        bool scaleQueryFirst = true)
        : this(dim, new Attention(dim, numHeads, qkvBias, qkScale, attnDrop, drop, scaleQueryFirst),
            new Mlp(dim, (long)(dim * mlpRatio), drop: drop), dropPath, skipLam, layerNormEps)
    {
    }

    /// <summary>A block around other attention/MLP modules (T2T-ViT's SE and Ghost variants); the keys stay attn.*, mlp.*.</summary>
    public Block(long dim, nn.Module<Tensor, Tensor> attention, nn.Module<Tensor, Tensor> mlp, double dropPath = 0, double skipLam = 1.0,
        double layerNormEps = 1e-5) : base(nameof(Block))
    {
        SkipLam = skipLam;
        norm1 = nn.LayerNorm(dim, eps: layerNormEps);
        attn = attention;
        drop_path = new DropPath(dropPath);
        norm2 = nn.LayerNorm(dim, eps: layerNormEps);
        this.mlp = mlp;
        RegisterComponents();
    }

    public Attention Attn => (Attention)attn;
    public Mlp Mlp => (Mlp)mlp;
    public LayerNorm Norm1 => norm1;
    public LayerNorm Norm2 => norm2;

    public override Tensor forward(Tensor x) => Forward(x, out _, captureAttention: false);

    public Tensor Forward(Tensor x, out Tensor? attention, bool captureAttention)
    {
        // Intermediates the backward pass does not need are freed at the end of the block, as Python's refcounting
        // would (autograd holds its own references to what it saved): a lower peak and fewer fresh pages per step.
        using var scope = torch.NewDisposeScope();
        Tensor a;
        if (attn is IAttention capturing) a = capturing.Forward(norm1.call(x), out attention, captureAttention);
        else
        {
            a = attn.call(norm1.call(x));
            attention = null;
        }
        x = Held.Add(x, Branch(a));
        if (attention is not null) scope.MoveToOuter(attention);
        return scope.MoveToOuter(Held.Add(x, Branch(mlp.call(norm2.call(x)))));
    }

    private Tensor Branch(Tensor t)
    {
        t = drop_path.call(t);
        if (SkipLam == 1.0) return t;
        using var lam = SkipLam.ToScalar(); // held for the call (see Held)
        return t.div(lam);
    }
}
