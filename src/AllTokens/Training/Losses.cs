using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>Classification losses (timm's).</summary>
public static class Losses
{
    /// <summary>
    /// timm <c>SoftTargetCrossEntropy</c>: mean over the batch of Σ −target·log_softmax(logits). Logits [B, C] (any
    /// float type; computed in fp32), targets [B, C] rows summing to 1.
    /// </summary>
    public static Tensor SoftTargetCrossEntropy(Tensor logits, Tensor targets)
    {
        if (logits.dim() != 2 || !logits.shape.SequenceEqual(targets.shape))
            throw new ArgumentException($"soft-target CE needs logits [B, C] and targets of the same shape, got [{string.Join(",", logits.shape)}] and [{string.Join(",", targets.shape)}]");
        var logp = nn.functional.log_softmax(logits.to(ScalarType.Float32), -1);
        return (-targets * logp).sum(-1).mean();
    }

    /// <summary>Cross entropy with hard labels [B] int64; label smoothing ε gives timm's LabelSmoothingCrossEntropy.</summary>
    public static Tensor CrossEntropy(Tensor logits, Tensor labels, double smoothing = 0)
    {
        if (logits.dim() != 2 || labels.dim() != 1 || logits.shape[0] != labels.shape[0])
            throw new ArgumentException($"CE needs logits [B, C] and labels [B], got [{string.Join(",", logits.shape)}] and [{string.Join(",", labels.shape)}]");
        var l = logits.to(ScalarType.Float32);
        if (smoothing == 0) return nn.functional.cross_entropy(l, labels);
        var logp = nn.functional.log_softmax(l, -1);
        var nll = -logp.gather(-1, labels.view(-1, 1)).squeeze(-1);
        var smooth = -logp.mean([-1]);
        using Scalar keep = (1 - smoothing).ToScalar(), spread = smoothing.ToScalar(); // held for the calls (see Layers.Held)
        return Layers.Held.Add(nll.mul(keep), smooth.mul(spread)).mean();
    }
}
