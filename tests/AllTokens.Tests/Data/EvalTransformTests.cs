using AllTokens.Data;
using AllTokens.Data.Transforms;

namespace AllTokens.Tests.Data;

public class EvalTransformTests
{
    public static TheoryData<string> EvalCases()
    {
        var data = new TheoryData<string>();
        foreach (var c in ImageFixtures.Cases("eval"))
            data.Add(c.GetProperty("expected").GetString()!);
        return data;
    }

    [Theory]
    [MemberData(nameof(EvalCases))]
    public void MatchesTorchvisionPipeline(string expectedFile)
    {
        var c = ImageFixtures.Case("eval", "expected", expectedFile);
        RgbImage src = ImageFixtures.RawImage(c.GetProperty("source").GetString()!,
            c.GetProperty("sourceWidth").GetInt32(), c.GetProperty("sourceHeight").GetInt32());
        int size = c.GetProperty("imgSize").GetInt32();
        var t = new EvalTransform(new EvalTransformOptions(size, c.GetProperty("cropPct").GetDouble(),
            ImageFixtures.Filter(c.GetProperty("filter").GetString()!)));
        float[] actual = t.Apply(src);
        float[] expected = ImageFixtures.Floats(expectedFile);
        Assert.Equal(3 * size * size, expected.Length);
        Assert.Equal(expected.Length, actual.Length);
        double maxDiff = 0;
        for (int i = 0; i < expected.Length; i++)
            maxDiff = Math.Max(maxDiff, Math.Abs(expected[i] - actual[i]));
        Assert.True(maxDiff <= 1e-6, $"max abs difference {maxDiff}");
    }

    [Fact]
    public void SquareImageAtCropPctOneIsPixelExact()
    {
        const int R = 16;
        RgbImage src = ImageFixtures.RawImage("src_16x16.rgb", R, R);
        var t = new EvalTransform(new EvalTransformOptions(R, 1.0));
        Assert.Equal(R, t.Options.ScaleSize);
        float[] mean = [0.485f, 0.456f, 0.406f], std = [0.229f, 0.224f, 0.225f];
        float[] chw = t.Apply(src);
        using var tensor = t.ToTensor(src);
        Assert.Equal(new long[] { 3, R, R }, tensor.shape);
        float[] fromTensor = tensor.data<float>().ToArray();
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < R; y++)
                for (int x = 0; x < R; x++)
                {
                    float want = (src.Pixels[(y * R + x) * 3 + c] / 255f - mean[c]) / std[c];
                    Assert.Equal(want, chw[(c * R + y) * R + x]);
                    Assert.Equal(want, fromTensor[(c * R + y) * R + x]);
                }
    }

    [Fact]
    public void BatchStacksImages()
    {
        RgbImage a = ImageFixtures.RawImage("src_53x41.rgb", 53, 41);
        RgbImage b = ImageFixtures.RawImage("src_29x47.rgb", 29, 47);
        var t = new EvalTransform(new EvalTransformOptions(ImgSize: 24, Interpolation: Interpolation.Bilinear));
        using var batch = t.ToBatch([a, b]);
        Assert.Equal(new long[] { 2, 3, 24, 24 }, batch.shape);
        float[] all = batch.data<float>().ToArray();
        Assert.Equal(t.Apply(a), all[..(3 * 24 * 24)]);
        Assert.Equal(t.Apply(b), all[(3 * 24 * 24)..]);
    }

    [Theory]
    [InlineData(224, 0.875, 256)]
    [InlineData(224, 0.9, 248)]   // floor(248.89)
    [InlineData(32, 0.875, 36)]   // floor(36.57)
    [InlineData(384, 1.0, 384)]
    public void ScaleSizeIsFloorOfSizeOverCropPct(int size, double pct, int expected) =>
        Assert.Equal(expected, new EvalTransformOptions(size, pct).ScaleSize);

    [Fact]
    public void DefaultsAreTimmImageNet()
    {
        var o = new EvalTransform().Options;
        Assert.Equal(224, o.ImgSize);
        Assert.Equal(0.875, o.CropPct);
        Assert.Equal(Interpolation.Bicubic, o.Interpolation);
        Assert.Equal([0.485f, 0.456f, 0.406f], o.Mean);
        Assert.Equal([0.229f, 0.224f, 0.225f], o.Std);
    }

    [Fact]
    public void CropLargerThanResizedImageIsZeroPadded()
    {
        // CropPct > 1: resize the shorter side to floor(8 / 1.25) = 6, then center-crop 8 with padding 1/1.
        var px = new byte[6 * 6 * 3];
        Array.Fill(px, (byte)255);
        var t = new EvalTransform(new EvalTransformOptions(8, 1.25, Mean: [0f, 0f, 0f], Std: [1f, 1f, 1f]));
        RgbImage cropped = t.ResizeAndCrop(new RgbImage(6, 6, px));
        Assert.Equal((8, 8), (cropped.Width, cropped.Height));
        float[] chw = t.Apply(new RgbImage(6, 6, px));
        Assert.Equal(0f, chw[0]);          // (0, 0) is padding
        Assert.Equal(1f, chw[1 * 8 + 1]);  // (1, 1) is the image
        Assert.Equal(0f, chw[7 * 8 + 7]);
    }

    [Fact]
    public void RejectsBadOptions()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new EvalTransform(new EvalTransformOptions(0)));
        Assert.Throws<ArgumentOutOfRangeException>(() => new EvalTransform(new EvalTransformOptions(224, 0)));
        Assert.Throws<ArgumentException>(() => new EvalTransform(new EvalTransformOptions(Mean: [0.5f])));
        Assert.Throws<ArgumentException>(() => new EvalTransform(new EvalTransformOptions(Std: [1f, 0f, 1f])));
    }

    [Fact]
    public void EvalInterpolationNamesAreTimms()
    {
        Assert.Equal(Interpolation.Bicubic, EvalInterpolation.Parse("bicubic"));
        Assert.Equal(Interpolation.Bilinear, EvalInterpolation.Parse("bilinear"));
        Assert.Throws<ArgumentException>(() => EvalInterpolation.Parse("nearest"));
        Assert.Throws<ArgumentException>(() => EvalInterpolation.Parse("Bicubic"));
    }
}
