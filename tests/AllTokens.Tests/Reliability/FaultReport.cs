namespace AllTokens.Tests.Reliability;

/// <summary>
/// Where the fault tests put their figures: the test output, and with ALLTOKENS_FAULT_REPORT=FILE also appended to that
/// file (RELIABILITY.md quotes it).
/// </summary>
internal static class FaultReport
{
    private static readonly object Gate = new();

    public static void Line(string text)
    {
        TestContext.Current.TestOutputHelper?.WriteLine(text);
        if (Environment.GetEnvironmentVariable("ALLTOKENS_FAULT_REPORT") is { Length: > 0 } file)
            lock (Gate) File.AppendAllText(file, text + "\n");
    }
}
