using System.Runtime.InteropServices;
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
        {
            var ready = new List<OptimParam>(g.Params.Count);
            foreach (var p in g.Params)
            {
                if (p.Grad is null) continue;
                if (!SameShape(p.Grad, p.Value))
                    throw new InvalidOperationException($"gradient of {p.Name} has shape [{string.Join(",", p.Grad.shape)}], parameter [{string.Join(",", p.Value.shape)}]");
                p.Steps++;
                ready.Add(p);
            }
            if (ready.Count > 0) UpdateGroup(g, ready);
        }
    }

    /// <summary>
    /// One group's update (its parameters that have a gradient, steps already counted); by default parameter by
    /// parameter, each gradient in its parameter's precision, each shadow refreshed after its update.
    /// </summary>
    protected virtual void UpdateGroup(OptimGroup group, List<OptimParam> ready)
    {
        foreach (var p in ready)
        {
            var grad = p.Grad!.dtype == p.Value.dtype ? p.Grad : p.Grad.to(p.Value.dtype);
            Update(group, p, grad, SlotsOf(p.Name));
            p.Shadow?.copy_(p.Value);
        }
    }

    /// <summary>A parameter's state (created empty on first use).</summary>
    protected Dictionary<string, Tensor> Slots(OptimParam p) => SlotsOf(p.Name);

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
        DisposeScratch();
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees tensors a subclass keeps besides the state.</summary>
    protected virtual void DisposeScratch()
    {
    }
}

/// <summary>
/// torch.optim.AdamW (decoupled decay: p ← p·(1 − lr·wd) before the Adam update; no amsgrad). A group of fp32
/// parameters on one CPU or CUDA device is updated by libtorch's fused multi-tensor kernel (<c>_fused_adamw_</c>, the
/// one behind torch.optim.AdamW(fused=True), reached through TorchScript since TorchSharp does not bind it): one pass
/// over all parameters instead of ~8 small ops per tensor (lvvit_t: 6.3 vs 17.1 ms a step on 2 cores); same formula,
/// other float rounding. <c>ALLTOKENS_OPTIMIZER=plain</c> (or <see cref="UseFused"/> = false, or <c>fused: false</c>) keeps
/// the per-parameter path. A bf16 model's step (bf16 gradients, fp32 masters, bf16 shadows) on the CPU takes our own
/// one-pass kernel instead (<see cref="MixedAdamW"/>; <c>ALLTOKENS_MIXED_ADAMW=off</c> or <see cref="UseMixed"/> = false
/// turns it off: gradients cast, the fused kernel, shadows copied).
/// </summary>
public sealed class AdamW(IReadOnlyList<OptimGroup> groups, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, bool? fused = null)
    : Optimizer(groups)
{
    public static bool UseFused { get; set; } = Layers.SpeedSwitch.On("ALLTOKENS_OPTIMIZER", "plain");

    /// <summary>bf16 steps through <see cref="MixedAdamW"/> (when <see cref="UseFused"/> or the constructor's fused allow a fused update).</summary>
    public static bool UseMixed { get; set; } = Layers.SpeedSwitch.On("ALLTOKENS_MIXED_ADAMW", "off");

    // torch.optim hands the kernel per-parameter step counts as float tensors, already incremented for this step.
    private const string FusedScript = @"
def adamw(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor], steps: List[Tensor],
          lr: float, beta1: float, beta2: float, weight_decay: float, eps: float):
    torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                        weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)
