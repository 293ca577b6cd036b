using AllTokens.Layers;
using AllTokens.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Tests.Layers;

/// <summary>
/// The T2T module's speed paths: the first T2T layer's LayerNorm folded into its kqv/qkv when the input needs no
/// gradient (Layers/NormLinear), and the last soft split + project as one convolution (SoftSplit.LinearOfTokens), give
/// the values and gradients of the plain ops within float rounding.
/// </summary>
public class T2tKernelPathTests
{
    private static void AssertClose(Tensor expected, Tensor actual, double rtol = 1e-4, double atol = 1e-5) =>
        KernelPathTests.AssertClose(expected, actual, rtol, atol);

    /// <summary>A LayerNorm with an affine far from (1, 0), so a fold that dropped γ or β would show.</summary>
    private static LayerNorm Norm(long dim)
    {
        var norm = nn.LayerNorm(dim, eps: 1e-5);
        using var _ = torch.no_grad();
        norm.weight!.copy_(torch.rand(dim) + 0.5);
        norm.bias!.copy_(torch.randn(dim) * 0.3);
        return norm;
    }

    private static Tensor[] Grads(params nn.Module[] modules) =>
        modules.SelectMany(m => m.parameters()).Where(p => p.requires_grad).Select(p => p.grad!.clone()).ToArray();

    [Theory]
    [InlineData(147, 192, true)]   // the Performer's norm1 + kqv on the image's soft split
    [InlineData(147, 192, false)]  // the token transformer's qkv has no bias
    [InlineData(40, 24, true)]
    public void FoldedNormLinearMatchesLayerNormThenLinear(long dim, long outFeatures, bool bias)
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(21);
        var norm = Norm(dim);
        var lin = nn.Linear(dim, outFeatures, hasBias: bias);
        var x = torch.randn(2, 100, dim) * 2 + 0.5; // rows that are not centred
        Assert.True(NormLinear.Folds(norm, x));

        var y = NormLinear.Forward(norm, lin, x);
        var g = torch.randn(y.shape);
        y.backward([g]);
        var folded = Grads(norm, lin);
        norm.zero_grad();
        lin.zero_grad();

