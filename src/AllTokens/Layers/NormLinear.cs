using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// Linear(LayerNorm(x)) when x needs no gradient — the image's soft split entering the first T2T layer in training —
/// with the LayerNorm's affine folded into the linear: (x̂⊙γ + β)·Wᵀ + b = x̂·(W·diag γ)ᵀ + (W·β + b), x̂ = (x − μ)/σ.
/// x̂ is computed outside autograd (libtorch's own layer_norm, without affine), so the backward runs neither the
/// LayerNorm's backward over every token nor the linear's input-gradient GEMM, which nothing upstream needs; γ, β, W and
/// b get their gradients through the two small folded tensors. t2t_vit_7's first soft split + LayerNorm(147) +
/// Linear(147, 192), batch 8 at 224 px, forward + backward, 2 Zen 4 cores: fp32 31 vs 42 ms, bf16 18 vs 26 ms
/// (BENCHMARKS.md). Same maths, other float rounding. Inference, or an input that needs a gradient, or frozen
/// LayerNorm parameters keep the plain pair; <c>ALLTOKENS_NORM_FOLD=off</c> turns the fold off for comparisons.
/// </summary>
public static class NormLinear
{
    public static bool Folding { get; set; } = SpeedSwitch.On("ALLTOKENS_NORM_FOLD", "off");

    /// <summary>Whether <see cref="Forward"/> folds: grad mode on, x needs no gradient, the LayerNorm has a trainable affine.</summary>
    internal static bool Folds(LayerNorm norm, Tensor x) =>
        Folding && torch.is_grad_enabled() && !x.requires_grad && norm.weight is { requires_grad: true } && norm.bias is not null;

    /// <summary><c>linear(norm(x))</c>, as <see cref="Dense"/> runs the linear.</summary>
    public static Tensor Forward(LayerNorm norm, Linear linear, Tensor x)
    {
        if (!Folds(norm, x)) return Dense.Forward(linear, norm.call(x));
        using var scope = torch.NewDisposeScope();
        var gamma = norm.weight!;
        Tensor xhat;
        using (torch.no_grad())
            xhat = nn.functional.layer_norm(x, [gamma.shape[0]], null, null, norm.eps);
        var w = linear.weight! * gamma;                                // W·diag γ, [C, K]
        var b = linear.weight!.matmul(norm.bias!);                     // W·β, [C]
        if (linear.bias is { } bias) b = Held.Add(b, bias);
        return scope.MoveToOuter(Dense.Forward(xhat, w, b));
    }
}
