using System.Globalization;

namespace AllTokens.Cli;

/// <summary>
/// A progress bar on stderr: redrawn in place with '\r' on a terminal, otherwise one plain line each time another ~10 %
/// is done (CI logs).
/// </summary>
public sealed class ProgressLine(TextWriter err, string label, bool? interactive = null)
{
    private readonly bool tty = interactive ?? (ReferenceEquals(err, Console.Error) && !Console.IsErrorRedirected);
    private int lastDecile = -1;
    private bool drawn;

    /// <summary>Reports <paramref name="done"/> of <paramref name="total"/>.</summary>
    public void Report(long done, long total)
    {
        double f = total <= 0 ? 1 : Math.Clamp((double)done / total, 0, 1);
        if (tty)
        {
            const int width = 30;
            int filled = (int)(f * width);
            err.Write(string.Create(CultureInfo.InvariantCulture,
                $"\r{label} [{new string('#', filled)}{new string('.', width - filled)}] {done}/{total} {f * 100,5:F1}%"));
            drawn = true;
            return;
        }
        int decile = (int)(f * 10);
        if (decile > lastDecile)
        {
            lastDecile = decile;
            err.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{label}: {done}/{total} ({f * 100:F0}%)"));
        }
    }

    /// <summary>Ends the in-place line on a terminal.</summary>
    public void Finish()
    {
        if (tty && drawn) err.WriteLine();
    }
}
