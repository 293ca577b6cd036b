using AllTokens.Checkpoints;
using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Models;

public class T2tVitTests
{
    // T2T_VIT.md §2.2: total parameters (frozen pos_embed and Performer w included) and trainable ones, 224 px, 1000 classes.
    [Theory]
    [InlineData("t2t_vit_7", 4_310_222L, 4_255_694L, 111)]
    [InlineData("t2t_vit_10", 5_889_230L, 5_834_702L, 144)]
    [InlineData("t2t_vit_12", 6_941_902L, 6_887_374L, 166)]
    [InlineData("t2t_vit_14", 21_545_550L, 21_465_806L, 188)]
    [InlineData("t2t_vit_19", 39_177_422L, 39_085_070L, 243)]
    [InlineData("t2t_vit_24", 64_105_934L, 64_000_974L, 298)]
    [InlineData("t2t_vit_t_14", 21_541_070L, 21_465_422L, 184)]
    [InlineData("t2t_vit_t_19", 39_172_942L, 39_084_686L, 239)]
    [InlineData("t2t_vit_t_24", 64_101_454L, 64_000_590L, 294)]
    [InlineData("t2t_vit_14_resnext", 21_545_550L, 21_465_806L, 188)]
    [InlineData("t2t_vit_14_wide", 25_156_302L, 25_000_910L, -1)]
    [InlineData("t2t_vit_14_se", 21_803_598L, 21_723_854L, -1)]
    [InlineData("t2t_vit_16_ghost", 16_253_262L, 16_173_518L, -1)]
    [InlineData("t2t_vit_dense", 23_647_062L, 23_617_750L, -1)]
    public void ParameterCountsMatchTheOfficialModels(string name, long total, long trainable, int tensors)
    {
        Assert.Equal(total, ModelRegistry.CountParameters(name));
        using var _ = torch.NewDisposeScope();
        WithMeta(() =>
        {
            using var model = ModelRegistry.Create(name);
            Assert.Equal(trainable, model.parameters().Where(p => p.requires_grad).Sum(p => p.numel()));
            if (tensors > 0) Assert.Equal(tensors, ModuleState.Ordered(model).Count);
        });
    }

    [Fact]
    public void ParameterCountAt384() =>
        Assert.Equal(21_691_470L, ModelRegistry.CountParameters("t2t_vit_14", new ModelOptions(ImgSize: 384)));

    [Fact]
    public void PerformerKeysFollowTheOfficialOrder()
    {
        WithMeta(() =>
        {
            using var model = ModelRegistry.Create("t2t_vit_14");
            var sd = ModuleState.Ordered(model);
            var keys = sd.Select(kv => kv.Key).ToList();
            const string a1 = "tokens_to_token.attention1.";
            Assert.Equal(["cls_token", "pos_embed", a1 + "w", a1 + "kqv.weight", a1 + "kqv.bias", a1 + "proj.weight", a1 + "proj.bias",
                a1 + "norm1.weight", a1 + "norm1.bias", a1 + "norm2.weight", a1 + "norm2.bias", a1 + "mlp.0.weight", a1 + "mlp.0.bias",
                a1 + "mlp.2.weight", a1 + "mlp.2.bias", "tokens_to_token.attention2.w"], keys.Take(16));
            var shapes = sd.ToDictionary(kv => kv.Key, kv => kv.Value.shape);
            Assert.Equal([192L, 147], shapes[a1 + "kqv.weight"]);
            Assert.Equal([192L, 576], shapes["tokens_to_token.attention2.kqv.weight"]);
            Assert.Equal([32L, 64], shapes[a1 + "w"]);
            Assert.Equal([384L, 576], shapes["tokens_to_token.project.weight"]);
            Assert.Equal([1L, 197, 384], shapes["pos_embed"]);
            Assert.Equal(["norm.weight", "norm.bias", "head.weight", "head.bias"], keys.TakeLast(4));
            var frozen = model.named_parameters().Where(p => !p.parameter.requires_grad).Select(p => p.name).ToList();
            Assert.Equal(["pos_embed", "tokens_to_token.attention1.w", "tokens_to_token.attention2.w"], frozen);
        });
    }