        var expected = lin.call(norm.call(x));
        expected.backward([g]);
        var plain = Grads(norm, lin);
        AssertClose(expected, y);
        Assert.Equal(bias ? 4 : 3, plain.Length); // γ, β, W (, b)
        for (int i = 0; i < plain.Length; i++) AssertClose(plain[i], folded[i]);
    }

    [Fact]
    public void TheFoldAppliesOnlyWhereNoInputGradientIsNeeded()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(22);
        var norm = Norm(16);
        var lin = nn.Linear(16, 8);
        var x = torch.randn(3, 70, 16);
        Assert.False(NormLinear.Folds(norm, x.detach().requires_grad_(true))); // later soft splits: their input needs a gradient
        using (torch.no_grad())
        {
            Assert.False(NormLinear.Folds(norm, x)); // inference: the plain pair, bit for bit
            Assert.Equal(0.0, (NormLinear.Forward(norm, lin, x) - Dense.Forward(lin, norm.call(x))).abs().max().item<float>());
        }
        norm.weight!.requires_grad_(false);
        Assert.False(NormLinear.Folds(norm, x)); // a frozen LayerNorm
        using var plainNorm = nn.LayerNorm(16, elementwise_affine: false);
        Assert.False(NormLinear.Folds(plainNorm, x));
    }

    [Fact]
    public void Bf16FoldFollowsTheFp32PairWithinBf16Rounding()
    {
        // The first T2T layer in bf16 training: x needs no gradient, x̂ is computed outside autograd.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(23);
        AssertBf16FoldFollowsFp32(Norm(147), nn.Linear(147, 192), torch.randn(2, 196, 147), inputGradient: false);
    }

    [Fact]
    public void Bf16FoldWithAnInputGradientFollowsTheFp32PairWithinBf16Rounding()
    {
        // Later T2T layers in bf16 training: x needs a gradient, x̂ keeps its autograd and the affine moves into the
        // linear. The input's gradient must stay within bf16 rounding of fp32 too.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(31);
        AssertBf16FoldFollowsFp32(Norm(576), nn.Linear(576, 192), torch.randn(2, 49, 576) * 2 + 0.5, inputGradient: true);
    }

    /// <summary>The bf16 fold of <paramref name="norm"/> into <paramref name="lin"/> against the fp32 pair: output and every
    /// parameter's gradient (and, with <paramref name="inputGradient"/>, the input's) within bf16 rounding.</summary>
    private static void AssertBf16FoldFollowsFp32(LayerNorm norm, Linear lin, Tensor x, bool inputGradient)
    {
        var x32 = x.detach().requires_grad_(inputGradient);
        var expected = lin.call(norm.call(x32));
        var g = torch.randn(expected.shape);
        expected.backward([g]);
        var plain = Grads(norm, lin);
        norm.to(ScalarType.BFloat16);
        lin.to(ScalarType.BFloat16);
        norm.zero_grad();
        lin.zero_grad();
        var x16 = x.to(ScalarType.BFloat16).detach().requires_grad_(inputGradient);
        Assert.Equal(inputGradient, NormLinear.FoldsWithInputGradient(norm, x16));
        Assert.Equal(!inputGradient, NormLinear.Folds(norm, x16));
        var y = NormLinear.Forward(norm, lin, x16);
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        y.backward([g.to(ScalarType.BFloat16)]);
        var folded = Grads(norm, lin);
        static double RelErr(Tensor a, Tensor b) => (a - b.to(ScalarType.Float32)).norm().item<float>() / a.norm().item<float>();
        Assert.True(RelErr(expected, y) < 0.02, $"output relative error {RelErr(expected, y):E3}"); // ~0.4 % per bf16 rounding
        if (inputGradient)
            Assert.True(RelErr(x32.grad!, x16.grad!) < 0.05, $"input gradient relative error {RelErr(x32.grad!, x16.grad!):E3}");
        Assert.Equal(4, folded.Length); // γ, β, W, b
        for (int i = 0; i < plain.Length; i++)
            Assert.True(RelErr(plain[i], folded[i]) < 0.05, $"gradient {i}: relative error {RelErr(plain[i], folded[i]):E3}");
    }

    [Fact]
    public void TheFoldWithAnInputGradientIsBf16TrainingOnly()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(32);
        var norm = Norm(16);
        var lin = nn.Linear(16, 8);
        var x = torch.randn(3, 70, 16).requires_grad_(true);
        Assert.False(NormLinear.FoldsWithInputGradient(norm, x)); // fp32: libtorch's LayerNorm gains nothing without affine
        // fp32 with a gradient: the plain pair, bit for bit.
        Assert.Equal(0.0, (NormLinear.Forward(norm, lin, x) - Dense.Forward(lin, norm.call(x))).abs().max().item<float>());
        norm.to(ScalarType.BFloat16);
        lin.to(ScalarType.BFloat16);
        var x16 = x.detach().to(ScalarType.BFloat16).requires_grad_(true);
        Assert.True(NormLinear.FoldsWithInputGradient(norm, x16));
        Assert.False(NormLinear.FoldsWithInputGradient(norm, x16.detach())); // no input gradient: the other fold's case
        using (torch.no_grad()) Assert.False(NormLinear.FoldsWithInputGradient(norm, x16)); // inference
        norm.weight!.requires_grad_(false);
        Assert.False(NormLinear.FoldsWithInputGradient(norm, x16)); // a frozen LayerNorm
    }

    [Fact]
    public void AnMlpGivesTheSameOutputWithItsNormPassedIn()
    {
        // Mlp.ForwardNormalized (the token transformer's MLP) is mlp(norm(x)): fp32 exactly, bf16 within rounding.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(33);
        var norm = Norm(64);
        var mlp = new Mlp(64, 64);
        mlp.eval();
        var x = torch.randn(2, 49, 64).requires_grad_(true);
        Assert.True(mlp.call(norm.call(x)).equal(mlp.ForwardNormalized(norm, x)).all().item<bool>());
        var expected = mlp.call(norm.call(x));
        norm.to(ScalarType.BFloat16);
        mlp.to(ScalarType.BFloat16);
        var y = mlp.ForwardNormalized(norm, x.detach().to(ScalarType.BFloat16).requires_grad_(true));
        double err = (expected - y.to(ScalarType.Float32)).norm().item<float>() / expected.norm().item<float>();
        Assert.True(err < 0.03, $"bf16 relative error {err:E3}");
    }

    [Theory]
    [InlineData(2, 7, 5, 9, true)]    // odd grid 7×7 → 4×4
    [InlineData(2, 8, 64, 32, true)]  // T2T's 64 channels, 8×8 → 4×4
    [InlineData(1, 6, 3, 4, false)]
    public void LinearOfTokensEqualsUnfoldThenLinear(int b, int side, int c, int outFeatures, bool bias)
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(24);
        var lin = nn.Linear(c * 9, outFeatures, hasBias: bias);
        using var unfold = nn.Unfold((3, 3), stride: (2, 2), padding: (1, 1));
        var tokens = torch.randn(b, side * side, c);

        var t1 = tokens.detach().requires_grad_(true);
        var expected = lin.call(unfold.call(t1.transpose(1, 2).reshape(b, c, side, side)).transpose(1, 2));
        var g = torch.randn(expected.shape);
        expected.backward([g]);
        var plain = Grads(lin);
        lin.zero_grad();

        var t2 = tokens.detach().requires_grad_(true);
        var y = SoftSplit.LinearOfTokens(t2, lin, 3, 2, 1);
        Assert.Equal(expected.shape, y.shape);
        y.backward([g]);
        AssertClose(expected, y);
        AssertClose(t1.grad!, t2.grad!);
        var conv = Grads(lin);
        for (int i = 0; i < plain.Length; i++) AssertClose(plain[i], conv[i]);
        Assert.Equal([outFeatures, c * 9L], lin.weight!.shape); // the parameter keeps the Linear's shape (state-dict key)
    }

    [Fact]
    public void LinearOfTokensRejectsWhatItCannotSplit()
    {
        using var _ = torch.NewDisposeScope();
        var lin = nn.Linear(45, 4);
        Assert.Contains("square", Assert.Throws<ArgumentException>(() => SoftSplit.LinearOfTokens(torch.randn(1, 12, 5), lin, 3, 2, 1)).Message);
        Assert.Contains("45", Assert.Throws<ArgumentException>(() => SoftSplit.LinearOfTokens(torch.randn(1, 16, 4), lin, 3, 2, 1)).Message);
        Assert.Throws<ArgumentException>(() => SoftSplit.LinearOfTokens(torch.randn(16, 5), lin, 3, 2, 1));
    }

    /// <summary>nn.Unfold of the re-structurized tokens, transposed back to tokens: what SoftSplit.OfTokens stands for.</summary>
    private static Tensor UnfoldOfTokens(Tensor tokens, int side, int k, int s, int p)
    {
        using var unfold = nn.Unfold((k, k), stride: (s, s), padding: (p, p));
        long b = tokens.shape[0], c = tokens.shape[2];
        return unfold.call(tokens.transpose(1, 2).reshape(b, c, side, side)).transpose(1, 2);
    }

    [Theory]
    [InlineData(2, 7, 5, 3, 2, 1)]  // odd grid 7×7 → 4×4
    [InlineData(2, 8, 64, 3, 2, 1)] // T2T's soft split 1 shape (64 channels), 8×8 → 4×4
    [InlineData(1, 6, 3, 2, 2, 0)]  // no padding, windows that do not overlap
    [InlineData(1, 9, 4, 3, 1, 1)]  // stride 1: up to 9 windows per pixel
    [InlineData(2, 5, 3, 7, 4, 2)]  // T2T's 7/4/2 geometry on a small grid, one window
    [InlineData(1, 10, 2, 3, 3, 0)] // windows that leave the last grid row and column out
    public void TokenSoftSplitEqualsUnfoldOfTheRestructuredTokens(int b, int side, int c, int k, int s, int p)
    {
        // fp64, so the gradients (sums of up to ⌈k/s⌉² terms, in another order than col2im's) agree to the last bits.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(26);
        var tokens = torch.randn(b, side * side, c, dtype: ScalarType.Float64);
        var t1 = tokens.detach().requires_grad_(true);
        var expected = UnfoldOfTokens(t1, side, k, s, p);
        var g = torch.randn(expected.shape, dtype: ScalarType.Float64);
        expected.backward([g]);

        var t2 = tokens.detach().requires_grad_(true);
        var y = SoftSplit.OfTokens(t2, k, s, p);
        Assert.Equal(expected.shape, y.shape);
        Assert.True(y.is_contiguous());
        Assert.True(expected.equal(y).all().item<bool>(), "the windows differ from nn.Unfold's columns");
        y.backward([g]);
        double worst = (t1.grad! - t2.grad!).abs().max().item<double>();
        Assert.True(worst <= 1e-12, $"gradients differ by {worst:E3}");

        using (torch.no_grad())
        {
            var plain = SoftSplit.OfTokens(tokens, k, s, p); // no autograd node: the same windows
            Assert.False(plain.requires_grad);
            Assert.True(expected.equal(plain).all().item<bool>());
        }
    }

    [Theory]
    [InlineData(2, 8, 64, 3, 2, 1)]  // T2T's soft split 1: four full 16-channel blocks, 1–4 windows a token
    [InlineData(1, 7, 20, 3, 2, 1)]  // a block and a 4-channel tail, odd grid
    [InlineData(2, 6, 5, 3, 1, 1)]   // tail only, stride 1 (up to 9 windows a token)
    [InlineData(1, 10, 16, 3, 3, 0)] // tokens no window covers (the last row and column): zero gradient
    [InlineData(1, 5, 33, 7, 4, 2)]  // T2T's 7/4/2 geometry
    public void TokenSoftSplitGatherGradientMatchesTheStridedAdds(int b, int side, int c, int k, int s, int p)
    {
        // The gather (Layers/TokenSplitGradient) against the strided adds, fp32 and bf16, and both against fp64.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(28);
        var tokens = torch.randn(b, side * side, c);
        long outSide = (side + 2 * p - k) / s + 1;
        var g = torch.randn(b, outSide * outSide, c * k * k);
        var t64 = tokens.to(ScalarType.Float64).requires_grad_(true);
        UnfoldOfTokens(t64, side, k, s, p).backward([g.to(ScalarType.Float64)]);
        var exact = t64.grad!;
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            Tensor Gradient(bool gather)
            {
                bool was = TokenSplitGradient.Enabled;
                TokenSplitGradient.Enabled = gather;
                try
                {
                    var t = tokens.to(dtype).detach().requires_grad_(true);
                    SoftSplit.OfTokens(t, k, s, p).backward([g.to(dtype)]);
                    return t.grad!.to(ScalarType.Float64);
                }
                finally { TokenSplitGradient.Enabled = was; }
            }
            Assert.True(TokenSplitGradient.Applies(g.to(dtype), dtype, c) || !System.Runtime.Intrinsics.X86.Avx512F.IsSupported);
            var gathered = Gradient(true);
            var added = Gradient(false);
            // bf16: the gradient's inputs are rounded, so compare with the exact sum of the rounded window gradients.
            var reference = dtype == ScalarType.Float32 ? exact : ExactOfRounded(g.to(dtype), side, k, s, p, tokens.shape);
            double tol = dtype == ScalarType.Float32 ? 1e-5 : Math.Pow(2, -8) * 1.001;
            foreach (var (name, got) in new[] { ("gather", gathered), ("strided adds", added) })
            {
                var err = (got - reference).abs() / reference.abs().clamp_min(1e-3);
                Assert.True(err.max().item<double>() <= tol, $"{dtype} {name}: worst relative error {err.max().item<double>():E3}");
            }
        }
    }

    /// <summary>The exact (fp64) token gradient for window gradients already rounded to bf16.</summary>
    private static Tensor ExactOfRounded(Tensor g, int side, int k, int s, int p, long[] shape)
    {
        var t = torch.zeros(shape, dtype: ScalarType.Float64).requires_grad_(true);
        UnfoldOfTokens(t, side, k, s, p).backward([g.to(ScalarType.Float64)]);
        return t.grad!;
    }

    [Fact]
    public void Bf16TokenSoftSplitSumsItsGradientInFp32()
    {
        // Stride 1, so every inner pixel sums 9 window gradients: summed in fp32 and rounded once, each element is
        // within one bf16 rounding (2^-8 relative, 8 significant bits) of the exact sum; sums in bf16 (as col2im's)
        // round after every term and go past that.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(27);
        var tokens = torch.randn(2, 64, 16).to(ScalarType.BFloat16);
        var t = tokens.detach().requires_grad_(true);
        var y = SoftSplit.OfTokens(t, 3, 1, 1);
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        var expected = UnfoldOfTokens(tokens.to(ScalarType.Float64), 8, 3, 1, 1);
        Assert.True(expected.to(ScalarType.BFloat16).equal(y).all().item<bool>(), "bf16 windows are copies, so exact");

        var g = torch.randn(y.shape).to(ScalarType.BFloat16);
        y.backward([g]);
        var t64 = tokens.to(ScalarType.Float64).requires_grad_(true);
        UnfoldOfTokens(t64, 8, 3, 1, 1).backward([g.to(ScalarType.Float64)]);
        Assert.Equal(ScalarType.BFloat16, t.grad!.dtype);
        var exact = t64.grad!;
        var err = (t.grad!.to(ScalarType.Float64) - exact).abs() / exact.abs().clamp_min(1e-30);
        double worst = err.max().item<double>();
        Assert.True(worst <= Math.Pow(2, -8) * 1.001, $"worst relative error {worst:E3} exceeds one bf16 rounding");
    }

    [Fact]
    public void TokenSoftSplitRejectsWhatItCannotSplit()
    {
        using var _ = torch.NewDisposeScope();
        Assert.Contains("square", Assert.Throws<ArgumentException>(() => SoftSplit.OfTokens(torch.randn(1, 12, 5), 3, 2, 1)).Message);
        Assert.Contains("[B, N, C]", Assert.Throws<ArgumentException>(() => SoftSplit.OfTokens(torch.randn(16, 5), 3, 2, 1)).Message);
        Assert.Contains("does not fit", Assert.Throws<ArgumentException>(() => SoftSplit.OfTokens(torch.randn(1, 4, 5), 5, 1, 0)).Message);
        Assert.Throws<ArgumentException>(() => SoftSplit.OfTokens(torch.randn(1, 16, 5), 3, 0, 1));
    }

    [Theory]
    [InlineData("t2t_vit_7")]
    [InlineData("t2t_vit_t_14")]
    public void AT2tModelGivesTheSameLogitsAndGradientsWithTheTokenSoftSplit(string name)
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(28);
        using var model = ModelRegistry.Create(name, new ModelOptions(NumClasses: 10, ImgSize: 32));
        model.eval(); // no dropout draws to differ
        var image = torch.randn(2, 3, 32, 32);
        bool was = SoftSplit.Strided;
        try
        {
            SoftSplit.Strided = false;
            var plain = model.call(image);
            var g = torch.randn(plain.shape);
            plain.backward([g]);
            var plainGrads = Grads(model);
            model.zero_grad();

            SoftSplit.Strided = true;
            var split = model.call(image);
            split.backward([g]);
            var splitGrads = Grads(model);
            AssertClose(plain, split);
            Assert.Equal(plainGrads.Length, splitGrads.Length);
            for (int i = 0; i < plainGrads.Length; i++) AssertClose(plainGrads[i], splitGrads[i]);

            // bf16 inference: the windows are copies, so the logits are the unfold route's bit for bit.
            model.to(ScalarType.BFloat16);
            using var __ = torch.no_grad();
            var image16 = image.to(ScalarType.BFloat16);
            SoftSplit.Strided = false;
            var plain16 = model.call(image16);
            SoftSplit.Strided = true;
            var split16 = model.call(image16);
            Assert.Equal(ScalarType.BFloat16, split16.dtype);
            Assert.True(plain16.equal(split16).all().item<bool>(), "bf16 logits differ between the two soft splits");
        }
        finally { SoftSplit.Strided = was; }
    }

    [Theory]
    [InlineData(2, 20, 8, 6)]
    [InlineData(3, 49, 32, 64)] // T2T's shapes, fewer tokens: m = 32 features, e = 64 values
    public void PerformerFeatureValueProductMatchesBmmWithContiguousGradients(int b, int t, int m, int e)
    {
        // fp64: Fᵀ·V and both gradients as autograd's bmm gives them (the same products, so to the last bits), and the
        // gradient of the strided value slice comes out contiguous (the point of the function).
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(29);
        var f = torch.rand(b, t, m, dtype: ScalarType.Float64);
        var kqv = torch.randn(b, t, 3 * e, dtype: ScalarType.Float64);
        var g = torch.randn(b, m, e, dtype: ScalarType.Float64);

        var f1 = f.detach().requires_grad_(true);
        var kqv1 = kqv.detach().requires_grad_(true);
        var v1 = kqv1.narrow(-1, 2 * e, e);
        var expected = v1.transpose(1, 2).matmul(f1).transpose(1, 2);
        var expectedGrads = torch.autograd.grad([expected], [f1, v1], [g]);

        var f2 = f.detach().requires_grad_(true);
        var kqv2 = kqv.detach().requires_grad_(true);
        var v2 = kqv2.narrow(-1, 2 * e, e);
        Assert.False(v2.is_contiguous());
        var y = TokenPerformer.FeatureValues.Product(f2, v2);
        Assert.Equal(new long[] { b, m, e }, y.shape);
        Assert.True((y - expected).abs().max().item<double>() <= 1e-12);
        var grads = torch.autograd.grad([y], [f2, v2], [g]);
        for (int i = 0; i < 2; i++)
        {
            Assert.True(grads[i].is_contiguous(), $"gradient {i} is not contiguous");
            double worst = (grads[i] - expectedGrads[i]).abs().max().item<double>();
            Assert.True(worst <= 1e-12, $"gradient {i} differs by {worst:E3}");
        }

        using (torch.no_grad())
        {
            var plain = TokenPerformer.FeatureValues.Product(f2, v2); // no autograd node
            Assert.False(plain.requires_grad);
            Assert.True((plain - expected).abs().max().item<double>() <= 1e-12);
        }
    }

    [Fact]
    public void APerformerGivesTheSameOutputAndGradientsWithTheFeatureValueFunction()
    {
        // The whole layer, fp32 and bf16, with the function and with the plain bmm: fp32 within rounding, bf16 exactly
        // (the same bf16 products, only the gradients' memory layout differs).
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(30);
        bool was = TokenPerformer.FeatureValuesFunction;
        try
        {
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
            {
                using var layer = new TokenPerformer(147, 64);
                layer.eval(); // no dropout draws to differ
                layer.to(dtype);
                var x = torch.randn(2, 49, 147).to(dtype);
                var g = torch.randn(2, 49, 64).to(dtype);
                (Tensor Y, Tensor Dx, Tensor[] Dp) Run(bool function)
                {
                    TokenPerformer.FeatureValuesFunction = function;
                    layer.zero_grad();
                    var xi = x.detach().requires_grad_(true);
                    var y = layer.call(xi);
                    y.backward([g]);
                    return (y.detach(), xi.grad!.clone(), Grads(layer));
                }
                var plain = Run(false);
                var fused = Run(true);
                if (dtype == ScalarType.Float32)
                {
                    AssertClose(plain.Y, fused.Y);
                    AssertClose(plain.Dx, fused.Dx);
                    for (int i = 0; i < plain.Dp.Length; i++) AssertClose(plain.Dp[i], fused.Dp[i]);
                }
                else
                {
                    Assert.True(plain.Y.equal(fused.Y).all().item<bool>(), "bf16 outputs differ");
                    double RelErr(Tensor a, Tensor c) => (a - c).to(ScalarType.Float32).norm().item<float>() / a.to(ScalarType.Float32).norm().item<float>();
                    // Gradients: the same bf16 products; only the order of the accumulated sums may differ.
                    Assert.True(RelErr(plain.Dx, fused.Dx) < 1e-2, $"bf16 input gradient relative difference {RelErr(plain.Dx, fused.Dx):E3}");
                    for (int i = 0; i < plain.Dp.Length; i++)
                        Assert.True(RelErr(plain.Dp[i], fused.Dp[i]) < 1e-2, $"bf16 parameter gradient {i} relative difference {RelErr(plain.Dp[i], fused.Dp[i]):E3}");
                }
            }
        }
        finally { TokenPerformer.FeatureValuesFunction = was; }
    }

    [Theory]
    [InlineData("t2t_vit_7")]    // Performer T2T layers
    [InlineData("t2t_vit_t_14")] // token-transformer T2T layers
    public void AT2tModelGivesTheSameLogitsAndGradientsWithTheFold(string name)
    {
        // An image that needs no gradient (training) takes the fold; the same image requiring a gradient takes the plain
        // LayerNorm → Linear. Eval mode, so no dropout draws differ.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(25);
        using var model = ModelRegistry.Create(name, new ModelOptions(NumClasses: 10, ImgSize: 32));
        model.eval();
        var image = torch.randn(2, 3, 32, 32);

        var folded = model.call(image);
        var g = torch.randn(folded.shape);
        folded.backward([g]);
        var foldedGrads = Grads(model);
        model.zero_grad();

        var plain = model.call(image.detach().requires_grad_(true));
        plain.backward([g]);
        var plainGrads = Grads(model);
        AssertClose(plain, folded);
        Assert.Equal(plainGrads.Length, foldedGrads.Length);
        for (int i = 0; i < plainGrads.Length; i++) AssertClose(plainGrads[i], foldedGrads[i]);
        using (torch.no_grad()) AssertClose(plain, model.call(image)); // inference: no fold
    }

    [Theory]
    [InlineData(2, 3, 32, 32, 7, 4, 2)]   // T2T's first soft split at 32 px: 147 values a token
    [InlineData(1, 2, 21, 17, 3, 2, 1)]   // odd sizes, 18 values (one vector and a tail)
    [InlineData(1, 1, 12, 12, 4, 4, 0)]   // 16 values, no padding
    public void NormalizedWindowsEqualLayerNormOfTheWindows(int b, int c, int h, int w, int k, int s, int p)
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(31);
        var image = torch.randn(b, c, h, w) * 3 + 1;
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            var img = image.to(dtype);
            Assert.Equal(dtype == ScalarType.Float32, SoftSplit.NormalizesWindows(img)); // bf16: libtorch's LayerNorm after the split
            var fused = SoftSplit.NormalizedFromImage(img, k, s, p, 1e-5);
            var windows = SoftSplit.FromImage(img, k, s, p);
            var reference = nn.functional.layer_norm(windows.to(ScalarType.Float64), [windows.shape[2]], null, null, 1e-5);
            Assert.Equal(windows.shape, fused.shape);
            Assert.Equal(dtype, fused.dtype);
            double err = (fused.to(ScalarType.Float64) - reference).abs().max().item<double>();
            // fp32: float rounding; bf16: one rounding of values up to ~4 in size (2⁻⁸ relative).
            Assert.True(err <= (dtype == ScalarType.Float32 ? 1e-5 : 4.0 / 128), $"{dtype}: off by {err:E3}");
            var torchLn = nn.functional.layer_norm(windows, [windows.shape[2]], null, null, 1e-5);
            double ulps = (fused.to(ScalarType.Float32) - torchLn.to(ScalarType.Float32)).abs().gt(reference.abs().to(ScalarType.Float32) / 64 + 1e-6)
                .sum().item<long>();
            Assert.Equal(0, ulps); // never more than a couple of bf16 steps from libtorch's LayerNorm
        }
    }

    [Fact]
    public void TheFirstPerformerNormalisesTheWindowsInTheCopyOnlyWhereTheFoldApplies()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(32);
        using var layer = new TokenPerformer(147, 64);
        layer.eval(); // no dropout draws
        var image = torch.randn(2, 3, 32, 32);
        var (windows, fused) = layer.ForwardOnImage(image, 7, 4, 2);       // grad mode, image without gradient: fused
        Assert.Null(windows);
        var g = torch.randn(fused.shape);
        var trainable = layer.parameters().Where(q => q.requires_grad).ToArray(); // not the fixed random features
        var fusedGrads = torch.autograd.grad([fused], trainable, [g]);
        var plainIn = SoftSplit.FromImage(image, 7, 4, 2);
        var plain = layer.call(plainIn.detach().requires_grad_(true)); // an input that needs a gradient: the plain LayerNorm → kqv
        var plainGrads = torch.autograd.grad([plain], trainable, [g]);
        AssertClose(plain, fused);
        for (int i = 0; i < plainGrads.Count; i++) AssertClose(plainGrads[i], fusedGrads[i]);
        using (torch.no_grad())
        {
            var (w2, y2) = layer.ForwardOnImage(image, 7, 4, 2);            // inference: the plain split, kept
            Assert.NotNull(w2);
            AssertClose(plain.detach(), y2);
        }
    }
}
