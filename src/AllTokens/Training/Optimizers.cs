using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>
/// Our own optimizers over <see cref="OptimGroup"/>s: numerically torch.optim's (1.13, single-tensor path), with
/// state that is plain named tensors so a checkpoint restores it exactly.
/// </summary>
public abstract class Optimizer : IDisposable
{
    private readonly Dictionary<string, Dictionary<string, Tensor>> state = new(StringComparer.Ordinal);

    protected Optimizer(IReadOnlyList<OptimGroup> groups)
    {
        Groups = groups;
        var dupes = groups.SelectMany(g => g.Params).GroupBy(p => p.Name).Where(g => g.Count() > 1).Select(g => g.Key).ToList();
        if (dupes.Count > 0) throw new ArgumentException("parameters in more than one group: " + string.Join(", ", dupes));
    }

    public IReadOnlyList<OptimGroup> Groups { get; }

    /// <summary>All parameters, group by group.</summary>
    public IEnumerable<OptimParam> Params => Groups.SelectMany(g => g.Params);

    /// <summary>Applies one update to every parameter whose <see cref="OptimParam.Grad"/> is set.</summary>
    public void Step()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        foreach (var g in Groups)
            foreach (var p in g.Params)
            {
                if (p.Grad is null) continue;
                if (!SameShape(p.Grad, p.Value))
                    throw new InvalidOperationException($"gradient of {p.Name} has shape [{string.Join(",", p.Grad.shape)}], parameter [{string.Join(",", p.Value.shape)}]");
                p.Steps++;
                Update(g, p, p.Grad, SlotsOf(p.Name));
            }
    }

    private static bool SameShape(Tensor a, Tensor b)
    {
        if (ReferenceEquals(a, b)) return true;
        long n = a.dim();
        if (n != b.dim()) return false;
        for (int i = 0; i < n; i++) if (a.size(i) != b.size(i)) return false;
        return true;
    }

    /// <summary>One parameter's update; <paramref name="slots"/> is its state (created on first use).</summary>
    protected abstract void Update(OptimGroup group, OptimParam p, Tensor grad, Dictionary<string, Tensor> slots);

    private Dictionary<string, Tensor> SlotsOf(string name)
    {
        if (!state.TryGetValue(name, out var s)) state[name] = s = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        return s;
    }

    /// <summary>A state tensor that lives as long as the optimizer (outside every dispose scope).</summary>
    protected static Tensor Keep(Tensor t)
    {
        t.DetachFromDisposeScope();
        return t;
    }

    /// <summary>State tensors keyed <c>{param}/{slot}</c> (the optimizer's own; copy before changing).</summary>
    public IEnumerable<KeyValuePair<string, Tensor>> StateTensors() =>
        Params.Where(p => state.ContainsKey(p.Name))
            .SelectMany(p => state[p.Name].OrderBy(kv => kv.Key, StringComparer.Ordinal)
                .Select(kv => new KeyValuePair<string, Tensor>(p.Name + "/" + kv.Key, kv.Value)));

    /// <summary>Per-parameter step counts.</summary>
    public Dictionary<string, long> StepCounts() => Params.ToDictionary(p => p.Name, p => p.Steps);

    /// <summary>Restores what <see cref="StateTensors"/> and <see cref="StepCounts"/> returned; every key must match.</summary>
    public void LoadState(IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, long> steps, string source)
    {
        var byName = Params.ToDictionary(p => p.Name);
        foreach (var (name, n) in steps)
        {
            if (!byName.TryGetValue(name, out var p)) throw new InvalidDataException($"{source}: optimizer state names unknown parameter '{name}'");
            p.Steps = n;
        }
        foreach (var p in Params)
            if (!steps.ContainsKey(p.Name)) throw new InvalidDataException($"{source}: optimizer state lacks parameter '{p.Name}'");
        foreach (var s in state.Values) foreach (var t in s.Values) t.Dispose();
        state.Clear();
        foreach (var (key, value) in tensors)
        {
            int slash = key.LastIndexOf('/');
            string name = slash > 0 ? key[..slash] : throw new InvalidDataException($"{source}: malformed optimizer key '{key}'");
            if (!byName.TryGetValue(name, out var p)) throw new InvalidDataException($"{source}: optimizer state names unknown parameter '{name}'");
            if (!value.shape.SequenceEqual(p.Value.shape))
                throw new InvalidDataException($"{source}: optimizer slot '{key}' has shape [{string.Join(",", value.shape)}], parameter [{string.Join(",", p.Value.shape)}]");
            SlotsOf(name)[key[(slash + 1)..]] = Keep(value.to(p.Value.dtype, p.Value.device, copy: true));
        }
    }

    public void Dispose()
    {
        foreach (var s in state.Values) foreach (var t in s.Values) t.Dispose();
        state.Clear();
        GC.SuppressFinalize(this);
    }
}

