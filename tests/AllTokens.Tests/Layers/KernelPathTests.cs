using AllTokens.Layers;
using AllTokens.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Tests.Layers;

/// <summary>
/// The speed paths (linear as a channels-last 1×1 convolution, the channels-last conv stem) compute the same values
/// and gradients as the plain ops, within float rounding.
/// </summary>
public class KernelPathTests
{
    internal static void AssertClose(Tensor expected, Tensor actual, double rtol = 1e-4, double atol = 1e-5)
    {
        Assert.Equal(expected.shape, actual.shape);
        var (err, scale) = Difference(expected, actual);
        Assert.True(err <= atol + rtol * scale, $"max |difference| {err:E3} with max |expected| {scale:E3}");
    }

    /// <summary>The same test as <see cref="AssertClose"/>, as a value.</summary>
    private static bool IsClose(Tensor expected, Tensor actual, double rtol = 1e-4, double atol = 1e-5)
    {
        var (err, scale) = Difference(expected, actual);
        return err <= atol + rtol * scale;
    }

    /// <summary>Largest |expected − actual| and largest |expected|.</summary>
    private static (double Err, double Scale) Difference(Tensor expected, Tensor actual) =>
        ((expected - actual).abs().max().item<float>(), expected.abs().max().item<float>());

    [Theory]
    [InlineData(new long[] { 8, 197, 240 }, 720, true)]   // an lvvit_t qkv (takes the convolution)
    [InlineData(new long[] { 4, 49, 96 }, 37, false)]     // odd sizes, no bias
    [InlineData(new long[] { 300, 64 }, 10, true)]        // 2-D input
    [InlineData(new long[] { 2, 3, 40, 16 }, 8, true)]    // 4-D input
    [InlineData(new long[] { 2, 197, 256 }, 512, true)]   // t2t_vit_7's fc1 (oneDNN's kernel wrong on a Zen 5 VM)
    public void LinearAsConvolutionMatchesTheLinearWhereTheCheckSaysSo(long[] shape, long outFeatures, bool bias)
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(7);
        var lin = nn.Linear(shape[^1], outFeatures, hasBias: bias);
        var x = torch.randn(shape);
        // The forward takes the convolution where the product is large enough (MinMacs).
        long rows = x.numel() / shape[^1];
        Assert.Equal(rows >= Dense.MinRows && rows * shape[^1] * outFeatures >= Dense.MinMacs, Dense.TakesConvPath(lin, x));

        var x1 = x.detach().requires_grad_(true);
        var y1 = lin.call(x1);
        var g = torch.randn(y1.shape);
        y1.backward([g]);
        var (gx1, gw1, gb1) = (x1.grad!.clone(), lin.weight!.grad!.clone(), lin.bias?.grad?.clone());
        lin.zero_grad();

        // oneDNN's kernel itself, beside the check's verdict on it: the two must agree, the check seeing the same
        // outputs and gradients this comparison does.
        var x2 = x.detach().requires_grad_(true);
        var y2 = Dense.AsConvolution(lin, x2);
        y2.backward([g]);
        bool kernelRight = IsClose(y1, y2) && IsClose(gx1, x2.grad!) && IsClose(gw1, lin.weight!.grad!) && (!bias || IsClose(gb1!, lin.bias!.grad!));
        lin.zero_grad();
        using (torch.enable_grad())
            Assert.Equal(kernelRight, Dense.Agrees(lin.weight!, lin.bias, x.detach().requires_grad_(true), gradient: true));
        Assert.Equal(lin.weight!.shape, new long[] { outFeatures, shape[^1] }); // the parameter keeps the Linear's shape

