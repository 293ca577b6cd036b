using System.Text.Json;
using System.Text.Json.Serialization;
using AllTokens.Checkpoints;
using AllTokens.Models;

namespace AllTokens.Training;

/// <summary>Everything a resume needs besides tensors; stored as JSON in the checkpoint's safetensors metadata.</summary>
public sealed record TrainState
{
    public int Version { get; init; } = 1;
    public required string Model { get; init; }
    public required ModelOptions Options { get; init; }
    public IReadOnlyList<string>? ClassNames { get; init; }
    /// <summary>
    /// Data position: the next batch to train is global batch <see cref="Batch"/> of epoch <see cref="Epoch"/>, i.e.
    /// sample Batch × <see cref="GlobalBatchSize"/> of the epoch's order.
    /// </summary>
    public required int Epoch { get; init; }
    public required int Batch { get; init; }
    /// <summary>Optimizer steps taken.</summary>
    public required long GlobalStep { get; init; }
    public required Dictionary<string, long> OptimizerSteps { get; init; }
    public required string TaskState { get; init; }
    public required bool HasEma { get; init; }
    public double? BestMetric { get; init; }
    public int? BestEpoch { get; init; }
    /// <summary>Running sums of the unfinished epoch (loss·images, correct, images), so epoch figures survive a resume.</summary>
    public double EpochLossSum { get; init; }
    public long EpochCorrect { get; init; }
    public long EpochImages { get; init; }
    /// <summary>Ranks that trained the run (1: a single process).</summary>
    public int WorldSize { get; init; } = 1;
    /// <summary>Images per global micro-batch (ranks × batch_size); null in checkpoints from before data parallelism (= batch_size).</summary>
    public int? GlobalBatchSize { get; init; }
    /// <summary>The effective config, key → YAML value text.</summary>
    public required Dictionary<string, string> Config { get; init; }
    public DateTime SavedUtc { get; init; } = DateTime.UtcNow;
}

/// <summary>A checkpoint read back: its state and tensors by prefix.</summary>
public sealed record LoadedCheckpoint(string Path, TrainState State,
    IReadOnlyDictionary<string, RawTensor> Model, IReadOnlyDictionary<string, RawTensor> Ema,
    IReadOnlyDictionary<string, RawTensor> Optimizer, RawTensor? TorchRng);

/// <summary>
/// One training checkpoint = ONE safetensors file (so a kill can never leave a mixed set), written atomically (temp
/// file, fsync, rename): tensors <c>model/…</c> (fp32 master weights and buffers), <c>ema/…</c>, <c>optim/{param}/{slot}</c>,
/// <c>rng/torch</c>, and the <see cref="TrainState"/> JSON under metadata key <c>alltokens.train_state</c>.
/// </summary>
public static class TrainCheckpoint
{
    public const string StateKey = "alltokens.train_state", FormatKey = "format", FormatValue = "alltokens-train";
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = false, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull };

    public static void Save(string path, TrainState state,
        IEnumerable<KeyValuePair<string, RawTensor>> model, IEnumerable<KeyValuePair<string, RawTensor>> ema,
        IEnumerable<KeyValuePair<string, RawTensor>> optimizer, RawTensor? torchRng)
    {
        var tensors = new List<KeyValuePair<string, RawTensor>>();
        tensors.AddRange(model.Select(kv => KeyValuePair.Create("model/" + kv.Key, kv.Value)));
        tensors.AddRange(ema.Select(kv => KeyValuePair.Create("ema/" + kv.Key, kv.Value)));
        tensors.AddRange(optimizer.Select(kv => KeyValuePair.Create("optim/" + kv.Key, kv.Value)));
        if (torchRng is not null) tensors.Add(KeyValuePair.Create("rng/torch", torchRng));
        var meta = new Dictionary<string, string> { [FormatKey] = FormatValue, [StateKey] = JsonSerializer.Serialize(state, Json) };
        Safetensors.Write(path, tensors, meta);
    }

    public static LoadedCheckpoint Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such checkpoint", path);
        var file = Safetensors.Read(path);
        if (!file.Metadata.TryGetValue(StateKey, out var json))
            throw new CheckpointFormatException(path, "not an AllTokens training checkpoint (no train state in its metadata)");
        TrainState state;
        try
        {
            state = JsonSerializer.Deserialize<TrainState>(json, Json) ?? throw new JsonException("null state");
        }
        catch (JsonException e)
        {
            throw new CheckpointFormatException(path, $"malformed train state: {e.Message}", e);
        }
        Dictionary<string, RawTensor> Part(string prefix) => file.Tensors.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key[prefix.Length..], kv => kv.Value, StringComparer.Ordinal);
        var rng = file.Tensors.FirstOrDefault(kv => kv.Key == "rng/torch").Value;
        return new LoadedCheckpoint(path, state, Part("model/"), Part("ema/"), Part("optim/"), rng);
    }
}
