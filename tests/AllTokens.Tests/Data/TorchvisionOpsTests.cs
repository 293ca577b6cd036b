using AllTokens.Data;
using AllTokens.Data.Transforms;

namespace AllTokens.Tests.Data;

public class TorchvisionOpsTests
{
    [Theory]
    // (331 - 224) / 2 = 53.5 -> Python round() -> 54 (half to even); (300 - 224) / 2 = 38.
    [InlineData(331, 300, 224, 54, 38)]
    [InlineData(225, 225, 224, 0, 0)]     // round(0.5) = 0
    [InlineData(227, 229, 224, 2, 2)]     // round(1.5) = 2, round(2.5) = 2
    [InlineData(256, 341, 224, 16, 58)]   // round(16.0), round(58.5) = 58
    [InlineData(224, 224, 224, 0, 0)]
    public void CenterCropOriginUsesBankersRounding(int w, int h, int crop, int left, int top) =>
        Assert.Equal((left, top), TorchvisionOps.CenterCropOrigin(w, h, crop, crop));

    [Theory]
    [InlineData(500, 375, 256, 341, 256)]  // int(256 * 500 / 375) = int(341.33)
    [InlineData(375, 500, 256, 256, 341)]
    [InlineData(333, 500, 224, 224, 336)]  // int(336.34)
    [InlineData(300, 600, 224, 224, 448)]
    [InlineData(53, 41, 36, 46, 36)]       // int(46.54)
    [InlineData(7, 7, 3, 3, 3)]
    public void ShorterSideSizeTruncates(int w, int h, int size, int ew, int eh) =>
        Assert.Equal((ew, eh), TorchvisionOps.ShorterSideSize(w, h, size));

    [Fact]
    public void ResizeIsSkippedWhenShorterSideMatches()
    {
        RgbImage img = RgbImage.Black(40, 32);
        Assert.Same(img, TorchvisionOps.ResizeShorterSide(img, 32, Interpolation.Bicubic));
        Assert.Equal((40, 32), Dims(TorchvisionOps.ResizeShorterSide(img, 32, Interpolation.Nearest)));
        Assert.Equal((50, 40), Dims(TorchvisionOps.ResizeShorterSide(img, 40, Interpolation.Bilinear)));
    }

    [Fact]
    public void CenterCropPadsSmallImagesLikeTorchvision()
    {
        // 10 wide, 20 high, crop 13: pad left (13-10)//2 = 1, right (13-10+1)//2 = 2; then on the padded
        // 13x20 image top = round((20 - 13) / 2) = round(3.5) = 4.
        Assert.Equal((1, 0, 2, 0), TorchvisionOps.CenterCropPadding(10, 20, 13, 13));
        var px = new byte[10 * 20 * 3];
        for (int i = 0; i < px.Length; i++) px[i] = (byte)(1 + i % 250);
        var img = new RgbImage(10, 20, px);
        RgbImage c = TorchvisionOps.CenterCrop(img, 13, 13);
        Assert.Equal((13, 13), Dims(c));
        Assert.Equal(((byte)0, (byte)0, (byte)0), c.GetPixel(0, 5));
        Assert.Equal(img.GetPixel(0, 4), c.GetPixel(1, 0));
        Assert.Equal(img.GetPixel(9, 16), c.GetPixel(10, 12));
        Assert.Equal(((byte)0, (byte)0, (byte)0), c.GetPixel(11, 12));
        Assert.Equal(((byte)0, (byte)0, (byte)0), c.GetPixel(12, 0));
    }

    [Fact]
    public void CenterCropOfExactlyPaddedImage()
    {
        var px = new byte[10 * 10 * 3];
        Array.Fill(px, (byte)9);
        RgbImage c = TorchvisionOps.CenterCrop(new RgbImage(10, 10, px), 13, 13);
        Assert.Equal((13, 13), Dims(c));
        Assert.Equal(((byte)9, (byte)9, (byte)9), c.GetPixel(1, 1));   // left/top padding 1
        Assert.Equal(((byte)9, (byte)9, (byte)9), c.GetPixel(10, 10));
        Assert.Equal(((byte)0, (byte)0, (byte)0), c.GetPixel(11, 11)); // right/bottom padding 2
    }

    [Fact]
    public void CenterCropBoxOn331x300()
    {
        var px = new byte[331 * 300 * 3];
        for (int y = 0; y < 300; y++)
            for (int x = 0; x < 331; x++)
            {
                int i = (y * 331 + x) * 3;
                px[i] = (byte)x; px[i + 1] = (byte)(x >> 8); px[i + 2] = (byte)y;
            }
        RgbImage c = TorchvisionOps.CenterCrop(new RgbImage(331, 300, px), 224, 224);
        Assert.Equal(((byte)54, (byte)0, (byte)38), c.GetPixel(0, 0));
        Assert.Equal(((byte)(277 & 255), (byte)1, (byte)(261 & 255)), c.GetPixel(223, 223));
    }

    private static (int, int) Dims(RgbImage i) => (i.Width, i.Height);
}
