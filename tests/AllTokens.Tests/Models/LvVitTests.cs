using AllTokens.Checkpoints;
using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Models;

public class LvVitTests
{
    // LVVIT.md §11: exact parameter counts at 224 px / 1000 classes, and state-dict key counts (BN buffers included).
    [Theory]
    [InlineData("lvvit_t", 8_534_720L, 160)]
    [InlineData("lvvit_s", 26_151_824L, 204)]
    [InlineData("lvvit_m", 55_830_544L, 248)]
    [InlineData("lvvit_l", 150_021_968L, 292)]
    [InlineData("lvvit", 25_766_824L, 202)]
    public void ParameterAndKeyCountsMatchTheOfficialModels(string name, long parameters, int keys)
    {
        Assert.Equal(parameters, ModelRegistry.CountParameters(name));
        using var _ = torch.NewDisposeScope();
        torch.set_default_device(torch.META);
        try
        {
            using var model = ModelRegistry.Create(name);
            Assert.Equal(keys, ModuleState.Ordered(model).Count);
        }
        finally { torch.set_default_device(torch.CPU); }
    }

    [Theory]
    [InlineData("lvvit_s", 384, 26_297_744L)]
    [InlineData("lvvit_m", 448, 56_131_600L)]
    [InlineData("lvvit_l", 512, 150_657_872L)]
    public void ParameterCountsAtHigherResolutions(string name, int img, long parameters) =>
        Assert.Equal(parameters, ModelRegistry.CountParameters(name, new ModelOptions(ImgSize: img)));

    [Fact]
    public void KeysFollowTheOfficialOrderAndShapes()
    {
        using var _ = torch.NewDisposeScope();
        torch.set_default_device(torch.META);
        try
        {
            using var model = ModelRegistry.Create("lvvit_s");
            var sd = ModuleState.Ordered(model);
            var keys = sd.Select(kv => kv.Key).ToList();
            Assert.Equal(["cls_token", "pos_embed", "patch_embed.conv1.weight", "patch_embed.bn1.weight", "patch_embed.bn1.bias",
                "patch_embed.bn1.running_mean", "patch_embed.bn1.running_var", "patch_embed.bn1.num_batches_tracked",
                "patch_embed.conv2.weight"], keys.Take(9));
            Assert.Equal(["blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                "blocks.0.attn.proj.bias", "blocks.0.norm2.weight", "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight",
                "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias"],
                keys.SkipWhile(k => !k.StartsWith("blocks.0.", StringComparison.Ordinal)).Take(11));
            Assert.Equal(["norm.weight", "norm.bias", "head.weight", "head.bias", "aux_head.weight", "aux_head.bias"], keys.TakeLast(6));
            var shapes = sd.ToDictionary(kv => kv.Key, kv => kv.Value.shape);
            Assert.Equal([1L, 197, 384], shapes["pos_embed"]);
            Assert.Equal([64L, 3, 7, 7], shapes["patch_embed.conv1.weight"]);
            Assert.Equal([384L, 64, 8, 8], shapes["patch_embed.proj.weight"]);
            Assert.Equal([1152L, 384], shapes["blocks.3.attn.qkv.weight"]);
            Assert.Equal([1152L, 384], shapes["blocks.3.mlp.fc1.weight"]);
            Assert.Equal(Array.Empty<long>(), shapes["patch_embed.bn1.num_batches_tracked"]);
            Assert.Equal(ScalarType.Int64, sd.First(kv => kv.Key.EndsWith("num_batches_tracked", StringComparison.Ordinal)).Value.dtype);
            Assert.DoesNotContain("blocks.0.attn.qkv.bias", keys);
        }
        finally { torch.set_default_device(torch.CPU); }
    }

