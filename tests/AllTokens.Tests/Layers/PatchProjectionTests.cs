using AllTokens.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Layers;

public class PatchProjectionTests
{
    [Theory]
    [InlineData(2, 16, 32, 24, 8, 40, true)]   // LV-ViT's 8×8/s8 projection, small
    [InlineData(1, 5, 12, 20, 4, 7, false)]    // odd channel counts, non-square, no bias
    [InlineData(3, 3, 6, 6, 3, 9, true)]       // k = 3, one row of patches per 3 pixel rows
    public void PatchesThroughALinearGiveTheConvolutionsValuesAndGradients(int b, int c, int h, int w, int k, int d, bool bias)
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(21);
        var conv = nn.Conv2d(c, d, k, stride: k, bias: bias);
        var x0 = Layout.ToChannelsLast(torch.randn(b, c, h, w));
        Assert.True(PatchProjection.Applies(conv, x0));

        var x1 = x0.detach().requires_grad_(true);
        var y1 = conv.call(x1);
        var g = torch.randn(y1.shape);
        y1.backward([g]);
        var (gx1, gw1, gb1) = (x1.grad!.clone(), conv.weight!.grad!.clone(), conv.bias?.grad?.clone());
        conv.zero_grad();

        var x2 = x0.detach().requires_grad_(true);
        PatchProjection.TrainingNeedsSoundConvolution = false; // the linear's backward, whatever Dense would do here
        Tensor y2;
        try { y2 = PatchProjection.Forward(conv, x2); }
        finally { PatchProjection.TrainingNeedsSoundConvolution = true; }
        Assert.Equal(y1.shape, y2.shape);
        Assert.True(Layout.IsChannelsLast(y2), "the output keeps the convolution's channels-last layout");
        y2.backward([g]);
        KernelPathTests.AssertClose(y1, y2);
        KernelPathTests.AssertClose(gx1, x2.grad!);
        KernelPathTests.AssertClose(gw1, conv.weight!.grad!);
        if (bias) KernelPathTests.AssertClose(gb1!, conv.bias!.grad!);
        Assert.Equal(new long[] { d, c, k, k }, conv.weight!.shape); // the parameter keeps the convolution's shape
    }

    [Fact]
    public void AProductKnownWrongGoesStraightToTheConvolutionInTraining()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(23);
        var conv = nn.Conv2d(16, 256, 4, stride: 4); // patches [2, 256, 256] → 256: large enough for Dense's convolution
        var x = Layout.ToChannelsLast(torch.randn(2, 16, 64, 64)).requires_grad_(true);
        var viaConv = conv.call(x);
        var original = Dense.CheckedConvolution;
        Dense.ForgetCheckedShapes();
        try
        {
            Assert.False(Dense.KnownUnsound(x.dtype, 2, 256, 256, 256, bias: true, gradient: true)); // not checked yet
            Dense.CheckedConvolution = (w, b, input) => original(w, b, input) * 1.01; // a wrong kernel
            Assert.Equal(0.0, (PatchProjection.Forward(conv, x) - viaConv).abs().max().item<float>()); // checked: the convolution
            Assert.Single(Dense.CheckedShapes);
            Assert.False(Dense.CheckedShapes.Values.Single());
            Assert.True(Dense.KnownUnsound(x.dtype, 2, 256, 256, 256, bias: true, gradient: true));
            Assert.False(Dense.KnownUnsound(x.dtype, 2, 256, 256, 256, bias: true, gradient: false)); // another shape
            Assert.Equal(0.0, (PatchProjection.Forward(conv, x) - viaConv).abs().max().item<float>()); // the cached verdict
            Assert.Single(Dense.CheckedShapes);
        }
        finally
        {
            Dense.CheckedConvolution = original;
            Dense.ForgetCheckedShapes();
        }
    }

    [Fact]
    public void TrainingKeepsTheConvolutionWhereDenseWouldNotRunTheProductAsItsConvolution()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(22);
        var conv = nn.Conv2d(8, 12, 4, stride: 4); // [1, 4, 128] → 12: too small a product for Dense's convolution
        var x = Layout.ToChannelsLast(torch.randn(1, 8, 8, 8)).requires_grad_(true);
        var viaConv = conv.call(x);
        Assert.Equal(0.0, (PatchProjection.Forward(conv, x) - viaConv).abs().max().item<float>()); // the convolution, bit for bit
        using (torch.no_grad())
        {
            var inference = PatchProjection.Forward(conv, x); // no gradients: the linear over the patches
            KernelPathTests.AssertClose(viaConv.detach(), inference);
            var patches = x.permute(0, 2, 3, 1).reshape(1, 2, 4, 2, 4, 8).permute(0, 1, 3, 2, 4, 5).reshape(1, 4, 128);
            var plain = nn.functional.linear(patches, conv.weight!.permute(0, 2, 3, 1).reshape(12, 128), conv.bias);
            Assert.Equal(0.0, (plain.view(1, 2, 2, 12).permute(0, 3, 1, 2) - inference).abs().max().item<float>());
        }
    }

    [Fact]
    public void OtherConvolutionsAndLayoutsKeepTheConvolution()
    {
        using var _ = torch.NewDisposeScope();
        var proj = nn.Conv2d(4, 6, 4, stride: 4);
        var nhwc = Layout.ToChannelsLast(torch.randn(1, 4, 8, 8));
        Assert.True(PatchProjection.Applies(proj, nhwc));
        Assert.False(PatchProjection.Applies(proj, torch.randn(1, 4, 8, 8)));                         // NCHW
        Assert.False(PatchProjection.Applies(proj, Layout.ToChannelsLast(torch.randn(1, 4, 10, 8)))); // 10 not a multiple of 4
        Assert.False(PatchProjection.Applies(nn.Conv2d(4, 6, 4, stride: 2), nhwc));                   // overlapping windows
        Assert.False(PatchProjection.Applies(nn.Conv2d(4, 6, 4, stride: 4, padding: 1), nhwc));
        Assert.True(PatchProjection.Applies(nn.Conv2d(4, 6, 3, stride: 3), Layout.ToChannelsLast(torch.randn(1, 4, 9, 9))));
        var grouped = nn.Conv2d(4, 6, 4, stride: 4, groups: 2);
        Assert.False(PatchProjection.Applies(grouped, nhwc));
        // Where it does not apply, Forward is the convolution itself.
        var x = torch.randn(1, 4, 8, 8);
        Assert.Equal(0.0, (PatchProjection.Forward(proj, x) - proj.call(x)).abs().max().item<float>());
    }
}
