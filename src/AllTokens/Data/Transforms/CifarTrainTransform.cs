namespace AllTokens.Data.Transforms;

/// <summary>
/// The T2T-ViT CIFAR transfer augmentation (T2T_VIT.md §6.1, torchvision): Resize(R) of the shorter side (bilinear),
/// RandomCrop(R, padding R/8 with black), RandomHorizontalFlip, normalise. Records the crop and flip in source pixels.
/// </summary>
public sealed class CifarTrainTransform : ISampleTransform
{
    private readonly float[] mean, std;

    public CifarTrainTransform(int size, float[] mean, float[] std, double hflip = 0.5)
    {
        if (size < 1) throw new ArgumentOutOfRangeException(nameof(size), $"size must be positive, got {size}");
        Size = size;
        Padding = size / 8;   // 224 → 28, 32 → 4: the padding of the recipe
        HFlip = hflip;
        this.mean = mean;
        this.std = std;
    }

    public int Size { get; }
    public int Padding { get; }
    public double HFlip { get; }

    public AugmentRecord? ApplyInto(RgbImage image, SeededRandom rng, Span<float> destination)
    {
        var resized = TorchvisionOps.ResizeShorterSide(image, Size, Interpolation.Bilinear);
        var padded = resized.Pad(Padding, Padding, Padding, Padding);
        // torchvision RandomCrop.get_params: top ~ U{0..H−h}, left ~ U{0..W−w}.
        int top = rng.NextInt(0, padded.Height - Size), left = rng.NextInt(0, padded.Width - Size);
        var crop = padded.Crop(left, top, Size, Size);
        bool flip = rng.Chance(HFlip);
        if (flip) crop = crop.FlipHorizontal();
        TorchvisionOps.ToNormalizedChw(crop, mean, std, destination);
        double sx = (double)image.Width / resized.Width, sy = (double)image.Height / resized.Height;
        return new AugmentRecord(AugmentOrder.Timm, image.Width, image.Height, flip, [],
            new CropBox((top - Padding) * sy, (left - Padding) * sx, Size * sy, Size * sx), Size, Size);
    }
}
