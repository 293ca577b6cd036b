using System.Text.Json;
using AllTokens.Checkpoints;
using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Models;

/// <summary>
/// Genuine torch.save files written by tools/make_lvvit_fixtures.py (PyTorch 1.13, an LV-ViT transcription with the
/// official module names) load into our LV-ViT and give the same eval logits and training outputs (MixToken box).
/// </summary>
public class LvVitParityTests
{
    private static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", "lvvit", name);

    private sealed record Case(JsonElement Root)
    {
        public JsonElement Config => Root.GetProperty("config");
        public float[] Floats(string key) => Root.GetProperty(key).EnumerateArray().Select(e => (float)e.GetDouble()).ToArray();
        public long[] Longs(string key) => Root.GetProperty(key).EnumerateArray().Select(e => e.GetInt64()).ToArray();
    }

    private static (LvVit Model, Case Case) Build(string name)
    {
        var c = new Case(JsonDocument.Parse(File.ReadAllText(Fixture(name + ".json"))).RootElement);
        var cfg = c.Config;
        var config = new LvVitConfig(cfg.GetProperty("embed_dim").GetInt64(), cfg.GetProperty("depth").GetInt32(), cfg.GetProperty("heads").GetInt32(),
            cfg.GetProperty("mlp_ratio").GetDouble(), cfg.GetProperty("skip_lam").GetDouble(),
            cfg.GetProperty("stem").GetString() == "conv" ? StemKind.Conv4_2 : StemKind.Naive,
            Math.Max(1, cfg.GetProperty("stem_channels").GetInt32()), AuxHead: cfg.GetProperty("aux").GetBoolean(), MixToken: cfg.GetProperty("aux").GetBoolean());
        var model = new LvVit(name, config, new ModelOptions(cfg.GetProperty("classes").GetInt32(), cfg.GetProperty("img").GetInt32()));
        return (model, c);
    }

    private static Tensor Input(long[] shape)
    {
        long n = shape.Aggregate(1L, (a, b) => a * b);
        var x = new float[n];
        for (long i = 0; i < n; i++) x[i] = (float)(Math.Sin(0.37 * i) * Math.Cos(0.011 * i));
        return torch.tensor(x, shape);
    }

    [Theory]
    [InlineData("tiny_lvvit")]
    [InlineData("tiny_lvvit_noaux")]
    [InlineData("tiny_vit_naive")]
    [InlineData("small_lvvit_64")] // 68 token rows: the linears take their oneDNN path, the stem runs channels-last
    public void PyTorchCheckpointGivesTheSameLogits(string name)
    {
        using var _ = torch.NewDisposeScope();
        var (model, c) = Build(name);
        using (model)
        {
            var sd = StateDicts.ReadAny(Fixture(name + ".pth"));
            Assert.Equal(c.Root.GetProperty("keys").EnumerateArray().Select(e => e.GetString()), sd.Select(kv => kv.Key));
            Assert.Equal(sd.Select(kv => kv.Key), ModuleState.Ordered(model).Select(kv => kv.Key));
            var report = WeightLoader.LoadInto(model, sd, name);
            Assert.True(report.IsClean, report.ToString());
            model.eval();
            using var g = torch.no_grad();
            var logits = model.call(Input(c.Longs("input_shape")));
            AssertClose(c.Floats("logits"), logits.data<float>().ToArray(), 1e-4);
        }
    }

    [Theory]
    [InlineData("tiny_lvvit")]
    [InlineData("small_lvvit_64")]
    public void TrainingForwardWithMixTokenMatchesPyTorch(string name)
    {
        using var _ = torch.NewDisposeScope();
        var (model, c) = Build(name);
        using (model)
        {
            WeightLoader.LoadInto(model, StateDicts.ReadAny(Fixture(name + ".pth")), name);
            model.train(); // BatchNorm uses batch statistics, as in the fixture
            var b = c.Longs("box");
            var output = model.ForwardTrain(Input(c.Longs("input_shape")), new MixBox((int)b[0], (int)b[1], (int)b[2], (int)b[3]));
            AssertClose(c.Floats("train_cls"), output.Logits.detach().data<float>().ToArray(), 1e-4);
            Assert.Equal(c.Longs("train_aux_shape"), output.TokenLogits!.shape);
            AssertClose(c.Floats("train_aux"), output.TokenLogits.detach().data<float>().ToArray(), 1e-4);
        }
    }

