using System.Globalization;
using SkiaSharp;

namespace AllTokens.Data.Evaluation;

/// <summary>Draws a confusion matrix as a PNG with SkiaSharp: true classes down the left, predictions along the top,
/// cells shaded by the share of their row, counts written in the cells while they fit.</summary>
public static class ConfusionMatrixPng
{
    /// <summary>Renders <paramref name="result"/>'s matrix and writes it to <paramref name="path"/> atomically (temp file, flush, rename).</summary>
    public static void Write(EvalResult result, string path, string? title = null)
    {
        ArgumentNullException.ThrowIfNull(result);
        byte[] png = Render(result, title);
        string full = Path.GetFullPath(path);
        string tmp = full + ".tmp-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        try
        {
            using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                f.Write(png);
                f.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>The PNG bytes.</summary>
    public static byte[] Render(EvalResult result, string? title = null)
    {
        ArgumentNullException.ThrowIfNull(result);
        int n = result.ClassNames.Count;
        int cell = n <= 12 ? 48 : n <= 30 ? 28 : n <= 100 ? 12 : Math.Max(2, 2000 / n);
        bool text = cell >= 24, labels = cell >= 10;
        using var font = new SKFont(SKTypeface.Default, cell >= 40 ? 13 : 10);
        using var labelFont = new SKFont(SKTypeface.Default, 12);
        float labelWidth = labels ? result.ClassNames.Max(s => labelFont.MeasureText(Short(s))) + 12 : 8;
        int left = (int)Math.Ceiling(labelWidth) + 24, top = (int)Math.Ceiling(labelWidth) + 48;
        int width = left + n * cell + 16, height = top + n * cell + 36;
        var info = new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Premul);
        using var surface = SKSurface.Create(info) ?? throw new InvalidOperationException($"cannot create a {width}x{height} drawing surface");
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);
        using var ink = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        using var fill = new SKPaint { Style = SKPaintStyle.Fill };
        using var grid = new SKPaint { Color = new SKColor(200, 200, 200), Style = SKPaintStyle.Stroke, StrokeWidth = 1 };

        string head = title ?? string.Create(CultureInfo.InvariantCulture,
            $"Confusion matrix: {result.Count} samples, top-1 {result.Top1 * 100:F2}%");
        canvas.DrawText(head, 8, 18, SKTextAlign.Left, labelFont, ink);
        canvas.DrawText("predicted →", left, top - 6 - (labels ? labelWidth : 0), SKTextAlign.Left, labelFont, ink);
        canvas.Save();
        canvas.RotateDegrees(-90, 12, top + n * cell);
        canvas.DrawText("true class →", 12, top + n * cell, SKTextAlign.Left, labelFont, ink);
        canvas.Restore();

        for (int t = 0; t < n; t++)
        {
            long rowTotal = result.Confusion[t].Sum();
            for (int p = 0; p < n; p++)
            {
                long v = result.Confusion[t][p];
                double share = rowTotal == 0 ? 0 : (double)v / rowTotal;
                // White → blue ramp for the row share.
                byte shade = (byte)Math.Round(255 - 200 * share);
                fill.Color = new SKColor(shade, shade, (byte)Math.Round(255 - 60 * share));
                var rect = SKRect.Create(left + p * cell, top + t * cell, cell, cell);
                canvas.DrawRect(rect, fill);
                if (cell >= 6) canvas.DrawRect(rect, grid);
                if (text && v > 0)
                {
                    ink.Color = share > 0.55 ? SKColors.White : SKColors.Black;
                    canvas.DrawText(v.ToString(CultureInfo.InvariantCulture), rect.MidX, rect.MidY + font.Size / 3, SKTextAlign.Center, font, ink);
                    ink.Color = SKColors.Black;
                }
            }
        }
        if (labels)
        {
            for (int i = 0; i < n; i++)
            {
                string name = Short(result.ClassNames[i]);
                canvas.DrawText(name, left - 6, top + i * cell + cell / 2f + 4, SKTextAlign.Right, labelFont, ink);
                canvas.Save();
                float x = left + i * cell + cell / 2f + 4, y = top - 6;
                canvas.RotateDegrees(-90, x, y);
                canvas.DrawText(name, x, y, SKTextAlign.Left, labelFont, ink);
                canvas.Restore();
            }
        }
        using var image = surface.Snapshot();
        using var data = image.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }

    private static string Short(string name) => name.Length <= 24 ? name : name[..23] + "…";
}
