using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// Weight initialisers. TorchSharp 0.107.0's <c>nn.init.trunc_normal_</c> is broken (with std 0.02 it fills
/// every element with 0.02; shared/reference/TORCHSHARP.md), so we keep our own, following timm's
/// inverse-CDF method: u ~ U(2Φ(a')−1, 2Φ(b')−1), x = erfinv(u)·std·√2 + mean, clamp to [a, b],
/// with a' = (a−mean)/std and b' = (b−mean)/std.
/// </summary>
public static class Init
{
    /// <summary>Fills <paramref name="t"/> in place from N(mean, std²) truncated to [a, b] (absolute bounds, as timm).</summary>
    public static Tensor TruncNormal_(Tensor t, double mean = 0, double std = 1, double a = -2, double b = 2)
    {
        using var _ = torch.no_grad();
        double lo = NormalCdf((a - mean) / std), hi = NormalCdf((b - mean) / std);
        t.uniform_(2 * lo - 1, 2 * hi - 1);
        t.erfinv_();
        using Scalar scale = (std * Math.Sqrt(2.0)).ToScalar(), shift = mean.ToScalar(), lower = a.ToScalar(), upper = b.ToScalar(); // see Held
        t.mul_(scale);
        Held.AddInPlace(t, shift);
        t.clamp_(lower, upper);
        return t;
    }

    /// <summary>Standard normal CDF, Φ(x) = (1 + erf(x/√2))/2.</summary>
    public static double NormalCdf(double x) => 0.5 * (1 + Erf(x / Math.Sqrt(2.0)));

    /// <summary>erf with |error| &lt; 1.2e-7 (Numerical Recipes' erfc Chebyshev fit); only bounds use it.</summary>
    public static double Erf(double x)
    {
        double z = Math.Abs(x);
        double t = 1.0 / (1.0 + 0.5 * z);
        double r = t * Math.Exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
            t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
            t * (-0.82215223 + t * 0.17087277)))))))));
        return x >= 0 ? 1 - r : r - 1;
    }

    /// <summary>timm ViT init for a Linear: weight trunc-normal(std), bias zero.</summary>
    public static void LinearTruncNormal(TorchSharp.Modules.Linear linear, double std = 0.02)
    {
        using var _ = torch.no_grad();
        TruncNormal_(linear.weight!, std: std);
        linear.bias?.zero_();
    }

    /// <summary>LayerNorm: weight one, bias zero.</summary>
    public static void LayerNormDefault(TorchSharp.Modules.LayerNorm norm)
    {
        using var _ = torch.no_grad();
        norm.weight?.fill_(1.0);
        norm.bias?.zero_();
    }

    /// <summary>
    /// A [rows, cols] matrix with orthonormal rows (rows ≤ cols) or columns, as PyTorch's <c>orthogonal_</c>:
    /// QR of a standard normal matrix (transposed when rows &lt; cols) with Q's columns sign-corrected by diag(R).
    /// </summary>
    public static Tensor Orthogonal(long rows, long cols)
    {
        using var _ = torch.no_grad();
        var a = torch.randn(rows, cols);
        bool transpose = rows < cols;
        if (transpose) a = a.t();
        var (q, r) = torch.linalg.qr(a);
        q = q * r.diagonal().sign().unsqueeze(0);
        return (transpose ? q.t() : q).contiguous();
    }
}
