using AllTokens.Models;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>One named parameter as the optimizer sees it.</summary>
/// <param name="Name">State-dict key of the model parameter.</param>
/// <param name="Value">The fp32 tensor the optimizer updates: the parameter itself, or its fp32 master copy in bf16 mode.</param>
public sealed class OptimParam(string name, Tensor value)
{
    public string Name { get; } = name;
    public Tensor Value { get; } = value;

    /// <summary>
    /// Gradient for the coming step (same shape), set by the trainer; null skips the parameter (torch semantics). In bf16
    /// mode it may be the model's bf16 gradient: the optimizers compute in <see cref="Value"/>'s precision either way.
    /// </summary>
    public Tensor? Grad { get; set; }

    /// <summary>
    /// The model's own lower-precision copy of <see cref="Value"/> in bf16 mode (the bf16 parameter of an fp32 master):
    /// every update ends by writing the new value into it, rounded. Null when the optimizer updates the parameter itself.
    /// </summary>
    public Tensor? Shadow
    {
        get => shadow;
        init
        {
            if (value is not null && !value.shape.SequenceEqual(Value.shape))
                throw new ArgumentException($"{Name}: shadow has shape [{string.Join(",", value.shape)}], parameter [{string.Join(",", Value.shape)}]");
            shadow = value;
        }
    }

    private readonly Tensor? shadow;

    /// <summary>Steps this parameter has taken (torch keeps <c>state['step']</c> per parameter).</summary>
    public long Steps { get; set; }
}

/// <summary>A parameter group: its own weight decay and a multiplier on the scheduled lr.</summary>
public sealed class OptimGroup(string name, IReadOnlyList<OptimParam> parameters, double weightDecay, double lrScale)
{
    public string Name { get; } = name;
    public IReadOnlyList<OptimParam> Params { get; } = parameters;
    public double WeightDecay { get; } = weightDecay;

    /// <summary>Base lr of this group = recipe lr × LrScale (the transfer recipe's backbone ratio).</summary>
    public double LrScale { get; } = lrScale;

    /// <summary>Current lr, set from the schedule before each step.</summary>
    public double Lr { get; set; }
}

/// <summary>How to split a model's parameters into optimizer groups.</summary>
/// <param name="WeightDecay">Decay for ≥2-D weights; 1-D tensors, <c>*.bias</c> and the model's no-decay names get 0.</param>
/// <param name="TransferRatio">When set, every parameter outside the classifier trains at lr × ratio (T2T_VIT.md §6.1).</param>
/// <param name="Freeze">Name prefixes left out of the optimizer and frozen (requires_grad off).</param>
/// <param name="FilterBiasAndBn">False puts every parameter under <paramref name="WeightDecay"/> (plain torch param groups).</param>
public sealed record GroupOptions(double WeightDecay, double? TransferRatio = null, IReadOnlyList<string>? Freeze = null, bool FilterBiasAndBn = true);

/// <summary>timm 0.4 <c>add_weight_decay</c> with the model's <c>no_weight_decay()</c> (LVVIT.md §8.1, T2T_VIT.md §5.1).</summary>
public static class ParameterGroups
{
    /// <summary>True when <paramref name="name"/> takes no weight decay.</summary>
    public static bool IsNoDecay(string name, long[] shape, IReadOnlySet<string> modelNoDecay) =>
        shape.Length <= 1 || name.EndsWith(".bias", StringComparison.Ordinal) || modelNoDecay.Contains(name);

    /// <summary>
    /// Groups of (name, tensor) pairs. <paramref name="parameters"/> are the tensors the optimizer updates, in
    /// model order; <paramref name="model"/> supplies the no-decay list and the classifier prefixes. Parameters
    /// that do not require grad (frozen embeddings) are left out, as in timm. Empty groups are dropped.
    /// </summary>
    public static List<OptimGroup> Build(ImageClassifier model, IReadOnlyList<KeyValuePair<string, Tensor>> parameters, GroupOptions options)
    {
        var noDecayNames = model.NoWeightDecay();
        var head = model.ClassifierPrefixes();
        var freeze = options.Freeze ?? [];
        var buckets = new Dictionary<(bool Head, bool NoDecay), List<OptimParam>>();
        foreach (var (name, p) in parameters)
        {
            if (freeze.Any(f => name == f || name.StartsWith(f.EndsWith('.') ? f : f + ".", StringComparison.Ordinal))) continue;
            if (!p.requires_grad) continue;
            bool isHead = options.TransferRatio is not null && head.Any(h => name.StartsWith(h, StringComparison.Ordinal));
            bool noDecay = options.WeightDecay == 0 || (options.FilterBiasAndBn && IsNoDecay(name, p.shape, noDecayNames));
            var key = (isHead, noDecay);
            if (!buckets.TryGetValue(key, out var list)) buckets[key] = list = [];
            list.Add(new OptimParam(name, p));
        }
        var groups = new List<OptimGroup>();
        foreach (var isHead in new[] { false, true })
        foreach (var noDecay in new[] { false, true })
        {
            if (!buckets.TryGetValue((isHead, noDecay), out var list)) continue;
            string prefix = options.TransferRatio is null ? "" : isHead ? "head." : "backbone.";
            double scale = options.TransferRatio is { } r && !isHead ? r : 1.0;
            groups.Add(new OptimGroup(prefix + (noDecay ? "no_decay" : "decay"), list, noDecay ? 0 : options.WeightDecay, scale));
        }
        return groups;
    }

    /// <summary>Names matched by the <paramref name="freeze"/> prefixes (exact name, or a dotted prefix).</summary>
    public static bool IsFrozen(string name, IReadOnlyList<string>? freeze) =>
        freeze is not null && freeze.Any(f => name == f || name.StartsWith(f.EndsWith('.') ? f : f + ".", StringComparison.Ordinal));
}
