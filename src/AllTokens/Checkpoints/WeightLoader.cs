using System.Text;
using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Checkpoints;

/// <summary>How strictly weights must fit the model.</summary>
/// <param name="AllowMismatch">Load what fits and report the rest instead of failing.</param>
/// <param name="PreferEma">Take <c>state_dict_ema</c> from a training checkpoint when both are present.</param>
public sealed record LoadOptions(bool AllowMismatch = false, bool PreferEma = false);

/// <summary>What a load found, key by key (minGPT-style: a wrong mapping fails loudly).</summary>
public sealed class LoadReport
{
    public string Source { get; init; } = "";
    public int Loaded { get; set; }
    public List<string> Missing { get; } = [];
    public List<string> Unexpected { get; } = [];
    public List<string> Mismatched { get; } = [];
    /// <summary>Deliberate adaptations: dropped classifier, resized position embedding, converted dtypes.</summary>
    public List<string> Notes { get; } = [];
    public bool IsClean => Missing.Count == 0 && Unexpected.Count == 0 && Mismatched.Count == 0;

    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.Append($"{Source}: loaded {Loaded} tensors");
        if (Missing.Count > 0) sb.Append($"; missing {Missing.Count}: {Preview(Missing)}");
        if (Unexpected.Count > 0) sb.Append($"; unexpected {Unexpected.Count}: {Preview(Unexpected)}");
        if (Mismatched.Count > 0) sb.Append($"; shape mismatch {Mismatched.Count}: {Preview(Mismatched)}");
        foreach (var n in Notes) sb.Append($"\n  note: {n}");
        return sb.ToString();
    }

    private static string Preview(List<string> items) =>
        string.Join(", ", items.Take(8)) + (items.Count > 8 ? $", … (+{items.Count - 8})" : "");
}

public sealed class CheckpointMismatchException(LoadReport report, string model)
    : Exception($"weights do not fit {model}: {report}\n(pass --allow-mismatch to load what fits, or check --model/--num-classes/--img-size)")
{
    public LoadReport Report { get; } = report;
}

/// <summary>Puts a state dict into a model: classifier drop on a class-count change, position-embedding resize,
/// key/shape checks with a report (LVVIT.md §4.5, tlt/utils/utils.py semantics).</summary>
public static class WeightLoader
{
    public static LoadReport LoadInto(ImageClassifier model, IReadOnlyList<KeyValuePair<string, RawTensor>> stateDict, string source, LoadOptions? options = null)
    {
        options ??= new LoadOptions();
        var report = new LoadReport { Source = source };
        var incoming = new Dictionary<string, RawTensor>(StringComparer.Ordinal);
        foreach (var (k, v) in model.RemapCheckpoint(stateDict)) incoming[k] = v;

        var expected = ModuleState.Ordered(model);
        var expectedByName = expected.ToDictionary(e => e.Key, e => e.Value, StringComparer.Ordinal);

        DropClassifierIfClassesDiffer(model, incoming, expectedByName, report);

        using var scope = torch.NewDisposeScope();
        var ready = new List<(Tensor Target, Tensor Value)>();
        foreach (var (key, target) in expected)
        {
            if (!incoming.TryGetValue(key, out var raw))
            {
                if (!IsDroppedClassifier(model, key, report)) report.Missing.Add(key);
                continue;
            }
            var value = raw.ToTorch();
            if (!value.shape.SequenceEqual(target.shape) && key.EndsWith("pos_embed", StringComparison.Ordinal) && model.PosEmbedResizable)
            {
                var resized = PosEmbed.Resize(value, target.shape, model.NumPrefixTokens);
                if (resized is not null)
                {
                    report.Notes.Add($"{key} resized {Shape(value.shape)} → {Shape(target.shape)} (bicubic, prefix tokens kept)");
                    value = resized;
                }
            }
            if (!value.shape.SequenceEqual(target.shape))
            {
                report.Mismatched.Add($"{key} {Shape(value.shape)} vs model {Shape(target.shape)}");
                continue;
            }
            if (value.dtype != target.dtype)
            {
                if (value.dtype is ScalarType.Float16 or ScalarType.BFloat16 && target.dtype == ScalarType.Float32)
                    report.Notes.Add($"{key} converted {value.dtype} → {target.dtype}");
                value = value.to(target.dtype);
            }
            if (value.is_floating_point() && !torch.isfinite(value).all().item<bool>())
            {
                long bad = value.numel() - torch.isfinite(value).sum().item<long>();
                // predict/eval would print meaningless scores and init_from would start from a broken model: refuse by name.
                throw new CheckpointFormatException(source, $"'{key}' holds {bad} NaN or Inf value(s) of {value.numel()}; " +
                                                            "the weights are unusable (saved from a diverged run?)");
            }
            ready.Add((target, value));
        }
        foreach (var key in incoming.Keys)
            if (!expectedByName.ContainsKey(key)) report.Unexpected.Add(key);
        report.Loaded = ready.Count;

        if (!report.IsClean && !options.AllowMismatch) throw new CheckpointMismatchException(report, model.GetName());

        using (torch.no_grad())
            foreach (var (target, value) in ready) target.copy_(value);
        return report;
    }

