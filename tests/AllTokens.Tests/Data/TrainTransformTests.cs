using AllTokens.Data;
using AllTokens.Data.Transforms;

namespace AllTokens.Tests.Data;

public sealed class TrainTransformTests
{
    private static RgbImage Noise(int w, int h, int seed)
    {
        var rng = new SeededRandom((ulong)seed);
        var px = new byte[w * h * 3];
        for (int i = 0; i < px.Length; i++) px[i] = (byte)rng.NextInt(0, 255);
        return new RgbImage(w, h, px);
    }

    [Fact]
    public void SeededRandomStreamsAreReproducibleAndIndependent()
    {
        var a = SeededRandom.ForSample(7, 2, 11);
        var b = SeededRandom.ForSample(7, 2, 11);
        var xs = Enumerable.Range(0, 8).Select(_ => a.NextUInt64()).ToArray();
        Assert.Equal(xs, Enumerable.Range(0, 8).Select(_ => b.NextUInt64()));
        Assert.NotEqual(xs[0], SeededRandom.ForSample(7, 3, 11).NextUInt64());
        Assert.NotEqual(xs[0], SeededRandom.ForSample(7, 2, 12).NextUInt64());
        Assert.NotEqual(xs[0], SeededRandom.ForSample(8, 2, 11).NextUInt64());
        var r = new SeededRandom(1);
        var counts = new int[3];
        double sum = 0, sq = 0;
        for (int i = 0; i < 30000; i++)
        {
            counts[r.NextInt(4, 6) - 4]++;
            double g = r.NextGaussian();
            sum += g;
            sq += g * g;
        }
        Assert.All(counts, c => Assert.InRange(c, 9500, 10500));
        Assert.InRange(sum / 30000, -0.03, 0.03);
        Assert.InRange(sq / 30000, 0.95, 1.05);
    }

    [Fact]
    public void CropSizeFromDrawsUsesPythonRounding()
    {
        // 100×80, half the area at ratio 1.25: w = round(√5000) = 71, h = round(√3200) = 57.
        Assert.Equal((71, 57), RandomResizedCrop.SizeFromDraws(100, 80, 0.5, 1.25));
        // w = h = round(2.5) = 2 (half to even, as Python's round), not 3.
        Assert.Equal((2, 2), RandomResizedCrop.SizeFromDraws(10, 10, 0.0625, 1.0));
        Assert.Equal((4, 4), RandomResizedCrop.SizeFromDraws(10, 10, 0.1225, 1.0)); // round(3.5) = 4
        // The whole area at 4/3 needs w = 103 > 100: rejected.
        Assert.Null(RandomResizedCrop.SizeFromDraws(100, 80, 1.0, 4.0 / 3.0));
    }

    [Fact]
    public void CentreFallbackClampsTheRatio()
    {
        Assert.Equal(new CropBox(0, 36, 20, 27), RandomResizedCrop.CentreFallback(100, 20, 0.75, 4.0 / 3.0)); // w = round(20·4/3) = 27
        Assert.Equal(new CropBox(36, 0, 27, 20), RandomResizedCrop.CentreFallback(20, 100, 0.75, 4.0 / 3.0)); // h = round(20/0.75) = 27
        Assert.Equal(new CropBox(0, 0, 50, 60), RandomResizedCrop.CentreFallback(60, 50, 0.75, 4.0 / 3.0));
        // scale (1, 1) on a 100×20 image never fits at ratio ≤ 4/3, so every draw falls back.
        var rng = new SeededRandom(3);
        Assert.Equal(new CropBox(0, 36, 20, 27), RandomResizedCrop.GetParams(100, 20, (1, 1), (0.75, 4.0 / 3.0), rng));
    }

    [Fact]
    public void CropBoxesStayInsideWithAreaAndRatioInRange()
    {
        var rng = new SeededRandom(9);
        bool sawSmall = false, sawLarge = false;
        for (int i = 0; i < 2000; i++)
        {
            var b = RandomResizedCrop.GetParams(64, 48, (0.08, 1.0), (0.75, 4.0 / 3.0), rng);
            Assert.True(b.Top >= 0 && b.Left >= 0 && b.Top + b.Height <= 48 && b.Left + b.Width <= 64, b.ToString());
            Assert.Equal(Math.Floor(b.Top), b.Top);
            Assert.Equal(Math.Floor(b.Width), b.Width);
            double area = b.Width * b.Height / (64.0 * 48);
            // Rounding each side by up to 0.5 px moves the area a little past the bounds; the fallback is the full image.
            Assert.InRange(area, 0.08 * 0.8, 1.0);
            Assert.InRange(b.Width / b.Height, 0.75 * 0.85, 4.0 / 3.0 / 0.85);
            sawSmall |= area < 0.15;
            sawLarge |= area > 0.8;
        }
        Assert.True(sawSmall && sawLarge);
    }