    [Fact]
    public void TransformerT2tKeys()
    {
        WithMeta(() =>
        {
            using var model = ModelRegistry.Create("t2t_vit_t_14");
            var keys = ModuleState.Ordered(model).Select(kv => kv.Key).ToList();
            const string a = "tokens_to_token.attention1.";
            Assert.Equal([a + "norm1.weight", a + "norm1.bias", a + "attn.qkv.weight", a + "attn.proj.weight", a + "attn.proj.bias",
                a + "norm2.weight", a + "norm2.bias", a + "mlp.fc1.weight", a + "mlp.fc1.bias", a + "mlp.fc2.weight", a + "mlp.fc2.bias"],
                keys.Skip(2).Take(11));
        });
    }

    [Fact]
    public void VariantKeys()
    {
        WithMeta(() =>
        {
            using var se = ModelRegistry.Create("t2t_vit_14_se");
            var seKeys = ModuleState.Ordered(se).ToDictionary(kv => kv.Key, kv => kv.Value.shape);
            Assert.Equal([24L, 384], seKeys["blocks.0.attn.se_layer.fc.0.weight"]);
            Assert.Equal([384L, 24], seKeys["blocks.0.attn.se_layer.fc.2.weight"]);
            using var ghost = ModelRegistry.Create("t2t_vit_16_ghost");
            var g = ModuleState.Ordered(ghost).Select(kv => kv.Key).Where(k => k.StartsWith("blocks.0.", StringComparison.Ordinal)).ToList();
            Assert.Equal(["blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.q.weight", "blocks.0.attn.k.weight", "blocks.0.attn.v.weight",
                "blocks.0.attn.cheap_operation_q.weight", "blocks.0.attn.cheap_operation_k.weight", "blocks.0.attn.cheap_operation_v.weight",
                "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias", "blocks.0.norm2.weight", "blocks.0.norm2.bias",
                "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias",
                "blocks.0.mlp.cheap_operation2.weight", "blocks.0.mlp.cheap_operation3.weight"], g);
            using var dense = ModelRegistry.Create("t2t_vit_dense");
            var d = ModuleState.Ordered(dense).ToDictionary(kv => kv.Key, kv => kv.Value.shape);
            Assert.Equal([160L, 320], d["blocks.3.linear.weight"]);
            Assert.Equal([272L, 544], d["blocks.10.linear.weight"]);
            Assert.Equal([328L, 656], d["blocks.17.linear.weight"]);
            Assert.Equal([1000L, 584], d["head.weight"]);
            Assert.Equal([64L, 520], d["blocks.21.dense_linear.weight"]);
            using var conv = ModelRegistry.Create("t2t_vit_c_14");
            var c = ModuleState.Ordered(conv).ToDictionary(kv => kv.Key, kv => kv.Value.shape);
            Assert.Equal([64L, 3, 7, 7], c["tokens_to_token.soft_split0.weight"]);
            Assert.Equal([64L, 64, 3, 3], c["tokens_to_token.soft_split1.weight"]);
            Assert.Equal([384L, 64, 3, 3], c["tokens_to_token.project.weight"]);
        });
    }

    [Theory]
    [InlineData(224, 3136, 784, 196)]
    [InlineData(384, 9216, 2304, 576)]
    public void SoftSplitTokenCounts(int img, long n0, long n1, long n2)
    {
        using var _ = torch.NewDisposeScope();
        using var model = (T2tVit)ModelRegistry.Create("t2t_vit_7", new ModelOptions(ImgSize: img));
        model.eval();
        using var g = torch.no_grad();
        var stages = model.TokensToToken.ForwardStages(torch.zeros(1, 3, img, img));
        Assert.Equal([1L, n0, 147], stages.SoftSplit0!.shape);
        Assert.Equal([1L, n0, 64], stages.Attention1!.shape);
        Assert.Equal([1L, n1, 64], stages.Attention2!.shape);
        Assert.Equal([1L, n2, 256], stages.Tokens.shape);
    }

    [Fact]
    public void SinusoidTableValues()
    {
        using var _ = torch.NewDisposeScope();
        var t = T2tVit.SinusoidTable(197, 384);
        float[] row0 = t[0, ..4].data<float>().ToArray();
        Assert.Equal([0f, 1f, 0f, 1f], row0);
        AssertClose([0.841471f, 0.540302f, 0.815251f, 0.579108f], t[1, ..4].data<float>().ToArray(), 1e-6);
        AssertClose([0.0215719f, 0.9997673f, 0.0205617f, 0.9997886f], t[196, 380..384].data<float>().ToArray(), 1e-6);
        Assert.Equal(24207.68, t.to(ScalarType.Float64).sum().item<double>(), 2);
    }

