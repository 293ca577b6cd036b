namespace AllTokens.Data.Transforms;

/// <summary>Resampling of the train-time RandomResizedCrop (timm's <c>--train-interpolation</c>).</summary>
public enum TrainInterpolation
{
    Bilinear,
    Bicubic,
    /// <summary>Bilinear or bicubic at random per image (timm's "random"); RandAugment's geometric ops also pick at random.</summary>
    Random,
}

/// <summary>
/// Settings of the training transform (timm 0.4.x <c>transforms_imagenet_train</c> / <c>create_transform</c>).
/// Defaults are LV-ViT's: RandAugment <c>rand-m9-mstd0.5-inc1</c>, random interpolation, RandomErasing 0.25 pixel.
/// </summary>
public sealed record TrainTransformOptions
{
    /// <summary>Side of the square output.</summary>
    public int ImgSize { get; init; } = 224;
    /// <summary>RandomResizedCrop area fraction range.</summary>
    public (double Min, double Max) Scale { get; init; } = (0.08, 1.0);
    /// <summary>RandomResizedCrop aspect-ratio range (w/h), sampled on a log scale.</summary>
    public (double Min, double Max) Ratio { get; init; } = (3.0 / 4.0, 4.0 / 3.0);
    public TrainInterpolation Interpolation { get; init; } = TrainInterpolation.Random;
    /// <summary>Horizontal flip probability.</summary>
    public double HFlip { get; init; } = 0.5;
    /// <summary>timm RandAugment string, or null for none.</summary>
    public string? AutoAugment { get; init; } = "rand-m9-mstd0.5-inc1";
    /// <summary>Restricts RandAugment to these ops (null = all 15).</summary>
    public IReadOnlyList<RandAugmentOp>? RandAugmentOps { get; init; }
    /// <summary>ColorJitter strength for brightness, contrast and saturation; used only when <see cref="AutoAugment"/> is null (as timm).</summary>
    public double? ColorJitter { get; init; } = 0.4;
    /// <summary>RandomErasing probability (0 disables it).</summary>
    public double ReProb { get; init; } = 0.25;
    public EraseMode ReMode { get; init; } = EraseMode.Pixel;
    public int ReCount { get; init; } = 1;
    public float[] Mean { get; init; } = [.. EvalTransformOptions.ImageNetMean];
    public float[] Std { get; init; } = [.. EvalTransformOptions.ImageNetStd];
    public AugmentOrder Order { get; init; } = AugmentOrder.Timm;
    /// <summary>Whether <see cref="TrainTransform"/> returns an <see cref="AugmentRecord"/> per sample.</summary>
    public bool RecordAugments { get; init; }
}

/// <summary>A per-sample transform the loader runs on its workers: writes 3 × Size × Size normalised floats.</summary>
public interface ISampleTransform
{
    /// <summary>Side of the square output.</summary>
    int Size { get; }

    /// <summary>Transforms <paramref name="image"/> into <paramref name="destination"/> (CHW); returns the geometric record when
    /// the transform keeps one, else null.</summary>
    AugmentRecord? ApplyInto(RgbImage image, SeededRandom rng, Span<float> destination);
}

/// <summary>The evaluation transform as a sample transform (no randomness, no record).</summary>
public sealed class EvalSampleTransform(EvalTransform transform) : ISampleTransform
{
    public EvalTransform Transform { get; } = transform;
    public int Size => Transform.Size;

    public AugmentRecord? ApplyInto(RgbImage image, SeededRandom rng, Span<float> destination)
    {
        RgbImage img = Transform.ResizeAndCrop(image);
        TorchvisionOps.ToNormalizedChw(img, Transform.Options.Mean, Transform.Options.Std, destination);
        return null;
    }
}

/// <summary>
/// The training transform. <see cref="AugmentOrder.Timm"/>: RandomResizedCrop → flip → RandAugment (or ColorJitter) →
/// normalise → RandomErasing. <see cref="AugmentOrder.TokenLabel"/>: flip → RandAugment (or ColorJitter) on the full
/// image → RandomResizedCrop → normalise → RandomErasing. Every draw comes from the per-sample generator.
/// </summary>
public sealed class TrainTransform : ISampleTransform
{
    private readonly RandAugment? randAugment;
    private readonly ColorJitter? colorJitter;
    private readonly RandomErasing? erasing;

    public TrainTransformOptions Options { get; }
    public int Size => Options.ImgSize;