    [Fact]
    public void ResizeAtScaleOneIsTheIdentityAndFlipMirrors()
    {
        var img = Noise(24, 24, 1);
        var plain = new TrainTransformOptions
        {
            ImgSize = 24, Scale = (1, 1), Ratio = (1, 1), HFlip = 0, AutoAugment = null, ColorJitter = null, ReProb = 0,
            Mean = [0, 0, 0], Std = [1, 1, 1], RecordAugments = true,
        };
        var (chw, rec) = new TrainTransform(plain).Apply(img, new SeededRandom(1));
        var expected = new float[chw.Length];
        TorchvisionOps.ToNormalizedChw(img, [0f, 0f, 0f], [1f, 1f, 1f], expected);
        Assert.Equal(expected, chw);
        Assert.Equal(new CropBox(0, 0, 24, 24), rec!.Crop);
        Assert.False(rec.Flipped);
        Assert.Empty(rec.Warps);

        var (flipped, rec2) = new TrainTransform(plain with { HFlip = 1 }).Apply(img, new SeededRandom(1));
        TorchvisionOps.ToNormalizedChw(img.FlipHorizontal(), [0f, 0f, 0f], [1f, 1f, 1f], expected);
        Assert.Equal(expected, flipped);
        Assert.True(rec2!.Flipped);
        Assert.Equal(img.GetPixel(0, 5).R / 255f, flipped[5 * 24 + 23]);
    }

    [Fact]
    public void RandAugmentParsesTimmStrings()
    {
        var o = RandAugmentOptions.Parse("rand-m9-mstd0.5-inc1");
        Assert.Equal((2, 9.0, 0.5, true), (o.NumOps, o.Magnitude, o.MagnitudeStd, o.Increasing));
        o = RandAugmentOptions.Parse("rand-n3-m7");
        Assert.Equal((3, 7.0, 0.0, false), (o.NumOps, o.Magnitude, o.MagnitudeStd, o.Increasing));
        Assert.Throws<FormatException>(() => RandAugmentOptions.Parse("v0"));
        Assert.Contains("unknown RandAugment key 'x'", Assert.Throws<FormatException>(() => RandAugmentOptions.Parse("rand-x3")).Message);
        Assert.Throws<FormatException>(() => RandAugmentOptions.Parse("rand-mfoo"));
        Assert.Equal(15, RandAugment.AllOps.Count);
        Assert.Equal(((byte)124, (byte)116, (byte)104), RandAugment.FillFromMean([0.485f, 0.456f, 0.406f]));
    }

