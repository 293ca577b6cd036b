using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// Scalars kept alive for the whole native call. TorchSharp 0.107 turns a .NET number into a temporary
/// <see cref="Scalar"/> (also the implicit alpha = 1 of <c>a + b</c>) that has a finalizer and no keep-alive, so a
/// garbage collection started by another thread (our loader workers allocate) can free it while libtorch is still
/// reading it — a rare crash in <c>c10::Scalar::toFloat</c> (dotnet/TorchSharp PR #1434, open). Hot paths pass these
/// rooted or <c>using</c>-scoped scalars instead.
/// </summary>
public static class Held
{
    /// <summary>1, rooted for the life of the process.</summary>
    public static readonly Scalar One = 1.ToScalar();

    /// <summary>a + b without a temporary scalar.</summary>
    public static Tensor Add(Tensor a, Tensor b) => a.add(b, One);

    /// <summary>a + s (the caller holds s) without a temporary alpha.</summary>
    public static Tensor Add(Tensor a, Scalar s) => a.add(s, One);

    /// <summary>a += s in place (the caller holds s) without a temporary alpha.</summary>
    public static Tensor AddInPlace(Tensor a, Scalar s) => a.add_(s, One);
}
