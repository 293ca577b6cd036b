namespace AllTokens.Data.Transforms;

/// <summary>
/// torchvision's <c>ColorJitter(brightness, contrast, saturation)</c> on PIL images (hue is not supported; timm passes
/// none): each factor is uniform in [max(0, 1 − v), 1 + v], and the enabled adjustments run in a random order
/// (<c>randperm(4)</c>) through <c>ImageEnhance.Brightness</c>, <c>Contrast</c> and <c>Color</c>. A zero value disables
/// that adjustment.
/// </summary>
public sealed class ColorJitter(double brightness, double contrast, double saturation)
{
    public double Brightness { get; } = brightness >= 0 ? brightness : throw new ArgumentOutOfRangeException(nameof(brightness));
    public double Contrast { get; } = contrast >= 0 ? contrast : throw new ArgumentOutOfRangeException(nameof(contrast));
    public double Saturation { get; } = saturation >= 0 ? saturation : throw new ArgumentOutOfRangeException(nameof(saturation));

    public RgbImage Apply(RgbImage image, SeededRandom rng)
    {
        int[] order = [0, 1, 2, 3];
        rng.Shuffle(order);
        double Factor(double v) => rng.Uniform(Math.Max(0, 1 - v), 1 + v);
        // torchvision draws the factors (in b, c, s order) before applying them in the permuted order.
        double? b = Brightness > 0 ? Factor(Brightness) : null;
        double? c = Contrast > 0 ? Factor(Contrast) : null;
        double? s = Saturation > 0 ? Factor(Saturation) : null;
        foreach (int fn in order)
        {
            if (fn == 0 && b is double bf) image = PilOps.Brightness(image, bf);
            else if (fn == 1 && c is double cf) image = PilOps.Contrast(image, cf);
            else if (fn == 2 && s is double sf) image = PilOps.Color(image, sf);
        }
        return image;
    }
}
