using AllTokens.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Layers;

/// <summary>The Performer's fused row normalisation φ/(φ·s + ε) against the composition it replaces, in fp64.</summary>
public class FeatureNormalizerTests
{
    private static double RelativeError(Tensor actual, Tensor expected) => RowNormTests.RelativeError(actual, expected);

    [Theory]
    [InlineData(2, 37, 32, ScalarType.Float32)]   // T2T's m = 32 over an odd token count
    [InlineData(3, 600, 16, ScalarType.BFloat16)] // more rows than one backward block (256), bf16 out
    [InlineData(1, 5, 64, ScalarType.Float32)]
    public void MatchesTheCompositionWithGradients(int b, int t, int m, ScalarType outType)
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(31);
        var phi = torch.rand(b, t, m) + 0.01; // positive features, as exp gives
        var sums = torch.rand(b, m) * t + 0.5;
        var g = torch.randn(b, t, m);
        Assert.True(FeatureNormalizer.Applies(phi, sums));

        var p1 = phi.detach().requires_grad_(true);
        var s1 = sums.detach().requires_grad_(true);
        var y = FeatureNormalizer.Normalize(p1, s1, 1e-8, outType);
        Assert.Equal(outType, y.dtype);
        var grads = torch.autograd.grad([y], [p1, s1], [g.to(outType)]);

        // The exact composition in fp64, with the same (rounded) output gradient.
        var p64 = phi.to(ScalarType.Float64).requires_grad_(true);
        var s64 = sums.to(ScalarType.Float64).requires_grad_(true);
        var y64 = p64 / ((p64 * s64.unsqueeze(1)).sum(-1, keepdim: true) + 1e-8);
        var grads64 = torch.autograd.grad([y64], [p64, s64], [g.to(outType).to(ScalarType.Float64)]);

        double tolY = outType == ScalarType.BFloat16 ? 4e-3 : 1e-6;
        Assert.True(RelativeError(y, y64) < tolY, $"φ̂ relative error {RelativeError(y, y64):E2}");
        Assert.True(RelativeError(grads[0], grads64[0]) < 1e-5, $"∂φ relative error {RelativeError(grads[0], grads64[0]):E2}");
        Assert.True(RelativeError(grads[1], grads64[1]) < 1e-5, $"∂s relative error {RelativeError(grads[1], grads64[1]):E2}");

        // And the libtorch composition (the switch) agrees with both.
        bool was = FeatureNormalizer.Enabled;
        try
        {
            FeatureNormalizer.Enabled = false;
            var yc = FeatureNormalizer.Normalize(phi, sums, 1e-8, outType);
            Assert.True(RelativeError(yc, y64) < tolY);
        }
        finally { FeatureNormalizer.Enabled = was; }
    }

    [Fact]
    public void DeclinesWhatItDoesNotTake()
    {
        using var _ = torch.NewDisposeScope();
        Assert.False(FeatureNormalizer.Applies(torch.rand(2, 5, 20), torch.rand(2, 20)));                         // m not a multiple of 16
        Assert.False(FeatureNormalizer.Applies(torch.rand(2, 5, 32).to(ScalarType.BFloat16), torch.rand(2, 32))); // bf16 features
        Assert.False(FeatureNormalizer.Applies(torch.rand(2, 5, 32), torch.rand(3, 32)));                          // batch mismatch
        // Declined inputs still give the normalisation, by the composition.
        var phi = torch.rand(2, 5, 20) + 0.1;
        var sums = torch.rand(2, 20) + 1;
        var y = FeatureNormalizer.Normalize(phi, sums, 1e-8, ScalarType.Float32);
        var expected = phi / ((phi * sums.unsqueeze(1)).sum(-1, keepdim: true) + 1e-8);
        Assert.True(RelativeError(y, expected.to(ScalarType.Float64)) < 1e-6);
    }
}
