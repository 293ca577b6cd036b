using System.Runtime.Intrinsics;
using AllTokens.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Layers;

/// <summary>The fused positive random features φ(z) = exp(W z − ‖z‖²/2 − shift) against fp64 and libtorch's composition.</summary>
public class RandomFeaturesTests
{
    private static (Tensor Phi, Tensor Grad) Fp64(Tensor z, Tensor w, double shift, Tensor g)
    {
        var z64 = z.detach().to(ScalarType.Float64).requires_grad_(true);
        var w64 = w.to(ScalarType.Float64);
        var phi = (z64.matmul(w64.t()) - (z64 * z64).sum(-1, keepdim: true) / 2 - shift).exp();
        var grad = torch.autograd.grad([phi], [z64], [g.to(ScalarType.Float64)])[0];
        return (phi, grad);
    }

    private static double MaxRelative(Tensor actual, Tensor reference) =>
        ((actual.to(ScalarType.Float64) - reference).abs().max() / reference.abs().max()).item<double>();

    [Theory]
    [InlineData(ScalarType.Float32, 3, 37, 64, 32)]   // 111 rows: a last pass of 3 rows, one part; T2T's widths
    [InlineData(ScalarType.Float32, 2, 700, 64, 32)]  // 1,400 rows: parts on both threads, a short last pass
    [InlineData(ScalarType.BFloat16, 3, 37, 64, 32)]
    [InlineData(ScalarType.BFloat16, 2, 700, 64, 32)]
    [InlineData(ScalarType.Float32, 2, 41, 48, 16)]   // widths that are no multiple of 32: 16-column passes both ways
    [InlineData(ScalarType.BFloat16, 2, 41, 64, 48)]  // m = 48 forward in 16-column passes, ∂z in 32-column ones
    [InlineData(ScalarType.Float32, 2, 41, 32, 32)]
    public void ForwardAndInputGradientFollowFp64OnAStridedSlice(ScalarType dtype, long b, long t, long e, long m)
    {
        if (!Vector512.IsHardwareAccelerated) return; // the kernel needs AVX-512; elsewhere the Performer keeps the composition
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(3);
        var w = Init.Orthogonal(m, e).mul_(Math.Sqrt(m));
        double shift = 0.5 * Math.Log(m);
        var kqv = (torch.randn(b, t, 3 * e) * 0.4).to(dtype).requires_grad_(true);
        var z = kqv.narrow(-1, e, e); // q's slice of the Performer's kqv: strided rows
        Assert.True(RandomFeatures.Applies(z, w));
        var phi = RandomFeatures.Exp(z, w, shift);
        Assert.Equal(ScalarType.Float32, phi.dtype);
        Assert.Equal(new[] { b, t, m }, phi.shape);
        var g = torch.randn(b, t, m);
        var grad = torch.autograd.grad([phi], [kqv], [g])[0];
        var (phi64, grad64) = Fp64(z, w, shift, g);
        Assert.True(MaxRelative(phi, phi64) < 1e-5, $"φ: {MaxRelative(phi, phi64):E2}");
        var gz = grad.narrow(-1, e, e);
        // A bf16 gradient is the fp32 one rounded to nearest even: at most half a bf16 step (2⁻⁹ relative) per element.
        double tolerance = dtype == ScalarType.Float32 ? 1e-5 : 1.0 / 256;
        Assert.True(MaxRelative(gz, grad64) < tolerance, $"∂z: {MaxRelative(gz, grad64):E2}");
        // Only the slice gets a gradient.
        Assert.Equal(0.0, grad.narrow(-1, 0, e).abs().max().to(ScalarType.Float64).item<double>());
        Assert.Equal(0.0, grad.narrow(-1, 2 * e, e).abs().max().to(ScalarType.Float64).item<double>());
    }

