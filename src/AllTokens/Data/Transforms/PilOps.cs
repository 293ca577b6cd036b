namespace AllTokens.Data.Transforms;

/// <summary>
/// Pillow 9.4's pixel operations as timm's RandAugment and torchvision's ColorJitter call them, bit-exact on 8-bit RGB:
/// <c>ImageOps</c> (autocontrast, equalize, invert, posterize, solarize), timm's solarize_add, and <c>ImageEnhance</c>
/// (Color, Contrast, Brightness, Sharpness), which blend the image with a "degenerate" version of itself.
/// Every operation returns a new image.
/// </summary>
public static class PilOps
{
    /// <summary>Applies one 256-entry lookup table per channel (Pillow's <c>Image.point</c> with 768 entries).</summary>
    public static RgbImage Point(RgbImage image, byte[] lutR, byte[] lutG, byte[] lutB)
    {
        byte[] src = image.Pixels;
        var dst = new byte[src.Length];
        for (int i = 0; i < src.Length; i += 3)
        {
            dst[i] = lutR[src[i]];
            dst[i + 1] = lutG[src[i + 1]];
            dst[i + 2] = lutB[src[i + 2]];
        }
        return new RgbImage(image.Width, image.Height, dst);
    }

    /// <summary>Applies the same lookup table to every channel.</summary>
    public static RgbImage Point(RgbImage image, byte[] lut) => Point(image, lut, lut, lut);

    private static byte[] Lut(Func<int, int> f)
    {
        var lut = new byte[256];
        for (int i = 0; i < 256; i++) lut[i] = (byte)f(i);
        return lut;
    }

    /// <summary>Per-channel histograms (256 bins each).</summary>
    public static int[][] Histogram(RgbImage image)
    {
        var h = new[] { new int[256], new int[256], new int[256] };
        byte[] px = image.Pixels;
        for (int i = 0; i < px.Length; i += 3)
        {
            h[0][px[i]]++;
            h[1][px[i + 1]]++;
            h[2][px[i + 2]]++;
        }
        return h;
    }

    /// <summary><c>ImageOps.autocontrast(image)</c> (cutoff 0): each channel stretched so its lowest value maps to 0 and its
    /// highest to 255, lut(i) = int(i·scale + offset) clipped; a channel with one value is left alone.</summary>
    public static RgbImage AutoContrast(RgbImage image)
    {
        var luts = Histogram(image).Select(h =>
        {
            int lo = 0, hi = 255;
            while (lo < 256 && h[lo] == 0) lo++;
            while (hi >= 0 && h[hi] == 0) hi--;
            if (hi <= lo) return Lut(i => i);
            double scale = 255.0 / (hi - lo), offset = -lo * scale;
            return Lut(i => Math.Clamp((int)(i * scale + offset), 0, 255));
        }).ToArray();
        return Point(image, luts[0], luts[1], luts[2]);
    }

    /// <summary><c>ImageOps.equalize(image)</c>: per channel, step = (pixels − count of the last non-empty bin) // 256 and
    /// lut(i) = (step // 2 + pixels below i) // step; identity when step is 0 or the channel has one value.</summary>
    public static RgbImage Equalize(RgbImage image)
    {
        var luts = Histogram(image).Select(h =>
        {
            var nonZero = h.Where(v => v != 0).ToArray();
            if (nonZero.Length <= 1) return Lut(i => i);
            int step = (nonZero.Sum() - nonZero[^1]) / 256;
            if (step == 0) return Lut(i => i);
            var lut = new byte[256];
            int n = step / 2;
            for (int i = 0; i < 256; i++)
            {
                lut[i] = (byte)Math.Min(255, n / step);
                n += h[i];
            }
            return lut;
        }).ToArray();
        return Point(image, luts[0], luts[1], luts[2]);
    }

    /// <summary><c>ImageOps.invert</c>: 255 − v.</summary>
    public static RgbImage Invert(RgbImage image) => Point(image, Lut(i => 255 - i));

    /// <summary><c>ImageOps.posterize(image, bits)</c>: keeps the top <paramref name="bits"/> bits (0 gives black); 8 or
    /// more returns a copy (timm skips the call then).</summary>
    public static RgbImage Posterize(RgbImage image, int bits)
    {
        if (bits >= 8) return new RgbImage(image.Width, image.Height, (byte[])image.Pixels.Clone());
        ArgumentOutOfRangeException.ThrowIfNegative(bits);
        int mask = ~((1 << (8 - bits)) - 1) & 0xFF;
        return Point(image, Lut(i => i & mask));
    }

    /// <summary><c>ImageOps.solarize(image, threshold)</c>: values ≥ threshold are inverted.</summary>
    public static RgbImage Solarize(RgbImage image, int threshold) => Point(image, Lut(i => i < threshold ? i : 255 - i));

    /// <summary>timm's <c>solarize_add(img, add, thresh=128)</c>: values below the threshold get min(255, v + add).</summary>
    public static RgbImage SolarizeAdd(RgbImage image, int add, int threshold = 128) =>
        Point(image, Lut(i => i < threshold ? Math.Min(255, i + add) : i));

