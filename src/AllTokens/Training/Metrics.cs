using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace AllTokens.Training;

/// <summary>
/// <c>metrics.jsonl</c>: one JSON object per line, <c>"kind": "step"</c> every log interval and <c>"kind": "epoch"</c>
/// after each epoch. Lines are flushed as written; a resume drops lines past the checkpoint's step.
/// </summary>
public sealed class MetricsLog : IDisposable
{
    private readonly StreamWriter writer;
    private readonly List<JsonObject> records = [];

    public MetricsLog(string path, long keepUpToStep)
    {
        Path = path;
        if (File.Exists(path))
        {
            foreach (var line in File.ReadLines(path))
            {
                if (string.IsNullOrWhiteSpace(line)) continue;
                JsonObject? o;
                try
                {
                    o = JsonNode.Parse(line) as JsonObject;
                }
                catch (JsonException)
                {
                    continue; // a line cut short by a kill
                }
                if (o is null) continue;
                long step = (long)(ToDouble(o["step"]) ?? 0);
                if (step <= keepUpToStep) records.Add(o);
            }
            AtomicFile.WriteAllText(path, string.Concat(records.Select(r => r.ToJsonString() + "\n")));
        }
        writer = new StreamWriter(new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.Read), new UTF8Encoding(false));
    }

    public string Path { get; }

    /// <summary>All records so far (including those kept from before a resume).</summary>
    public IReadOnlyList<JsonObject> Records => records;

    public void Write(JsonObject record)
    {
        records.Add(record);
        try
        {
            writer.Write(record.ToJsonString());
            writer.Write('\n');
            writer.Flush();
        }
        catch (Exception e) when (WriteFailure.Describe(Path, e) is { } described)
        {
            throw described;
        }
    }

    public void Dispose() => writer.Dispose();

    /// <summary>A JSON number node as a double (ints included); null for missing or non-numbers.</summary>
    public static double? ToDouble(JsonNode? node) =>
        node is JsonValue v && double.TryParse(v.ToJsonString(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) ? d : null;

    /// <summary>A double as a JSON number rounded to 6 significant digits (NaN/∞ as null).</summary>
    public static JsonNode? Num(double v) => double.IsFinite(v) ? JsonValue.Create(double.Parse(v.ToString("G6", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture)) : null;
}