/// <summary>torch.optim.AdamW (decoupled decay: p ← p·(1 − lr·wd) before the Adam update; no amsgrad).</summary>
public sealed class AdamW(IReadOnlyList<OptimGroup> groups, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8) : Optimizer(groups)
{
    protected override void Update(OptimGroup group, OptimParam p, Tensor grad, Dictionary<string, Tensor> slots)
    {
        double lr = group.Lr;
        if (!slots.TryGetValue("exp_avg", out var m))
        {
            slots["exp_avg"] = m = Keep(torch.zeros_like(p.Value));
            slots["exp_avg_sq"] = Keep(torch.zeros_like(p.Value));
        }
        var v = slots["exp_avg_sq"];
        double bc1 = 1 - Math.Pow(beta1, p.Steps), bc2 = 1 - Math.Pow(beta2, p.Steps);
        // Every scalar is held until the update is done (see Layers.Held); same values, same arithmetic.
        using Scalar decay = (1 - lr * group.WeightDecay).ToScalar(), b1 = beta1.ToScalar(), a1 = (1 - beta1).ToScalar(),
            b2 = beta2.ToScalar(), a2 = (1 - beta2).ToScalar(), c2 = Math.Sqrt(bc2).ToScalar(), e = eps.ToScalar(), step = (-lr / bc1).ToScalar();
        if (group.WeightDecay != 0) p.Value.mul_(decay);
        m.mul_(b1).add_(grad, alpha: a1);
        v.mul_(b2).addcmul_(grad, grad, value: a2);
        var denom = Layers.Held.AddInPlace(v.sqrt().div_(c2), e); // in place on the fresh sqrt: same arithmetic, one tensor fewer
        p.Value.addcdiv_(m, denom, value: step);
    }
}

/// <summary>torch.optim.SGD: L2 decay added to the gradient, momentum buffer seeded with the first gradient, optional Nesterov.</summary>
public sealed class Sgd(IReadOnlyList<OptimGroup> groups, double momentum = 0.9, bool nesterov = false, double dampening = 0) : Optimizer(groups)
{
    protected override void Update(OptimGroup group, OptimParam p, Tensor grad, Dictionary<string, Tensor> slots)
    {
        // Every scalar is held until the update is done (see Layers.Held).
        using Scalar decay = group.WeightDecay.ToScalar(), mom = momentum.ToScalar(), damp = (1 - dampening).ToScalar(), step = (-group.Lr).ToScalar();
        var d = group.WeightDecay != 0 ? grad.add(p.Value, alpha: decay) : grad;
        if (momentum != 0)
        {
            if (!slots.TryGetValue("momentum_buffer", out var buf)) slots["momentum_buffer"] = buf = Keep(d.clone());
            else buf.mul_(mom).add_(d, alpha: damp);
            d = nesterov ? d.add(buf, alpha: mom) : buf;
        }
        p.Value.add_(d, alpha: step);
    }
}

/// <summary>Gradient clipping by global L2 norm (torch.nn.utils.clip_grad_norm_).</summary>
public static class GradClip
{
    /// <summary>Scales every gradient by min(1, max/(norm + 1e-6)) in place; returns the norm before clipping.</summary>
    public static double ClipGlobalNorm(IEnumerable<Tensor> grads, double maxNorm)
    {
        using var scope = torch.NewDisposeScope();
        var list = grads.ToList();
        if (list.Count == 0) return 0;
        var total = torch.stack(list.Select(g => g.norm()).ToArray()).norm();
        double norm = total.item<float>();
        using Scalar tiny = 1e-6.ToScalar(), max = maxNorm.ToScalar(), one = 1.0.ToScalar(); // held for the calls (see Layers.Held)
        var coef = Layers.Held.Add(total, tiny).reciprocal_().mul_(max).clamp_max(one);
        foreach (var g in list) g.mul_(coef);
        return norm;
    }
}
