using AllTokens.Data;

namespace AllTokens.Tests.Data;

public class RgbImageTests
{
    private static RgbImage Numbered(int w, int h)
    {
        var px = new byte[w * h * 3];
        for (int i = 0; i < px.Length; i++) px[i] = (byte)i;
        return new RgbImage(w, h, px);
    }

    [Fact]
    public void GetPixelReadsHwc()
    {
        RgbImage img = Numbered(4, 3);
        Assert.Equal(((byte)21, (byte)22, (byte)23), img.GetPixel(3, 1)); // (1 * 4 + 3) * 3 = 21
        Assert.Throws<ArgumentOutOfRangeException>(() => img.GetPixel(4, 0));
    }

    [Fact]
    public void CropCopiesTheBox()
    {
        RgbImage img = Numbered(5, 4);
        RgbImage c = img.Crop(1, 2, 3, 2);
        Assert.Equal((3, 2), (c.Width, c.Height));
        for (int y = 0; y < 2; y++)
            for (int x = 0; x < 3; x++)
                Assert.Equal(img.GetPixel(x + 1, y + 2), c.GetPixel(x, y));
    }

    [Theory]
    [InlineData(-1, 0, 2, 2)]
    [InlineData(0, 0, 6, 1)]
    [InlineData(4, 3, 2, 1)]
    [InlineData(0, 0, 0, 1)]
    public void CropOutsideThrows(int left, int top, int w, int h) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => Numbered(5, 4).Crop(left, top, w, h));

    [Fact]
    public void FlipMirrorsRows()
    {
        RgbImage img = Numbered(3, 2);
        RgbImage f = img.FlipHorizontal();
        for (int y = 0; y < 2; y++)
            for (int x = 0; x < 3; x++)
                Assert.Equal(img.GetPixel(2 - x, y), f.GetPixel(x, y));
        Assert.Equal(img.Pixels, f.FlipHorizontal().Pixels);
    }

    [Fact]
    public void PadAddsBlackBorders()
    {
        RgbImage p = Numbered(2, 1).Pad(1, 2, 3, 0);
        Assert.Equal((6, 3), (p.Width, p.Height));
        Assert.Equal(((byte)0, (byte)1, (byte)2), p.GetPixel(1, 2));
        Assert.Equal(((byte)3, (byte)4, (byte)5), p.GetPixel(2, 2));
        Assert.Equal(5, p.Pixels.Count(b => b != 0)); // the source bytes 1..5; everything else is padding
    }

    [Fact]
    public void ConstructorChecksLength() =>
        Assert.Throws<ArgumentException>(() => new RgbImage(2, 2, new byte[11]));
}