        // What the models call gives the linear's values and gradients whatever the kernel did.
        var x3 = x.detach().requires_grad_(true);
        var y3 = Dense.Forward(lin, x3);
        y3.backward([g]);
        AssertClose(y1, y3);
        AssertClose(gx1, x3.grad!);
        AssertClose(gw1, lin.weight!.grad!);
        if (bias) AssertClose(gb1!, lin.bias!.grad!);
    }

    [Fact]
    public void AConvolutionThatDisagreesLeavesItsShapeToThePlainLinear()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(8);
        var lin = nn.Linear(256, 512);
        var x = torch.randn(8, 197, 256).requires_grad_(true);
        Assert.True(Dense.TakesConvPath(lin, x));
        var original = Dense.CheckedConvolution;
        Dense.ForgetCheckedShapes();
        try
        {
            // A kernel off by 1 % in one output column, as a wrong tail block would be.
            var mask = torch.ones(512);
            mask[300] = torch.tensor(1.01f);
            Dense.CheckedConvolution = (w, b, input) => original(w, b, input) * mask;
            var y = Dense.Forward(lin, x);
            var shape = Dense.ShapeOf(lin.weight!, lin.bias, x);
            Assert.True(shape.Gradient);
            Assert.False(Dense.CheckedShapes[shape]);
            Assert.Equal(0.0, (y - lin.call(x)).abs().max().item<float>()); // the plain linear, bit for bit
            // Without autograd it is another shape: checked apart, here again against the faulty kernel.
            using (torch.no_grad()) Dense.Forward(lin, x);
            Assert.Equal(2, Dense.CheckedShapes.Count);
            Assert.All(Dense.CheckedShapes.Values, Assert.False);

            // A right kernel passes and is used from then on; a second call does not check again.
            Dense.CheckedConvolution = original;
            Dense.ForgetCheckedShapes();
            var y2 = Dense.Forward(lin, x);
            bool sound = Dense.CheckedShapes[shape];
            Assert.Equal(sound, Dense.Agrees(lin.weight!, lin.bias, x, gradient: true));
            Dense.CheckedConvolution = (w, b, input) => throw new InvalidOperationException("checked twice");
            Dense.Forward(lin, x);
            AssertClose(lin.call(x), y2);
        }
        finally
        {
            Dense.CheckedConvolution = original;
            Dense.ForgetCheckedShapes();
        }
    }

    [Theory]
    [InlineData(2, 3, 32, 32, 7, 4, 2)]   // T2T's first soft split at 32 px
    [InlineData(1, 5, 20, 13, 3, 2, 1)]   // non-square, odd sizes
    [InlineData(2, 4, 9, 9, 3, 3, 0)]     // no padding, stride = kernel
    [InlineData(1, 2, 10, 7, 3, 4, 2)]    // stride > kernel, windows reaching well into the padding
    [InlineData(2, 3, 5, 5, 5, 1, 2)]     // windows as wide as the image, every one touching the padding
    [InlineData(2, 3, 64, 48, 7, 4, 2)]   // mostly inner windows: 14-byte bf16 rows as 16-byte moves
    [InlineData(1, 2, 40, 41, 8, 3, 1)]   // 16-byte bf16 rows (a move without spill)
    [InlineData(1, 1, 30, 30, 17, 2, 0)]  // wider rows keep the exact copy
    public void StridedSoftSplitEqualsUnfoldThenTranspose(int b, int c, int h, int w, int k, int s, int p)
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(11);
        var image = torch.randn(b, c, h, w);
        using var unfold = nn.Unfold((k, k), stride: (s, s), padding: (p, p));

        var x1 = image.detach().requires_grad_(true);
        var t1 = unfold.call(x1).transpose(1, 2);
        var g = torch.randn(t1.shape);
        t1.backward([g]);

        var x2 = image.detach().requires_grad_(true);
        var t2 = SoftSplit.FromImage(x2, k, s, p);
        Assert.True(t2.is_contiguous());
        Assert.Equal(0.0, (t1 - t2).abs().max().item<float>()); // a pure rearrangement: bit for bit
        t2.backward([g]);
        AssertClose(x1.grad!, x2.grad!, rtol: 1e-6, atol: 1e-6);  // overlapping windows sum in another order

        // No gradient needed (the model's input): the window-copy kernel, bit for bit in fp32 and bf16, also on a
        // contiguous view that starts inside its storage (the batch's second half).
        var plain = SoftSplit.FromImage(image, k, s, p);
        Assert.False(plain.requires_grad);
        Assert.True(t1.detach().equal(plain).all().item<bool>(), "fp32 windows differ from nn.Unfold's columns");
        var bf = SoftSplit.FromImage(image.to(ScalarType.BFloat16), k, s, p);
        Assert.True(unfold.call(image.to(ScalarType.BFloat16)).transpose(1, 2).equal(bf).all().item<bool>(), "bf16 windows differ");
        var tail = torch.cat([image, image * 2], 0).narrow(0, b, b);
        Assert.True(tail.is_contiguous() && tail.storage_offset() > 0);
        Assert.True(unfold.call(image * 2).transpose(1, 2).equal(SoftSplit.FromImage(tail, k, s, p)).all().item<bool>(), "offset view");
    }

    [Fact]
    public void Bf16PerformerFollowsTheFp32OneWithinBf16Rounding()
    {
        // Under bf16 the Performer keeps its exponent and normaliser in fp32 and runs the two token-wide products with
        // bf16 inputs; its output must stay what bf16 rounding allows of the fp32 layer's, forward and backward.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(5);
        using var fp32 = new TokenPerformer(147, 64);
        fp32.eval();
        using var bf16 = new TokenPerformer(147, 64);
        bf16.load_state_dict(fp32.state_dict());
        bf16.to(ScalarType.BFloat16);
        bf16.eval();
        var x = torch.randn(2, 196, 147);
        var x1 = x.detach().requires_grad_(true);
        var y1 = fp32.call(x1);
        var x2 = x.to(ScalarType.BFloat16).detach().requires_grad_(true);
        var y2 = bf16.call(x2);
        Assert.Equal(ScalarType.BFloat16, y2.dtype);
        double RelErr(Tensor a, Tensor b) => (a - b.to(ScalarType.Float32)).norm().item<float>() / a.norm().item<float>();
        double err = RelErr(y1, y2);
        Assert.True(err < 0.02, $"relative error {err:E3}"); // bf16 carries 8 significant bits: ~0.4 % per rounding
        var g = torch.randn(y1.shape);
        y1.backward([g]);
        y2.backward([g.to(ScalarType.BFloat16)]);
        double gerr = RelErr(x1.grad!, x2.grad!);
        Assert.True(gerr < 0.05, $"input gradient relative error {gerr:E3}");
    }

    [Fact]
    public void NonContiguousInputsAreHandled()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(3);
        var lin = nn.Linear(32, 24);
        var x = torch.randn(4, 32, 50).transpose(1, 2); // [4, 50, 32], strided as T2T's soft split output
        Assert.False(x.is_contiguous());
        AssertClose(lin.call(x), Dense.AsConvolution(lin, x));
        var sliced = torch.randn(4, 51, 32)[.., 1..];    // the aux head's tokens t[:, 1:]
        AssertClose(lin.call(sliced), Dense.AsConvolution(lin, sliced));
    }

    [Fact]
    public void SmallInputsAndOtherDtypesKeepThePlainLinear()
    {
        using var _ = torch.NewDisposeScope();
        var lin = nn.Linear(256, 1024);
        Assert.False(Dense.TakesConvPath(lin, torch.randn(8, 256)));                     // a head on [B, D]
        Assert.True(Dense.TakesConvPath(lin, torch.randn(Dense.MinRows, 256)));          // 64·256·1024 = MinMacs
        Assert.False(Dense.TakesConvPath(lin, torch.randn(Dense.MinRows - 1, 256)));
        var small = nn.Linear(16, 4);
        Assert.False(Dense.TakesConvPath(small, torch.randn(4, 100, 16)));               // rows enough, too little work
        var bf = nn.Linear(256, 1024);
        bf.to(ScalarType.BFloat16);
        WithBf16Convolution(true, () =>
        {
            // bf16 with autograd from Bf16TrainingMinMacs (2·MinMacs), without from MinMacs.
            Assert.False(Dense.TakesConvPath(bf, torch.randn(new long[] { 1, 64, 256 }, dtype: ScalarType.BFloat16)));
            Assert.True(Dense.TakesConvPath(bf, torch.randn(new long[] { 2, 64, 256 }, dtype: ScalarType.BFloat16)));
            using (torch.no_grad()) Assert.True(Dense.TakesConvPath(bf, torch.randn(new long[] { 1, 64, 256 }, dtype: ScalarType.BFloat16)));
        });
        WithBf16Convolution(false, () =>
        {
            // Where the matmul wins (Zen 5), no bf16 linear takes the convolution; fp32 still does.
            Assert.False(Dense.TakesConvPath(bf, torch.randn(new long[] { 2, 64, 256 }, dtype: ScalarType.BFloat16)));
            using (torch.no_grad()) Assert.False(Dense.TakesConvPath(bf, torch.randn(new long[] { 1, 64, 256 }, dtype: ScalarType.BFloat16)));
            Assert.True(Dense.TakesConvPath(lin, torch.randn(Dense.MinRows, 256)));
        });
        Assert.False(Dense.TakesConvPath(lin, torch.randn(new long[] { 4, 100, 256 }, dtype: ScalarType.BFloat16))); // dtypes differ
        Assert.False(Dense.TakesConvPath(lin, torch.randn(new long[] { 4, 100, 256 }, dtype: ScalarType.Float64)));
        Assert.False(Dense.TakesConvPath(lin, torch.randn(4, 100, 255)));                 // wrong width: the Linear's own error
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Bf16InferenceTakesTheConvolutionWithTheLinearsValues(bool bias)
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(12);
        var lin = nn.Linear(240, 72, hasBias: bias);
        lin.to(ScalarType.BFloat16);
        var x = torch.randn(new long[] { 8, 197, 240 }).to(ScalarType.BFloat16);
        using var noGrad = torch.no_grad();
        Tensor viaConv = null!;
        WithBf16Convolution(true, () =>
        {
            Assert.True(Dense.TakesConvPath(lin, x));
            viaConv = Dense.Forward(lin, x);
        });
        Assert.Equal(new long[] { 8, 197, 72 }, viaConv.shape);
        var exact = nn.functional.linear(x.to(ScalarType.Float32), lin.weight!.to(ScalarType.Float32), lin.bias?.to(ScalarType.Float32));
        AssertBf16NoFurtherThanMatmul(exact, viaConv, lin.call(x), "output");
    }

    private static void WithBf16Convolution(bool on, Action body)
    {
        bool was = Dense.Bf16Convolution;
        Dense.Bf16Convolution = on;
        try { body(); }
        finally { Dense.Bf16Convolution = was; }
    }

    [Theory]
    [InlineData(null, false, true)]      // Zen 4, Intel: the convolution
    [InlineData(null, true, false)]      // Zen 5 and later: the matmul
    [InlineData("conv", true, true)]
    [InlineData(" Matmul ", false, false)]
    [InlineData("other", true, false)]   // not a setting: the CPU decides
    public void Bf16LinearPathFollowsTheCpuUnlessSet(string? setting, bool zen5, bool convolution) =>
        Assert.Equal(convolution, Dense.DefaultBf16Convolution(setting, zen5));

    [Theory]
    [InlineData(0x00A10F11, 0x19)] // EPYC Genoa (Zen 4): base 0xF + extended 0xA
    [InlineData(0x00B00F21, 0x1A)] // EPYC Turin (Zen 5)
    [InlineData(0x000806F8, 0x6)]  // Xeon Sapphire Rapids: base 6, extended ignored
    public void DisplayFamilyAddsTheExtendedFamilyOnlyToBaseF(int eax, int family)
    {
        Assert.Equal(family, CpuModel.DisplayFamily(eax));
        Assert.Equal(family >= 0x1A, CpuModel.IsAmdZen5OrLaterFamily("AuthenticAMD", family));
        Assert.False(CpuModel.IsAmdZen5OrLaterFamily("GenuineIntel", family));
    }

    /// <summary>
    /// A bf16 result of the convolution path against the fp32 <paramref name="exact"/> one: within one bf16 rounding of
    /// its largest value (both paths accumulate in fp32 and round once, about 2⁻⁸ relative), and no further from it than
    /// libtorch's bf16 matmul path's result.
    /// </summary>
    private static void AssertBf16NoFurtherThanMatmul(Tensor exact, Tensor viaConv, Tensor viaMatmul, string what)
    {
        Assert.Equal(ScalarType.BFloat16, viaConv.dtype);
        Assert.Equal(exact.shape, viaConv.shape);
        double scale = exact.abs().max().item<float>();
        double convErr = (viaConv.to(ScalarType.Float32) - exact).abs().max().item<float>();
        double plainErr = (viaMatmul.to(ScalarType.Float32) - exact).abs().max().item<float>();
        Assert.True(convErr <= scale / 128, $"{what}: convolution path off by {convErr:E3} (max {scale:E3})");
        Assert.True(convErr <= 2 * plainErr + scale / 512, $"{what}: convolution path off by {convErr:E3}, matmul by {plainErr:E3}");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Bf16TrainingTakesTheConvolutionWithTheLinearsGradients(bool bias)
    {
        // A bf16 linear with autograd goes through the convolution too: its output and the input, weight and bias
        // gradients within bf16 rounding of an fp32 reference (the same bf16 values, computed in fp32), and no further
        // from it than libtorch's bf16 matmul path (Bf16Training off) is.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(13);
        var lin = nn.Linear(64, 192, hasBias: bias);
        lin.to(ScalarType.BFloat16);
        var x0 = torch.randn(new long[] { 8, 784, 64 }).to(ScalarType.BFloat16);
        var g = torch.randn(new long[] { 8, 784, 192 }).to(ScalarType.BFloat16);
        var ps = bias ? new[] { lin.weight!, lin.bias! } : new[] { lin.weight! };
        List<Tensor> Run(bool conv)
        {
            bool was = Dense.Bf16Training, wasConv = Dense.Bf16Convolution;
            Dense.Bf16Training = conv;
            Dense.Bf16Convolution = true;
            try
            {
                var x = x0.detach().requires_grad_(true);
                Assert.Equal(conv, Dense.TakesConvPath(lin, x));
                var y = Dense.Forward(lin, x);
                var grads = torch.autograd.grad([y], [x, .. ps], [g]);
                return [y.detach(), .. grads];
            }
            finally { Dense.Bf16Training = was; Dense.Bf16Convolution = wasConv; }
        }
        var viaConv = Run(true);
        var viaMatmul = Run(false);
        var xf = x0.to(ScalarType.Float32).requires_grad_(true);
        var pf = ps.Select(p => p.detach().to(ScalarType.Float32).requires_grad_(true)).ToArray();
        var yf = nn.functional.linear(xf, pf[0], bias ? pf[1] : null);
        List<Tensor> exact = [yf.detach(), .. torch.autograd.grad([yf], [xf, .. pf], [g.to(ScalarType.Float32)])];
        string[] names = ["output", "input gradient", "weight gradient", "bias gradient"];
        for (int i = 0; i < exact.Count; i++) AssertBf16NoFurtherThanMatmul(exact[i], viaConv[i], viaMatmul[i], names[i]);
    }

    [Fact]
    public void ChannelsLastKeepsShapeAndValuesAndPassesGradients()
    {
        using var _ = torch.NewDisposeScope();
        var x = torch.randn(new long[] { 2, 3, 5, 7 }, requires_grad: true);
        Assert.False(Layout.IsChannelsLast(x));
        var y = Layout.ToChannelsLast(x);
        Assert.Equal(x.shape, y.shape);
        Assert.Equal(new long[] { 3 * 5 * 7, 1, 7 * 3, 3 }, y.stride());
        Assert.True(Layout.IsChannelsLast(y));
        Assert.True(x.allclose(y, rtol: 0, atol: 0));
        Assert.Same(y, Layout.ToChannelsLast(y)); // already channels-last: no copy
        (y * torch.arange(y.numel()).view(y.shape)).sum().backward();
        Assert.True(x.grad!.allclose(torch.arange(x.numel()).view(x.shape).to(ScalarType.Float32), rtol: 0, atol: 0));
        Assert.Throws<ArgumentException>(() => Layout.ToChannelsLast(torch.randn(3, 4)));
    }

    [Fact]
    public void ChannelsLastStemMatchesTheContiguousStem()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(11);
        var stem = new PatchEmbed4_2(3, 8, 24);
        stem.train();
        var x = torch.randn(2, 3, 64, 64);
        var cl = stem.Forward(x, channelsLast: true);
        var expected = stem.Forward(x, channelsLast: false);
        Assert.True(expected.is_contiguous());
        AssertClose(expected, cl);
        Assert.True(Layout.IsChannelsLast(cl)); // the projection's output is laid out as tokens already
    }
    [Theory]
    [InlineData(true)]  // LV-ViT: q scaled before the product
    [InlineData(false)] // T2T-ViT's backbone: the product scaled
    public void ExplicitAttentionMatchesTheFusedOne(bool scaleQueryFirst)
    {
        // Capturing the probabilities takes the explicit path; in fp32 the plain forward takes libtorch's fused kernel.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(4);
        var attention = new Attention(64, 4, scaleQueryFirst: scaleQueryFirst);
        var x = torch.randn(3, 21, 64).requires_grad_(true);
        var fused = attention.call(x);
        var explicitOut = attention.Forward(x, out var probabilities, captureAttention: true);
        AssertClose(fused, explicitOut, 1e-5, 1e-6);
        Assert.NotNull(probabilities);
        AssertClose(torch.ones(3, 4, 21), probabilities!.sum(-1), 1e-5, 1e-6);
        var g = torch.randn(fused.shape);
        AssertClose(torch.autograd.grad([fused], [x], [g])[0], torch.autograd.grad([explicitOut], [x], [g])[0], 1e-5, 1e-6);
    }

    [Fact]
    public void ShortSequencesInferExplicitlyAndTrainFused()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(6);
        var attention = new Attention(64, 4);
        var shortX = torch.randn(2, 21, 64);
        var longX = torch.randn(1, Attention.ExplicitInferenceTokens, 64);
        Assert.True(attention.TakesFused(shortX, captureAttention: false));       // with gradients: the fused kernel
        using (torch.no_grad())
        {
            Assert.False(attention.TakesFused(shortX, captureAttention: false));  // inference, short: explicit
            Assert.True(attention.TakesFused(longX, captureAttention: false));    // inference from 512 tokens: fused
            long rows = Attention.ExplicitInferenceElements / (4 * 21 * 21);            // batch whose probabilities just fit
            Assert.False(attention.TakesFused(torch.empty(rows, 21, 64), captureAttention: false));
            Assert.True(attention.TakesFused(torch.empty(rows + 1, 21, 64), captureAttention: false)); // past 2^24 elements: fused
            Assert.False(attention.TakesFused(shortX.to(ScalarType.BFloat16), captureAttention: false));
            // The inference output is the explicit path's (the one capturing probabilities) bit for bit.
            var inferred = attention.call(shortX);
            var explicitOut = attention.Forward(shortX, out var probabilities, captureAttention: true);
            Assert.NotNull(probabilities);
            Assert.True(inferred.equal(explicitOut).all().item<bool>());
            bool was = Attention.ExplicitShortInference;
            try
            {
                Attention.ExplicitShortInference = false; // ALLTOKENS_ATTENTION=fused
                Assert.True(attention.TakesFused(shortX, captureAttention: false));
                AssertClose(explicitOut, attention.call(shortX), 1e-5, 1e-6);
            }
            finally { Attention.ExplicitShortInference = was; }
        }
    }

    [Theory]
    [InlineData(64, true)]   // head_dim 16: scale 1/4, exact
    [InlineData(256, true)]  // head_dim 64 (t2t_vit_7's): scale 1/8, exact
    [InlineData(96, false)]  // head_dim 24: not a power of two, the product is scaled as written
    public void PowerOfTwoScaleMovesOntoQueryBitForBit(long dim, bool powerOfTwo)
    {
        // T2T-ViT scales q·kᵀ; with a power-of-two scale, scaling q first is exact, so the bf16 explicit path (which
        // takes it) equals the product-scaled formula bit for bit, forward and backward.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(5);
        var attention = new Attention(dim, 4, scaleQueryFirst: false);
        Assert.Equal(powerOfTwo, Attention.IsPowerOfTwo(attention.Scale));
        attention.to(ScalarType.BFloat16);
        var x = torch.randn(new long[] { 2, 17, dim }).to(ScalarType.BFloat16).requires_grad_(true);
        var y = attention.call(x);
        // The formula as T2T-ViT writes it: (q·kᵀ)·scale.
        var x2 = x.detach().requires_grad_(true);
        long b = 2, n = 17, hd = dim / 4;
        var qkv = nn.functional.linear(x2, attention.Qkv.weight!, attention.Qkv.bias).reshape(b, n, 3, 4, hd).permute(2, 0, 3, 1, 4);
        var attn = (qkv[0].matmul(qkv[1].transpose(-2, -1)) * attention.Scale).softmax(-1);
        var reference = nn.functional.linear(attn.matmul(qkv[2]).transpose(1, 2).reshape(b, n, dim), attention.Proj.weight!, attention.Proj.bias);
        var g = torch.randn(y.shape).to(ScalarType.BFloat16);
        var gx = torch.autograd.grad([y], [x], [g])[0];
        var gx2 = torch.autograd.grad([reference], [x2], [g])[0];
        if (powerOfTwo)
        {
            Assert.True(y.eq(reference).all().item<bool>(), "forward differs");
            Assert.True(gx.eq(gx2).all().item<bool>(), "input gradient differs");
        }
        Assert.True((y.to(ScalarType.Float32) - reference.to(ScalarType.Float32)).abs().max().item<float>() <= 0.05f);
        Assert.False(Attention.IsPowerOfTwo(0.3));
        Assert.True(Attention.IsPowerOfTwo(-0.5));
        Assert.False(Attention.IsPowerOfTwo(double.Epsilon)); // subnormal
    }
}
