using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Models;

/// <summary>Our small-data sizes (lvvit_nano, vit_nano, t2t_vit_nano) used by the Fashion-MNIST recipes and the demo.</summary>
public class NanoModelTests
{
    // Hand count, 64 px (4×4 tokens), 10 classes, E 128, depth 4, MLP 384:
    //   block = 2·LN(256) + qkv 128·384 (no bias) + proj 128·128+128 + fc1 128·384+384 + fc2 384·128+128 = 164,992; ×4 = 659,968
    //   lvvit_nano: cls 128 + pos 17·128 + stem (3·32·49 + 2·32·32·9 + 3 BN·64 + proj 32·128·64+128 = 285,600)
    //               + blocks + norm 256 + head 1,290 + aux_head 1,290 = 950,708
    //   vit_nano:   cls 128 + pos 2,176 + patch conv 3·128·256+128 = 98,432 + blocks + norm 256 + head 1,290 = 762,250
    [Theory]
    [InlineData("lvvit_nano", 950_708L)]
    [InlineData("vit_nano", 762_250L)]
    public void ParameterCountsMatchAHandCount(string name, long expected) =>
        Assert.Equal(expected, ModelRegistry.CountParameters(name, new ModelOptions(NumClasses: 10, ImgSize: 64)));

    [Theory]
    [InlineData("lvvit_nano")]
    [InlineData("vit_nano")]
    [InlineData("t2t_vit_nano")]
    public void DefaultsAre64PixelsAndForwardGivesLogits(string name)
    {
        using var _ = torch.NewDisposeScope();
        var info = ModelRegistry.Get(name);
        Assert.Equal(64, info.Defaults.ImgSize);
        using var model = info.Create(new ModelOptions(NumClasses: 10, ImgSize: 64));
        Assert.Equal(4, model.GridSize);
        model.eval();
        var logits = model.call(torch.randn(2, 3, 64, 64));
        Assert.Equal(new long[] { 2, 10 }, logits.shape);
        Assert.True(logits.isfinite().all().item<bool>());
    }

    [Fact]
    public void LvVitNanoTrainsWithMixTokenOnTheFourByFourGrid()
    {
        using var _ = torch.NewDisposeScope();
        using var model = ModelRegistry.Create("lvvit_nano", new ModelOptions(NumClasses: 10, ImgSize: 64));
        model.train();
        var output = model.ForwardTrain(torch.randn(4, 3, 64, 64), new MixBox(0, 0, 2, 2));
        Assert.Equal(new long[] { 4, 16, 10 }, output.TokenLogits!.shape);
        Assert.Equal(0.75, output.Box!.Value.Lambda(4, 4), 12);
    }
}
