namespace AllTokens;

/// <summary>Turns the ways a write can fail on a full or size-limited disk into one clear <see cref="IOException"/> naming the target.</summary>
public static class WriteFailure
{
    /// <summary>
    /// An <see cref="IOException"/> naming <paramref name="target"/> for a failed write (disk full, file-size limit, I/O error),
    /// or null when <paramref name="e"/> is not a write failure. .NET reports EFBIG (a file over the file system's or the
    /// process's size limit, RLIMIT_FSIZE) as an ArgumentOutOfRangeException from the stream, without a file name.
    /// </summary>
    public static IOException? Describe(string target, Exception e)
    {
        if (Reason(e) is not { } reason) return null;
        string previous = File.Exists(target) ? "the previous version is unchanged" : "nothing was written";
        return new IOException($"{target}: could not write the file ({reason}); {previous}", e);
    }

    /// <summary>What went wrong in a failed write, in words, or null when <paramref name="e"/> is not a write failure.</summary>
    public static string? Reason(Exception e) => e switch
    {
        IOException io => io.Message,
        ArgumentOutOfRangeException { ParamName: "value" } => "file too large for the file system or over the process's file-size limit",
        _ => null,
    };
}
