using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// Linear(LayerNorm(x)) when x needs no gradient — the image's soft split entering the first T2T layer in training —
/// with the LayerNorm's affine folded into the linear: (x̂⊙γ + β)·Wᵀ + b = x̂·(W·diag γ)ᵀ + (W·β + b), x̂ = (x − μ)/σ.
/// x̂ is computed outside autograd (layer_norm without affine: <see cref="RowNorm"/> in bf16, libtorch's otherwise), so the backward runs neither the
/// LayerNorm's backward over every token nor the linear's input-gradient GEMM, which nothing upstream needs; γ, β, W and
/// b get their gradients through the two small folded tensors. t2t_vit_7's first soft split + LayerNorm(147) +
/// Linear(147, 192), batch 8 at 224 px, forward + backward, 2 Zen 4 cores: fp32 31 vs 42 ms, bf16 18 vs 26 ms
/// (BENCHMARKS.md). In bf16 training the same fold also serves inputs that need a gradient (the later T2T layers'
/// LayerNorm → Linear pairs; see <see cref="FoldsWithInputGradient"/>), x̂ then with its autograd: Performer 2 forward +
/// backward ×1.02–1.05, Performer 1 ×1.01. Not in the ViT blocks: with 1,576 rows against 512–768 output features the
/// fold's own small ops cost more than it saves (a t2t_vit_7 block ×0.97). Same maths, other float rounding. Inference,
/// an fp32 input that needs a gradient, or frozen LayerNorm parameters keep the plain pair; <c>ALLTOKENS_NORM_FOLD=off</c>
/// turns both folds off for comparisons.
/// </summary>
public static class NormLinear
{
    public static bool Folding { get; set; } = SpeedSwitch.On("ALLTOKENS_NORM_FOLD", "off");

    /// <summary>The bf16 fold of inputs that need a gradient (<see cref="FoldsWithInputGradient"/>); tests and comparisons.</summary>
    internal static bool FoldingBf16 { get; set; } = true;

    /// <summary>Whether <see cref="Forward"/> folds: grad mode on, x needs no gradient, the LayerNorm has a trainable affine.</summary>
    internal static bool Folds(LayerNorm norm, Tensor x) =>
        Folding && torch.is_grad_enabled() && !x.requires_grad && TrainableAffine(norm);

    /// <summary>
    /// Whether <see cref="Forward"/> folds an input that needs a gradient: bf16 on a CPU in training. x̂ then keeps its
    /// autograd (the LayerNorm without affine, forward and backward: <see cref="RowNorm"/>'s kernel), and the affine moves into the linear as
    /// above. libtorch's bf16 LayerNorm is much slower with an affine than without (forward + backward ×1.34–1.50 at
    /// widths 64, 256 and 576; the fp32 one is not, ×0.86–1.02, so fp32 keeps the plain pair).
    /// </summary>
    internal static bool FoldsWithInputGradient(LayerNorm norm, Tensor x) =>
        Folding && FoldingBf16 && torch.is_grad_enabled() && x.requires_grad && x.dtype == ScalarType.BFloat16
        && x.device_type == DeviceType.CPU && TrainableAffine(norm);

    private static bool TrainableAffine(LayerNorm norm) => norm.weight is { requires_grad: true } && norm.bias is not null;

    /// <summary><c>linear(norm(x))</c>, as <see cref="Dense"/> runs the linear.</summary>
    public static Tensor Forward(LayerNorm norm, Linear linear, Tensor x)
    {
        bool withGradient = FoldsWithInputGradient(norm, x);
        if (!withGradient && !Folds(norm, x)) return Dense.Forward(linear, norm.call(x));
        using var scope = torch.NewDisposeScope();
        Tensor xhat;
        using (withGradient ? null : torch.no_grad()) // x̂ keeps its autograd only where x needs a gradient
            xhat = RowNorm.Normalize(x, norm.eps); // bf16: our kernel; otherwise libtorch's layer_norm without affine
        return scope.MoveToOuter(OnNormalized(norm, linear, xhat));
    }

    /// <summary>
    /// The folded pair on an x̂ already normalised without affine (Layers/SoftSplit.NormalizedFromImage, where
    /// <see cref="Folds"/> holds for the image): x̂·(W·diag γ)ᵀ + (W·β + b).
    /// </summary>
    internal static Tensor OnNormalized(LayerNorm norm, Linear linear, Tensor xhat)
    {
        using var scope = torch.NewDisposeScope();
        var w = linear.weight! * norm.weight!;                         // W·diag γ, [C, K]
        var b = linear.weight!.matmul(norm.bias!);                     // W·β, [C]
        if (linear.bias is { } bias) b = Held.Add(b, bias);
        return scope.MoveToOuter(Dense.Forward(xhat, w, b));
    }
}