    private static void DropClassifierIfClassesDiffer(ImageClassifier model, Dictionary<string, RawTensor> incoming,
        Dictionary<string, Tensor> expected, LoadReport report)
    {
        foreach (var prefix in model.ClassifierPrefixes())
        {
            string wKey = prefix + "weight";
            if (!incoming.TryGetValue(wKey, out var w)) continue;
            long ckptClasses = w.Shape.Length == 2 ? w.Shape[0] : -1;
            bool fits = expected.TryGetValue(wKey, out var target) && target.shape.SequenceEqual(w.Shape);
            if (fits) continue;
            bool drop = model.NumClasses == 0 || (ckptClasses > 0 && ckptClasses != model.NumClasses &&
                                                  (target is null || target.shape[1] == w.Shape[1]));
            if (!drop) continue;
            foreach (var k in incoming.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).ToList()) incoming.Remove(k);
            report.Notes.Add($"{prefix.TrimEnd('.')} dropped: checkpoint has {ckptClasses} classes, model {model.NumClasses}; it keeps its fresh initialisation");
        }
    }

    private static bool IsDroppedClassifier(ImageClassifier model, string key, LoadReport report) =>
        model.ClassifierPrefixes().Any(p => key.StartsWith(p, StringComparison.Ordinal) &&
                                            report.Notes.Any(n => n.StartsWith(p.TrimEnd('.') + " dropped", StringComparison.Ordinal)));

    internal static string Shape(ReadOnlySpan<long> s) => "[" + string.Join(",", s.ToArray()) + "]";
}

/// <summary>Position-embedding resampling for checkpoints trained at another resolution.</summary>
public static class PosEmbed
{
    /// <summary>
    /// Resizes [1, prefix + g², D] to <paramref name="targetShape"/> [1, prefix + G², D]: the prefix (class) tokens
    /// are kept as they are, the g×g grid is interpolated bicubically (align_corners = False) to G×G and flattened
    /// back row-major. Returns null when the shapes are not of that form.
    /// </summary>
    public static Tensor? Resize(Tensor posEmbed, ReadOnlySpan<long> targetShape, int prefixTokens = 1)
    {
        if (posEmbed.dim() != 3 || targetShape.Length != 3 || posEmbed.shape[2] != targetShape[2]) return null;
        long dim = targetShape[2];
        long nOld = posEmbed.shape[1] - prefixTokens, nNew = targetShape[1] - prefixTokens;
        long gOld = (long)Math.Round(Math.Sqrt(nOld)), gNew = (long)Math.Round(Math.Sqrt(nNew));
        if (gOld * gOld != nOld || gNew * gNew != nNew || nOld <= 0 || nNew <= 0) return null;
        var src = posEmbed.to(ScalarType.Float32);
        var prefix = src[.., ..prefixTokens];
        var grid = src[.., prefixTokens..].reshape(1, gOld, gOld, dim).permute(0, 3, 1, 2); // [1, D, g, g]
        var resized = nn.functional.interpolate(grid, size: [gNew, gNew], mode: InterpolationMode.Bicubic, align_corners: false);
        var flat = resized.permute(0, 2, 3, 1).reshape(1, gNew * gNew, dim);
        return torch.cat([prefix, flat], 1).to(posEmbed.dtype);
    }
}