    [Fact]
    public void PerformerFeaturesAreOrthogonal()
    {
        using var _ = torch.NewDisposeScope();
        using var model = ModelRegistry.Create("t2t_vit_7");
        var w = ModuleState.Ordered(model).First(kv => kv.Key == "tokens_to_token.attention1.w").Value;
        var wwT = w.matmul(w.t());
        Assert.True(wwT.allclose(torch.eye(32) * 32, rtol: 0, atol: 1e-3));
    }

    [Fact]
    public void GradientsReachEveryTrainableParameterAndNoFrozenOne()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(0);
        foreach (var name in new[] { "t2t_vit_7", "t2t_vit_t_14", "t2t_vit_14_se", "t2t_vit_16_ghost", "t2t_vit_dense", "t2t_vit_c_14", "t2t_vit_14_wot2t" })
        {
            using var model = ModelRegistry.Create(name, new ModelOptions(NumClasses: 3, ImgSize: 32, DropPathRate: 0.1));
            model.train();
            var y = model.ForwardTrain(torch.randn(2, 3, 32, 32)).Logits;
            Assert.Equal([2L, 3], y.shape);
            y.logsumexp(1).mean().backward();
            foreach (var (key, p) in model.named_parameters())
            {
                if (p.requires_grad)
                    Assert.True(p.grad is not null && p.grad.abs().sum().item<float>() > 0, $"{name}: {key} got no gradient");
                else
                    Assert.True(p.grad is null, $"{name}: frozen {key} got a gradient");
            }
        }
    }

    // ---- golden forward pass, T2T_VIT.md §9.3 (computed with the official models/*.py on PyTorch 1.13) ----

    /// <summary>j = (Σ_p (p+1)·ascii(k[p])) mod 997.</summary>
    private static int KeyHash(string key)
    {
        long s = 0;
        for (int p = 0; p < key.Length; p++) s += (p + 1) * (long)key[p];
        return (int)(s % 997);
    }

    [Theory]
    [InlineData("cls_token", 845)]
    [InlineData("tokens_to_token.attention1.w", 264)]
    [InlineData("blocks.0.attn.qkv.weight", 356)]
    [InlineData("head.bias", 373)]
    public void GoldenKeyHash(string key, int j) => Assert.Equal(j, KeyHash(key));

    private static void FillGolden(ImageClassifier model)
    {
        using var g = torch.no_grad();
        foreach (var (key, t) in ModuleState.Ordered(model))
        {
            if (key == "pos_embed") continue;
            int j = KeyHash(key);
            long n = t.numel();
            var values = new float[n];
            string parent = key.Contains('.') ? key[..key.LastIndexOf('.')] : "";
            string leaf = parent.Contains('.') ? parent[(parent.LastIndexOf('.') + 1)..] : parent;
            bool lnWeight = t.dim() == 1 && key.EndsWith(".weight", StringComparison.Ordinal) && leaf.Contains("norm", StringComparison.Ordinal);
            for (long i = 0; i < n; i++)
            {
                double s = Math.Sin(0.01 * i + 0.5 * j);
                values[i] = lnWeight ? (float)(1 + 0.1 * s) : (float)(0.05 * s);
            }
            t.copy_(torch.tensor(values).reshape(t.shape));
        }
    }

    private static Tensor GoldenInput(int h)
    {
        long n = 3L * h * h;
        var x = new float[2 * n];
        for (long i = 0; i < n; i++)
        {
            x[i] = (float)Math.Sin(0.001 * i);
            x[n + i] = (float)Math.Cos(0.0023 * i);
        }
        return torch.tensor(x, [2, 3, h, h]);
    }

    public static TheoryData<string, int, float[], float[], float[], float[], float[], float[], float[], float[]> Golden => new()
    {
        { "t2t_vit_7", 224,
            [-0.975495f, -0.974986f, -0.974473f, -0.973954f], [0.399498f, 0.146332f, -0.447428f, -0.278729f],
            [1.057543f, 0.572011f, -1.036537f, -0.872968f], [0.014484f, 0.050573f, 0.084245f, 0.106418f],
            [-0.079632f, 0.056157f, 0.188036f, 0.280647f], [-1.039599f, -1.173283f, -0.503304f, 1.150881f],
            [0.175205f, -0.244682f, 0.065711f, -0.033855f, -0.178569f], [-1.136078f, -1.136078f] },
        { "t2t_vit_14", 224,
            [-0.975495f, -0.974986f, -0.974473f, -0.973954f], [0.399498f, 0.146332f, -0.447428f, -0.278729f],
            [1.057543f, 0.572011f, -1.036537f, -0.872968f], [0.014484f, 0.050573f, 0.084245f, 0.106418f],
            [-0.079632f, 0.056157f, 0.188036f, 0.280647f], [-0.577654f, -1.311804f, -0.825042f, 0.461614f],
            [0.385152f, -0.533752f, 0.270805f, -0.043363f, -0.367386f], [-1.450407f, -1.450402f] },
        { "t2t_vit_t_14", 224,
            [-0.975495f, -0.974986f, -0.974473f, -0.973954f], [-0.519719f, 0.124830f, 0.457011f, -0.041391f],
            [-1.236549f, 0.250990f, 1.212316f, 0.003314f], [0.507297f, 0.277298f, -0.015775f, -0.293589f],
            [0.944182f, 0.457651f, -0.140203f, -0.689511f], [-0.289447f, -1.210850f, -0.992079f, 0.174506f],
            [0.385498f, -0.533951f, 0.270763f, -0.043100f, -0.367746f], [-1.450329f, -1.450340f] },
        { "t2t_vit_14", 384,
            [-0.932675f, -0.931843f, -0.931006f, -0.930164f], [0.173531f, -0.453945f, -0.342931f, 0.344594f],
            [0.212634f, -0.093269f, -0.310643f, -0.012280f], [-0.011393f, 0.037136f, 0.086843f, 0.124355f],
            [-0.038008f, 0.048786f, 0.133642f, 0.193782f], [-0.583482f, -1.314984f, -0.822107f, 0.463966f],
            [0.385136f, -0.533750f, 0.270817f, -0.043384f, -0.367365f], [-1.450414f, -1.450410f] },
    };

    [Theory]
    [MemberData(nameof(Golden))]
    public void GoldenForwardMatchesTheOfficialImplementation(string name, int img, float[] softSplit, float[] attn1a, float[] attn1b,
        float[] t2tA, float[] t2tB, float[] tokens, float[] logits, float[] logitSums)
    {
        using var _ = torch.NewDisposeScope();
        using var model = (T2tVit)ModelRegistry.Create(name, new ModelOptions(ImgSize: img));
        FillGolden(model);
        model.eval();
        using var g = torch.no_grad();
        var x = GoldenInput(img);
        var stages = model.TokensToToken.ForwardStages(x);
        const double tol = 1e-4;
        AssertClose(softSplit, stages.SoftSplit0![1, 500, ..4].data<float>().ToArray(), tol);
        AssertClose(attn1a, stages.Attention1![0, 0, ..4].data<float>().ToArray(), tol);
        AssertClose(attn1b, stages.Attention1[1, 1234, ..4].data<float>().ToArray(), tol);
        AssertClose(t2tA, stages.Tokens[0, 0, ..4].data<float>().ToArray(), tol);
        AssertClose(t2tB, stages.Tokens[1, 100, ..4].data<float>().ToArray(), tol);
        var features = model.ForwardFeatures(x);
        AssertClose(tokens, features[1, 100, ..4].data<float>().ToArray(), tol);
        var y = model.call(x);
        AssertClose(logits, y[0, ..5].data<float>().ToArray(), tol);
        AssertClose(logitSums, y.sum(1).data<float>().ToArray(), 2e-3);
    }

    private static void AssertClose(float[] expected, float[] actual, double tol)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tol, $"index {i}: expected {expected[i]}, got {actual[i]} (tolerance {tol}); all: [{string.Join(", ", actual)}]");
    }

    internal static void WithMeta(Action body)
    {
        using var _ = torch.NewDisposeScope();
        torch.set_default_device(torch.META);
        try { body(); }
        finally { torch.set_default_device(torch.CPU); }
    }
}