    [Fact]
    public void RandAugmentOpLevelsFollowTimm()
    {
        var img = Noise(13, 11, 2);
        var fill = ((byte)124, (byte)116, (byte)104);
        var inc = new RandAugment(new RandAugmentOptions(Increasing: true), fill, Interpolation.Bilinear);
        var plain = new RandAugment(new RandAugmentOptions(Increasing: false), fill, Interpolation.Bilinear);
        var rng = new SeededRandom(4);
        // Posterize: inc keeps 4 − int(0.9·4) = 1 bit; plain keeps int(0.9·4) = 3.
        Assert.Equal(PilOps.Posterize(img, 1).Pixels, inc.ApplyOp(img, RandAugmentOp.Posterize, 9, rng).Pixels);
        Assert.Equal(PilOps.Posterize(img, 3).Pixels, plain.ApplyOp(img, RandAugmentOp.Posterize, 9, rng).Pixels);
        // Solarize: inc threshold 256 − int(0.9·256) = 26; plain 230. SolarizeAdd adds int(0.9·110) = 99.
        Assert.Equal(PilOps.Solarize(img, 26).Pixels, inc.ApplyOp(img, RandAugmentOp.Solarize, 9, rng).Pixels);
        Assert.Equal(PilOps.Solarize(img, 230).Pixels, plain.ApplyOp(img, RandAugmentOp.Solarize, 9, rng).Pixels);
        Assert.Equal(PilOps.SolarizeAdd(img, 99).Pixels, inc.ApplyOp(img, RandAugmentOp.SolarizeAdd, 9, rng).Pixels);
        // Enhance: inc factor 1 ± 0.5·0.9 = 0.55 or 1.45; plain 0.5·1.8 + 0.1 = 1.0 (no change).
        var color = inc.ApplyOp(img, RandAugmentOp.Color, 5, rng).Pixels;
        Assert.True(color.SequenceEqual(PilOps.Color(img, 1.45).Pixels) || color.SequenceEqual(PilOps.Color(img, 0.55).Pixels));
        Assert.Equal(img.Pixels, plain.ApplyOp(img, RandAugmentOp.Contrast, 5, rng).Pixels);
        // Geometric ops: the recorded matrix is the one applied, with timm's magnitudes.
        bool sawPlus = false, sawMinus = false;
        for (int i = 0; i < 20; i++)
        {
            var warps = new List<Affine2D>();
            var outRot = inc.ApplyOp(img, RandAugmentOp.Rotate, 10, rng, warps);
            var m = Assert.Single(warps);
            bool plus = m == PilAffine.RotationMatrix(13, 11, 30);
            Assert.True(plus || m == PilAffine.RotationMatrix(13, 11, -30));
            Assert.Equal(PilAffine.Rotate(img, plus ? 30 : -30, Interpolation.Bilinear, fill, out _).Pixels, outRot.Pixels);
            sawPlus |= plus;
            sawMinus |= !plus;
            warps.Clear();
            inc.ApplyOp(img, RandAugmentOp.TranslateXRel, 5, rng, warps);
            Assert.Equal(0.225 * 13, Math.Abs(warps[0].C), 12);
            inc.ApplyOp(img, RandAugmentOp.ShearY, 5, rng, warps);
            Assert.Equal(0.15, Math.Abs(warps[1].D), 12);
        }
        Assert.True(sawPlus && sawMinus);
    }

    [Fact]
    public void RandomErasingAreasStayInBounds()
    {
        var erase = new RandomErasing(1.0, EraseMode.Pixel);
        const int h = 30, w = 40;
        for (int seed = 0; seed < 300; seed++)
        {
            var chw = new float[3 * h * w];
            Array.Fill(chw, 7f);
            var boxes = erase.Apply(chw, 3, h, w, new SeededRandom((ulong)seed));
            if (boxes.Count == 0) continue; // all 10 tries may miss (tall/wide boxes at large areas)
            var (top, left, bh, bw) = Assert.Single(boxes);
            double area = (double)bh * bw / (h * w);
            Assert.InRange(area, 0.02 * 0.6, 1.0 / 3 * 1.3);
            Assert.True(top + bh <= h && left + bw <= w && bw < w && bh < h);
            for (int c = 0; c < 3; c++)
                for (int y = 0; y < h; y++)
                    for (int x = 0; x < w; x++)
                    {
                        bool inside = y >= top && y < top + bh && x >= left && x < left + bw;
                        Assert.Equal(!inside, chw[c * h * w + y * w + x] == 7f);
                    }
        }
        var none = new float[3 * h * w];
        Assert.Empty(new RandomErasing(0.0).Apply(none, 3, h, w, new SeededRandom(1)));
        Assert.All(none, v => Assert.Equal(0f, v));
    }

    [Fact]
    public void ColorJitterIsSeededAndZeroIsIdentity()
    {
        var img = Noise(9, 7, 3);
        Assert.Equal(img.Pixels, new ColorJitter(0, 0, 0).Apply(img, new SeededRandom(1)).Pixels);
        var a = new ColorJitter(0.4, 0.4, 0.4).Apply(img, new SeededRandom(5)).Pixels;
        Assert.Equal(a, new ColorJitter(0.4, 0.4, 0.4).Apply(img, new SeededRandom(5)).Pixels);
        Assert.NotEqual(img.Pixels, a);
        // Brightness only: one factor in [0.6, 1.4], exactly Pillow's Brightness at that factor.
        var rng = new SeededRandom(8);
        var shuffled = new SeededRandom(8);
        shuffled.Shuffle(new int[4]);
        double f = shuffled.Uniform(0.6, 1.4);
        Assert.Equal(PilOps.Brightness(img, f).Pixels, new ColorJitter(0.4, 0, 0).Apply(img, rng).Pixels);
    }

