using System.Text.Json;
using AllTokens.Cli;
using AllTokens.Models;
using AllTokens.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Training;

public class StepBreakdownTests
{
    [Fact]
    public void TimesEveryTopLevelPartOnTheInputItGetsInTheModel()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(0);
        using var model = ModelRegistry.Create("t2t_vit_nano", new ModelOptions(10, 32));
        var before = model.parameters().Select(p => p.detach().clone()).ToList();
        var parts = StepBreakdown.Run(model, batch: 2, resolution: 32, steps: 2, warmup: 1);

        var names = parts.Select(p => p.Name).ToList();
        int depth = names.Count(n => n.StartsWith("blocks.", StringComparison.Ordinal));
        Assert.True(depth > 0);
        Assert.Equal(["tokens_to_token", "pos_drop", .. Enumerable.Range(0, depth).Select(i => $"blocks.{i}"), "norm", "head", "optimizer step"], names);
        Assert.Equal([2L, 3, 32, 32], parts[0].Input);                // the image
        Assert.Equal([2L, 5, 128], parts.Single(p => p.Name == "blocks.0").Input); // class token + (32/16)² tokens, width 128
        Assert.Equal([2L, 128], parts.Single(p => p.Name == "head").Input);
        Assert.Empty(parts[^1].Input);
        Assert.All(parts, p => Assert.True(p.MedianSeconds > 0 && double.IsFinite(p.MedianSeconds), p.Name));
        // The optimizer part stepped the model's own parameters (a breakdown is a measurement; its model is not for use after).
        Assert.Contains(model.parameters().Zip(before), pair => !pair.First.detach().allclose(pair.Second, rtol: 0, atol: 0));
        Assert.All(model.parameters(), p => Assert.Null(p.grad));      // no gradients left behind
        foreach (var t in before) t.Dispose();
    }

    [Fact]
    public void ABf16ModelIsTimedInBf16WithFp32Masters()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(0);
        using var model = ModelRegistry.Create("t2t_vit_nano", new ModelOptions(10, 32));
        model.to(ScalarType.BFloat16);
        var before = model.parameters().Select(p => p.detach().clone()).ToList();
        var parts = StepBreakdown.Run(model, batch: 2, resolution: 32, steps: 1, warmup: 1);
        Assert.Equal("tokens_to_token", parts[0].Name);
        Assert.Equal("optimizer step", parts[^1].Name);
        Assert.All(parts, p => Assert.True(p.MedianSeconds > 0 && double.IsFinite(p.MedianSeconds), p.Name));
        // The masters' update reached the bf16 parameters, which stay bf16, with no gradients left behind.
        Assert.All(model.parameters(), p => Assert.Equal(ScalarType.BFloat16, p.dtype));
        Assert.Contains(model.parameters().Zip(before), pair => !pair.First.detach().to(ScalarType.Float32).allclose(pair.Second.to(ScalarType.Float32), rtol: 0, atol: 0));
        Assert.All(model.parameters(), p => Assert.Null(p.grad));
        foreach (var t in before) t.Dispose();
    }

    [Fact]
    public void BenchPrintsTheBreakdownInFp32AndBf16()
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(["bench", "--model", "lvvit_nano", "--res", "128", "--batch", "2", "--steps", "1", "--warmup", "0",
            "--num-classes", "10", "--threads", "1", "--breakdown", "--json"], o, e);
        Assert.True(code == 0, e.ToString());
        using var doc = JsonDocument.Parse(o.ToString());
        var parts = doc.RootElement.GetProperty("breakdown").EnumerateArray().Select(p => p.GetProperty("part").GetString()).ToList();
        Assert.Equal("patch_embed", parts[0]);
        Assert.Contains("aux_head", parts); // called through Layers.Dense, outside the module's hooks
        Assert.Equal("optimizer step", parts[^1]);

        o = new StringWriter();
        e = new StringWriter();
        code = Program.Run(["bench", "--model", "lvvit_nano", "--res", "32", "--batch", "2", "--steps", "1", "--warmup", "0",
            "--num-classes", "10", "--threads", "1", "--breakdown", "--bf16"], o, e);
        Assert.True(code == 0, e.ToString());
        string text = o.ToString();
        Assert.Contains("patch_embed", text);
        Assert.Contains("optimizer step", text);
        Assert.Contains("sum of parts", text);
    }
}
