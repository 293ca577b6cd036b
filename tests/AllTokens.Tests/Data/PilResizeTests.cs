using AllTokens.Data;
using AllTokens.Data.Transforms;

namespace AllTokens.Tests.Data;

public class PilResizeTests
{
    public static TheoryData<string> ResizeCases()
    {
        var data = new TheoryData<string>();
        foreach (var c in ImageFixtures.Cases("resize"))
            data.Add(c.GetProperty("expected").GetString()!);
        return data;
    }

    [Theory]
    [MemberData(nameof(ResizeCases))]
    public void MatchesPillowBitExactly(string expectedFile)
    {
        var c = ImageFixtures.Case("resize", "expected", expectedFile);
        RgbImage src = ImageFixtures.RawImage(c.GetProperty("source").GetString()!,
            c.GetProperty("sourceWidth").GetInt32(), c.GetProperty("sourceHeight").GetInt32());
        int w = c.GetProperty("width").GetInt32(), h = c.GetProperty("height").GetInt32();
        RgbImage actual = PilResize.Resize(src, w, h, ImageFixtures.Filter(c.GetProperty("filter").GetString()!));
        Assert.Equal(w, actual.Width);
        Assert.Equal(h, actual.Height);
        byte[] expected = ImageFixtures.Bytes(expectedFile);
        Assert.True(expected.AsSpan().SequenceEqual(actual.Pixels), ImageFixtures.FirstDifference(expected, actual.Pixels, w));
    }

    [Theory]
    [InlineData(Interpolation.Nearest)]
    [InlineData(Interpolation.Bilinear)]
    [InlineData(Interpolation.Bicubic)]
    public void SameSizeIsIdentity(Interpolation filter)
    {
        RgbImage src = ImageFixtures.RawImage("src_37x23.rgb", 37, 23);
        RgbImage actual = PilResize.Resize(src, 37, 23, filter);
        Assert.Equal(src.Pixels, actual.Pixels);
        Assert.NotSame(src.Pixels, actual.Pixels);
    }

    [Theory]
    [InlineData(Interpolation.Bilinear)]
    [InlineData(Interpolation.Bicubic)]
    public void ConstantImageStaysConstant(Interpolation filter)
    {
        var px = new byte[13 * 9 * 3];
        for (int i = 0; i < px.Length; i += 3) { px[i] = 200; px[i + 1] = 7; px[i + 2] = 255; }
        RgbImage actual = PilResize.Resize(new RgbImage(13, 9, px), 31, 4, filter);
        for (int i = 0; i < actual.Pixels.Length; i += 3)
            Assert.Equal((200, 7, 255), (actual.Pixels[i], actual.Pixels[i + 1], actual.Pixels[i + 2]));
    }

    [Fact]
    public void NearestPicksPixelCenters()
    {
        // 4 -> 3 columns: scale 4/3, sources floor((x + 0.5) * 4/3) = 0, 2, 3.
        var px = new byte[4 * 1 * 3];
        for (int x = 0; x < 4; x++) px[x * 3] = (byte)(10 * x);
        RgbImage actual = PilResize.Resize(new RgbImage(4, 1, px), 3, 1, Interpolation.Nearest);
        Assert.Equal(new byte[] { 0, 20, 30 }, new[] { actual.Pixels[0], actual.Pixels[3], actual.Pixels[6] });
    }

    [Fact]
    public void NearestAccumulatesStepLikePillow()
    {
        // Pillow 9.4: Image.frombytes("L", (16, 1), bytes(range(16))).resize((24, 1), Image.NEAREST).
        // Exact arithmetic would give 3 at x = 4 (4.5 × 2/3); Pillow's running sum lands just below.
        int[] expected = [0, 1, 1, 2, 2, 3, 4, 5, 5, 6, 7, 7, 8, 9, 9, 10, 10, 11, 12, 12, 13, 14, 14, 15];
        var px = new byte[16 * 3];
        for (int x = 0; x < 16; x++) px[x * 3] = (byte)x;
        RgbImage actual = PilResize.Resize(new RgbImage(16, 1, px), 24, 1, Interpolation.Nearest);
        Assert.Equal(expected, Enumerable.Range(0, 24).Select(x => (int)actual.Pixels[x * 3]));
    }

    [Fact]
    public void RejectsNonPositiveTarget()
    {
        RgbImage src = RgbImage.Black(2, 2);
        Assert.Throws<ArgumentOutOfRangeException>(() => PilResize.Resize(src, 0, 2, Interpolation.Bicubic));
    }
}
