using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>
/// timm <c>ModelEmaV2</c>: after every optimizer step, ema = d·ema + (1 − d)·model over the whole state dict,
/// buffers included (LVVIT.md §8.1). Floating tensors are averaged in fp32; integer buffers (BN's
/// num_batches_tracked) are copied, where timm's in-place copy would truncate the blend to nearly the same value.
/// </summary>
public sealed class ModelEma : IDisposable
{
    private readonly List<KeyValuePair<string, Tensor>> state;

    /// <summary>Starts as a copy of <paramref name="source"/> (timm deep-copies the model).</summary>
    public ModelEma(IReadOnlyList<KeyValuePair<string, Tensor>> source, double decay)
    {
        if (decay is < 0 or > 1) throw new ArgumentOutOfRangeException(nameof(decay), $"EMA decay must be in [0, 1], got {decay}");
        Decay = decay;
        using var noGrad = torch.no_grad();
        state = source.Select(kv =>
        {
            var t = (kv.Value.is_floating_point() ? kv.Value.to(ScalarType.Float32, copy: true) : kv.Value.clone()).detach();
            t.DetachFromDisposeScope();
            return new KeyValuePair<string, Tensor>(kv.Key, t);
        }).ToList();
    }

    public double Decay { get; }

    /// <summary>The averaged tensors, in source order (fp32 for floating ones). Owned by the EMA.</summary>
    public IReadOnlyList<KeyValuePair<string, Tensor>> State => state;

    /// <summary>One update from the current weights; names and order must match the constructor's.</summary>
    public void Update(IReadOnlyList<KeyValuePair<string, Tensor>> source)
    {
        if (source.Count != state.Count) throw new ArgumentException($"EMA holds {state.Count} tensors, update has {source.Count}");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        using Scalar d = Decay.ToScalar(), a = (1 - Decay).ToScalar(); // held for the calls (see Layers.Held)
        for (int i = 0; i < state.Count; i++)
        {
            var (name, e) = state[i];
            if (source[i].Key != name) throw new ArgumentException($"EMA tensor {i} is '{name}', update gives '{source[i].Key}'");
            var m = source[i].Value;
            if (!e.is_floating_point())
            {
                e.copy_(m);
                continue;
            }
            e.mul_(d).add_(m.to(ScalarType.Float32), alpha: a);
        }
    }

    /// <summary>Overwrites the averages (resume).</summary>
    public void Load(IReadOnlyDictionary<string, Tensor> values, string source)
    {
        using var noGrad = torch.no_grad();
        foreach (var (name, e) in state)
        {
            if (!values.TryGetValue(name, out var v)) throw new InvalidDataException($"{source}: EMA state lacks '{name}'");
            if (!v.shape.SequenceEqual(e.shape)) throw new InvalidDataException($"{source}: EMA tensor '{name}' has shape [{string.Join(",", v.shape)}], model [{string.Join(",", e.shape)}]");
            e.copy_(v);
        }
    }

    public void Dispose()
    {
        foreach (var (_, t) in state) t.Dispose();
        state.Clear();
    }
}
