using AllTokens.Models;
using AllTokens.Training;
using static TorchSharp.torch;

namespace AllTokens.Tests.Training;

public sealed class ParameterGroupsTests
{
    private static Dictionary<string, OptimGroup> GroupsOf(ImageClassifier model, GroupOptions options) =>
        ParameterGroups.Build(model, model.named_parameters().Select(p => KeyValuePair.Create(p.name, (Tensor)p.parameter)).ToList(), options)
            .ToDictionary(g => g.Name);

    [Fact]
    public void LvVitNoDecayByName()
    {
        using var model = ModelRegistry.Create("lvvit_t", new ModelOptions(10, 32));
        var g = GroupsOf(model, new GroupOptions(0.05));
        var noDecay = g["no_decay"].Params.Select(p => p.Name).ToHashSet();
        var decay = g["decay"].Params.Select(p => p.Name).ToHashSet();
        Assert.Contains("pos_embed", noDecay);   // model's list (3-D)
        Assert.Contains("cls_token", noDecay);
        Assert.Contains("head.bias", noDecay);   // .bias
        Assert.Contains("norm.weight", noDecay); // 1-D
        Assert.Contains("head.weight", decay);
        Assert.Contains("blocks.0.attn.qkv.weight", decay);
        Assert.Equal(0.05, g["decay"].WeightDecay);
        Assert.Equal(0, g["no_decay"].WeightDecay);
        Assert.DoesNotContain(decay, n => n.EndsWith(".bias", StringComparison.Ordinal) || n == "pos_embed");
        Assert.Equal(model.parameters().Count(p => p.requires_grad), noDecay.Count + decay.Count);
    }

    [Fact]
    public void T2tFrozenPosEmbedIsLeftOutAndFreezeAndTransferRatioWork()
    {
        using var model = ModelRegistry.Create("t2t_vit_7", new ModelOptions(10, 32));
        var g = GroupsOf(model, new GroupOptions(5e-4, TransferRatio: 0.01, Freeze: ["cls_token", "norm"]));
        var all = g.Values.SelectMany(x => x.Params).Select(p => p.Name).ToList();
        Assert.DoesNotContain("pos_embed", all);  // requires_grad false in T2T-ViT (sinusoid table)
        Assert.DoesNotContain("cls_token", all);
        Assert.DoesNotContain("norm.weight", all);
        Assert.Contains("blocks.0.norm1.weight", all); // "norm" freezes the final norm only, not every *norm*
        Assert.Equal(["backbone.decay", "backbone.no_decay", "head.decay", "head.no_decay"], g.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(0.01, g["backbone.decay"].LrScale);
        Assert.Equal(1.0, g["head.decay"].LrScale);
        Assert.Equal(["head.weight"], g["head.decay"].Params.Select(p => p.Name));
        Assert.Equal(["head.bias"], g["head.no_decay"].Params.Select(p => p.Name));
    }

    [Fact]
    public void ZeroDecayPutsEverythingInOneGroup()
    {
        using var model = ModelRegistry.Create("t2t_vit_7", new ModelOptions(10, 32));
        var g = GroupsOf(model, new GroupOptions(0));
        Assert.Equal(["no_decay"], g.Keys);
    }

    [Fact]
    public void DropPathRisesLinearlyOverBlocks()
    {
        using var model = ModelRegistry.Create("t2t_vit_7", new ModelOptions(10, 32, DropPathRate: 0.3));
        var rates = model.named_modules().Where(m => m.name.StartsWith("blocks.", StringComparison.Ordinal) && m.module is AllTokens.Layers.DropPath)
            .Select(m => ((AllTokens.Layers.DropPath)m.module).Probability).ToList();
        Assert.Equal(7, rates.Count);
        for (int i = 0; i < 7; i++) Assert.Equal(0.3 * i / 6, rates[i], 12);
    }
}
