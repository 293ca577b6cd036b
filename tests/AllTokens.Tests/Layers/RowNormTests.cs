using AllTokens.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Layers;

/// <summary>
/// RowNorm's bf16 normalisation (LayerNorm without affine) against fp64 LayerNorm: x̂ and ∂x within bf16 rounding, the
/// rows' statistics, the paths it declines, and its place in the T2T layers' folded LayerNorm → Linear.
/// </summary>
public class RowNormTests
{
    /// <summary>max |a − b| / max |b|, in fp64 (also used by FeatureNormalizerTests).</summary>
    internal static double RelativeError(Tensor actual, Tensor expected) =>
        ((actual.to(ScalarType.Float64) - expected).abs().max() / expected.abs().max()).item<double>();

    [Theory]
    [InlineData(64)]   // T2T's norm2 width
    [InlineData(147)]  // the image's 7×7×3 windows: 9 vectors and a 3-value tail
    [InlineData(576)]  // Performer 2's norm1
    [InlineData(5)]    // tail only
    [InlineData(16)]   // one vector, no tail
    public void NormalisesAndDifferentiatesWithinBf16Rounding(int width)
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(11);
        // An offset mean and a spread of scales per row: the two-pass variance must not lose the small rows.
        var scale = torch.rand(3, 37, 1) * 4 + 0.05;
        var x = (torch.randn(3, 37, width) * scale + 3.0).to(ScalarType.BFloat16).requires_grad_(true);
        Assert.True(RowNorm.Applies(x));
        var y = RowNorm.Normalize(x, 1e-5);
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        var g = torch.randn(y.shape).to(ScalarType.BFloat16);
        var dx = torch.autograd.grad([y], [x], [g])[0];

        var x64 = x.detach().to(ScalarType.Float64).requires_grad_(true);
        var y64 = nn.functional.layer_norm(x64, [width], null, null, 1e-5);
        var dx64 = torch.autograd.grad([y64], [x64], [g.to(ScalarType.Float64)])[0];
        // One bf16 rounding of the output (2⁻⁹ relative) plus fp32 arithmetic; a wrong mean, variance or backward term
        // is off by far more.
        Assert.True(RelativeError(y, y64) < 4e-3, $"x̂ relative error {RelativeError(y, y64):E2}");
        Assert.True(RelativeError(dx, dx64) < 1e-2, $"∂x relative error {RelativeError(dx, dx64):E2}");
        // The backward is not just any bf16 tensor: each row of ∂x is orthogonal to 1 and to x̂ (LayerNorm's Jacobian).
        var rowSums = dx.to(ScalarType.Float64).sum(-1L).abs().max().item<double>();
        Assert.True(rowSums < 0.05 * dx64.abs().max().item<double>() * Math.Sqrt(width), $"row sums of ∂x {rowSums:E2}");
    }

    [Fact]
    public void SavesEachRowsMeanAndInverseDeviation()
    {
        using var _ = torch.NewDisposeScope();
        // Rows chosen so that μ and σ are exact: [1, 3] → μ 2, σ² 1; [−4, 4, −4, 4] spread over a row of 4.
        var x = torch.tensor(new float[] { 1, 3, 1, 3, -4, 4, -4, 4 }).reshape(2, 4).to(ScalarType.BFloat16);
        var y = RowNorm.Forward(x, 0.0, out var stats);
        Assert.Equal(new long[] { 2, 2 }, stats.shape);
        var s = stats.data<float>().ToArray();
        Assert.Equal(new[] { 2f, 1f, 0f, 0.25f }, s);
        Assert.Equal(new[] { -1f, 1f, -1f, 1f, -1f, 1f, -1f, 1f }, y.to(ScalarType.Float32).data<float>().ToArray());
    }

    [Fact]
    public void ConstantRowsNormaliseToZero()
    {
        using var _ = torch.NewDisposeScope();
        // A flat window (black background): σ = 0, so x̂ = 0 · (1/√ε) exactly, as libtorch's, not NaN.
        var x = torch.full(new long[] { 4, 147 }, 0.5f).to(ScalarType.BFloat16).requires_grad_(true);
        var y = RowNorm.Normalize(x, 1e-5);
        Assert.Equal(0.0, y.to(ScalarType.Float32).abs().max().item<float>());
        var dx = torch.autograd.grad([y], [x], [torch.ones_like(y)])[0];
        Assert.False(dx.to(ScalarType.Float32).isnan().any().item<bool>());
    }

    [Fact]
    public void DeclinesWhatItDoesNotTake()
    {
        using var _ = torch.NewDisposeScope();
        var fp32 = torch.randn(4, 64);
        Assert.False(RowNorm.Applies(fp32));
        // fp32 goes to libtorch's layer_norm, bit for bit.
        Assert.True(nn.functional.layer_norm(fp32, [64], null, null, 1e-5).equal(RowNorm.Normalize(fp32, 1e-5)).all().item<bool>());
        Assert.False(RowNorm.Applies(torch.randn(2, RowNorm.MaxWidth + 1).to(ScalarType.BFloat16)));
        // A strided view is copied first and gives the same rows as its contiguous copy.
        var wide = torch.randn(6, 128).to(ScalarType.BFloat16);
        var view = wide.narrow(1, 0, 64);
        Assert.True(RowNorm.Normalize(view.contiguous(), 1e-5).equal(RowNorm.Normalize(view, 1e-5)).all().item<bool>());
        bool was = RowNorm.Enabled;
        try
        {
            RowNorm.Enabled = false;
            Assert.False(RowNorm.Applies(wide));
        }
        finally { RowNorm.Enabled = was; }
    }

    [Fact]
    public void TokenPerformerInBf16TrainingMatchesLibtorchsLayerNorm()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(3);
        // Performer 2's shape at 32 px: its folded norm1 → kqv and norm2 → fc1 both take the kernel in bf16 training.
        var p = new TokenPerformer(576, 64);
        p.train();
        p.to(ScalarType.BFloat16);
        var x = torch.randn(2, 16, 576).to(ScalarType.BFloat16);
        var g = torch.randn(2, 16, 64).to(ScalarType.BFloat16);
        (Tensor Y, Tensor Dx, Tensor Dw) Run(bool kernel)
        {
            bool was = RowNorm.Enabled;
            RowNorm.Enabled = kernel;
            try
            {
                torch.manual_seed(5); // the same dropout masks
                var xi = x.detach().requires_grad_(true);
                var y = p.call(xi);
                var kqvWeight = p.named_parameters().First(n => n.name == "kqv.weight").parameter;
                var grads = torch.autograd.grad([y], [xi, kqvWeight], [g]);
                return (y.detach(), grads[0], grads[1]);
            }
            finally { RowNorm.Enabled = was; }
        }
        var ours = Run(true);
        var theirs = Run(false);
        Assert.True(RelativeError(ours.Y, theirs.Y.to(ScalarType.Float64)) < 2e-2);
        Assert.True(RelativeError(ours.Dx, theirs.Dx.to(ScalarType.Float64)) < 5e-2);
        Assert.True(RelativeError(ours.Dw, theirs.Dw.to(ScalarType.Float64)) < 5e-2);
    }
}
