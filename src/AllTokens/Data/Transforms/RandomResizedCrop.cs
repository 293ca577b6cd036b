namespace AllTokens.Data.Transforms;

/// <summary>
/// torchvision's <c>RandomResizedCrop.get_params</c> (also timm's <c>RandomResizedCropAndInterpolation</c>): up to 10 tries
/// of an area fraction uniform in <c>scale</c> and an aspect ratio log-uniform in <c>ratio</c>, w = round(√(area·ratio)),
/// h = round(√(area / ratio)) (Python's round-half-even), accepted when 0 &lt; w ≤ W and 0 &lt; h ≤ H, top/left uniform over
/// the valid positions; otherwise a centre crop clamped to the ratio range. The crop is then resized with Pillow.
/// </summary>
public static class RandomResizedCrop
{
    /// <summary>Tries before the centre fallback.</summary>
    public const int Attempts = 10;

    /// <summary>The crop size one try gives for area fraction <paramref name="areaFraction"/> and aspect ratio
    /// <paramref name="aspect"/> (w/h), or null when it does not fit.</summary>
    public static (int Width, int Height)? SizeFromDraws(int width, int height, double areaFraction, double aspect)
    {
        double target = width * (double)height * areaFraction;
        int w = (int)Math.Round(Math.Sqrt(target * aspect), MidpointRounding.ToEven);
        int h = (int)Math.Round(Math.Sqrt(target / aspect), MidpointRounding.ToEven);
        return w > 0 && w <= width && h > 0 && h <= height ? (w, h) : null;
    }

    /// <summary>torchvision's fallback: the whole image, narrowed to the nearest allowed aspect ratio, centred (floor division).</summary>
    public static CropBox CentreFallback(int width, int height, double ratioMin, double ratioMax)
    {
        double inRatio = (double)width / height;
        int w, h;
        if (inRatio < Math.Min(ratioMin, ratioMax))
        {
            w = width;
            h = (int)Math.Round(w / Math.Min(ratioMin, ratioMax), MidpointRounding.ToEven);
        }
        else if (inRatio > Math.Max(ratioMin, ratioMax))
        {
            h = height;
            w = (int)Math.Round(h * Math.Max(ratioMin, ratioMax), MidpointRounding.ToEven);
        }
        else
        {
            w = width;
            h = height;
        }
        return new CropBox((height - h) / 2, (width - w) / 2, h, w);
    }

    /// <summary>Draws a crop box of a <paramref name="width"/>×<paramref name="height"/> image (integer pixels).</summary>
    public static CropBox GetParams(int width, int height, (double Min, double Max) scale, (double Min, double Max) ratio, SeededRandom rng)
    {
        double logLo = Math.Log(ratio.Min), logHi = Math.Log(ratio.Max);
        for (int attempt = 0; attempt < Attempts; attempt++)
        {
            double fraction = rng.Uniform(scale.Min, scale.Max);
            double aspect = Math.Exp(rng.Uniform(logLo, logHi));
            if (SizeFromDraws(width, height, fraction, aspect) is var (w, h))
            {
                int top = rng.NextInt(0, height - h);
                int left = rng.NextInt(0, width - w);
                return new CropBox(top, left, h, w);
            }
        }
        return CentreFallback(width, height, ratio.Min, ratio.Max);
    }

    /// <summary><c>F.resized_crop</c>: crops <paramref name="box"/> (integer pixels) and resizes it with Pillow.</summary>
    public static RgbImage Apply(RgbImage image, CropBox box, int outWidth, int outHeight, Interpolation interpolation)
    {
        RgbImage crop = image.Crop((int)box.Left, (int)box.Top, (int)box.Width, (int)box.Height);
        return crop.Width == outWidth && crop.Height == outHeight ? crop : PilResize.Resize(crop, outWidth, outHeight, interpolation);
    }
}
