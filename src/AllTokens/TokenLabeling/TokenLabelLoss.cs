using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.TokenLabeling;

/// <summary>What the patch tokens are trained on.</summary>
public enum TokenLabelLossMode
{
    /// <summary>Each token on its own dense target (token labeling).</summary>
    Dense,

    /// <summary>No label data (e.g. transfer fine-tuning): every token gets the class-token target (official 2-D target branch).</summary>
    TwoD,

    /// <summary>ReLabel: the class token alone, on the pooled crop label (label size 1); token outputs are ignored.</summary>
    ReLabel,
}

/// <summary>Weights of the two terms. The paper's β is 0.5; the official code (and recipes that copy it) uses 1.0.</summary>
public sealed record TokenLabelLossOptions(double ClsWeight = 1.0, double DenseWeight = 0.5, TokenLabelLossMode Mode = TokenLabelLossMode.Dense);

/// <summary>
/// Token-labeling loss (official <c>TokenLabelCrossEntropy</c>, LVVIT.md §7):
/// cls_weight · mean_b CE(cls_b, t_cls_b) + dense_weight · mean_{b,n} CE(token_{b,n}, t_{b,n}), with the soft CE
/// Σ_c −t_c log_softmax(z)_c and no extra smoothing. With a non-empty MixToken box, t_cls ← λ'·t_cls + (1−λ')·t_cls
/// of the reversed batch, λ' = 1 − area/N from the clipped box. Token targets are never mixed: the model un-mixes
/// its token outputs.
/// </summary>
public sealed class TokenLabelLoss(TokenLabelLossOptions? options = null)
{
    public TokenLabelLossOptions Options { get; } = options ?? new TokenLabelLossOptions();

    /// <summary>Mean over rows of Σ_c −t·log_softmax(z): logits and targets [M, C] (or [B, N, C], averaged over B·N).</summary>
    public static Tensor SoftCrossEntropy(Tensor logits, Tensor targets)
    {
        if (!logits.shape.SequenceEqual(targets.shape))
            throw new ArgumentException($"logits [{string.Join(", ", logits.shape)}] and targets [{string.Join(", ", targets.shape)}] differ in shape");
        long rows = logits.numel() / logits.shape[^1];
        using var negRows = (-rows).ToScalar(); // held for the call (see Layers.Held)
        return logits.log_softmax(-1).mul(targets).sum().div(negRows); // one fewer full-size temporary than −t·log p summed per row
    }

    /// <summary>λ'·t + (1−λ')·t.flip(0) for a non-empty box on a gridH × gridW grid; t unchanged otherwise.</summary>
    public static Tensor MixClassTarget(Tensor target, MixBox? box, int gridH, int gridW)
    {
        if (box is not { IsEmpty: false } b) return target;
        double lam = b.Lambda(gridH, gridW);
        using Scalar l = lam.ToScalar(), rest = (1 - lam).ToScalar(); // held for the calls (see Layers.Held)
        return Layers.Held.Add(target.mul(l), target.flip(0).mul(rest));
    }

    /// <summary>
    /// The loss for a training forward. <paramref name="gridSize"/> is the token grid side (λ' needs N even in
    /// ReLabel mode). Throws naming what is missing when the output or targets do not fit the mode.
    /// </summary>
    public Tensor Compute(TrainOutput output, TokenTargets targets, int gridSize)
    {
        var cls = MixClassTarget(targets.Cls, output.Box, gridSize, gridSize);
        using Scalar clsWeight = Options.ClsWeight.ToScalar(), denseWeight = Options.DenseWeight.ToScalar(); // held (see Layers.Held)
        var loss = SoftCrossEntropy(output.Logits, cls).mul(clsWeight);
        if (Options.Mode == TokenLabelLossMode.ReLabel || Options.DenseWeight == 0) return loss;
        var tokens = output.TokenLogits
            ?? throw new ArgumentException($"token-label loss mode {Options.Mode} needs token logits; the model has no token head (use ReLabel mode or an lvvit_t/s/m/l model)");
        Tensor tokenTargets;
        if (Options.Mode == TokenLabelLossMode.TwoD)
            tokenTargets = targets.Cls.unsqueeze(1).expand(tokens.shape);
        else
            tokenTargets = targets.Tokens
                ?? throw new ArgumentException("dense token-label loss needs token targets; the label size is 1 (use ReLabel mode)");
        if (tokenTargets.shape[1] != tokens.shape[1])
            throw new ArgumentException($"the model has {tokens.shape[1]} tokens, the targets {tokenTargets.shape[1]}: the label size must equal the token grid side ({gridSize})");
        return Layers.Held.Add(loss, SoftCrossEntropy(tokens, tokenTargets).mul(denseWeight));
    }
}
