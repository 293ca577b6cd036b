using AllTokens.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Training;

public sealed class ModelEmaTests
{
    [Fact]
    public void UpdateIsDecayWeightedAverageOverParamsAndBuffers()
    {
        using var scope = torch.NewDisposeScope();
        var w = torch.tensor(new float[] { 1, 2 });
        var runningMean = torch.tensor(new float[] { 10 });
        var tracked = torch.tensor(new long[] { 5 });
        var src = new List<KeyValuePair<string, Tensor>> { new("w", w), new("bn.running_mean", runningMean), new("bn.num_batches_tracked", tracked) };
        using var ema = new ModelEma(src, 0.9);
        using (torch.no_grad())
        {
            w.copy_(torch.tensor(new float[] { 3, 4 }));
            runningMean.fill_(20);
            tracked.fill_(6);
        }
        ema.Update(src);
        // 0.9·1 + 0.1·3 = 1.2; 0.9·2 + 0.1·4 = 2.2; 0.9·10 + 0.1·20 = 11; integer buffers are copied.
        Assert.Equal([1.2f, 2.2f], ema.State[0].Value.data<float>().ToArray().Select(v => MathF.Round(v, 5)));
        Assert.Equal(11f, ema.State[1].Value.item<float>(), 5);
        Assert.Equal(6L, ema.State[2].Value.item<long>());
        ema.Update(src);
        // 0.9·1.2 + 0.1·3 = 1.38
        Assert.Equal(1.38f, ema.State[0].Value[0].item<float>(), 5);
        // The EMA owns copies: changing the source later does not change it.
        Assert.NotSame(w, ema.State[0].Value);
    }

    [Fact]
    public void UpdateChecksNames()
    {
        using var scope = torch.NewDisposeScope();
        var a = new List<KeyValuePair<string, Tensor>> { new("a", torch.zeros(2)) };
        using var ema = new ModelEma(a, 0.5);
        Assert.Throws<ArgumentException>(() => ema.Update([new("b", torch.zeros(2))]));
    }
}
