using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>fc1 → exact (erf) GELU → dropout → fc2 → dropout. Keys: <c>fc1.*</c>, <c>fc2.*</c>.</summary>
public sealed class Mlp : nn.Module<Tensor, Tensor>
{
    private readonly Linear fc1;
    private readonly GELU act;
    private readonly Linear fc2;
    private readonly Dropout drop;

    public Mlp(long inFeatures, long hiddenFeatures, long? outFeatures = null, double drop = 0) : base(nameof(Mlp))
    {
        fc1 = nn.Linear(inFeatures, hiddenFeatures);
        act = nn.GELU();
        fc2 = nn.Linear(hiddenFeatures, outFeatures ?? inFeatures);
        this.drop = nn.Dropout(drop);
        RegisterComponents();
    }

    public Linear Fc1 => fc1;
    public Linear Fc2 => fc2;

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope(); // frees what backward does not need on return (see Block)
        return scope.MoveToOuter(Rest(Dense.Forward(fc1, x)));
    }

    /// <summary>The MLP of <c>norm(x)</c>, fc1 through Layers/NormLinear (the norm folded into fc1 where it pays).</summary>
    internal Tensor ForwardNormalized(LayerNorm norm, Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        return scope.MoveToOuter(Rest(NormLinear.Forward(norm, fc1, x)));
    }

    /// <summary>GELU, dropout, fc2 and dropout after fc1's output.</summary>
    private Tensor Rest(Tensor h) => drop.call(Dense.Forward(fc2, drop.call(act.call(h))));
}