    /// <summary>
    /// <c>Image.blend(a, b, alpha)</c> as libImaging computes it: a + alpha·(b − a) in float32, truncated; outside
    /// 0 ≤ alpha ≤ 1 the result is clipped to [0, 255] first.
    /// </summary>
    public static RgbImage Blend(RgbImage a, RgbImage b, float alpha)
    {
        if (a.Width != b.Width || a.Height != b.Height)
            throw new ArgumentException($"blend needs equal sizes, got {a.Width}x{a.Height} and {b.Width}x{b.Height}");
        byte[] pa = a.Pixels, pb = b.Pixels;
        var dst = new byte[pa.Length];
        if (alpha >= 0f && alpha <= 1f)
        {
            for (int i = 0; i < dst.Length; i++)
                dst[i] = (byte)(pa[i] + alpha * (pb[i] - pa[i]));
        }
        else
        {
            for (int i = 0; i < dst.Length; i++)
            {
                float t = pa[i] + alpha * (pb[i] - pa[i]);
                dst[i] = t <= 0f ? (byte)0 : t >= 255f ? (byte)255 : (byte)t;
            }
        }
        return new RgbImage(a.Width, a.Height, dst);
    }

    /// <summary>Pillow's RGB → L conversion (ITU-R 601-2 luma in 16-bit fixed point): (R·19595 + G·38470 + B·7471 + 0x8000) >> 16.</summary>
    public static byte Luma(byte r, byte g, byte b) => (byte)((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);

    /// <summary><c>image.convert("L").convert("RGB")</c>.</summary>
    public static RgbImage Grayscale(RgbImage image)
    {
        byte[] src = image.Pixels;
        var dst = new byte[src.Length];
        for (int i = 0; i < src.Length; i += 3)
            dst[i] = dst[i + 1] = dst[i + 2] = Luma(src[i], src[i + 1], src[i + 2]);
        return new RgbImage(image.Width, image.Height, dst);
    }

    /// <summary><c>ImageEnhance.Color(image).enhance(factor)</c>: blend with the grey image.</summary>
    public static RgbImage Color(RgbImage image, double factor) => Blend(Grayscale(image), image, (float)factor);

    /// <summary><c>ImageEnhance.Contrast(image).enhance(factor)</c>: blend with a flat image of the rounded mean luma.</summary>
    public static RgbImage Contrast(RgbImage image, double factor)
    {
        byte[] src = image.Pixels;
        var hist = new long[256];
        for (int i = 0; i < src.Length; i += 3) hist[Luma(src[i], src[i + 1], src[i + 2])]++;
        // ImageStat.Stat(...).mean: sum(i·h[i]) / count in double; then int(mean + 0.5).
        double sum = 0, count = 0;
        for (int i = 0; i < 256; i++)
        {
            sum += (double)i * hist[i];
            count += hist[i];
        }
        byte mean = (byte)(int)(sum / count + 0.5);
        var flat = new byte[src.Length];
        Array.Fill(flat, mean);
        return Blend(new RgbImage(image.Width, image.Height, flat), image, (float)factor);
    }

    /// <summary><c>ImageEnhance.Brightness(image).enhance(factor)</c>: blend with black.</summary>
    public static RgbImage Brightness(RgbImage image, double factor) =>
        Blend(RgbImage.Black(image.Width, image.Height), image, (float)factor);

    /// <summary><c>ImageEnhance.Sharpness(image).enhance(factor)</c>: blend with <see cref="Smooth"/>.</summary>
    public static RgbImage Sharpness(RgbImage image, double factor) => Blend(Smooth(image), image, (float)factor);

    /// <summary>
    /// <c>image.filter(ImageFilter.SMOOTH)</c>: the 3×3 kernel (1 1 1 / 1 5 1 / 1 1 1) / 13 in float32 with 0.5 added for
    /// rounding, then truncated and clipped; the one-pixel border is copied unchanged (libImaging's ImagingFilter3x3).
    /// </summary>
    public static RgbImage Smooth(RgbImage image)
    {
        int w = image.Width, h = image.Height;
        byte[] src = image.Pixels;
        var dst = (byte[])src.Clone();
        if (w < 3 || h < 3) return new RgbImage(w, h, dst);
        float k1 = 1f / 13f, k5 = 5f / 13f; // Pillow divides the kernel by its scale in float32
        for (int y = 1; y < h - 1; y++)
        {
            int rowUp = (y - 1) * w * 3, row = y * w * 3, rowDown = (y + 1) * w * 3;
            for (int x = 1; x < w - 1; x++)
            {
                for (int c = 0; c < 3; c++)
                {
                    int o = x * 3 + c;
                    // Same evaluation order as libImaging: offset, then the row below, this row, the row above.
                    float s = 0.5f;
                    s += src[rowDown + o - 3] * k1 + src[rowDown + o] * k1 + src[rowDown + o + 3] * k1;
                    s += src[row + o - 3] * k1 + src[row + o] * k5 + src[row + o + 3] * k1;
                    s += src[rowUp + o - 3] * k1 + src[rowUp + o] * k1 + src[rowUp + o + 3] * k1;
                    dst[row + o] = s <= 0f ? (byte)0 : s >= 255f ? (byte)255 : (byte)s;
                }
            }
        }
        return new RgbImage(w, h, dst);
    }
}