    public TrainTransform(TrainTransformOptions? options = null)
    {
        options ??= new TrainTransformOptions();
        if (options.ImgSize <= 0) throw new ArgumentOutOfRangeException(nameof(options), $"ImgSize must be positive, got {options.ImgSize}");
        if (!(options.Scale.Min > 0 && options.Scale.Min <= options.Scale.Max && options.Scale.Max <= 1))
            throw new ArgumentOutOfRangeException(nameof(options), $"Scale must satisfy 0 < min <= max <= 1, got ({options.Scale.Min}, {options.Scale.Max})");
        if (!(options.Ratio.Min > 0 && options.Ratio.Min <= options.Ratio.Max))
            throw new ArgumentOutOfRangeException(nameof(options), $"Ratio must satisfy 0 < min <= max, got ({options.Ratio.Min}, {options.Ratio.Max})");
        if (options.Mean is not { Length: 3 } || options.Std is not { Length: 3 } || options.Std.Any(s => s == 0 || !float.IsFinite(s)))
            throw new ArgumentException("Mean and Std need 3 values each, Std finite and non-zero", nameof(options));
        Options = options with { Mean = (float[])options.Mean.Clone(), Std = (float[])options.Std.Clone() };
        if (options.AutoAugment is { Length: > 0 } aa)
        {
            Interpolation? resample = options.Interpolation switch
            {
                TrainInterpolation.Bilinear => Interpolation.Bilinear,
                TrainInterpolation.Bicubic => Interpolation.Bicubic,
                _ => null,
            };
            randAugment = new RandAugment(RandAugmentOptions.Parse(aa) with { Ops = options.RandAugmentOps }, RandAugment.FillFromMean(Options.Mean), resample);
        }
        else if (options.ColorJitter is > 0 and double cj)
        {
            colorJitter = new ColorJitter(cj, cj, cj);
        }
        if (options.ReProb > 0) erasing = new RandomErasing(options.ReProb, options.ReMode, options.ReCount);
    }

    /// <summary>The 8-bit part (crop, flip, RandAugment or ColorJitter) of the transform and its geometric record.</summary>
    public RgbImage Augment(RgbImage image, SeededRandom rng, out AugmentRecord record)
    {
        ArgumentNullException.ThrowIfNull(image);
        int size = Options.ImgSize, w = image.Width, h = image.Height;
        var warps = new List<Affine2D>();
        bool flipped;
        CropBox box;
        if (Options.Order == AugmentOrder.Timm)
        {
            box = RandomResizedCrop.GetParams(image.Width, image.Height, Options.Scale, Options.Ratio, rng);
            image = RandomResizedCrop.Apply(image, box, size, size, PickInterpolation(rng));
            flipped = Options.HFlip > 0 && rng.NextDouble() < Options.HFlip;
            if (flipped) image = image.FlipHorizontal();
            image = Colour(image, rng, warps);
        }
        else
        {
            flipped = Options.HFlip > 0 && rng.NextDouble() < Options.HFlip;
            if (flipped) image = image.FlipHorizontal();
            image = Colour(image, rng, warps);
            box = RandomResizedCrop.GetParams(w, h, Options.Scale, Options.Ratio, rng);
            image = RandomResizedCrop.Apply(image, box, size, size, PickInterpolation(rng));
        }
        record = new AugmentRecord(Options.Order, w, h, flipped, warps, box, size, size);
        return image;
    }

    private RgbImage Colour(RgbImage image, SeededRandom rng, List<Affine2D> warps) =>
        randAugment is not null ? randAugment.Apply(image, rng, warps)
        : colorJitter is not null ? colorJitter.Apply(image, rng)
        : image;

    private Interpolation PickInterpolation(SeededRandom rng) => Options.Interpolation switch
    {
        TrainInterpolation.Bilinear => Interpolation.Bilinear,
        TrainInterpolation.Bicubic => Interpolation.Bicubic,
        _ => rng.NextInt(0, 1) == 0 ? Interpolation.Bilinear : Interpolation.Bicubic,
    };

    public AugmentRecord? ApplyInto(RgbImage image, SeededRandom rng, Span<float> destination)
    {
        RgbImage augmented = Augment(image, rng, out AugmentRecord record);
        TorchvisionOps.ToNormalizedChw(augmented, Options.Mean, Options.Std, destination);
        erasing?.Apply(destination, 3, Size, Size, rng);
        return Options.RecordAugments ? record : null;
    }

    /// <summary>The full transform: CHW floats and the record (null unless <see cref="TrainTransformOptions.RecordAugments"/>).</summary>
    public (float[] Chw, AugmentRecord? Record) Apply(RgbImage image, SeededRandom rng)
    {
        var chw = new float[3 * Size * Size];
        var record = ApplyInto(image, rng, chw);
        return (chw, record);
    }
}

/// <summary>Point mapping through an <see cref="AugmentRecord"/>.</summary>
public static class AugmentRecordMapping
{
    /// <summary>
    /// The source-image point (continuous pixel coordinates, pixel i covers [i, i+1)) that the output point
    /// (<paramref name="x"/>, <paramref name="y"/>) was sampled from, following the record's steps backwards.
    /// </summary>
    public static (double X, double Y) OutputToSource(this AugmentRecord r, double x, double y)
    {
        ArgumentNullException.ThrowIfNull(r);
        if (r.Order == AugmentOrder.Timm)
        {
            for (int i = r.Warps.Count - 1; i >= 0; i--) (x, y) = r.Warps[i].Apply(x, y);
            if (r.Flipped) x = r.OutputWidth - x;
            return (r.Crop.Left + x * r.Crop.Width / r.OutputWidth, r.Crop.Top + y * r.Crop.Height / r.OutputHeight);
        }
        (x, y) = (r.Crop.Left + x * r.Crop.Width / r.OutputWidth, r.Crop.Top + y * r.Crop.Height / r.OutputHeight);
        for (int i = r.Warps.Count - 1; i >= 0; i--) (x, y) = r.Warps[i].Apply(x, y);
        if (r.Flipped) x = r.SourceWidth - x;
        return (x, y);
    }
}
