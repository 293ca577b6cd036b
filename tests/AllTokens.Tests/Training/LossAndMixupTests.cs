using AllTokens.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Training;

public sealed class LossAndMixupTests
{
    [Fact]
    public void CutmixBoxClipsAndRecomputesLambda()
    {
        // 10×10, λ 0.64 → ratio 0.6, cut 6×6; centre (1, 8): rows [1−3, 1+3) → [0, 4), cols [5, 11) → [5, 10).
        var (box, lam) = Mixup.CutmixBox(10, 10, 0.64, 1, 8);
        Assert.Equal((0, 4, 5, 10), box);
        Assert.Equal(1 - 20.0 / 100, lam, 12);
        // Unclipped: centre (5, 5) → [2, 8) × [2, 8), λ = 1 − 36/100.
        var (box2, lam2) = Mixup.CutmixBox(10, 10, 0.64, 5, 5);
        Assert.Equal((2, 8, 2, 8), box2);
        Assert.Equal(0.64, lam2, 12);
        // Odd cut: 7 × int(7·√0.5) = 4 → cut//2 = 2, box [1, 5) × [1, 5) (timm: both sides use cut//2).
        Assert.Equal((1, 5, 1, 5), Mixup.CutmixBox(7, 7, 0.5, 3, 3).Box);
    }

    [Fact]
    public void TargetsAreSmoothedOneHotsBlendedWithTheFlippedBatch()
    {
        using var scope = torch.NewDisposeScope();
        var labels = torch.tensor(new long[] { 0, 2 });
        // C = 4, smoothing 0.1: off = 0.025, on = 0.925; λ = 0.7.
        var t = Mixup.Targets(labels, 4, 0.1, 0.7).data<float>().ToArray();
        float[] expected =
        [
            0.7f * 0.925f + 0.3f * 0.025f, 0.025f, 0.7f * 0.025f + 0.3f * 0.925f, 0.025f,
            0.7f * 0.025f + 0.3f * 0.925f, 0.025f, 0.7f * 0.925f + 0.3f * 0.025f, 0.025f,
        ];
        for (int i = 0; i < 8; i++) Assert.Equal(expected[i], t[i], 6);
    }

    [Fact]
    public void ApplyMixesWithFlippedBatch()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)]); // [2, 1, 4, 4]
        var m = x.clone();
        Mixup.Apply(m, new MixDraw(0.75, false, null));
        Assert.Equal(0.25f, m[0, 0, 0, 0].item<float>(), 6); // 0.75·0 + 0.25·1
        Assert.Equal(0.75f, m[1, 0, 3, 3].item<float>(), 6);
        var c = x.clone();
        Mixup.Apply(c, new MixDraw(0.75, true, (1, 3, 0, 2)));
        Assert.Equal(1f, c[0, 0, 1, 0].item<float>());
        Assert.Equal(1f, c[0, 0, 2, 1].item<float>());
        Assert.Equal(0f, c[0, 0, 0, 0].item<float>());
        Assert.Equal(0f, c[0, 0, 1, 2].item<float>());
        Assert.Equal(0f, c[1, 0, 2, 1].item<float>());
        Assert.Equal(4f, c[0].sum().item<float>()); // a 2×2 patch
    }

    [Fact]
    public void DrawHonoursProbAndSwitch()
    {
        var rng = new Rng(1);
        var off = new MixupOptions(0.8, 1.0, Prob: 0);
        Assert.Equal(1.0, Mixup.Draw(off, rng, 8, 8).Lambda);
        var cutOnly = new MixupOptions(0, 1.0);
        for (int i = 0; i < 20; i++)
        {
            var d = Mixup.Draw(cutOnly, rng, 16, 16);
            Assert.True(d.UseCutmix);
            var b = d.Box!.Value;
            Assert.Equal(1 - (double)(b.Bottom - b.Top) * (b.Right - b.Left) / 256, d.Lambda, 12);
        }
        var both = new MixupOptions(0.8, 1.0, SwitchProb: 0.5);
        int cuts = Enumerable.Range(0, 400).Count(_ => Mixup.Draw(both, rng, 16, 16).UseCutmix);
        Assert.InRange(cuts, 150, 250);
    }

    [Fact]
    public void BetaSamplesHaveTheRightMean()
    {
        var rng = new Rng(7);
        double mean = Enumerable.Range(0, 20000).Average(_ => rng.NextBeta(0.8, 0.8));
        Assert.InRange(mean, 0.49, 0.51);
        double mean2 = Enumerable.Range(0, 20000).Average(_ => rng.NextBeta(2, 6));
        Assert.InRange(mean2, 0.245, 0.255);
    }

    [Fact]
    public void RngStateRoundTrips()
    {
        var a = new Rng(3);
        a.NextDouble();
        var s = a.SaveState();
        var x = Enumerable.Range(0, 5).Select(_ => a.NextUInt64()).ToList();
        var b = new Rng(99);
        b.LoadState(s);
        Assert.Equal(x, Enumerable.Range(0, 5).Select(_ => b.NextUInt64()));
        Assert.Throws<FormatException>(() => b.LoadState("nope"));
    }

    [Fact]
    public void SoftTargetAndSmoothedCrossEntropyHandValues()
    {
        using var scope = torch.NewDisposeScope();
        var logits = torch.tensor(new float[] { 0, 0, (float)Math.Log(2) }, [1, 3]); // softmax = [1/4, 1/4, 1/2]
        var target = torch.tensor(new float[] { 0.5f, 0, 0.5f }, [1, 3]);
        // −(0.5·ln ¼ + 0.5·ln ½) = 0.5·ln4 + 0.5·ln2 = 1.5·ln2
        Assert.Equal(1.5 * Math.Log(2), Losses.SoftTargetCrossEntropy(logits, target).item<float>(), 5);
        var label = torch.tensor(new long[] { 2 });
        // smoothing 0.3: 0.7·ln2 + 0.3·mean(ln4, ln4, ln2) = 0.7·ln2 + 0.3·(5/3)·ln2 = 1.2·ln2
        Assert.Equal(1.2 * Math.Log(2), Losses.CrossEntropy(logits, label, 0.3).item<float>(), 5);
        Assert.Equal(Math.Log(2), Losses.CrossEntropy(logits, label).item<float>(), 5);
        // Smoothed CE equals soft-target CE on timm's smoothed one-hot (off = s/C, on = 1 − s + off).
        var smoothed = Mixup.Targets(label, 3, 0.3, 1.0);
        Assert.Equal(Losses.CrossEntropy(logits, label, 0.3).item<float>(), Losses.SoftTargetCrossEntropy(logits, smoothed).item<float>(), 5);
    }
}