    [Fact]
    public void ExpMatchesDoublePrecisionAndKeepsTheSpecialValues()
    {
        var xs = new List<float> { 0f, -0f, 1f, -1f, 0.5f, 88.5f, 88.72f, -87.3f, -103f, -150f, -200f, 100f,
            float.PositiveInfinity, float.NegativeInfinity, float.NaN, 1e-8f, -1e-8f };
        var rng = new Random(5);
        for (int i = 0; i < 4000; i++) xs.Add((float)(rng.NextDouble() * 180 - 100));
        while (xs.Count % 16 != 0) xs.Add(0f);
        for (int i = 0; i < xs.Count; i += 16)
        {
            var v = RandomFeatures.ExpF(Vector512.Create(xs.GetRange(i, 16).ToArray()));
            for (int k = 0; k < 16; k++)
            {
                float x = xs[i + k], y = v.GetElement(k);
                if (float.IsNaN(x)) { Assert.True(float.IsNaN(y)); continue; }
                float expected = (float)Math.Exp(x);
                if (expected == 0f || float.IsInfinity(expected)) { Assert.Equal(expected, y); continue; }
                if (float.IsSubnormal(expected)) { Assert.True(Math.Abs(y - expected) <= 2 * float.Epsilon, $"exp({x}) = {y}, want {expected}"); continue; }
                double rel = Math.Abs(y - Math.Exp(x)) / Math.Exp(x);
                Assert.True(rel < 3e-7, $"exp({x}) = {y}, want {Math.Exp(x)} (relative error {rel:E2})");
            }
        }
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void PerformerGivesTheCompositionsOutputAndGradients(ScalarType dtype)
    {
        if (!Vector512.IsHardwareAccelerated) return;
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(11);
        var p = new TokenPerformer(96, 64);
        p.train();
        p.to(dtype);
        var x = torch.randn(2, 150, 96).to(dtype);
        (Tensor Y, Tensor Gx, Tensor Gw) Run(bool fused)
        {
            bool was = RandomFeatures.Enabled;
            try
            {
                RandomFeatures.Enabled = fused;
                torch.manual_seed(4); // the same dropout masks
                var xi = x.detach().requires_grad_(true);
                var y = p.call(xi);
                var gy = torch.ones_like(y);
                var grads = torch.autograd.grad([y], [xi, p.get_parameter("kqv.weight")], [gy]);
                return (y.detach(), grads[0], grads[1]);
            }
            finally { RandomFeatures.Enabled = was; }
        }
        var fused = Run(true);
        var plain = Run(false);
        double tol = dtype == ScalarType.Float32 ? 1e-4 : 3e-2;
        Assert.True(MaxRelative(fused.Y, plain.Y.to(ScalarType.Float64)) < tol, $"output {MaxRelative(fused.Y, plain.Y.to(ScalarType.Float64)):E2}");
        Assert.True(MaxRelative(fused.Gx, plain.Gx.to(ScalarType.Float64)) < tol, $"∂x {MaxRelative(fused.Gx, plain.Gx.to(ScalarType.Float64)):E2}");
        Assert.True(MaxRelative(fused.Gw, plain.Gw.to(ScalarType.Float64)) < tol, $"∂kqv.weight {MaxRelative(fused.Gw, plain.Gw.to(ScalarType.Float64)):E2}");
    }

    [Fact]
    public void OtherShapesAndTrainableWeightsKeepTheComposition()
    {
        using var _ = torch.NewDisposeScope();
        var w = torch.randn(32, 64);
        Assert.False(RandomFeatures.Applies(torch.randn(2, 5, 48), torch.randn(32, 48).narrow(1, 0, 40)));
        Assert.False(RandomFeatures.Applies(torch.randn(2, 5, 24), torch.randn(16, 24)));     // width not a multiple of 16
        Assert.False(RandomFeatures.Applies(torch.randn(2, 5, 64), w.requires_grad_(true)));   // W needs a gradient
        Assert.False(RandomFeatures.Applies(torch.randn(2, 5, 64).to(ScalarType.Float64), torch.randn(32, 64)));
        Assert.False(RandomFeatures.Applies(torch.randn(2, 64, 5).transpose(1, 2), torch.randn(32, 64))); // strided features
        bool was = RandomFeatures.Enabled;
        try
        {
            RandomFeatures.Enabled = false;
            Assert.False(RandomFeatures.Applies(torch.randn(2, 5, 64), torch.randn(32, 64)));
        }
        finally { RandomFeatures.Enabled = was; }
    }
}
