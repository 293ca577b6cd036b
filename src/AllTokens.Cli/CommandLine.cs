using System.Globalization;
using System.Text;

namespace AllTokens.Cli;

/// <summary>A usage error: printed with the verb's usage line, exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>One option of a verb. <paramref name="Value"/> names the value (null for a switch).</summary>
public sealed record OptionSpec(string Name, string? Value, string Help, string? Default = null, bool Repeatable = false);

/// <summary>A verb: its options, positional arguments and help text.</summary>
public sealed class VerbSpec(string name, string summary, string usage, IReadOnlyList<OptionSpec> options, string? positional = null, int minPositional = 0, string? details = null, int maxPositional = int.MaxValue)
{
    public string Name { get; } = name;
    public string Summary { get; } = summary;
    public string Usage { get; } = usage;
    public IReadOnlyList<OptionSpec> Options { get; } = options;
    public string? Positional { get; } = positional;
    public int MinPositional { get; } = minPositional;
    public int MaxPositional { get; } = maxPositional;
    public string? Details { get; } = details;

    public string Help()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"alltokens {Name}: {Summary}");
        sb.AppendLine();
        sb.AppendLine($"usage: alltokens {Name} {Usage}");
        if (Details is not null) sb.AppendLine().AppendLine(Details);
        sb.AppendLine();
        sb.AppendLine("options:");
        int width = Options.Max(o => Label(o).Length) + 2;
        foreach (var o in Options.Append(new OptionSpec("help", null, "show this help")))
        {
            string text = o.Help + (o.Default is null ? "" : $" (default: {o.Default})");
            sb.AppendLine($"  {Label(o).PadRight(width)}{text}");
        }
        return sb.ToString();
    }

    private static string Label(OptionSpec o) => "--" + o.Name + (o.Value is null ? "" : " " + o.Value);

    /// <summary>Parses argv for this verb. Accepts <c>--name value</c>, <c>--name=value</c>, switches and positionals; <c>--</c> ends options.</summary>
    public ParsedArgs Parse(IReadOnlyList<string> args)
    {
        var values = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        var positional = new List<string>();
        bool onlyPositional = false;
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            if (onlyPositional || !a.StartsWith("--", StringComparison.Ordinal) || a == "-")
            {
                positional.Add(a);
                continue;
            }
            if (a == "--") { onlyPositional = true; continue; }
            string name = a[2..];
            string? inline = null;
            int eq = name.IndexOf('=');
            if (eq >= 0) { inline = name[(eq + 1)..]; name = name[..eq]; }
            var spec = Options.FirstOrDefault(o => o.Name == name);
            if (spec is null)
            {
                if (name == "help") throw new HelpRequested();
                var close = Options.Select(o => o.Name).Where(n => Close(n, name)).Select(n => "--" + n).ToList();
                throw new UsageException($"unknown option --{name} for '{Name}'" + (close.Count > 0 ? $"; did you mean {string.Join(" or ", close)}?" : ""));
            }
            string value;
            if (spec.Value is null)
            {
                if (inline is not null) throw new UsageException($"--{name} is a switch and takes no value");
                value = "true";
            }
            else if (inline is not null) value = inline;
            else if (i + 1 < args.Count) value = args[++i];
            else throw new UsageException($"--{name} needs a value ({spec.Value})");
            if (!values.TryGetValue(name, out var list)) values[name] = list = [];
            if (list.Count > 0 && !spec.Repeatable) throw new UsageException($"--{name} given more than once");
            list.Add(value);
        }
        if (Positional is null && positional.Count > 0)
            throw new UsageException($"'{Name}' takes no positional arguments, got '{positional[0]}'");
        if (positional.Count < MinPositional)
            throw new UsageException($"'{Name}' needs {Positional}");
        if (positional.Count > MaxPositional)
            throw new UsageException($"'{Name}' takes {(MaxPositional == 1 ? "one" : MaxPositional.ToString(CultureInfo.InvariantCulture))} {Positional}, got {positional.Count}: {string.Join(' ', positional)}");
        return new ParsedArgs(this, values, positional);
    }

    private static bool Close(string a, string b) =>
        a.StartsWith(b, StringComparison.Ordinal) || b.StartsWith(a, StringComparison.Ordinal) || Levenshtein(a, b) <= 2;

    private static int Levenshtein(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }
}

public sealed class HelpRequested : Exception;

/// <summary>Typed access to parsed values with clear errors for bad ones.</summary>
public sealed class ParsedArgs(VerbSpec verb, Dictionary<string, List<string>> values, List<string> positional)
{
    public IReadOnlyList<string> Positional { get; } = positional;

    public bool Has(string name) => values.ContainsKey(name);
    public bool Flag(string name) => values.ContainsKey(name);

    public string? String(string name) => values.TryGetValue(name, out var v) ? v[^1] : verb.Options.First(o => o.Name == name).Default;

    public IReadOnlyList<string> All(string name) => values.TryGetValue(name, out var v) ? v : [];

    public string Required(string name) => String(name) ?? throw new UsageException($"'{verb.Name}' needs --{name}");

    public int? Int(string name, int? min = null, int? max = null)
    {
        string? s = String(name);
        if (s is null) return null;
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v))
            throw new UsageException($"--{name} expects an integer, got '{s}'");
        if (v < min || v > max)
            throw new UsageException($"--{name} must be in [{min?.ToString(CultureInfo.InvariantCulture) ?? "-∞"}, {max?.ToString(CultureInfo.InvariantCulture) ?? "∞"}], got {v}");
        return v;
    }

    public double? Double(string name, double? min = null, double? max = null, bool minExclusive = false)
    {
        string? s = String(name);
        if (s is null) return null;
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v))
            throw new UsageException($"--{name} expects a number, got '{s}'");
        if ((min is not null && (minExclusive ? v <= min : v < min)) || (max is not null && v > max))
            throw new UsageException($"--{name} must be in {(minExclusive ? "(" : "[")}{min?.ToString(CultureInfo.InvariantCulture) ?? "-∞"}, {max?.ToString(CultureInfo.InvariantCulture) ?? "∞"}], got {s}");
        return v;
    }

    public string Choice(string name, params string[] choices)
    {
        string v = Required(name);
        if (!choices.Contains(v)) throw new UsageException($"--{name} must be one of {string.Join(", ", choices)}, got '{v}'");
        return v;
    }
}
