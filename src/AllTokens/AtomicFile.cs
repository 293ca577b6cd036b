using System.Text;

namespace AllTokens;

/// <summary>
/// Crash-safe file writes: a temporary file in the target's folder (<c>.NAME.GUID.tmp</c>, the pattern the trainer
/// sweeps after a kill), flushed to disk, then renamed over the target, so a reader sees the old file or the new one,
/// never half of one. A failed write removes its temporary file and names the target (<see cref="WriteFailure"/>).
/// </summary>
public static class AtomicFile
{
    /// <summary>Writes what <paramref name="fill"/> puts into the stream as <paramref name="path"/>.</summary>
    public static void Write(string path, Action<Stream> fill, int bufferSize = 4096)
    {
        var full = Path.GetFullPath(path);
        var tmp = Path.Combine(Path.GetDirectoryName(full) ?? ".", $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize))
            {
                fill(fs);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch (Exception e)
        {
            try
            {
                File.Delete(tmp);
            }
            catch (Exception de) when (de is IOException or UnauthorizedAccessException)
            {
                // best effort; the original error matters more
            }
            if (WriteFailure.Describe(full, e) is { } described) throw described;
            throw;
        }
    }

    public static void WriteAllBytes(string path, ReadOnlySpan<byte> data)
    {
        var bytes = data.ToArray(); // a span cannot be captured by the fill callback; these are small files (PNGs, text)
        Write(path, fs => fs.Write(bytes));
    }

    public static void WriteAllText(string path, string text) => WriteAllBytes(path, new UTF8Encoding(false).GetBytes(text));

    /// <summary>Copies <paramref name="source"/> to <paramref name="dest"/> atomically.</summary>
    public static void Copy(string source, string dest) => Write(dest, fs =>
    {
        using var src = File.OpenRead(source);
        src.CopyTo(fs);
    });
}