";

    // Compiled once per process; null where this libtorch lacks the kernel (then every update is per parameter).
    private static readonly Lazy<torch.jit.CompilationUnit?> Fused = new(() =>
    {
        try
        {
            return torch.jit.compile(FusedScript);
        }
        catch (Exception e) when (e is ExternalException or InvalidOperationException)
        {
            return null;
        }
    });

    private readonly Dictionary<string, Tensor> stepTensors = new(StringComparer.Ordinal);

    /// <summary>Group updates done by the fused kernel so far (tests check the path is taken).</summary>
    internal int FusedUpdates { get; private set; }

    /// <summary>Group updates done by <see cref="MixedAdamW"/> so far.</summary>
    internal int MixedUpdates { get; private set; }

    protected override void UpdateGroup(OptimGroup group, List<OptimParam> ready)
    {
        bool anyFused = fused ?? UseFused;
        if (anyFused && UseMixed && MixedAdamW.Applies(ready))
        {
            MixedAdamW.Step(ready, p => Moments(p, Slots(p)), group.Lr, group.WeightDecay, beta1, beta2, eps);
            MixedUpdates++;
            return;
        }
        if (!anyFused || !FusedApplies(ready) || Fused.Value is not { } unit)
        {
            base.UpdateGroup(group, ready);
            return;
        }
        int n = ready.Count;
        var values = new Tensor[n];
        var grads = new Tensor[n];
        var m = new Tensor[n];
        var v = new Tensor[n];
        var steps = new Tensor[n];
        for (int i = 0; i < n; i++)
        {
            var p = ready[i];
            (m[i], v[i]) = Moments(p, Slots(p));
            values[i] = p.Value;
            grads[i] = p.Grad!.dtype == ScalarType.Float32 ? p.Grad : p.Grad.to(ScalarType.Float32); // a bf16 model's (Step's scope frees it)
            if (!stepTensors.TryGetValue(p.Name, out var st))
                stepTensors[p.Name] = st = Keep(torch.zeros(1, ScalarType.Float32, p.Value.device));
            using Scalar count = ((double)p.Steps).ToScalar(); // held for the call (see Layers.Held)
            st.fill_(count);
            steps[i] = st;
        }
        // Held scalars: TorchSharp would turn doubles into temporary ones here (see Layers.Held).
        using Scalar lr = group.Lr.ToScalar(), b1 = beta1.ToScalar(), b2 = beta2.ToScalar(), wd = group.WeightDecay.ToScalar(), e = eps.ToScalar();
        unit.invoke("adamw", values, grads, m, v, steps, lr, b1, b2, wd, e);
        foreach (var p in ready) p.Shadow?.copy_(p.Value);
        FusedUpdates++;
    }

    /// <summary>fp32 contiguous parameters, contiguous gradients of a float type (cast to fp32), one CPU or CUDA device: what the fused kernel takes.</summary>
    private static bool FusedApplies(List<OptimParam> ready)
    {
        var first = ready[0].Value;
        if (first.device_type is not (DeviceType.CPU or DeviceType.CUDA)) return false;
        foreach (var p in ready)
        {
            var g = p.Grad!;
            if (p.Value.dtype != ScalarType.Float32 || !g.is_floating_point()) return false;
            if (p.Value.device_type != first.device_type || p.Value.device_index != first.device_index) return false;
            if (g.device_type != first.device_type || g.device_index != first.device_index) return false;
            if (!p.Value.is_contiguous() || !g.is_contiguous()) return false;
        }
        return true;
    }

    protected override void DisposeScratch()
    {
        foreach (var t in stepTensors.Values) t.Dispose();
        stepTensors.Clear();
    }

    private static (Tensor ExpAvg, Tensor ExpAvgSq) Moments(OptimParam p, Dictionary<string, Tensor> slots)
    {
        if (!slots.TryGetValue("exp_avg", out var m))
        {
            slots["exp_avg"] = m = Keep(torch.zeros_like(p.Value));
            slots["exp_avg_sq"] = Keep(torch.zeros_like(p.Value));
        }
        return (m, slots["exp_avg_sq"]);
    }

    protected override void Update(OptimGroup group, OptimParam p, Tensor grad, Dictionary<string, Tensor> slots)
    {
        double lr = group.Lr;
        var (m, v) = Moments(p, slots);
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
