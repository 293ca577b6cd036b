using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// Stochastic depth per sample (timm 0.4.5 <c>drop_path</c>): in training, each sample's branch is kept with
/// probability 1−p and kept samples are divided by 1−p; identity in eval or when p = 0.
/// </summary>
public sealed class DropPath : nn.Module<Tensor, Tensor>
{
    public double Probability { get; }

    public DropPath(double probability) : base(nameof(DropPath))
    {
        if (probability is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(probability), probability, "drop path probability must be in [0, 1)");
        Probability = probability;
    }

    public override Tensor forward(Tensor x)
    {
        if (!training || Probability == 0) return x;
        double keep = 1 - Probability;
        var shape = new long[x.dim()];
        shape[0] = x.shape[0];
        for (int i = 1; i < shape.Length; i++) shape[i] = 1;
        // floor(keep + U[0,1)) is 1 with probability keep, as in timm.
        using Scalar keepScalar = keep.ToScalar(); // held for the calls (see Held)
        using var mask = Held.AddInPlace(torch.rand(shape, dtype: x.dtype, device: x.device), keepScalar).floor_();
        return x.div(keepScalar) * mask;
    }
}
