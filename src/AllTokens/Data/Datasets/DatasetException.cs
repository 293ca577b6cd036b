namespace AllTokens.Data.Datasets;

/// <summary>A dataset that cannot be opened or read: missing files, a wrong format, truncated data, a bad label.
/// The message names the file and the problem. An <see cref="IOException"/> so that callers treating unreadable input alike catch it.</summary>
public sealed class DatasetException : IOException
{
    public DatasetException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>Helpers the dataset readers share.</summary>
internal static class DatasetFiles
{
    /// <summary>Reads a whole file, gunzipping when it ends in .gz; IO problems become <see cref="DatasetException"/>s naming the file.</summary>
    public static byte[] ReadAll(string path)
    {
        try
        {
            if (!path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase))
                return File.ReadAllBytes(path);
            using var file = File.OpenRead(path);
            using var gz = new System.IO.Compression.GZipStream(file, System.IO.Compression.CompressionMode.Decompress);
            using var ms = new MemoryStream();
            gz.CopyTo(ms);
            return ms.ToArray();
        }
        catch (InvalidDataException e)
        {
            throw new DatasetException($"{path}: not valid gzip data ({e.Message})", e);
        }
        catch (EndOfStreamException e)
        {
            throw new DatasetException($"{path}: the gzip stream is truncated", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DatasetException($"{path}: cannot read the file: {e.Message}", e);
        }
    }

    /// <summary>Split names the readers accept.</summary>
    public static string CheckSplit(string split) => split switch
    {
        "train" or "val" => split,
        _ => throw new ArgumentException($"split must be 'train' or 'val', got '{split}'", nameof(split)),
    };
}
