using SkiaSharp;

namespace AllTokens.Visualization;

/// <summary>One picture in a <see cref="PanelSheet"/>; the sheet owns and disposes the bitmap.</summary>
public sealed record Panel(string Caption, SKBitmap Bitmap);

/// <summary>A titled sheet of labelled rows of captioned panels, saved as one PNG.</summary>
public sealed class PanelSheet : IDisposable
{
    private const int Margin = 12, Gap = 8, CaptionSize = 12, RowTitleSize = 14, TitleSize = 18;
    private readonly string title;
    private readonly List<(string Label, List<Panel> Panels)> rows = [];

    public PanelSheet(string title) => this.title = title;

    public int RowCount => rows.Count;

    public void AddRow(string label, IEnumerable<Panel> panels) => rows.Add((label, panels.ToList()));

    /// <summary>Lays the rows out (wrapping a row after <paramref name="maxPerLine"/> panels) and renders the sheet.</summary>
    public SKBitmap Render(int maxPerLine = 8)
    {
        bool text = Drawing.Typeface is not null;
        int captionH = text ? CaptionSize + 4 : 0, rowTitleH = text ? RowTitleSize + 6 : 0, titleH = text ? TitleSize + 10 : 0;
        var lines = new List<(string? Label, List<Panel> Panels)>();
        foreach (var (label, panels) in rows)
            for (int i = 0; i < Math.Max(1, panels.Count); i += maxPerLine)
                lines.Add((i == 0 ? label : null, panels.Skip(i).Take(maxPerLine).ToList()));
        int width = Margin * 2 + lines.Select(l => l.Panels.Sum(p => p.Bitmap.Width) + Gap * Math.Max(0, l.Panels.Count - 1)).DefaultIfEmpty(200).Max();
        width = Math.Max(width, 320);
        int height = Margin + titleH;
        foreach (var (label, panels) in lines)
            height += (label is null ? 0 : rowTitleH) + (panels.Count == 0 ? 0 : panels.Max(p => p.Bitmap.Height) + captionH) + Gap;
        height += Margin;

        var sheet = new SKBitmap(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque);
        using var canvas = new SKCanvas(sheet);
        canvas.Clear(SKColors.White);
        int y = Margin;
        if (text)
        {
            Drawing.Text(canvas, title, Margin, y + TitleSize, TitleSize, SKColors.Black);
            y += titleH;
        }
        foreach (var (label, panels) in lines)
        {
            if (label is not null && text)
            {
                Drawing.Text(canvas, label, Margin, y + RowTitleSize, RowTitleSize, new SKColor(40, 40, 40));
                y += rowTitleH;
            }
            int x = Margin, rowH = panels.Count == 0 ? 0 : panels.Max(p => p.Bitmap.Height);
            foreach (var p in panels)
            {
                canvas.DrawBitmap(p.Bitmap, x, y);
                if (text) Drawing.Text(canvas, p.Caption, x + p.Bitmap.Width / 2f, y + rowH + CaptionSize, CaptionSize, new SKColor(70, 70, 70), SKTextAlign.Center);
                x += p.Bitmap.Width + Gap;
            }
            y += rowH + captionH + Gap;
        }
        return sheet;
    }

    public void SavePng(string path, int maxPerLine = 8)
    {
        using var bmp = Render(maxPerLine);
        Drawing.SavePng(bmp, path);
    }

    public void Dispose()
    {
        foreach (var (_, panels) in rows)
            foreach (var p in panels) p.Bitmap.Dispose();
        rows.Clear();
    }
}
