using AllTokens.Data;

namespace AllTokens.Tests.Data;

public class ImageDecoderTests
{
    public static TheoryData<string> DecodeCases()
    {
        var data = new TheoryData<string>();
        foreach (var c in ImageFixtures.Cases("decode"))
            data.Add(c.GetProperty("file").GetString()!);
        return data;
    }

    /// <summary>Lossless formats must decode exactly as Pillow's <c>Image.open(f).convert("RGB")</c>.
    /// JPEG decoders differ slightly between libjpeg(-turbo) builds (IDCT and chroma upsampling
    /// details), so the JPEG case is compared with a tolerance: max abs diff ≤ 3 and mean ≤ 1.</summary>
    [Theory]
    [MemberData(nameof(DecodeCases))]
    public void MatchesPillow(string file)
    {
        var c = ImageFixtures.Case("decode", "file", file);
        RgbImage img = ImageDecoder.Decode(ImageFixtures.PathOf(file));
        int w = c.GetProperty("width").GetInt32(), h = c.GetProperty("height").GetInt32();
        Assert.Equal((w, h), (img.Width, img.Height));
        byte[] expected = ImageFixtures.Bytes(file + ".decoded.rgb");
        if (c.GetProperty("exact").GetBoolean())
        {
            Assert.True(expected.AsSpan().SequenceEqual(img.Pixels), ImageFixtures.FirstDifference(expected, img.Pixels, w));
            return;
        }
        int max = 0;
        long sum = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            int d = Math.Abs(expected[i] - img.Pixels[i]);
            max = Math.Max(max, d);
            sum += d;
        }
        double mean = (double)sum / expected.Length;
        Assert.True(max <= 3 && mean <= 1.0, $"{file}: max abs diff {max}, mean {mean:F3}");
    }

    [Fact]
    public void DecodesFromMemory()
    {
        RgbImage img = ImageDecoder.Decode(ImageFixtures.Bytes("gradient_37x23.png"), "in-memory.png");
        Assert.Equal(ImageFixtures.Bytes("gradient_37x23.png.decoded.rgb"), img.Pixels);
    }

    [Theory]
    [InlineData("err_empty.png", "empty")]
    [InlineData("err_truncated.png", "truncated")]
    [InlineData("err_truncated.jpg", "truncated")]
    [InlineData("err_random.png", "unknown")]
    [InlineData("err_oversize.png", "20000x20000")]
    public void BrokenFilesThrowNamingTheFile(string file, string problem)
    {
        string path = ImageFixtures.PathOf(file);
        var e = Assert.Throws<ImageDecodeException>(() => ImageDecoder.Decode(path));
        Assert.Contains(file, e.Message);
        Assert.Contains(problem, e.Message);
        Assert.Equal(path, e.FileName);
    }

    [Fact]
    public void MissingFileThrowsNamingTheFile()
    {
        string path = Path.Combine(ImageFixtures.Dir, "no_such_image.png");
        var e = Assert.Throws<ImageDecodeException>(() => ImageDecoder.Decode(path));
        Assert.Contains("no_such_image.png", e.Message);
        Assert.Contains("not found", e.Message);
    }

    [Fact]
    public void CorruptPngDataThrows()
    {
        // Flip bytes inside the IDAT payload of a valid PNG: the zlib stream or the chunk CRC breaks.
        byte[] data = ImageFixtures.Bytes("gradient_37x23.png");
        int idat = data.AsSpan().IndexOf("IDAT"u8);
        Assert.True(idat > 0);
        for (int i = idat + 20; i < idat + 60; i++) data[i] ^= 0x5A;
        var e = Assert.Throws<ImageDecodeException>(() => ImageDecoder.Decode(data, "corrupt.png"));
        Assert.Contains("corrupt.png", e.Message);
    }

    [Fact]
    public void InMemoryErrorsUseTheGivenName()
    {
        var e = Assert.Throws<ImageDecodeException>(() => ImageDecoder.Decode(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 }, "upload #3"));
        Assert.StartsWith("upload #3: ", e.Message);
    }
}
