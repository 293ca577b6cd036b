namespace AllTokens.Data.Transforms;

/// <summary>
/// torchvision's PIL-image transforms used for evaluation, with torchvision's arithmetic:
/// <c>Resize(int)</c> of the shorter side, <c>CenterCrop</c> (zero padding when the image is smaller
/// than the crop), and <c>ToTensor</c> + <c>Normalize</c>.
/// </summary>
public static class TorchvisionOps
{
    /// <summary>The size <c>Resize(size)</c> gives a <paramref name="width"/>×<paramref name="height"/>
    /// image: the shorter side becomes <paramref name="size"/>, the longer one
    /// int(size × long / short) (truncated, as Python's int()).</summary>
    public static (int Width, int Height) ShorterSideSize(int width, int height, int size)
    {
        if (width <= 0 || height <= 0 || size <= 0)
            throw new ArgumentOutOfRangeException(nameof(size), $"cannot resize a {width}x{height} image to shorter side {size}");
        if (width <= height)
            return (size, (int)((double)((long)size * height) / width));
        return ((int)((double)((long)size * width) / height), size);
    }

    /// <summary>torchvision <c>Resize(size)</c>: scales the shorter side to <paramref name="size"/> with
    /// Pillow's resampling. An image whose shorter side already equals <paramref name="size"/> is
    /// returned unchanged (the same instance), as torchvision does.</summary>
    public static RgbImage ResizeShorterSide(RgbImage image, int size, Interpolation interpolation)
    {
        ArgumentNullException.ThrowIfNull(image);
        int shorter = Math.Min(image.Width, image.Height);
        if (shorter == size)
            return image;
        var (w, h) = ShorterSideSize(image.Width, image.Height, size);
        return PilResize.Resize(image, w, h, interpolation);
    }

    /// <summary>The padding (left, top, right, bottom) torchvision's <c>CenterCrop</c> adds to an image
    /// smaller than the crop: half the shortfall on the left/top (rounded down), the rest on the
    /// right/bottom.</summary>
    public static (int Left, int Top, int Right, int Bottom) CenterCropPadding(int width, int height, int cropWidth, int cropHeight)
    {
        int left = cropWidth > width ? (cropWidth - width) / 2 : 0;
        int top = cropHeight > height ? (cropHeight - height) / 2 : 0;
        int right = cropWidth > width ? (cropWidth - width + 1) / 2 : 0;
        int bottom = cropHeight > height ? (cropHeight - height + 1) / 2 : 0;
        return (left, top, right, bottom);
    }

    /// <summary>The top-left corner of torchvision's center crop of a (padded, if need be) image:
    /// round((size − crop) / 2) with Python's round-half-to-even.</summary>
    public static (int Left, int Top) CenterCropOrigin(int width, int height, int cropWidth, int cropHeight)
    {
        if (cropWidth > width || cropHeight > height)
            throw new ArgumentOutOfRangeException(nameof(cropWidth), $"crop {cropWidth}x{cropHeight} is larger than the {width}x{height} image; pad first");
        int left = (int)Math.Round((width - cropWidth) / 2.0, MidpointRounding.ToEven);
        int top = (int)Math.Round((height - cropHeight) / 2.0, MidpointRounding.ToEven);
        return (left, top);
    }

    /// <summary>torchvision <c>CenterCrop((cropHeight, cropWidth))</c>.</summary>
    public static RgbImage CenterCrop(RgbImage image, int cropWidth, int cropHeight)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (cropWidth <= 0 || cropHeight <= 0)
            throw new ArgumentOutOfRangeException(nameof(cropWidth), $"crop size {cropWidth}x{cropHeight} must be positive");
        if (cropWidth > image.Width || cropHeight > image.Height)
        {
            var (l, t, r, b) = CenterCropPadding(image.Width, image.Height, cropWidth, cropHeight);
            image = image.Pad(l, t, r, b);
            if (image.Width == cropWidth && image.Height == cropHeight)
                return image;
        }
        var (left, top) = CenterCropOrigin(image.Width, image.Height, cropWidth, cropHeight);
        return image.Crop(left, top, cropWidth, cropHeight);
    }

    /// <summary><c>ToTensor</c> then <c>Normalize(mean, std)</c> in float32: channel c of pixel p becomes
    /// (p / 255 − mean[c]) / std[c]. Writes 3 × H × W values (CHW) into <paramref name="destination"/>.</summary>
    public static void ToNormalizedChw(RgbImage image, ReadOnlySpan<float> mean, ReadOnlySpan<float> std, Span<float> destination)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (mean.Length != 3 || std.Length != 3)
            throw new ArgumentException($"mean and std need 3 values each, got {mean.Length} and {std.Length}");
        int plane = image.Width * image.Height;
        if (destination.Length != 3 * plane)
            throw new ArgumentException($"destination holds {destination.Length} floats, a {image.Width}x{image.Height} image needs {3 * plane}", nameof(destination));
        byte[] px = image.Pixels;
        for (int c = 0; c < 3; c++)
        {
            float m = mean[c], s = std[c];
            Span<float> dst = destination.Slice(c * plane, plane);
            for (int i = 0; i < plane; i++)
            {
                float v = px[i * 3 + c] / 255f;
                dst[i] = (v - m) / s;
            }
        }
    }
}