    [Fact]
    public void SafetensorsRoundTripGivesIdenticalOutputs()
    {
        using var _ = torch.NewDisposeScope();
        string dir = Directory.CreateTempSubdirectory("alltokens-").FullName;
        try
        {
            torch.manual_seed(11);
            using var model = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 7, ImgSize: 32));
            model.eval();
            string path = Path.Combine(dir, "m.safetensors");
            ModelWeights.Save(model, "lvvit_t", path, ["a", "b", "c", "d", "e", "f", "g"]);
            var loaded = ModelWeights.Load(new ModelRequest(Weights: path));
            using var copy = loaded.Model;
            Assert.Equal("lvvit_t", loaded.Name);
            Assert.Equal(7, copy.NumClasses);
            Assert.Equal(32, copy.Options.ImgSize);
            Assert.Equal(["a", "b", "c", "d", "e", "f", "g"], loaded.Metadata!.ClassNames);
            Assert.True(loaded.Report!.IsClean);
            copy.eval();
            using var g = torch.no_grad();
            var x = torch.randn(2, 3, 32, 32);
            Assert.True(model.call(x).eq(copy.call(x)).all().item<bool>());
            // Every tensor, buffers included, identical.
            var a = ModuleState.Ordered(model);
            var bb = ModuleState.Ordered(copy);
            for (int i = 0; i < a.Count; i++) Assert.True(a[i].Value.eq(bb[i].Value).all().item<bool>(), a[i].Key);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void ClassCountChangeDropsBothHeadsWithANote()
    {
        using var _ = torch.NewDisposeScope();
        using var src = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 7, ImgSize: 32));
        var sd = ModuleState.Ordered(src).Select(kv => new KeyValuePair<string, RawTensor>(kv.Key, RawTensor.FromTorch(kv.Value))).ToList();
        using var dst = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 3, ImgSize: 32));
        var report = WeightLoader.LoadInto(dst, sd, "src");
        Assert.True(report.IsClean, report.ToString());
        Assert.Contains(report.Notes, n => n.StartsWith("head dropped", StringComparison.Ordinal));
        Assert.Contains(report.Notes, n => n.StartsWith("aux_head dropped", StringComparison.Ordinal));
    }

    [Fact]
    public void PositionEmbeddingIsResizedBicubicallyAndClsKept()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(12);
        using var src = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 5, ImgSize: 32));
        var sd = ModuleState.Ordered(src).Select(kv => new KeyValuePair<string, RawTensor>(kv.Key, RawTensor.FromTorch(kv.Value))).ToList();
        using var dst = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 5, ImgSize: 64));
        var report = WeightLoader.LoadInto(dst, sd, "src");
        Assert.Contains(report.Notes, n => n.Contains("pos_embed resized [1,5,240] → [1,17,240]", StringComparison.Ordinal));
        var before = ModuleState.Ordered(src).First(kv => kv.Key == "pos_embed").Value;
        var after = ModuleState.Ordered(dst).First(kv => kv.Key == "pos_embed").Value;
        Assert.True(before[0, 0].eq(after[0, 0]).all().item<bool>());
        // A constant grid stays constant under bicubic resampling (weights sum to one).
        var constant = torch.cat([torch.zeros(1, 1, 4), torch.full(1, 4, 4, 0.25f)], 1);
        var resized = PosEmbed.Resize(constant, [1, 17, 4])!;
        Assert.True(resized[0, 1..].allclose(torch.full(16, 4, 0.25f), rtol: 0, atol: 1e-6));
    }

    [Fact]
    public void MismatchedWeightsAreAnErrorWithAReport()
    {
        using var _ = torch.NewDisposeScope();
        using var src = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 5, ImgSize: 32));
        var sd = ModuleState.Ordered(src).Select(kv => new KeyValuePair<string, RawTensor>(kv.Key, RawTensor.FromTorch(kv.Value))).ToList();
        using var other = ModelRegistry.Create("lvvit", new ModelOptions(NumClasses: 5, ImgSize: 32));
        var e = Assert.Throws<CheckpointMismatchException>(() => WeightLoader.LoadInto(other, sd, "lvvit_t.safetensors"));
        Assert.Contains("lvvit_t.safetensors", e.Message);
        Assert.Contains("shape mismatch", e.Message); // 240-wide tensors vs 384
        var partial = WeightLoader.LoadInto(other, sd.Where(kv => !kv.Key.StartsWith("blocks.11", StringComparison.Ordinal)).ToList(), "x", new LoadOptions(AllowMismatch: true));
        Assert.NotEmpty(partial.Mismatched);
        Assert.Contains("aux_head.weight", partial.Unexpected);
    }

    private static void AssertClose(float[] expected, float[] actual, double tol)
    {
        Assert.Equal(expected.Length, actual.Length);
        double worst = 0;
        for (int i = 0; i < expected.Length; i++) worst = Math.Max(worst, Math.Abs(expected[i] - actual[i]));
        Assert.True(worst <= tol, $"max abs difference {worst} > {tol}; actual starts [{string.Join(", ", actual.Take(6))}], expected [{string.Join(", ", expected.Take(6))}]");
    }
}