    [Theory]
    [InlineData("lvvit_t")]
    [InlineData("lvvit_s")]
    [InlineData("lvvit")]
    [InlineData("vit")]
    public void ForwardShapesAtSmallResolution(string name)
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(0);
        using var model = ModelRegistry.Create(name, new ModelOptions(NumClasses: 10, ImgSize: 32));
        model.eval();
        using var g = torch.no_grad();
        var x = torch.randn(2, 3, 32, 32);
        var y = model.call(x);
        Assert.Equal([2L, 10], y.shape);
        Assert.False(y.isnan().any().item<bool>());
        Assert.Equal([2L, 5, model.EmbedDim], model.ForwardFeatures(x).shape);
    }

    [Fact]
    public void TrainOutputCarriesTokenLogitsAndBox()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(0);
        using var model = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 10, ImgSize: 64));
        model.train();
        var box = new MixBox(0, 0, 2, 2);
        var output = model.ForwardTrain(torch.randn(3, 3, 64, 64), box);
        Assert.Equal([3L, 10], output.Logits.shape);
        Assert.Equal([3L, 16, 10], output.TokenLogits!.shape);
        Assert.Equal(box, output.Box);
        Assert.Equal(0.75, box.Lambda(4, 4), 12);
    }

    [Fact]
    public void EvalPredictionIsClsPlusHalfTheTokenMax()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(1);
        using var model = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 6, ImgSize: 32));
        model.eval();
        using var g = torch.no_grad();
        var x = torch.randn(2, 3, 32, 32);
        var logits = model.call(x);
        // Same thing through the training forward without a box: head(cls) and un-mixed token logits.
        var train = model.ForwardTrain(x);
        var expected = train.Logits + 0.5 * train.TokenLogits!.max(1).values;
        Assert.True(logits.allclose(expected, rtol: 0, atol: 1e-6));
        // And the aux term really matters: it differs from the cls head alone.
        Assert.False(logits.allclose(train.Logits, rtol: 0, atol: 1e-3));
    }

    [Fact]
    public void MixTokenWithAPartnerIdenticalImageIsANoOp()
    {
        // With a batch that reads the same backwards (x == x.flip(0)) the mixed grid equals the clean grid, so the
        // mixed forward and the un-mixing must reproduce the unmixed outputs exactly.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(2);
        using var model = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 5, ImgSize: 64));
        model.eval();
        using var g = torch.no_grad();
        var a = torch.randn(1, 3, 64, 64);
        var b = torch.randn(1, 3, 64, 64);
        var x = torch.cat([a, b, a], 0);
        var clean = model.ForwardTrain(x);
        var mixed = model.ForwardTrain(x, new MixBox(1, 0, 3, 2));
        Assert.True(mixed.TokenLogits!.allclose(clean.TokenLogits!, rtol: 0, atol: 1e-5));
    }

    [Fact]
    public void MixTokenSwapsTheBoxAndUnmixesTokenPredictions()
    {
        // Two images; the box covers the whole grid, so image 0 is computed entirely from image 1 and vice versa.
        // Un-mixing must hand each row the predictions of its own content: equal to the clean outputs, swapped twice.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(3);
        using var model = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 5, ImgSize: 32));
        model.eval();
        using var g = torch.no_grad();
        var x = torch.randn(2, 3, 32, 32);
        var clean = model.ForwardTrain(x);
        var full = model.ForwardTrain(x, new MixBox(0, 0, 2, 2));
        Assert.True(full.TokenLogits!.allclose(clean.TokenLogits!, rtol: 0, atol: 1e-5));
        Assert.True(full.Logits.allclose(clean.Logits.flip(0), rtol: 0, atol: 1e-5));
    }

    [Fact]
    public void GradientReachesEveryParameter()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(4);
        using var model = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 4, ImgSize: 32, DropPathRate: 0.1));
        model.train();
        var output = model.ForwardTrain(torch.randn(4, 3, 32, 32), new MixBox(0, 1, 2, 2));
        var loss = output.Logits.logsumexp(1).mean() + output.TokenLogits!.logsumexp(2).mean();
        loss.backward();
        foreach (var (name, p) in model.named_parameters())
        {
            Assert.True(p.grad is not null, $"{name} got no gradient");
            Assert.True(p.grad!.abs().sum().item<float>() > 0, $"{name} has an all-zero gradient");
        }
    }

    [Fact]
    public void WrongInputSizeIsAClearError()
    {
        using var _ = torch.NewDisposeScope();
        using var model = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 4, ImgSize: 32));
        var e = Assert.Throws<ArgumentException>(() => model.call(torch.randn(1, 3, 64, 64)));
        Assert.Contains("32px", e.Message);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(20)]
    [InlineData(-16)]
    public void BadImageSizesAreRejected(int img) =>
        Assert.Throws<ArgumentException>(() => ModelRegistry.Create("lvvit_t", new ModelOptions(ImgSize: img)));

    [Fact]
    public void DropPathRatesRiseLinearly()
    {
        Assert.Equal([0.0, 0.05, 0.1], LvVit.DropPathRates(0.1, 3));
        Assert.Equal(0.1, LvVit.DropPathRates(0.1, 16)[15], 12);
        Assert.Equal(0.0, LvVit.DropPathRates(0.1, 16)[0]);
    }

    [Fact]
    public void UnknownModelSuggestsCloseNames()
    {
        var e = Assert.Throws<UnknownModelException>(() => ModelRegistry.Get("lvit_s"));
        Assert.Contains("lvvit_s", e.Suggestions);
        Assert.Contains("lvvit_s", e.Message);
    }
}
