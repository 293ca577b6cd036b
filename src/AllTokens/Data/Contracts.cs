using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Data;

/// <summary>
/// A dataset of labelled images. Implementations: IDX (MNIST/Fashion-MNIST), CIFAR binary, ImageFolder, subsets.
/// </summary>
public interface IImageDataset
{
    /// <summary>Number of samples.</summary>
    int Count { get; }

    /// <summary>Class names, index = label.</summary>
    IReadOnlyList<string> ClassNames { get; }

    /// <summary>Label of sample <paramref name="index"/> without decoding the image.</summary>
    int GetLabel(int index);

    /// <summary>
    /// Stable key of the sample: the path relative to the split root with '/' separators for ImageFolder
    /// (e.g. <c>Coat/img_001.png</c>), <c>{split}/{index:D6}</c> for IDX and CIFAR. Label stores index by it.
    /// </summary>
    string GetKey(int index);

    /// <summary>Decodes sample <paramref name="index"/>; throws <see cref="ImageDecodeException"/> naming the file when it cannot.</summary>
    RgbImage Load(int index);

    /// <summary>Human-readable origin (path and split) for messages.</summary>
    string Source { get; }
}

/// <summary>
/// A 2-D affine map between continuous pixel coordinates (pixel i covers [i, i+1)):
/// x_in = A·x + B·y + C, y_in = D·x + E·y + F. Same parameter order as PIL's <c>Image.transform(AFFINE)</c>.
/// </summary>
public readonly record struct Affine2D(double A, double B, double C, double D, double E, double F)
{
    public static Affine2D Identity => new(1, 0, 0, 0, 1, 0);

    public (double X, double Y) Apply(double x, double y) => (A * x + B * y + C, D * x + E * y + F);

    /// <summary>The map "first apply <paramref name="inner"/>, then this": this ∘ inner.</summary>
    public Affine2D Compose(Affine2D inner) => new(
        A * inner.A + B * inner.D, A * inner.B + B * inner.E, A * inner.C + B * inner.F + C,
        D * inner.A + E * inner.D, D * inner.B + E * inner.E, D * inner.C + E * inner.F + F);

    /// <summary>True when the map has no rotation or shear (B = D = 0).</summary>
    public bool IsAxisAligned => B == 0 && D == 0;
}

/// <summary>A crop rectangle in pixels of the frame it was taken from.</summary>
public readonly record struct CropBox(double Top, double Left, double Height, double Width);

/// <summary>Order in which the geometric train transforms ran.</summary>
public enum AugmentOrder
{
    /// <summary>timm's <c>transforms_imagenet_train</c>: RandomResizedCrop, then flip, then RandAugment on the crop.</summary>
    Timm,

    /// <summary>Official TokenLabeling order (LVVIT.md §6.3): flip, then RandAugment on the full image, then RandomResizedCrop.</summary>
    TokenLabel,
}

/// <summary>
/// What the geometric train transforms did to one sample, so that a dense label map can follow the image exactly.
/// <para>
/// <see cref="AugmentOrder.TokenLabel"/>: the source image (SourceWidth × SourceHeight) was flipped if <see cref="Flipped"/>,
/// then warped by each of <see cref="Warps"/> in order (each maps output → input coordinates in the source-size frame,
/// image size unchanged), then <see cref="Crop"/> (in that frame) was resized to Output.
/// </para>
/// <para>
/// <see cref="AugmentOrder.Timm"/>: <see cref="Crop"/> (source frame) was resized to Output, then flipped if
/// <see cref="Flipped"/>, then warped by each of <see cref="Warps"/> in the output frame.
/// </para>
/// </summary>
public sealed record AugmentRecord(
    AugmentOrder Order,
    int SourceWidth,
    int SourceHeight,
    bool Flipped,
    IReadOnlyList<Affine2D> Warps,
    CropBox Crop,
    int OutputWidth,
    int OutputHeight)
{
    /// <summary>Identity record for an untransformed image of the given size.</summary>
    public static AugmentRecord None(int width, int height) =>
        new(AugmentOrder.Timm, width, height, false, [], new CropBox(0, 0, height, width), width, height);
}

/// <summary>One collated batch. Owns its tensors; dispose it (or let the step's dispose scope take them).</summary>
public sealed class Batch : IDisposable
{
    /// <summary>[B, 3, H, W] float32, normalised.</summary>
    public required Tensor Images { get; init; }

    /// <summary>[B] int64 class indices.</summary>
    public required Tensor Labels { get; init; }

    /// <summary>Dataset indices of the samples, in batch order.</summary>
    public required int[] Indices { get; init; }

    /// <summary>Per-sample geometric records when the transform records them, else null.</summary>
    public IReadOnlyList<AugmentRecord>? Augments { get; init; }

    public int Size => Indices.Length;

    public void Dispose()
    {
        Images.Dispose();
        Labels.Dispose();
    }
}

/// <summary>Batches of one split, epoch by epoch; the same seed gives the same batches whatever the worker count.</summary>
public interface IBatchSource
{
    /// <summary>The dataset the batches come from.</summary>
    IImageDataset Dataset { get; }

    /// <summary>Batches per epoch (after drop_last).</summary>
    int BatchesPerEpoch { get; }

    /// <summary>
    /// The batches of <paramref name="epoch"/>, starting at batch <paramref name="startBatch"/> (exact resume).
    /// The caller disposes each batch.
    /// </summary>
    IEnumerable<Batch> Epoch(int epoch, int startBatch = 0);
}
