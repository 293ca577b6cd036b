using AllTokens.Models;
using AllTokens.TokenLabeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.TokenLabeling;

public class TokenLabelLossTests
{
    // B = 2, C = 3, grid 2×2 (N = 4): fixed logits and targets, losses computed by hand in double.
    private static readonly double[,] ClsLogits = { { 1, 0, -1 }, { 0.5, 2, 0 } };
    private static readonly double[,] ClsTarget = { { 0.8, 0.1, 0.1 }, { 0.2, 0.3, 0.5 } };

    private static double TokLogit(int b, int n, int c) => 0.3 * b - 0.2 * n + 0.7 * c * (n % 2 == 0 ? 1 : -1);
    private static double TokTarget(int b, int n, int c) => (1 + b + n + 2 * c) / (3.0 * (1 + b + n) + 6);

    private static double Ce(double[] z, double[] t)
    {
        double m = z.Max(), lse = m + Math.Log(z.Sum(v => Math.Exp(v - m)));
        return t.Select((ti, i) => -ti * (z[i] - lse)).Sum();
    }

    private static (TrainOutput Out, TokenTargets Targets) Make(MixBox? box)
    {
        var cls = torch.tensor(new[] { 1f, 0, -1, 0.5f, 2, 0 }, [2L, 3]);
        var tl = new float[2 * 4 * 3];
        var tt = new float[2 * 4 * 3];
        for (int b = 0; b < 2; b++)
            for (int n = 0; n < 4; n++)
                for (int c = 0; c < 3; c++)
                {
                    tl[(b * 4 + n) * 3 + c] = (float)TokLogit(b, n, c);
                    tt[(b * 4 + n) * 3 + c] = (float)TokTarget(b, n, c);
                }
        var target = torch.tensor(new[] { 0.8f, 0.1f, 0.1f, 0.2f, 0.3f, 0.5f }, [2L, 3]);
        return (new TrainOutput(cls, torch.tensor(tl, [2L, 4, 3]), box), new TokenTargets(target, torch.tensor(tt, [2L, 4, 3]), null));
    }

    private static double[] Row(double[,] a, int i) => Enumerable.Range(0, a.GetLength(1)).Select(j => a[i, j]).ToArray();

    private static double DenseTerm(Func<int, int, int, double> target)
    {
        double sum = 0;
        for (int b = 0; b < 2; b++)
            for (int n = 0; n < 4; n++)
                sum += Ce(Enumerable.Range(0, 3).Select(c => TokLogit(b, n, c)).ToArray(), Enumerable.Range(0, 3).Select(c => target(b, n, c)).ToArray());
        return sum / 8;
    }

    [Fact]
    public void DenseLossWithoutBoxEqualsHandComputation()
    {
        using var _ = torch.NewDisposeScope();
        var (o, t) = Make(null);
        double cls = (Ce(Row(ClsLogits, 0), Row(ClsTarget, 0)) + Ce(Row(ClsLogits, 1), Row(ClsTarget, 1))) / 2;
        double want = 1.0 * cls + 0.5 * DenseTerm(TokTarget);
        Assert.Equal(want, new TokenLabelLoss().Compute(o, t, 2).item<float>(), 5);
        double official = 1.0 * cls + 1.0 * DenseTerm(TokTarget);
        Assert.Equal(official, new TokenLabelLoss(new(DenseWeight: 1.0)).Compute(o, t, 2).item<float>(), 5);
    }

    [Fact]
    public void MixTokenBoxMixesOnlyTheClassTargetWithLambdaFromTheClippedBox()
    {
        using var _ = torch.NewDisposeScope();
        var box = new MixBox(0, 0, 1, 1); // area 1 of N = 4 → λ' = 0.75; partner of sample 0 is sample 1
        var (o, t) = Make(box);
        double lam = 0.75;
        double[] Mixed(int i) => Enumerable.Range(0, 3).Select(c => lam * ClsTarget[i, c] + (1 - lam) * ClsTarget[1 - i, c]).ToArray();
        double cls = (Ce(Row(ClsLogits, 0), Mixed(0)) + Ce(Row(ClsLogits, 1), Mixed(1))) / 2;
        double want = 2.0 * cls + 0.25 * DenseTerm(TokTarget); // token targets are not mixed
        var loss = new TokenLabelLoss(new(ClsWeight: 2.0, DenseWeight: 0.25)).Compute(o, t, 2);
        Assert.Equal(want, loss.item<float>(), 5);
    }

    [Fact]
    public void TwoDModeGivesEveryTokenTheClassTarget()
    {
        using var _ = torch.NewDisposeScope();
        var (o, t) = Make(null);
        double cls = (Ce(Row(ClsLogits, 0), Row(ClsTarget, 0)) + Ce(Row(ClsLogits, 1), Row(ClsTarget, 1))) / 2;
        double want = cls + 0.5 * DenseTerm((b, n, c) => ClsTarget[b, c]);
        var loss = new TokenLabelLoss(new(Mode: TokenLabelLossMode.TwoD)).Compute(o, t with { Tokens = null }, 2);
        Assert.Equal(want, loss.item<float>(), 5);
    }

    [Fact]
    public void ReLabelModeIsTheClassTermAlone()
    {
        using var _ = torch.NewDisposeScope();
        var (o, t) = Make(null);
        double cls = (Ce(Row(ClsLogits, 0), Row(ClsTarget, 0)) + Ce(Row(ClsLogits, 1), Row(ClsTarget, 1))) / 2;
        var loss = new TokenLabelLoss(new(Mode: TokenLabelLossMode.ReLabel)).Compute(o with { TokenLogits = null }, t with { Tokens = null }, 2);
        Assert.Equal(cls, loss.item<float>(), 5);
    }

    [Fact]
    public void MismatchesAreExplained()
    {
        using var _ = torch.NewDisposeScope();
        var (o, t) = Make(null);
        var e = Assert.Throws<ArgumentException>(() => new TokenLabelLoss().Compute(o with { TokenLogits = null }, t, 2));
        Assert.Contains("token head", e.Message);
        e = Assert.Throws<ArgumentException>(() => new TokenLabelLoss().Compute(o, t with { Tokens = torch.zeros(2, 9, 3) }, 3));
        Assert.Contains("label size", e.Message);
    }
}
