namespace AllTokens.Checkpoints;

/// <summary>
/// A checkpoint file is malformed, truncated, of an unknown format, or holds something we refuse to read.
/// The message always starts with the file's path, followed by the problem.
/// </summary>
public sealed class CheckpointFormatException : Exception
{
    /// <summary>The file the problem was found in.</summary>
    public string FilePath { get; }

    /// <summary>The problem alone, without the path.</summary>
    public string Problem { get; }

    public CheckpointFormatException(string filePath, string problem, Exception? innerException = null)
        : base($"{filePath}: {problem}", innerException)
    {
        FilePath = filePath;
        Problem = problem;
    }
}
