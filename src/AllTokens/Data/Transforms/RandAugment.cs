using System.Globalization;
using System.Text.RegularExpressions;

namespace AllTokens.Data.Transforms;

/// <summary>The ops of timm's RandAugment (<c>_RAND_INCREASING_TRANSFORMS</c> / <c>_RAND_TRANSFORMS</c>).</summary>
public enum RandAugmentOp
{
    AutoContrast, Equalize, Invert, Rotate, Posterize, Solarize, SolarizeAdd, Color, Contrast, Brightness, Sharpness,
    ShearX, ShearY, TranslateXRel, TranslateYRel,
}

/// <summary>
/// timm 0.4.x RandAugment settings, parsed from strings such as <c>rand-m9-mstd0.5-inc1</c>: <c>m</c> magnitude (0–10),
/// <c>n</c> ops per image (default 2), <c>mstd</c> standard deviation of the per-op magnitude noise, <c>inc</c> the
/// "increasing" op variants (Posterize/Solarize/enhance ops grow stronger with the magnitude).
/// </summary>
public sealed record RandAugmentOptions(int NumOps = 2, double Magnitude = 10, double MagnitudeStd = 0, bool Increasing = false)
{
    /// <summary>Fraction of the image side that a magnitude-10 translate moves (timm's <c>translate_pct</c>).</summary>
    public double TranslatePct { get; init; } = 0.45;

    /// <summary>The ops to choose from; null means all 15 (timm's list). Handy to study one family of ops.</summary>
    public IReadOnlyList<RandAugmentOp>? Ops { get; init; }

    /// <summary>Parses a timm RandAugment string (<c>rand-m9-mstd0.5-inc1</c>, <c>rand-n3-m9</c>, …).</summary>
    public static RandAugmentOptions Parse(string config)
    {
        ArgumentNullException.ThrowIfNull(config);
        string[] parts = config.Split('-');
        if (parts[0] != "rand")
            throw new FormatException($"'{config}': only RandAugment strings (rand-m9-mstd0.5-inc1) are supported");
        var o = new RandAugmentOptions();
        foreach (string part in parts.Skip(1))
        {
            var m = Regex.Match(part, @"^([a-z]+)(\d.*)$");
            if (!m.Success) throw new FormatException($"'{config}': cannot read '{part}' (expected a key followed by a number, e.g. m9)");
            string key = m.Groups[1].Value, value = m.Groups[2].Value;
            double Num() => double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && double.IsFinite(v)
                ? v : throw new FormatException($"'{config}': '{value}' in '{part}' is not a number");
            int Int() => int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v)
                ? v : throw new FormatException($"'{config}': '{value}' in '{part}' is not an integer");
            o = key switch
            {
                "m" => o with { Magnitude = Int() },
                "n" => o with { NumOps = Int() },
                "mstd" => o with { MagnitudeStd = Num() },
                "inc" => o with { Increasing = Int() != 0 },
                _ => throw new FormatException($"'{config}': unknown RandAugment key '{key}' (known: m, n, mstd, inc)"),
            };
        }
        if (o.NumOps < 0) throw new FormatException($"'{config}': n must not be negative");
        if (o.MagnitudeStd < 0) throw new FormatException($"'{config}': mstd must not be negative");
        return o;
    }
}

/// <summary>
/// timm's <c>RandAugment</c>: <see cref="RandAugmentOptions.NumOps"/> ops chosen uniformly with replacement from the 15,
/// each applied with probability 0.5; the magnitude of each applied op is N(m, mstd) clipped to [0, 10]; signed ops
/// (rotate, shear, translate, the increasing enhance ops) flip sign with probability 0.5; geometric ops fill with
/// <see cref="Fill"/> and resample bilinear or bicubic (at random unless fixed).
/// </summary>
public sealed class RandAugment
{
    private const double MaxLevel = 10.0;

    /// <summary>The 15 ops in timm's list order.</summary>
    public static IReadOnlyList<RandAugmentOp> AllOps { get; } = Enum.GetValues<RandAugmentOp>();

    public RandAugmentOptions Options { get; }

    /// <summary>Colour outside the input after a geometric op (timm: the ImageNet mean as bytes, (124, 116, 104)).</summary>
    public (byte R, byte G, byte B) Fill { get; }

    /// <summary>Resampling of geometric ops; null picks bilinear or bicubic at random per op (timm's default).</summary>
    public Interpolation? Resample { get; }

    public RandAugment(RandAugmentOptions options, (byte R, byte G, byte B) fill, Interpolation? resample = null)
    {
        Options = options;
        Fill = fill;
        Resample = resample;
    }

