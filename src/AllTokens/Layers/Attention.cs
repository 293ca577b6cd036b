using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// Multi-head self-attention as in timm's ViT and LV-ViT (<c>tlt/models/layers.py</c>): one qkv Linear whose
/// output features are [q heads | k heads | v heads], q multiplied by the scale before q·kᵀ, softmax over keys,
/// then proj. Keys: <c>qkv.weight</c> (+ <c>qkv.bias</c> when qkvBias), <c>proj.*</c>.
/// </summary>
public sealed class Attention : nn.Module<Tensor, Tensor>
{
    private readonly Linear qkv;
    private readonly Dropout attn_drop;
    private readonly Linear proj;
    private readonly Dropout proj_drop;

    public int NumHeads { get; }
    public double Scale { get; }

    /// <param name="qkScale">Overrides head_dim^-0.5 (T2T-ViT's ResNeXt variant keeps the default; see T2T_VIT.md §2.1).</param>
    public Attention(long dim, int numHeads, bool qkvBias = false, double? qkScale = null, double attnDrop = 0, double projDrop = 0)
        : base(nameof(Attention))
    {
        if (dim % numHeads != 0) throw new ArgumentException($"dim {dim} is not divisible by {numHeads} heads");
        NumHeads = numHeads;
        Scale = qkScale ?? Math.Pow(dim / numHeads, -0.5);
        qkv = nn.Linear(dim, dim * 3, hasBias: qkvBias);
        attn_drop = nn.Dropout(attnDrop);
        proj = nn.Linear(dim, dim);
        proj_drop = nn.Dropout(projDrop);
        RegisterComponents();
    }

    public Linear Qkv => qkv;
    public Linear Proj => proj;

    public override Tensor forward(Tensor x) => Forward(x, out _, captureAttention: false);

    /// <summary>Forward that can also hand back the attention probabilities [B, heads, N, N].</summary>
    public Tensor Forward(Tensor x, out Tensor? attention, bool captureAttention)
    {
        long b = x.shape[0], n = x.shape[1], c = x.shape[2];
        var qkvOut = qkv.call(x).reshape(b, n, 3, NumHeads, c / NumHeads).permute(2, 0, 3, 1, 4); // [3, B, H, N, hd]
        var q = qkvOut[0] * Scale;
        var k = qkvOut[1];
        var v = qkvOut[2];
        var attn = q.matmul(k.transpose(-2, -1)).softmax(-1); // [B, H, N, N]
        attention = captureAttention ? attn.detach() : null;
        attn = attn_drop.call(attn);
        var y = attn.matmul(v).transpose(1, 2).reshape(b, n, c); // [B, N, D]
        return proj_drop.call(proj.call(y));
    }
}
