using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Data.Transforms;

/// <summary>Settings of timm's evaluation preprocessing (timm 0.4.5 <c>transforms_imagenet_eval</c>).
/// <paramref name="Mean"/> and <paramref name="Std"/> default to ImageNet's.</summary>
public sealed record EvalTransformOptions(
    int ImgSize = 224,
    double CropPct = 0.875,
    Interpolation Interpolation = Interpolation.Bicubic,
    float[]? Mean = null,
    float[]? Std = null)
{
    public static IReadOnlyList<float> ImageNetMean { get; } = [0.485f, 0.456f, 0.406f];
    public static IReadOnlyList<float> ImageNetStd { get; } = [0.229f, 0.224f, 0.225f];

    /// <summary>Per-channel mean subtracted after scaling to [0, 1].</summary>
    public float[] Mean { get; init; } = Mean ?? [.. ImageNetMean];

    /// <summary>Per-channel standard deviation divided by.</summary>
    public float[] Std { get; init; } = Std ?? [.. ImageNetStd];

    /// <summary>The shorter-side size images are resized to before the crop: floor(ImgSize / CropPct).</summary>
    public int ScaleSize => (int)Math.Floor(ImgSize / CropPct);
}

/// <summary>
/// timm 0.4.5 / torchvision evaluation preprocessing of one image: <c>Resize(floor(ImgSize / CropPct))</c>
/// on the shorter side (Pillow resampling), <c>CenterCrop(ImgSize)</c>, <c>ToTensor</c>,
/// <c>Normalize(Mean, Std)</c>. Outputs are float32 CHW, [3, ImgSize, ImgSize].
/// </summary>
public sealed class EvalTransform
{
    public EvalTransformOptions Options { get; }

    public EvalTransform(EvalTransformOptions? options = null)
    {
        options ??= new EvalTransformOptions();
        if (options.ImgSize <= 0)
            throw new ArgumentOutOfRangeException(nameof(options), $"ImgSize must be positive, got {options.ImgSize}");
        if (!(options.CropPct > 0) || double.IsInfinity(options.CropPct))
            throw new ArgumentOutOfRangeException(nameof(options), $"CropPct must be a positive number, got {options.CropPct}");
        if (options.ScaleSize <= 0)
            throw new ArgumentOutOfRangeException(nameof(options), $"ImgSize {options.ImgSize} / CropPct {options.CropPct} gives resize size {options.ScaleSize}");
        if (options.Mean is not { Length: 3 } || options.Std is not { Length: 3 })
            throw new ArgumentException("Mean and Std need exactly 3 values each", nameof(options));
        if (options.Std.Any(s => s == 0f || !float.IsFinite(s)))
            throw new ArgumentException($"Std values must be finite and non-zero, got ({string.Join(", ", options.Std)})", nameof(options));
        Options = options with { Mean = (float[])options.Mean.Clone(), Std = (float[])options.Std.Clone() };
    }

    /// <summary>Side of the square output.</summary>
    public int Size => Options.ImgSize;

    /// <summary>Resize then center crop, still 8-bit: an ImgSize × ImgSize image.</summary>
    public RgbImage ResizeAndCrop(RgbImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        RgbImage resized = TorchvisionOps.ResizeShorterSide(image, Options.ScaleSize, Options.Interpolation);
        return TorchvisionOps.CenterCrop(resized, Options.ImgSize, Options.ImgSize);
    }

    /// <summary>The full transform: 3 × ImgSize × ImgSize floats, CHW.</summary>
    public float[] Apply(RgbImage image)
    {
        var result = new float[3 * Size * Size];
        ApplyInto(image, result);
        return result;
    }

    private void ApplyInto(RgbImage image, Span<float> destination) =>
        TorchvisionOps.ToNormalizedChw(ResizeAndCrop(image), Options.Mean, Options.Std, destination);

    /// <summary>The full transform as a float32 CPU tensor of shape [3, ImgSize, ImgSize].</summary>
    public Tensor ToTensor(RgbImage image) => torch.tensor(Apply(image), [3L, Size, Size]);

    /// <summary>Several images transformed and stacked into a float32 CPU tensor [B, 3, ImgSize, ImgSize].</summary>
    public Tensor ToBatch(IReadOnlyList<RgbImage> images)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (images.Count == 0)
            throw new ArgumentException("a batch needs at least one image", nameof(images));
        int per = 3 * Size * Size;
        var data = new float[checked(images.Count * per)];
        for (int i = 0; i < images.Count; i++)
            ApplyInto(images[i], data.AsSpan(i * per, per));
        return torch.tensor(data, [images.Count, 3L, Size, Size]);
    }
}