    /// <summary>timm's fill: round(255 · mean) per channel, capped at 255.</summary>
    public static (byte R, byte G, byte B) FillFromMean(IReadOnlyList<float> mean)
    {
        byte B(float m) => (byte)Math.Min(255, Math.Round(255.0 * m, MidpointRounding.ToEven));
        return (B(mean[0]), B(mean[1]), B(mean[2]));
    }

    /// <summary>Whether the op moves pixels (its matrix goes into the augment record).</summary>
    public static bool IsGeometric(RandAugmentOp op) => op is RandAugmentOp.Rotate or RandAugmentOp.ShearX or RandAugmentOp.ShearY
        or RandAugmentOp.TranslateXRel or RandAugmentOp.TranslateYRel;

    /// <summary>Applies the policy; the matrix of every geometric op that ran is appended to <paramref name="warps"/>.</summary>
    public RgbImage Apply(RgbImage image, SeededRandom rng, List<Affine2D>? warps = null)
    {
        for (int k = 0; k < Options.NumOps; k++)
        {
            var ops = Options.Ops ?? AllOps;
            var op = ops[rng.NextInt(0, ops.Count - 1)];
            if (rng.NextDouble() > 0.5) continue; // timm: `if random.random() > prob: return img`
            double magnitude = Options.Magnitude;
            if (Options.MagnitudeStd > 0) magnitude = rng.Gaussian(magnitude, Options.MagnitudeStd);
            magnitude = Math.Clamp(magnitude, 0, MaxLevel);
            image = ApplyOp(image, op, magnitude, rng, warps);
        }
        return image;
    }

    private static double RandomlyNegate(double v, SeededRandom rng) => rng.NextDouble() > 0.5 ? -v : v;

    /// <summary>One op at one magnitude; random signs and resampling are drawn from <paramref name="rng"/>.</summary>
    public RgbImage ApplyOp(RgbImage image, RandAugmentOp op, double magnitude, SeededRandom rng, List<Affine2D>? warps = null)
    {
        double level = magnitude / MaxLevel;
        bool inc = Options.Increasing;
        switch (op)
        {
            case RandAugmentOp.AutoContrast: return PilOps.AutoContrast(image);
            case RandAugmentOp.Equalize: return PilOps.Equalize(image);
            case RandAugmentOp.Invert: return PilOps.Invert(image);
            case RandAugmentOp.Posterize:
                {
                    int bits = (int)(level * 4);
                    return PilOps.Posterize(image, inc ? 4 - bits : bits);
                }
            case RandAugmentOp.Solarize:
                {
                    int t = (int)(level * 256);
                    return PilOps.Solarize(image, inc ? 256 - t : t);
                }
            case RandAugmentOp.SolarizeAdd: return PilOps.SolarizeAdd(image, (int)(level * 110));
            case RandAugmentOp.Color: return PilOps.Color(image, EnhanceFactor(level, inc, rng));
            case RandAugmentOp.Contrast: return PilOps.Contrast(image, EnhanceFactor(level, inc, rng));
            case RandAugmentOp.Brightness: return PilOps.Brightness(image, EnhanceFactor(level, inc, rng));
            case RandAugmentOp.Sharpness: return PilOps.Sharpness(image, EnhanceFactor(level, inc, rng));
        }
        double amount = op switch
        {
            RandAugmentOp.Rotate => RandomlyNegate(level * 30.0, rng),
            RandAugmentOp.ShearX or RandAugmentOp.ShearY => RandomlyNegate(level * 0.3, rng),
            _ => RandomlyNegate(level * Options.TranslatePct, rng),
        };
        Interpolation resample = Resample ?? (rng.NextInt(0, 1) == 0 ? Interpolation.Bilinear : Interpolation.Bicubic);
        RgbImage result;
        Affine2D m;
        if (op == RandAugmentOp.Rotate)
        {
            result = PilAffine.Rotate(image, amount, resample, Fill, out m);
        }
        else
        {
            m = op switch
            {
                RandAugmentOp.ShearX => new Affine2D(1, amount, 0, 0, 1, 0),
                RandAugmentOp.ShearY => new Affine2D(1, 0, 0, amount, 1, 0),
                RandAugmentOp.TranslateXRel => new Affine2D(1, 0, amount * image.Width, 0, 1, 0),
                _ => new Affine2D(1, 0, 0, 0, 1, amount * image.Height),
            };
            result = PilAffine.Transform(image, m, resample, Fill);
        }
        warps?.Add(m);
        return result;
    }

    // timm: increasing enhance ops use 1 ± level·0.9 (random sign); the plain ones level·1.8 + 0.1.
    private static double EnhanceFactor(double level, bool increasing, SeededRandom rng) =>
        increasing ? 1.0 + RandomlyNegate(level * 0.9, rng) : level * 1.8 + 0.1;
}
