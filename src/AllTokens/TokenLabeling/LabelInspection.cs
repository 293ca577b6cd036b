using SkiaSharp;

namespace AllTokens.TokenLabeling;

/// <summary>Summary of a label store.</summary>
/// <param name="MeanTop1Probability">
/// Mean over all locations of the top class's probability under the official target construction: softmax over all
/// C classes with the k stored logits in place and every other class at logit 0.
/// </param>
/// <param name="Top1Histogram">Per class: how many locations have it as their top class.</param>
public sealed record LabelStoreStatistics(int Count, LabelStoreHeader Header, double MeanTop1Probability, long[] Top1Histogram);

/// <summary>Statistics and pictures of stored label maps (<c>label inspect</c>).</summary>
public static class LabelInspection
{
    /// <summary>Reads every record (checking checksums) and summarises them.</summary>
    public static LabelStoreStatistics Statistics(LabelStore store, CancellationToken cancel = default)
    {
        var h = store.Header;
        var hist = new long[h.NumClasses];
        double sum = 0;
        long locations = 0;
        int hw = h.Height * h.Width;
        foreach (var key in store.Keys)
        {
            cancel.ThrowIfCancellationRequested();
            var m = store.Get(key);
            for (int p = 0; p < hw; p++)
            {
                hist[m.Indices[p]]++;
                sum += Top1Probability(m, p, h.NumClasses);
                locations++;
            }
        }
        return new LabelStoreStatistics(store.Count, h, locations == 0 ? 0 : sum / locations, hist);
    }

    /// <summary>softmax over C classes (k stored logits, the rest 0) of the top class at location <paramref name="p"/>.</summary>
    public static double Top1Probability(LabelMap m, int p, int numClasses)
    {
        int hw = m.Height * m.Width;
        double max = Math.Max(0, m.Values[p]);
        double denom = (numClasses - m.K) * Math.Exp(-max);
        for (int r = 0; r < m.K; r++) denom += Math.Exp(m.Values[r * hw + p] - max);
        return Math.Exp(m.Values[p] - max) / denom;
    }

    /// <summary>A distinct colour per class (golden-angle hues).</summary>
    public static SKColor ClassColor(int c) => SKColor.FromHsv((float)(c * 137.50776 % 360), 70, 92);

    /// <summary>
    /// Draws the map's top class per location as coloured cells (<paramref name="cell"/> px each), with a legend of
    /// the classes present (colour, index, name, cell count) below; written atomically as PNG.
    /// </summary>
    public static void RenderPng(LabelMap map, string path, IReadOnlyList<string>? classNames = null, int cell = 24)
    {
        var present = Enumerable.Range(0, map.Height * map.Width).Select(p => map.Indices[p])
            .GroupBy(c => c).OrderByDescending(g => g.Count()).ThenBy(g => g.Key).Select(g => (Class: g.Key, Cells: g.Count())).ToList();
        const int line = 18, pad = 6;
        int width = Math.Max(map.Width * cell, 220), height = map.Height * cell + pad + present.Count * line + pad;
        using var surface = SKSurface.Create(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Premul));
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);
        using var paint = new SKPaint { IsAntialias = false };
        for (int r = 0; r < map.Height; r++)
            for (int c = 0; c < map.Width; c++)
            {
                paint.Color = ClassColor(map.Index(0, r, c));
                canvas.DrawRect(c * cell, r * cell, cell, cell, paint);
            }
        using var font = new SKFont(SKTypeface.Default, 13);
        using var text = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        int y = map.Height * cell + pad;
        foreach (var (cls, cells) in present)
        {
            paint.Color = ClassColor(cls);
            canvas.DrawRect(pad, y + 2, line - 4, line - 4, paint);
            string name = classNames is not null && cls < classNames.Count ? $" {classNames[cls]}" : "";
            canvas.DrawText($"{cls}{name} ({cells})", pad + line + 2, y + line - 5, font, text);
            y += line;
        }
        using var image = surface.Snapshot();
        using var data = image.Encode(SKEncodedImageFormat.Png, 100);
        string tmp = path + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write))
        {
            data.SaveTo(fs);
            fs.Flush(flushToDisk: true);
        }
        File.Move(tmp, path, overwrite: true);
    }
}
