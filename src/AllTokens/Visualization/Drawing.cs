using AllTokens.Data;
using SkiaSharp;

namespace AllTokens.Visualization;

/// <summary>Colour maps, fonts and PNG output shared by every picture AllTokens draws.</summary>
public static class Drawing
{
    // Viridis sampled at 0, 1/8, …, 1 (matplotlib's published anchor colours); linear in between.
    private static readonly (double R, double G, double B)[] ViridisAnchors =
    [
        (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
        (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
    ];

    /// <summary>Viridis colour for t in [0, 1] (clamped; NaN is drawn grey).</summary>
    public static SKColor Viridis(double t)
    {
        if (double.IsNaN(t)) return new SKColor(128, 128, 128);
        t = Math.Clamp(t, 0, 1) * (ViridisAnchors.Length - 1);
        int i = Math.Min((int)t, ViridisAnchors.Length - 2);
        double f = t - i;
        var (a, b) = (ViridisAnchors[i], ViridisAnchors[i + 1]);
        return new SKColor((byte)Math.Round(a.R + (b.R - a.R) * f), (byte)Math.Round(a.G + (b.G - a.G) * f), (byte)Math.Round(a.B + (b.B - a.B) * f));
    }

    /// <summary>A distinct colour per class index (golden-angle hues), for label maps.</summary>
    public static SKColor ClassColor(int index) => SKColor.FromHsv((float)(index * 137.508 % 360), 65, 95);

    private static readonly Lazy<SKTypeface?> typeface = new(FindTypeface);

    /// <summary>A typeface that has glyphs, or null when the machine has no usable font (text is then skipped).</summary>
    public static SKTypeface? Typeface => typeface.Value;

    private static SKTypeface? FindTypeface()
    {
        foreach (var family in new[] { "DejaVu Sans", "Liberation Sans", "Arial", "Helvetica" })
            if (SKFontManager.Default.MatchFamily(family) is { GlyphCount: > 0 } t) return t;
        var fallback = SKTypeface.Default;
        if (fallback is not null && fallback.GlyphCount > 0) return fallback;
        string[] candidates =
        [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
        ];
        foreach (var path in candidates)
            if (File.Exists(path) && SKTypeface.FromFile(path) is { GlyphCount: > 0 } f) return f;
        return null;
    }

    /// <summary>Draws text when a font is available; returns the width drawn (0 without a font).</summary>
    public static float Text(SKCanvas canvas, string text, float x, float y, float size, SKColor color, SKTextAlign align = SKTextAlign.Left)
    {
        if (Typeface is null || text.Length == 0) return 0;
        using var font = new SKFont(Typeface, size);
        using var paint = new SKPaint { Color = color, IsAntialias = true };
        canvas.DrawText(text, x, y, align, font, paint);
        return font.MeasureText(text);
    }

    /// <summary>An RGB image as a bitmap, optionally scaled by an integer factor (nearest).</summary>
    public static SKBitmap FromRgb(RgbImage image, int scale = 1)
    {
        var bmp = new SKBitmap(image.Width * scale, image.Height * scale, SKColorType.Rgba8888, SKAlphaType.Opaque);
        for (int y = 0; y < bmp.Height; y++)
            for (int x = 0; x < bmp.Width; x++)
            {
                var (r, g, b) = image.GetPixel(x / scale, y / scale);
                bmp.SetPixel(x, y, new SKColor(r, g, b));
            }
        return bmp;
    }

    /// <summary>
    /// A row-major h×w grid of values as a viridis heat map of <paramref name="pixelsPerCell"/>-sized cells,
    /// normalised to its own min..max (a constant map is drawn at the bottom colour).
    /// </summary>
    public static SKBitmap Heatmap(ReadOnlySpan<float> values, int h, int w, int pixelsPerCell)
    {
        if (values.Length != h * w) throw new ArgumentException($"heat map needs {h}×{w} values, got {values.Length}");
        var (lo, hi) = Range(values);
        var bmp = new SKBitmap(w * pixelsPerCell, h * pixelsPerCell, SKColorType.Rgba8888, SKAlphaType.Opaque);
        using var canvas = new SKCanvas(bmp);
        using var paint = new SKPaint();
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++)
            {
                paint.Color = Viridis(hi > lo ? (values[i * w + j] - lo) / (hi - lo) : 0);
                canvas.DrawRect(j * pixelsPerCell, i * pixelsPerCell, pixelsPerCell, pixelsPerCell, paint);
            }
        return bmp;
    }

    /// <summary>The image with a heat map (h×w grid stretched over it, bilinear) blended on top.</summary>
    public static SKBitmap Overlay(SKBitmap image, ReadOnlySpan<float> values, int h, int w, float alpha = 0.55f)
    {
        using var heat = Heatmap(values, h, w, 1);
        var result = image.Copy();
        using var canvas = new SKCanvas(result);
        using var paint = new SKPaint { Color = SKColors.White.WithAlpha((byte)Math.Round(alpha * 255)) };
        using var heatImage = SKImage.FromBitmap(heat);
        canvas.DrawImage(heatImage, new SKRect(0, 0, result.Width, result.Height), new SKSamplingOptions(SKFilterMode.Linear), paint);
        return result;
    }

    /// <summary>Minimum and maximum of the finite values (0, 0 when there are none).</summary>
    public static (float Min, float Max) Range(ReadOnlySpan<float> values)
    {
        float lo = float.PositiveInfinity, hi = float.NegativeInfinity;
        foreach (var v in values)
        {
            if (!float.IsFinite(v)) continue;
            if (v < lo) lo = v;
            if (v > hi) hi = v;
        }
        return lo > hi ? (0, 0) : (lo, hi);
    }

    /// <summary>Writes a bitmap as PNG atomically (temp file, flush to disk, rename).</summary>
    public static void SavePng(SKBitmap bitmap, string path)
    {
        using var image = SKImage.FromBitmap(bitmap);
        using var data = image.Encode(SKEncodedImageFormat.Png, 100)
            ?? throw new IOException($"{path}: PNG encoding failed");
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        AtomicFile.WriteAllBytes(path, data.AsSpan());
    }
}
