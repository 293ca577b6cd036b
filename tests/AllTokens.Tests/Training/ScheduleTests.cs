using AllTokens.Training;

namespace AllTokens.Tests.Training;

public sealed class ScheduleTests
{
    // LV-ViT (LVVIT.md §8.1): lr 1.6e-3, warmup 5 from 1e-6, cosine over 300 to 1e-5, cooldown 10.
    private static readonly LrSchedule LvVit = new(ScheduleKind.Cosine, 300, 5, 1e-6, 1e-5, 10, PerStep: false);

    [Fact]
    public void WarmupIsLinearFromWarmupLr()
    {
        Assert.Equal(1e-6, LvVit.At(0, 1.6e-3), 15);
        // e = 2: 1e-6 + 2·(1.6e-3 − 1e-6)/5 = 6.406e-4
        Assert.Equal(6.406e-4, LvVit.At(2, 1.6e-3), 12);
        Assert.Equal(1e-6 + 4 * (1.6e-3 - 1e-6) / 5, LvVit.At(4, 1.6e-3), 15);
    }

    [Fact]
    public void CosineIsMeasuredFromEpochZero()
    {
        // e = 5 (first epoch after warmup): 1e-5 + ½(1.6e-3 − 1e-5)(1 + cos(π·5/300)), not the base lr.
        double e5 = 1e-5 + 0.5 * (1.6e-3 - 1e-5) * (1 + Math.Cos(Math.PI * 5 / 300));
        Assert.Equal(e5, LvVit.At(5, 1.6e-3), 15);
        Assert.True(LvVit.At(5, 1.6e-3) < 1.6e-3);
        // e = 150: the midpoint, (1.6e-3 + 1e-5)/2 = 8.05e-4.
        Assert.Equal(8.05e-4, LvVit.At(150, 1.6e-3), 12);
        // e = 299: 1e-5 + ½·1.59e-3·(1 + cos(299π/300)) = 1e-5 + 0.795e-3·(1 − 0.99994517) ≈ 1.00436e-5
        Assert.Equal(1.0043591e-5, LvVit.At(299, 1.6e-3), 11);
    }

    [Fact]
    public void CooldownStaysAtMinLr()
    {
        Assert.Equal(310, LvVit.TotalEpochs);
        foreach (int e in new[] { 300, 305, 309 }) Assert.Equal(1e-5, LvVit.At(e, 1.6e-3));
    }

    [Fact]
    public void T2tTenEpochWarmupValues()
    {
        // T2T_VIT.md §5.1 with warmup 10 and lr 5e-4: e = 3 → 1e-6 + 3·(5e-4 − 1e-6)/10 = 1.507e-4; e = 10 → cosine.
        var s = new LrSchedule(ScheduleKind.Cosine, 300, 10, 1e-6, 1e-5, 10, false);
        Assert.Equal(1.507e-4, s.At(3, 5e-4), 12);
        Assert.Equal(1e-5 + 0.5 * (5e-4 - 1e-5) * (1 + Math.Cos(Math.PI * 10 / 300)), s.At(10, 5e-4), 15);
    }

    [Fact]
    public void PerStepUsesFractionalEpochs()
    {
        var s = LvVit with { PerStep = true };
        Assert.Equal(2.5, s.Position(2, 50, 100));
        Assert.Equal(2.0, LvVit.Position(2, 50, 100)); // per epoch: the batch does not move the lr
        Assert.Equal(1e-6 + 2.5 * (1.6e-3 - 1e-6) / 5, s.At(s.Position(2, 50, 100), 1.6e-3), 15);
    }

    [Fact]
    public void CosineAnnealingForTransferHasNoWarmupAndSharedEtaMin()
    {
        // torch CosineAnnealingLR(T_max 60, eta_min 2e-4) on a backbone group at 5e-4 (T2T_VIT.md §6.1): epoch 30 → 3.5e-4.
        var s = new LrSchedule(ScheduleKind.Cosine, 60, 0, 0, 2e-4, 0, false);
        Assert.Equal(5e-4, s.At(0, 5e-4), 15);
        Assert.Equal(3.5e-4, s.At(30, 5e-4), 12);
        Assert.Equal(0.05 * 0.5 + 2e-4 * 0.5, s.At(30, 0.05), 12);
    }
}
