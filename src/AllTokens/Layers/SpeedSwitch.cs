namespace AllTokens.Layers;

/// <summary>The environment switches that turn a speed path off for comparisons (<c>ALLTOKENS_LINEAR=plain</c>, …).</summary>
internal static class SpeedSwitch
{
    /// <summary>Whether the path is on: false only when <paramref name="variable"/> equals <paramref name="offValue"/> (any case).</summary>
    public static bool On(string variable, string offValue) =>
        !string.Equals(Environment.GetEnvironmentVariable(variable), offValue, StringComparison.OrdinalIgnoreCase);
}
