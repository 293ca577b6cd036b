using AllTokens.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Layers;

public class FastDropoutTests
{
    [Theory]
    [InlineData(0.1)]
    [InlineData(0.5)]
    [InlineData(0.9)]
    public void MaskKeepsOneMinusPAndScalesKeptValues(double p)
    {
        using var _ = torch.NewDisposeScope();
        const int n = 1_000_003; // not a multiple of the fill chunk
        var mask = FastDropout.Mask([n], p, seed: 12345, ScalarType.Float32);
        float scale = (float)(1 / (1 - p));
        var kept = mask.eq(scale);
        Assert.True(kept.logical_or(mask.eq(0f)).all().item<bool>(), "mask holds values other than 0 and 1/(1-p)");
        double fraction = kept.to(ScalarType.Float64).mean().item<double>();
        double sigma = Math.Sqrt(p * (1 - p) / n);
        Assert.InRange(fraction, 1 - p - 6 * sigma, 1 - p + 6 * sigma);
        // Neighbouring elements are independent: P(both kept) ≈ (1 − p)².
        var both = kept[..^1].logical_and(kept[1..]).to(ScalarType.Float64).mean().item<double>();
        Assert.InRange(both, (1 - p) * (1 - p) - 0.003, (1 - p) * (1 - p) + 0.003);
    }

    [Theory]
    [InlineData(ScalarType.Float32, 0.1)]
    [InlineData(ScalarType.BFloat16, 0.1)]
    [InlineData(ScalarType.Float32, 0.5)]
    [InlineData(ScalarType.BFloat16, 0.97)]
    public void VectorFillGivesTheScalarLoopsValues(ScalarType dtype, double p)
    {
        // 2^16 + 2^16 + 37 elements: whole chunks, a tail shorter than one vector pass, lanes across a chunk boundary.
        using var _ = torch.NewDisposeScope();
        long[] shape = [3, (2 * 65536 + 37) / 3 + 1];
        Tensor vector, scalar;
        try
        {
            FastDropout.Vectorized = true;
            vector = FastDropout.Mask(shape, p, 0xDEADBEEFUL, dtype);
            FastDropout.Vectorized = false;
            scalar = FastDropout.Mask(shape, p, 0xDEADBEEFUL, dtype);
        }
        finally { FastDropout.Vectorized = true; }
        Assert.True(vector.equal(scalar).all().item<bool>());
        double kept = vector.ne(0).to(ScalarType.Float64).mean().item<double>();
        Assert.InRange(kept, 1 - p - 0.01, 1 - p + 0.01);
    }

    [Fact]
    public void MaskIsAFunctionOfTheSeed()
    {
        using var _ = torch.NewDisposeScope();
        var a = FastDropout.Mask([3, 70_000], 0.3, 7, ScalarType.Float32);
        var b = FastDropout.Mask([3, 70_000], 0.3, 7, ScalarType.Float32);
        var c = FastDropout.Mask([3, 70_000], 0.3, 8, ScalarType.Float32);
        Assert.True(a.equal(b).all().item<bool>());
        Assert.False(a.equal(c).all().item<bool>());
    }

    [Fact]
    public void Bf16MaskMatchesTheFp32MaskRoundedAsTorchDoes()
    {
        using var _ = torch.NewDisposeScope();
        var f = FastDropout.Mask([50_000], 0.1, 99, ScalarType.Float32);
        var h = FastDropout.Mask([50_000], 0.1, 99, ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, h.dtype);
        Assert.True(f.to(ScalarType.BFloat16).equal(h).all().item<bool>());
        Assert.Equal(torch.tensor(1f / 0.9f).to(ScalarType.BFloat16).to(ScalarType.Float32).item<float>(),
            h.max().to(ScalarType.Float32).item<float>());
    }

    [Fact]
    public void DropoutFollowsTorchSeedAndPassesGradientsThroughTheMask()
    {
        using var _ = torch.NewDisposeScope();
        var x = torch.randn(4, 300, 64);
        torch.manual_seed(5);
        var y1 = FastDropout.Apply(x, 0.1, training: true);
        var y1b = FastDropout.Apply(x, 0.1, training: true);
        torch.manual_seed(5);
        var y2 = FastDropout.Apply(x, 0.1, training: true);
        Assert.True(y1.equal(y2).all().item<bool>());     // the seed comes from torch's generator
        Assert.False(y1.equal(y1b).all().item<bool>());   // and advances it
        var kept = y1.ne(0);
        Assert.True(y1.masked_select(kept).allclose(x.masked_select(kept) / 0.9, rtol: 1e-6, atol: 0));

        var xg = x.detach().requires_grad_(true);
        torch.manual_seed(6);
        var y = FastDropout.Apply(xg, 0.25, training: true);
        y.sum().backward();
        Assert.True(xg.grad!.equal(torch.where(y.ne(0), torch.tensor(1f / 0.75f), torch.tensor(0f))).all().item<bool>());
    }

    [Fact]
    public void EvalZeroPAndOtherDtypesBehaveAsTorch()
    {
        using var _ = torch.NewDisposeScope();
        var x = torch.randn(10, 10);
        Assert.Same(x, FastDropout.Apply(x, 0.5, training: false));
        Assert.Same(x, FastDropout.Apply(x, 0.0, training: true));
        Assert.True(FastDropout.Apply(x, 1.0, training: true).eq(0).all().item<bool>());
        var d = torch.randn(1000, dtype: ScalarType.Float64);
        var yd = FastDropout.Apply(d, 0.5, training: true);  // libtorch's dropout
        Assert.Equal(ScalarType.Float64, yd.dtype);
        Assert.True(yd.eq(0).logical_or(yd.isclose(d * 2)).all().item<bool>());
    }
}
