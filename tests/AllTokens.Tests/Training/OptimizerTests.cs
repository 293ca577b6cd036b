using System.Text.Json;
using AllTokens.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Training;

/// <summary>Our AdamW/SGD/clipping against torch 1.13 (fixture from tools/make_optimizer_fixtures.py).</summary>
public sealed class OptimizerTests
{
    private static readonly JsonElement Fixture =
        JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "fixtures", "training", "optimizers.json"))).RootElement;

    private static float[] Floats(JsonElement e) => e.EnumerateArray().Select(x => (float)x.GetDouble()).ToArray();

    private static (Optimizer Opt, Tensor W, Tensor B) Build(string kind)
    {
        var w = torch.tensor(Floats(Fixture.GetProperty("w0")), [3, 4]);
        var b = torch.tensor(Floats(Fixture.GetProperty("b0")), [4]);
        var groups = new List<OptimGroup>
        {
            new("decay", [new OptimParam("w", w)], 0.05, 1),
            new("no_decay", [new OptimParam("b", b)], 0.0, 1),
        };
        Optimizer opt = kind switch
        {
            "adamw" => new AdamW(groups),
            "adamw_plain" => new AdamW(groups, fused: false),
            "adamw_clip" => new AdamW(groups, 0.85, 0.99, 1e-6),
            "adamw_clip_plain" => new AdamW(groups, 0.85, 0.99, 1e-6, fused: false),
            "sgd" => new Sgd(groups, 0.9),
            "sgd_nesterov" => new Sgd(groups, 0.9, nesterov: true),
            _ => throw new ArgumentException(kind),
        };
        return (opt, w, b);
    }

    private static void StepOnce(Optimizer opt, string kind, int k)
    {
        using var scope = torch.NewDisposeScope();
        var g = Fixture.GetProperty("grads")[k];
        var lrs = Fixture.GetProperty("lrs").GetProperty(kind.StartsWith("adamw", StringComparison.Ordinal) ? "adamw" : "sgd");
        foreach (var group in opt.Groups) group.Lr = lrs[k].GetDouble();
        var gw = torch.tensor(Floats(g.GetProperty("w")), [3, 4]);
        var gb = torch.tensor(Floats(g.GetProperty("b")), [4]);
        opt.Groups[0].Params[0].Grad = gw;
        opt.Groups[1].Params[0].Grad = gb;
        if (kind == "adamw_clip") GradClip.ClipGlobalNorm([gw, gb], 0.7);
        opt.Step();
        foreach (var p in opt.Params) p.Grad = null;
    }

    private static void AssertClose(JsonElement expected, Tensor actual, string what)
    {
        var e = Floats(expected);
        var a = actual.data<float>().ToArray();
        for (int i = 0; i < e.Length; i++)
            Assert.True(Math.Abs(e[i] - a[i]) <= 1e-6 + 1e-6 * Math.Abs(e[i]), $"{what}[{i}]: torch {e[i]:R}, ours {a[i]:R}");
    }

    [Theory]
    [InlineData("adamw")]            // the fused multi-tensor kernel
    [InlineData("adamw_plain")]      // parameter by parameter
    [InlineData("adamw_clip")]
    [InlineData("adamw_clip_plain")]
    [InlineData("sgd")]
    [InlineData("sgd_nesterov")]
    public void MatchesTorch(string kind)
    {
        var (opt, w, b) = Build(kind);
        using var _o = opt;
        using var _w = w;
        using var _b = b;
        string fixtureKind = kind.Replace("_plain", "", StringComparison.Ordinal);
        var expected = Fixture.GetProperty("cases").GetProperty(fixtureKind);
        for (int k = 0; k < expected.GetArrayLength(); k++)
        {
            StepOnce(opt, fixtureKind, k);
            AssertClose(expected[k].GetProperty("w"), w, $"{kind} step {k + 1} w");
            AssertClose(expected[k].GetProperty("b"), b, $"{kind} step {k + 1} b");
        }
    }

    [Theory]
    [InlineData("adamw")]
    [InlineData("sgd_nesterov")]
    public void SavedStateResumesExactly(string kind)
    {
        // Run 2 steps, save the state, load it into a fresh optimizer over copies, run 3 more: bit-equal to 5 straight steps.
        var (a, wa, ba) = Build(kind);
        for (int k = 0; k < 2; k++) StepOnce(a, kind, k);
        var saved = a.StateTensors().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var steps = a.StepCounts();
        var (b, wb, bb) = Build(kind);
        using (torch.no_grad())
        {
            wb.copy_(wa);
            bb.copy_(ba);
        }
        b.LoadState(saved, steps, "test");
        Assert.Equal(2, b.Params.First().Steps);
        for (int k = 2; k < 5; k++)
        {
            StepOnce(a, kind, k);
            StepOnce(b, kind, k);
        }
        Assert.Equal(wa.data<float>().ToArray(), wb.data<float>().ToArray());
        Assert.Equal(ba.data<float>().ToArray(), bb.data<float>().ToArray());
        foreach (var t in saved.Values) t.Dispose();
        foreach (var d in new IDisposable[] { a, b, wa, ba, wb, bb }) d.Dispose();
    }

    [Fact]
    public void FusedAdamWFollowsThePerParameterPath()
    {
        // Many tensors of mixed shapes in two groups, one parameter without a gradient at some steps (skipped, as torch
        // does): the fused kernel must give the per-parameter results within float rounding, and the same step counts.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(3);
        long[][] shapes = [[64, 32], [32], [7, 5, 3], [1], [300]];
        (AdamW Opt, List<Tensor> Values) Make(bool fused)
        {
            var values = shapes.Select(s => torch.randn(s)).ToList();
            var groups = new List<OptimGroup>
            {
                new("decay", values.Take(3).Select((v, i) => new OptimParam($"d{i}", v)).ToList(), 0.05, 1) { Lr = 3e-3 },
                new("no_decay", values.Skip(3).Select((v, i) => new OptimParam($"n{i}", v)).ToList(), 0.0, 1) { Lr = 1e-3 },
            };
            return (new AdamW(groups, 0.9, 0.98, 1e-7, fused), values);
        }
        torch.manual_seed(4);
        var (fused, fv) = Make(true);
        torch.manual_seed(4);
        var (plain, pv) = Make(false);
        using var _f = fused;
        using var _p = plain;
        for (int step = 0; step < 6; step++)
        {
            var grads = shapes.Select(s => torch.randn(s)).ToList();
            foreach (var opt in new[] { fused, plain })
            {
                var ps = opt.Params.ToList();
                for (int i = 0; i < ps.Count; i++) ps[i].Grad = i == 1 && step % 2 == 1 ? null : grads[i];
                opt.Step();
            }
        }
        Assert.Equal(2 * 6, fused.FusedUpdates);
        Assert.Equal(0, plain.FusedUpdates);
        Assert.Equal(plain.StepCounts(), fused.StepCounts());
        Assert.Equal(3, fused.StepCounts()["d1"]);
        for (int i = 0; i < shapes.Length; i++)
            Assert.True((fv[i] - pv[i]).abs().max().item<float>() <= 1e-6f, $"parameter {i}");
        var fs = fused.StateTensors().ToList();
        var ps2 = plain.StateTensors().ToList();
        Assert.Equal(ps2.Select(kv => kv.Key), fs.Select(kv => kv.Key)); // the same checkpoint state, no extra slots
        foreach (var (a, b) in fs.Zip(ps2))
            Assert.True((a.Value - b.Value).abs().max().item<float>() <= 1e-6f * Math.Max(1f, b.Value.abs().max().item<float>()), a.Key);
    }

    /// <summary>
    /// A bf16 model's optimizer: fp32 masters, each with the model's bf16 parameter as its shadow. Sizes cover the
    /// kernel's 16-wide loop and its tail, more elements than one thread's share, a parameter without elements.
    /// </summary>
    /// <summary>Same shape and the same values, element for element (no NaN here).</summary>
    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && (a.numel() == 0 || a.eq(b).all().item<bool>());

    /// <summary>Largest |value| (0 for an empty tensor).</summary>
    private static float MaxAbs(Tensor t) => t.numel() == 0 ? 0f : t.abs().max().to(ScalarType.Float32).item<float>();

    private static (AdamW Opt, List<Tensor> Masters, List<Tensor> Shadows) MixedOptimizer(long[][] shapes, bool? fused = null)
    {
        var masters = shapes.Select(s => torch.randn(s)).ToList();
        var shadows = masters.Select(m => m.to(ScalarType.BFloat16)).ToList();
        var groups = new List<OptimGroup>
        {
            new("decay", Enumerable.Range(0, 3).Select(i => new OptimParam($"d{i}", masters[i]) { Shadow = shadows[i] }).ToList(), 0.05, 1) { Lr = 3e-3 },
            new("no_decay", Enumerable.Range(3, shapes.Length - 3).Select(i => new OptimParam($"n{i}", masters[i]) { Shadow = shadows[i] }).ToList(), 0.0, 1) { Lr = 1e-3 },
        };
        return (new AdamW(groups, 0.9, 0.98, 1e-7, fused), masters, shadows);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)] // fp32 gradients with bf16 shadows: the trainer's bf16 step with clip_grad (clipped in fp32)
    public void MixedAdamWFollowsTheCastThenFusedPath(bool bf16Gradients)
    {
        // Our one-pass bf16 step (bf16 gradients in, fp32 masters and moments updated, bf16 parameters written) against
        // the path it replaces — gradients cast to fp32, libtorch's fused AdamW, masters copied into the model — over
        // six steps, one parameter without a gradient every other step (skipped, its shadow untouched).
        using var _ = torch.NewDisposeScope();
        long[][] shapes = [[64, 40], [37], [0, 4], [1], [5000], [16]];
        torch.manual_seed(4);
        var (mixed, mm, ms) = MixedOptimizer(shapes);
        torch.manual_seed(4);
        var (reference, rm, rs) = MixedOptimizer(shapes);
        using var _m = mixed;
        using var _r = reference;
        bool was = AdamW.UseMixed;
        try
        {
            for (int step = 0; step < 6; step++)
            {
                var grads = shapes.Select(s => (torch.randn(s) * 0.1).to(bf16Gradients ? ScalarType.BFloat16 : ScalarType.Float32)).ToList();
                foreach (var (opt, on) in new[] { (mixed, true), (reference, false) })
                {
                    AdamW.UseMixed = on;
                    var ps = opt.Params.ToList();
                    for (int i = 0; i < ps.Count; i++) ps[i].Grad = i == 1 && step % 2 == 1 ? null : grads[i];
                    opt.Step();
                }
            }
        }
        finally { AdamW.UseMixed = was; }
        Assert.Equal(2 * 6, mixed.MixedUpdates);
        Assert.Equal(0, reference.MixedUpdates);
        Assert.Equal(2 * 6, reference.FusedUpdates);
        Assert.Equal(reference.StepCounts(), mixed.StepCounts());
        for (int i = 0; i < shapes.Length; i++)
        {
            Assert.True(MaxAbs(mm[i] - rm[i]) <= 2e-6f * Math.Max(1f, MaxAbs(rm[i])), $"master {i}");
            // The shadow is the master rounded as libtorch rounds to bf16, bit for bit.
            Assert.True(Same(ms[i], mm[i].to(ScalarType.BFloat16)), $"shadow {i} is not its master rounded");
            Assert.True(Same(rs[i], rm[i].to(ScalarType.BFloat16)), $"reference shadow {i}");
        }
        foreach (var (a, b) in mixed.StateTensors().Zip(reference.StateTensors()))
        {
            Assert.Equal(b.Key, a.Key);
            Assert.Equal(ScalarType.Float32, a.Value.dtype);
            Assert.True(MaxAbs(a.Value - b.Value) <= 2e-6f * Math.Max(1f, MaxAbs(b.Value)), a.Key);
        }
    }

    [Fact]
    public void MixedAdamWHandValues()
    {
        // One weight (decay 0.01, lr 0.1, betas 0.9/0.999, eps 1e-8), gradients 0.5 then −0.25, both exact in bf16; the
        // expected values follow the AdamW formula in double.
        using var _ = torch.NewDisposeScope();
        var master = torch.tensor(new float[] { 1f });
        var shadow = master.to(ScalarType.BFloat16);
        var p = new OptimParam("w", master) { Shadow = shadow };
        using var opt = new AdamW([new OptimGroup("decay", [p], 0.01, 1) { Lr = 0.1 }]);
        double w = 1, m = 0, v = 0;
        double[] grads = [0.5, -0.25];
        for (int t = 1; t <= 2; t++)
        {
            double g = grads[t - 1];
            p.Grad = torch.tensor(new float[] { (float)g }).to(ScalarType.BFloat16);
            opt.Step();
            w *= 1 - 0.1 * 0.01;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            w -= 0.1 / (1 - Math.Pow(0.9, t)) * m / (Math.Sqrt(v) / Math.Sqrt(1 - Math.Pow(0.999, t)) + 1e-8);
            Assert.Equal(w, master.item<float>(), 6);
            Assert.Equal((float)w, shadow.to(ScalarType.Float32).item<float>(), 2); // bf16: 8 bits of mantissa
        }
        Assert.Equal(0.899, 0.999 - 1.0 * 0.05 / 0.5, 12); // step 1 by hand: decay to 0.999, then lr/(1−β1)·m/(√v/√(1−β2)) = 0.1
        Assert.Equal(1, opt.MixedUpdates > 0 ? 1 : 0);
    }

    [Fact]
    public void MixedAdamWSteppedWithoutTheKernelRefreshesShadows()
    {
        // The per-parameter path (fused: false) and SGD also take bf16 gradients and write the shadows.
        using var _ = torch.NewDisposeScope();
        long[][] shapes = [[8, 3], [5], [0], [2], [33]];
        torch.manual_seed(9);
        var (plain, pm, ps) = MixedOptimizer(shapes, fused: false);
        using var _p = plain;
        var grads = shapes.Select(s => torch.randn(s).to(ScalarType.BFloat16)).ToList();
        var before = pm.Select(t => t.clone()).ToList();
        foreach (var (param, g) in plain.Params.Zip(grads)) param.Grad = g;
        plain.Step();
        Assert.Equal(0, plain.MixedUpdates + plain.FusedUpdates);
        for (int i = 0; i < shapes.Length; i++)
        {
            if (pm[i].numel() > 0) Assert.False(Same(pm[i], before[i]), $"master {i} did not move");
            Assert.True(Same(ps[i], pm[i].to(ScalarType.BFloat16)), $"shadow {i}");
        }
        var w = torch.zeros(4);
        var sw = torch.zeros(4, ScalarType.BFloat16);
        using var sgd = new Sgd([new OptimGroup("all", [new OptimParam("w", w) { Shadow = sw, Grad = torch.ones(4, ScalarType.BFloat16) }], 0, 1) { Lr = 0.5 }], momentum: 0);
        sgd.Step();
        Assert.Equal(-0.5f, w[0].item<float>());
        Assert.True(Same(sw, w.to(ScalarType.BFloat16)));
        Assert.Throws<ArgumentException>(() => new OptimParam("x", torch.zeros(3)) { Shadow = torch.zeros(4, ScalarType.BFloat16) });
    }

    [Fact]
    public void LoadStateRejectsUnknownParameters()
    {
        var (opt, w, b) = Build("adamw");
        using var _o = opt;
        using var _w = w;
        using var _b = b;
        var e = Assert.Throws<InvalidDataException>(() => opt.LoadState(new Dictionary<string, Tensor>(), new Dictionary<string, long> { ["w"] = 1, ["zz"] = 1 }, "ck.safetensors"));
        Assert.Contains("zz", e.Message);
        Assert.Contains("ck.safetensors", e.Message);
    }

    [Fact]
    public void ClipHandValues()
    {
        using var scope = torch.NewDisposeScope();
        var g1 = torch.tensor(new float[] { 3, 0 });
        var g2 = torch.tensor(new float[] { 4 });
        double norm = GradClip.ClipGlobalNorm([g1, g2], 1.0); // global norm 5 → scale 1/(5 + 1e-6)
        Assert.Equal(5.0, norm, 5);
        Assert.Equal(3 / (5 + 1e-6), g1[0].item<float>(), 6);
        Assert.Equal(4 / (5 + 1e-6), g2[0].item<float>(), 6);
        var g3 = torch.tensor(new float[] { 0.3f });
        GradClip.ClipGlobalNorm([g3], 1.0); // below the max: unchanged
        Assert.Equal(0.3f, g3.item<float>());
    }
}
