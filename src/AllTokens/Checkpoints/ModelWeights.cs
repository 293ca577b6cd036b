using System.Text.Json;
using AllTokens.Models;

namespace AllTokens.Checkpoints;

/// <summary>
/// The eval preprocessing a model was validated with (timm's eval transform: resize the shorter side to
/// floor(size/crop_pct), centre crop, normalise). Training writes it into the weights so that eval, predict, label and
/// visualize feed the model what it was trained on (a recipe's own mean/std, say), not the registry's ImageNet defaults.
/// </summary>
public sealed record Preprocessing(float[] Mean, float[] Std, double CropPct, string Interpolation)
{
    public PretrainedDefaults Apply(PretrainedDefaults d) => d with { CropPct = CropPct, Interpolation = Interpolation, Mean = Mean, Std = Std };
}

/// <summary>What our own safetensors files carry besides tensors (string metadata, JSON where structured).</summary>
public sealed record WeightsMetadata(string? Model, ModelOptions? Options, IReadOnlyList<string>? ClassNames, Preprocessing? Preprocess = null)
{
    public const string FormatKey = "format", FormatValue = "alltokens", ModelKey = "alltokens.model",
        OptionsKey = "alltokens.options", ClassNamesKey = "alltokens.class_names", PreprocessKey = "alltokens.preprocess";

    public Dictionary<string, string> ToDictionary()
    {
        var d = new Dictionary<string, string> { [FormatKey] = FormatValue };
        if (Model is not null) d[ModelKey] = Model;
        if (Options is not null) d[OptionsKey] = JsonSerializer.Serialize(Options);
        if (ClassNames is not null) d[ClassNamesKey] = JsonSerializer.Serialize(ClassNames);
        if (Preprocess is not null) d[PreprocessKey] = JsonSerializer.Serialize(Preprocess);
        return d;
    }

    public static WeightsMetadata? From(IReadOnlyDictionary<string, string> meta, string pathForErrors)
    {
        if (!meta.TryGetValue(ModelKey, out var model) && !meta.ContainsKey(OptionsKey)) return null;
        try
        {
            var options = meta.TryGetValue(OptionsKey, out var o) ? JsonSerializer.Deserialize<ModelOptions>(o) : null;
            var names = meta.TryGetValue(ClassNamesKey, out var n) ? JsonSerializer.Deserialize<List<string>>(n) : null;
            var pre = meta.TryGetValue(PreprocessKey, out var pp) ? JsonSerializer.Deserialize<Preprocessing>(pp) : null;
            if (pre is not null && (pre.Mean is not { Length: 3 } || pre.Std is not { Length: 3 } || pre.Std.Any(s => !(s > 0)) ||
                                    !(pre.CropPct is > 0 and <= 1) || pre.Interpolation is not ("bicubic" or "bilinear")))
                throw new CheckpointFormatException(pathForErrors, $"malformed AllTokens metadata: {PreprocessKey} = {pp}");
            return new WeightsMetadata(model, options, names, pre);
        }
        catch (JsonException e)
        {
            throw new CheckpointFormatException(pathForErrors, $"malformed AllTokens metadata: {e.Message}", e);
        }
    }
}

/// <summary>A weights file read into memory: tensors in file order plus our metadata when present.</summary>
public sealed record WeightsFile(string Path, IReadOnlyList<KeyValuePair<string, RawTensor>> StateDict, WeightsMetadata? Metadata);

/// <summary>A model built from a registry name and/or a weights file.</summary>
public sealed record LoadedModel(string Name, ImageClassifier Model, LoadReport? Report, WeightsMetadata? Metadata);

/// <summary>Choices the user made that override what the weights imply.</summary>
public sealed record ModelRequest(string? Model = null, string? Weights = null, int? NumClasses = null, int? ImgSize = null,
    double DropPathRate = 0, bool AllowMismatch = false, bool PreferEma = false);

/// <summary>Saving and loading whole models: our safetensors (with metadata) or any supported checkpoint.</summary>
public static class ModelWeights
{
    public static void Save(ImageClassifier model, string modelName, string path, IReadOnlyList<string>? classNames = null,
        Preprocessing? preprocess = null)
    {
        var tensors = ModuleState.Ordered(model).Select(kv => new KeyValuePair<string, RawTensor>(kv.Key, RawTensor.FromTorch(kv.Value))).ToList();
        Safetensors.Write(path, tensors, new WeightsMetadata(modelName, model.Options, classNames, preprocess).ToDictionary());
    }

    public static WeightsFile Read(string path, bool preferEma = false)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such weights file", path);
        var sd = StateDicts.ReadAny(path, preferEma);
        WeightsMetadata? meta = null;
        if (IsSafetensors(path)) meta = WeightsMetadata.From(Safetensors.ReadMetadata(path), path);
        return new WeightsFile(path, sd, meta);
    }

    private static bool IsSafetensors(string path)
    {
        using var f = File.OpenRead(path);
        Span<byte> head = stackalloc byte[9];
        if (f.Read(head) < 9) return false;
        ulong n = BitConverter.ToUInt64(head[..8]);
        return n > 1 && n < (ulong)f.Length && head[8] == (byte)'{';
    }

    /// <summary>
    /// Builds the model the request names (or the weights' metadata names) and loads the weights.
    /// Defaults, in order: the request, the weights' own metadata, what the tensors imply (class count from
    /// <c>head.weight</c>), the registry's defaults.
    /// </summary>
    public static LoadedModel Load(ModelRequest request)
    {
        WeightsFile? file = request.Weights is null ? null : Read(request.Weights, request.PreferEma);
        string name = request.Model ?? file?.Metadata?.Model
            ?? throw new ArgumentException(request.Weights is null
                ? "no model given: pass --model NAME (see `alltokens models`)"
                : $"{request.Weights}: the file does not say which model it holds; pass --model NAME");
        var info = ModelRegistry.Get(name);
        var metaOptions = file?.Metadata?.Model == name ? file.Metadata.Options : null;
        int numClasses = request.NumClasses ?? metaOptions?.NumClasses ?? InferClasses(file) ?? 1000;
        int imgSize = request.ImgSize ?? metaOptions?.ImgSize ?? info.Defaults.ImgSize;
        var options = new ModelOptions(numClasses, imgSize, request.DropPathRate);
        var model = info.Create(options);
        LoadReport? report = null;
        if (file is not null)
        {
            try
            {
                report = WeightLoader.LoadInto(model, file.StateDict, file.Path, new LoadOptions(request.AllowMismatch, request.PreferEma));
            }
            catch
            {
                model.Dispose();
                throw;
            }
        }
        return new LoadedModel(name, model, report, file?.Metadata);
    }

    private static int? InferClasses(WeightsFile? file)
    {
        var head = file?.StateDict.FirstOrDefault(kv => kv.Key == "head.weight").Value;
        return head is { Shape.Length: 2 } ? (int)head.Shape[0] : null;
    }
}