    /// <summary>An image whose red channel encodes x (4 per pixel) and green y (4 per pixel), blue 0.</summary>
    private static RgbImage Coordinates(int w, int h)
    {
        var px = new byte[w * h * 3];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                px[(y * w + x) * 3] = (byte)(4 * x + 2);
                px[(y * w + x) * 3 + 1] = (byte)(4 * y + 2);
            }
        return new RgbImage(w, h, px);
    }

    [Theory]
    [InlineData(AugmentOrder.Timm)]
    [InlineData(AugmentOrder.TokenLabel)]
    public void RecordMapsOutputPixelsToWhereTheImageTookThem(AugmentOrder order)
    {
        // Geometric RandAugment ops only, so every output pixel still carries its source coordinates; bilinear resampling
        // reproduces the linear ramps exactly up to 8-bit truncation away from the borders.
        const int w = 60, h = 50, size = 40;
        var src = Coordinates(w, h);
        var t = new TrainTransform(new TrainTransformOptions
        {
            ImgSize = size, Scale = (0.3, 1.0), Interpolation = TrainInterpolation.Bilinear, AutoAugment = "rand-n3-m9-mstd0.5",
            RandAugmentOps = [RandAugmentOp.Rotate, RandAugmentOp.ShearX, RandAugmentOp.ShearY, RandAugmentOp.TranslateXRel, RandAugmentOp.TranslateYRel],
            ReProb = 0, Order = order, RecordAugments = true,
        });
        var errors = new List<double>();
        int warped = 0, flipped = 0;
        for (int seed = 0; seed < 40; seed++)
        {
            var outImg = t.Augment(src, SeededRandom.ForSample(1, 0, seed), out var rec);
            Assert.Equal(order, rec.Order);
            Assert.Equal((w, h, size, size), (rec.SourceWidth, rec.SourceHeight, rec.OutputWidth, rec.OutputHeight));
            warped += rec.Warps.Count > 0 ? 1 : 0;
            flipped += rec.Flipped ? 1 : 0;
            for (int y = 0; y < size; y++)
                for (int x = 0; x < size; x++)
                {
                    var (r, g, b) = outImg.GetPixel(x, y);
                    if (b != 0) continue; // touched by the fill colour somewhere on the way
                    var (sx, sy) = rec.OutputToSource(x + 0.5, y + 0.5);
                    if (sx < 4 || sy < 4 || sx > w - 4 || sy > h - 4) continue; // border clamping bends the ramp
                    errors.Add(Math.Max(Math.Abs((r - 2) / 4.0 + 0.5 - sx), Math.Abs((g - 2) / 4.0 + 0.5 - sy)));
                }
        }
        Assert.InRange(warped, 20, 40);
        Assert.InRange(flipped, 8, 32);
        Assert.True(errors.Count > 20000, $"only {errors.Count} pixels checked");
        errors.Sort();
        double median = errors[errors.Count / 2], p99 = errors[(int)(errors.Count * 0.99)];
        Assert.True(median < 0.35 && p99 < 1.0, $"median {median:F3} px, 99th percentile {p99:F3} px, max {errors[^1]:F3} px");
    }

    [Fact]
    public void TrainTransformIsDeterministicPerStream()
    {
        var img = Noise(50, 40, 6);
        var t = new TrainTransform(new TrainTransformOptions { ImgSize = 32, ReProb = 1, RecordAugments = true });
        var (a, ra) = t.Apply(img, SeededRandom.ForSample(3, 1, 17));
        var (b, rb) = t.Apply(img, SeededRandom.ForSample(3, 1, 17));
        Assert.Equal(a, b);
        Assert.Equal(ra!.Crop, rb!.Crop);
        Assert.Equal(ra.Warps, rb.Warps);
        var (c, _) = t.Apply(img, SeededRandom.ForSample(3, 2, 17));
        Assert.NotEqual(a, c);
        Assert.Null(new TrainTransform(new TrainTransformOptions { ImgSize = 32 }).Apply(img, new SeededRandom(1)).Record);
    }
}
