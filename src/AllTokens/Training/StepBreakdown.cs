using System.Diagnostics;
using AllTokens.Layers;
using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>One part of a train step: a top-level module (each block on its own) or the optimizer.</summary>
/// <param name="Input">Shape of the part's input, as captured from a forward of the whole model; empty for the optimizer.</param>
/// <param name="MedianSeconds">Forward + backward of the part alone (the optimizer: one AdamW update of every parameter; for a
/// bf16 model on its fp32 masters from bf16 gradients, writing the bf16 parameters back, as a bf16 step does).</param>
public sealed record StepPart(string Name, long[] Input, double MedianSeconds);

/// <summary>
/// Where a train step's time goes: every top-level module of the model (blocks one by one) timed alone, forward +
/// backward with a gradient of ones, on the input it received in one forward of the whole model (captured with
/// forward pre-hooks), plus an AdamW step over all parameters. Parts are run in turn, round after round, so a drift
/// of the machine's speed spreads over all of them. The parts' sum leaves out the loss and the glue between modules
/// (class token, position embedding), so it comes out a little below a whole step. A model whose parameters are bf16
/// (bench --bf16) is timed in bf16, its optimizer part with fp32 master weights as the bf16 step keeps them.
/// </summary>
public static class StepBreakdown
{
    public static IReadOnlyList<StepPart> Run(ImageClassifier model, int batch, int resolution, int steps, int warmup, Device? device = null)
    {
        if (batch < 1 || steps < 1 || warmup < 0) throw new ArgumentOutOfRangeException(nameof(steps), "batch and steps must be ≥ 1, warmup ≥ 0");
        var dev = device ?? torch.CPU;
        model.to(dev);
        model.train();
        var parts = TopLevelParts(model);
        var trainable = model.parameters().Where(p => p.requires_grad).ToList();
        var dtype = trainable.FirstOrDefault(p => p.is_floating_point())?.dtype ?? ScalarType.Float32; // the compute dtype
        var inputs = CaptureInputs(model, parts, batch, resolution, dev, dtype);
        try
        {
            var runs = new List<(string Name, long[] Input, Action Run)>();
            foreach (var (name, module) in parts)
            {
                if (!inputs.TryGetValue(name, out var input)) continue; // not called in this model's forward
                // The stem / T2T module gets the image, which needs no gradient (as in training).
                bool image = input.dim() == 4 && input.shape[1] == model.Options.InChans && input.shape[2] == resolution;
                runs.Add((name, input.shape, () =>
                {
                    using var scope = torch.NewDisposeScope();
                    var x = image || !input.is_floating_point() ? input : input.detach().requires_grad_(true);
                    var y = Dense.Forward(module, x); // a Linear part as the model calls it
                    if (y.requires_grad) y.backward([torch.ones_like(y)]);
                    model.zero_grad();
                }));
            }
            // A bf16 model steps fp32 masters, as bench's and the trainer's bf16 steps do (TrainBenchmark.Run).
            bool mixed = dtype != ScalarType.Float32;
            var masters = mixed ? TrainBenchmark.Fp32Masters(trainable) : trainable.Cast<Tensor>().ToList();
            var group = new OptimGroup("all", masters.Select((p, i) => new OptimParam(i.ToString(System.Globalization.CultureInfo.InvariantCulture), p)
                { Shadow = mixed ? trainable[i] : null }).ToList(), 0.05, 1.0) { Lr = 1e-4 };
            using var opt = new AdamW([group]);
            using Scalar small = 1e-3.ToScalar(); // held for the calls (see Layers.Held)
            var fakeGrads = trainable.Select(p => { var g = torch.randn_like(p).mul_(small); g.DetachFromDisposeScope(); return g; }).ToList();
            runs.Add(("optimizer step", [], () =>
            {
                using var stepScope = torch.NewDisposeScope();
                for (int i = 0; i < trainable.Count; i++) group.Params[i].Grad = fakeGrads[i]; // bf16 ones in a bf16 model, as in its step
                opt.Step();
            }));
            var times = runs.Select(_ => new List<double>()).ToList();
            try
            {
                for (int round = 0; round < warmup + steps; round++)
                    for (int i = 0; i < runs.Count; i++)
                    {
                        var sw = Stopwatch.StartNew();
                        runs[i].Run();
                        if (round >= warmup) times[i].Add(sw.Elapsed.TotalSeconds);
                    }
            }
            finally
            {
                foreach (var g in fakeGrads) g.Dispose();
                if (mixed) foreach (var m in masters) m.Dispose();
                foreach (var p in group.Params) p.Grad = null;
            }
            return runs.Select((r, i) => new StepPart(r.Name, r.Input, TrainBenchmark.Median(times[i]))).ToList();
        }
        finally
        {
            foreach (var t in inputs.Values) t.Dispose();
        }
    }

    /// <summary>The model's children in registration order, a ModuleList's members one by one (blocks.0, blocks.1, …).</summary>
    private static List<(string Name, nn.Module<Tensor, Tensor> Module)> TopLevelParts(ImageClassifier model)
    {
        var parts = new List<(string, nn.Module<Tensor, Tensor>)>();
        foreach (var (name, child) in model.named_children())
        {
            if (child is nn.Module<Tensor, Tensor> m) parts.Add((name, m));
            else
                foreach (var (sub, member) in child.named_children())
                    if (member is nn.Module<Tensor, Tensor> mm) parts.Add((name + "." + sub, mm));
        }
        return parts;
    }

    private static Dictionary<string, Tensor> CaptureInputs(ImageClassifier model, List<(string Name, nn.Module<Tensor, Tensor> Module)> parts,
        int batch, int resolution, Device dev, ScalarType dtype)
    {
        var captured = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        void Capture(string key, Tensor input)
        {
            if (captured.ContainsKey(key)) return;
            var copy = input.detach().clone();
            copy.DetachFromDisposeScope();
            captured[key] = copy;
        }
        var removers = new List<nn.HookableModule<Func<nn.Module<Tensor, Tensor>, Tensor, Tensor>, Func<nn.Module<Tensor, Tensor>, Tensor, Tensor, Tensor>>.HookRemover>();
        try
        {
            foreach (var (name, module) in parts)
            {
                string key = name;
                removers.Add(module.register_forward_pre_hook((_, input) =>
                {
                    Capture(key, input);
                    return input;
                }));
            }
            // Linears the model calls through Layers.Dense skip the forward hooks; the probe sees them.
            var byModule = parts.ToDictionary(p => (object)p.Module, p => p.Name, ReferenceEqualityComparer.Instance);
            Dense.Probe = (linear, input) =>
            {
                if (byModule.TryGetValue(linear, out var key)) Capture(key, input);
            };
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            model.call(torch.randn([batch, model.Options.InChans, resolution, resolution], dtype: dtype, device: dev));
        }
        catch
        {
            foreach (var t in captured.Values) t.Dispose();
            throw;
        }
        finally
        {
            Dense.Probe = null;
            foreach (var r in removers) r.remove();
        }
        return captured;
    }
}
