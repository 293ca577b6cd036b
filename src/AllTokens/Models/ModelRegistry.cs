using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Models;

/// <summary>Evaluation preprocessing a model's published weights expect (timm default_cfg).</summary>
public sealed record PretrainedDefaults(int ImgSize, double CropPct, string Interpolation)
{
    public static readonly float[] ImageNetMean = [0.485f, 0.456f, 0.406f];
    public static readonly float[] ImageNetStd = [0.229f, 0.224f, 0.225f];
    public float[] Mean { get; init; } = ImageNetMean;
    public float[] Std { get; init; } = ImageNetStd;
}

/// <summary>One registered model: its Python name, family, eval defaults and factory.</summary>
public sealed record ModelInfo(string Name, string Family, string Description, PretrainedDefaults Defaults, Func<ModelOptions, ImageClassifier> Factory)
{
    public ImageClassifier Create(ModelOptions? options = null) => Factory(options ?? new ModelOptions(ImgSize: Defaults.ImgSize));
}

public sealed class UnknownModelException(string name, IReadOnlyList<string> suggestions)
    : Exception($"unknown model '{name}'" + (suggestions.Count > 0 ? $"; did you mean {string.Join(", ", suggestions)}?" : "") +
                " (`alltokens models` lists them all)")
{
    public IReadOnlyList<string> Suggestions { get; } = suggestions;
}

/// <summary>Every model the library can build, by its Python registry name (so papers, checkpoints and CLI line up).</summary>
public static class ModelRegistry
{
    private static readonly Lazy<IReadOnlyList<ModelInfo>> all = new(() =>
    {
        var list = new List<ModelInfo>();
        list.AddRange(LvVit.Registrations());
        list.AddRange(T2tVit.Registrations());
        var dupes = list.GroupBy(m => m.Name).Where(g => g.Count() > 1).Select(g => g.Key).ToList();
        if (dupes.Count > 0) throw new InvalidOperationException("duplicate model names: " + string.Join(", ", dupes));
        return list;
    });

    public static IReadOnlyList<ModelInfo> All => all.Value;

    public static bool TryGet(string name, out ModelInfo info)
    {
        info = All.FirstOrDefault(m => m.Name == name)!;
        return info is not null;
    }

    public static ModelInfo Get(string name) =>
        TryGet(name, out var info) ? info : throw new UnknownModelException(name, Suggest(name));

    public static ImageClassifier Create(string name, ModelOptions? options = null) => Get(name).Create(options);

    /// <summary>Registered names closest to <paramref name="name"/> (edit distance, then shared prefix).</summary>
    public static IReadOnlyList<string> Suggest(string name, int max = 3)
    {
        string n = name.ToLowerInvariant().Replace('-', '_');
        return All.Select(m => (m.Name, d: EditDistance.Between(n, m.Name)))
            .Where(x => x.d <= Math.Max(2, n.Length / 3) || x.Name.StartsWith(n, StringComparison.Ordinal) || n.StartsWith(x.Name, StringComparison.Ordinal))
            .OrderBy(x => x.d).ThenBy(x => x.Name, StringComparer.Ordinal).Take(max).Select(x => x.Name).ToList();
    }

    /// <summary>
    /// Parameter count (all parameters and frozen tensors stored as parameters; BN buffers excluded) without
    /// allocating weights: the model is built on the meta device. libtorch's default device is process-wide, so
    /// do not build models on other threads while this runs.
    /// </summary>
    public static long CountParameters(string name, ModelOptions? options = null)
    {
        var info = Get(name);
        lock (metaLock) return Count(info, options);
    }

    private static readonly object metaLock = new();

    private static long Count(ModelInfo info, ModelOptions? options)
    {
        using var scope = torch.NewDisposeScope();
        torch.set_default_device(torch.META);
        try
        {
            using var model = info.Create(options);
            return model.parameters().Sum(p => p.numel());
        }
        finally
        {
            torch.set_default_device(torch.CPU);
        }
    }
}
