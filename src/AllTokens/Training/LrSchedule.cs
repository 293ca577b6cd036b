namespace AllTokens.Training;

/// <summary>Schedule shapes.</summary>
public enum ScheduleKind
{
    /// <summary>timm <c>CosineLRScheduler</c> (one cycle) with linear warmup and cooldown at min_lr.</summary>
    Cosine,

    /// <summary>Linear warmup, then the base lr throughout.</summary>
    Constant,
}

/// <summary>
/// Learning-rate schedule with timm 0.4 <c>CosineLRScheduler</c> semantics (LVVIT.md §8.1, T2T_VIT.md §5.1):
/// for t &lt; warmup: warmup_lr + t·(lr − warmup_lr)/warmup; otherwise min_lr + ½(lr − min_lr)(1 + cos(π·t/epochs))
/// with the cosine measured from epoch 0 (no warmup prefix); t ≥ epochs: min_lr (the cooldown epochs).
/// With <see cref="PerStep"/> the position is fractional (epoch + batch/batches), which is timm's per-update
/// stepping with every length multiplied by the updates per epoch. torch's <c>CosineAnnealingLR</c>
/// (T2T_VIT.md §6) is the same curve with no warmup and eta_min as min_lr.
/// </summary>
/// <param name="Epochs">Cosine length (timm's t_initial = --epochs); training runs Epochs + CooldownEpochs.</param>
public sealed record LrSchedule(ScheduleKind Kind, int Epochs, double WarmupEpochs, double WarmupLr, double MinLr, int CooldownEpochs, bool PerStep)
{
    /// <summary>Epochs actually trained (310 = 300 + 10 in the published recipes).</summary>
    public int TotalEpochs => Epochs + CooldownEpochs;

    /// <summary>Schedule position of batch <paramref name="batch"/> of <paramref name="epoch"/>.</summary>
    public double Position(int epoch, int batch, int batchesPerEpoch) =>
        PerStep && batchesPerEpoch > 0 ? epoch + (double)batch / batchesPerEpoch : epoch;

    /// <summary>The lr at position <paramref name="t"/> (epochs) for a group whose base lr is <paramref name="baseLr"/>.</summary>
    public double At(double t, double baseLr)
    {
        if (t < WarmupEpochs) return WarmupLr + t * (baseLr - WarmupLr) / WarmupEpochs;
        if (Kind == ScheduleKind.Constant) return baseLr;
        if (t >= Epochs) return MinLr; // timm: cycle index ≥ cycle_limit (1) → lr_min
        return MinLr + 0.5 * (baseLr - MinLr) * (1 + Math.Cos(Math.PI * t / Epochs));
    }
}
