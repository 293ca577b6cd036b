using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>Mixup/CutMix settings, timm <c>Mixup</c> in "batch" mode (one λ per batch, partner = the flipped batch).</summary>
public sealed record MixupOptions(double MixupAlpha = 0, double CutmixAlpha = 0, double Prob = 1.0, double SwitchProb = 0.5)
{
    public bool Enabled => (MixupAlpha > 0 || CutmixAlpha > 0) && Prob > 0;
}

/// <summary>What was drawn for one batch.</summary>
/// <param name="Lambda">Weight of each image's own content and label (after box clipping for CutMix).</param>
/// <param name="Box">CutMix box in pixels, rows [Top, Bottom), columns [Left, Right); null for mixup or no mixing.</param>
public readonly record struct MixDraw(double Lambda, bool UseCutmix, (int Top, int Bottom, int Left, int Right)? Box);

/// <summary>
/// timm 0.4 <c>timm/data/mixup.py</c> as pure functions: parameter draw, CutMix box with λ recomputed after
/// clipping (correct_lam), in-place mixing against the flipped batch, and smoothed one-hot targets.
/// </summary>
public static class Mixup
{
    /// <summary>timm <c>_params_per_batch</c>: whether to mix, which kind, and the raw λ ~ Beta(α, α).</summary>
    public static (double Lambda, bool UseCutmix) DrawParams(MixupOptions o, Rng rng)
    {
        double lam = 1.0;
        bool useCutmix = false;
        if (o.Enabled && rng.NextDouble() < o.Prob)
        {
            if (o.MixupAlpha > 0 && o.CutmixAlpha > 0)
            {
                useCutmix = rng.NextDouble() < o.SwitchProb;
                lam = useCutmix ? rng.NextBeta(o.CutmixAlpha, o.CutmixAlpha) : rng.NextBeta(o.MixupAlpha, o.MixupAlpha);
            }
            else if (o.MixupAlpha > 0) lam = rng.NextBeta(o.MixupAlpha, o.MixupAlpha);
            else
            {
                useCutmix = true;
                lam = rng.NextBeta(o.CutmixAlpha, o.CutmixAlpha);
            }
        }
        return (lam, useCutmix);
    }

    /// <summary>
    /// timm <c>rand_bbox</c> (margin 0) given the centre: cut side = int(side·√(1 − λ)), edges at centre ∓ cut//2
    /// clipped to the image, then λ = 1 − box area / image area.
    /// </summary>
    public static ((int Top, int Bottom, int Left, int Right) Box, double Lambda) CutmixBox(int height, int width, double lambda, int centerY, int centerX)
    {
        double ratio = Math.Sqrt(1 - lambda);
        int cutH = (int)(height * ratio), cutW = (int)(width * ratio);
        int top = Math.Clamp(centerY - cutH / 2, 0, height), bottom = Math.Clamp(centerY + cutH / 2, 0, height);
        int left = Math.Clamp(centerX - cutW / 2, 0, width), right = Math.Clamp(centerX + cutW / 2, 0, width);
        double lam = 1.0 - (double)(bottom - top) * (right - left) / ((double)height * width);
        return ((top, bottom, left, right), lam);
    }

    /// <summary>Draws everything for one batch of <paramref name="height"/>×<paramref name="width"/> images.</summary>
    public static MixDraw Draw(MixupOptions o, Rng rng, int height, int width)
    {
        var (lam, cut) = DrawParams(o, rng);
        if (lam == 1.0) return new MixDraw(1.0, false, null);
        if (!cut) return new MixDraw(lam, false, null);
        int cy = rng.NextInt(0, height), cx = rng.NextInt(0, width);
        var (box, corrected) = CutmixBox(height, width, lam, cy, cx);
        return new MixDraw(corrected, true, box);
    }

    /// <summary>Mixes <paramref name="images"/> [B, C, H, W] in place with the flipped batch (timm <c>_mix_batch</c>).</summary>
    public static void Apply(Tensor images, MixDraw draw)
    {
        if (draw.Lambda == 1.0 && draw.Box is null) return;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        if (draw.Box is { } b)
        {
            var partner = images.flip(0)[.., .., b.Top..b.Bottom, b.Left..b.Right].clone();
            images[.., .., b.Top..b.Bottom, b.Left..b.Right] = partner;
        }
        else
        {
            using Scalar lam = draw.Lambda.ToScalar(), rest = (1.0 - draw.Lambda).ToScalar(); // held for the calls (see Layers.Held)
            var flipped = images.flip(0).mul_(rest);
            images.mul_(lam).add_(flipped, Layers.Held.One);
        }
    }

    /// <summary>
    /// timm <c>mixup_target</c>: smoothed one-hot (off = s/C, on = 1 − s + off) of the labels, blended λ with the
    /// flipped batch's. [B] int64 → [B, C] float32.
    /// </summary>
    public static Tensor Targets(Tensor labels, int numClasses, double smoothing, double lambda)
    {
        double off = smoothing / numClasses, on = 1.0 - smoothing + off;
        var y1 = OneHot(labels, numClasses, on, off);
        if (lambda == 1.0) return y1;
        var y2 = OneHot(labels.flip(0), numClasses, on, off);
        using Scalar lam = lambda.ToScalar(), rest = (1.0 - lambda).ToScalar(); // held for the calls (see Layers.Held)
        return Layers.Held.Add(y1.mul(lam), y2.mul(rest));
    }

    private static Tensor OneHot(Tensor labels, int numClasses, double on, double off)
    {
        var hot = nn.functional.one_hot(labels.to(ScalarType.Int64), numClasses).to(ScalarType.Float32);
        using Scalar scale = (on - off).ToScalar(), shift = off.ToScalar(); // held for the calls (see Layers.Held)
        return Layers.Held.AddInPlace(hot.mul_(scale), shift);
    }
}
