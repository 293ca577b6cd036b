using System.Globalization;
using System.Text.Json.Nodes;
using SkiaSharp;

namespace AllTokens.Training;

/// <summary>One line of a chart.</summary>
public sealed record PlotSeries(string Name, IReadOnlyList<double> X, IReadOnlyList<double> Y, SKColor Color);

/// <summary>Minimal line charts drawn with SkiaSharp (no plotting dependency), written atomically as PNG.</summary>
public static class Plots
{
    private static readonly SKColor[] Palette = [new(31, 119, 180), new(255, 127, 14), new(44, 160, 44), new(214, 39, 40), new(148, 103, 189)];

    /// <summary>Writes loss.png, accuracy.png and lr.png into <paramref name="dir"/> from metrics records.</summary>
    public static void WriteAll(string dir, IReadOnlyList<JsonObject> records)
    {
        var steps = records.Where(r => (string?)r["kind"] == "step").ToList();
        var epochs = records.Where(r => (string?)r["kind"] == "epoch").ToList();
        // x axis: epochs (fractional for step records).
        PlotSeries S(string name, IEnumerable<JsonObject> rs, string xKey, string yKey, int color)
        {
            var pts = rs.Select(r => (x: MetricsLog.ToDouble(r[xKey]), y: MetricsLog.ToDouble(r[yKey]))).Where(p => p.x is not null && p.y is not null)
                .Select(p => (x: p.x!.Value, y: p.y!.Value)).ToList();
            return new PlotSeries(name, pts.Select(p => p.x).ToList(), pts.Select(p => p.y).ToList(), Palette[color % Palette.Length]);
        }
        Save(Path.Combine(dir, "loss.png"), "loss", "epoch",
            [S("train (step)", steps, "epoch_pos", "loss", 0), S("train (epoch)", epochs, "epoch_end", "train_loss", 1),
             S("val", epochs, "epoch_end", "val_loss", 2), S("val EMA", epochs, "epoch_end", "ema_loss", 3)]);
        Save(Path.Combine(dir, "accuracy.png"), "accuracy (%)", "epoch",
            [S("val top-1", epochs, "epoch_end", "val_top1", 0), S("val top-5", epochs, "epoch_end", "val_top5", 1),
             S("EMA top-1", epochs, "epoch_end", "ema_top1", 2), S("train top-1", epochs, "epoch_end", "train_top1", 3)]);
        Save(Path.Combine(dir, "lr.png"), "learning rate", "epoch", [S("lr", steps, "epoch_pos", "lr", 0), S("lr (epoch)", epochs, "epoch_end", "lr", 1)]);
    }

    /// <summary>Draws the non-empty series into a PNG at <paramref name="path"/>.</summary>
    public static void Save(string path, string title, string xLabel, IReadOnlyList<PlotSeries> series, int width = 800, int height = 480)
    {
        var live = series.Where(s => s.X.Count > 0 && s.Y.Any(double.IsFinite)).ToList();
        using var surface = SKSurface.Create(new SKImageInfo(width, height));
        var c = surface.Canvas;
        c.Clear(SKColors.White);
        const float left = 70, right = 20, top = 36, bottom = 44;
        float pw = width - left - right, ph = height - top - bottom;
        using var font = new SKFont(SKTypeface.Default, 13);
        using var text = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        using var axis = new SKPaint { Color = SKColors.Black, StrokeWidth = 1, Style = SKPaintStyle.Stroke };
        using var grid = new SKPaint { Color = new SKColor(225, 225, 225), StrokeWidth = 1, Style = SKPaintStyle.Stroke };
        c.DrawText(title, left, 22, font, text);
        c.DrawText(xLabel, left + pw / 2, height - 8, font, text);
        if (live.Count > 0)
        {
            var xs = live.SelectMany(s => s.X).ToList();
            var ys = live.SelectMany(s => s.Y).Where(double.IsFinite).ToList();
            double x0 = xs.Min(), x1 = xs.Max(), y0 = ys.Min(), y1 = ys.Max();
            if (x1 <= x0) x1 = x0 + 1;
            if (y1 <= y0) { y1 = y0 + Math.Max(1e-12, Math.Abs(y0) * 0.1); y0 -= Math.Max(1e-12, Math.Abs(y0) * 0.1); }
            double pad = (y1 - y0) * 0.05;
            y0 -= pad;
            y1 += pad;
            float X(double v) => left + (float)((v - x0) / (x1 - x0)) * pw;
            float Y(double v) => top + ph - (float)((v - y0) / (y1 - y0)) * ph;
            for (int i = 0; i <= 5; i++)
            {
                double yv = y0 + (y1 - y0) * i / 5, xv = x0 + (x1 - x0) * i / 5;
                c.DrawLine(left, Y(yv), left + pw, Y(yv), grid);
                c.DrawLine(X(xv), top, X(xv), top + ph, grid);
                c.DrawText(yv.ToString("G3", CultureInfo.InvariantCulture), 4, Y(yv) + 4, font, text);
                c.DrawText(xv.ToString("G4", CultureInfo.InvariantCulture), X(xv) - 10, top + ph + 16, font, text);
            }
            float legendY = top + 14;
            foreach (var s in live)
            {
                using var pen = new SKPaint { Color = s.Color, StrokeWidth = 2, Style = SKPaintStyle.Stroke, IsAntialias = true };
                using var pathLine = new SKPath();
                bool started = false;
                for (int i = 0; i < s.X.Count; i++)
                {
                    if (!double.IsFinite(s.Y[i])) { started = false; continue; }
                    if (!started) pathLine.MoveTo(X(s.X[i]), Y(s.Y[i]));
                    else pathLine.LineTo(X(s.X[i]), Y(s.Y[i]));
                    started = true;
                }
                c.DrawPath(pathLine, pen);
                if (s.X.Count == 1) c.DrawCircle(X(s.X[0]), Y(s.Y[0]), 3, pen);
                c.DrawLine(left + pw - 150, legendY - 4, left + pw - 130, legendY - 4, pen);
                c.DrawText(s.Name, left + pw - 125, legendY, font, text);
                legendY += 16;
            }
        }
        c.DrawRect(left, top, pw, ph, axis);
        using var image = surface.Snapshot();
        using var data = image.Encode(SKEncodedImageFormat.Png, 90);
        AtomicFile.WriteAllBytes(path, data.AsSpan());
    }
}
