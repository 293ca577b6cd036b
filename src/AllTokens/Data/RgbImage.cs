namespace AllTokens.Data;

/// <summary>
/// An 8-bit RGB image: interleaved R, G, B bytes, row-major, 3 bytes per pixel (HWC), no padding
/// between rows. The pixel array is shared, not copied; operations return new images.
/// </summary>
public sealed class RgbImage
{
    public int Width { get; }
    public int Height { get; }

    /// <summary>Width × Height × 3 bytes; pixel (x, y) starts at (y × Width + x) × 3.</summary>
    public byte[] Pixels { get; }

    public RgbImage(int width, int height, byte[] pixels)
    {
        ArgumentNullException.ThrowIfNull(pixels);
        if (width <= 0 || height <= 0)
            throw new ArgumentOutOfRangeException(nameof(width), $"image size {width}x{height} must be positive");
        long needed = (long)width * height * 3;
        if (pixels.LongLength != needed)
            throw new ArgumentException($"a {width}x{height} RGB image needs {needed} bytes, got {pixels.LongLength}", nameof(pixels));
        Width = width;
        Height = height;
        Pixels = pixels;
    }

    /// <summary>An image of the given size with every byte zero (black).</summary>
    public static RgbImage Black(int width, int height) => new(width, height, new byte[checked(width * height * 3)]);

    /// <summary>The (R, G, B) bytes of pixel (x, y).</summary>
    public (byte R, byte G, byte B) GetPixel(int x, int y)
    {
        if ((uint)x >= (uint)Width || (uint)y >= (uint)Height)
            throw new ArgumentOutOfRangeException(nameof(x), $"pixel ({x}, {y}) is outside the {Width}x{Height} image");
        int i = (y * Width + x) * 3;
        return (Pixels[i], Pixels[i + 1], Pixels[i + 2]);
    }

    /// <summary>The <paramref name="width"/>×<paramref name="height"/> region whose top-left pixel is
    /// (<paramref name="left"/>, <paramref name="top"/>). The region must lie inside the image.</summary>
    public RgbImage Crop(int left, int top, int width, int height)
    {
        if (width <= 0 || height <= 0 || left < 0 || top < 0 || (long)left + width > Width || (long)top + height > Height)
            throw new ArgumentOutOfRangeException(nameof(left),
                $"crop box (left {left}, top {top}, {width}x{height}) does not lie inside the {Width}x{Height} image");
        if (left == 0 && top == 0 && width == Width && height == Height)
            return new RgbImage(width, height, (byte[])Pixels.Clone());
        var dst = new byte[width * height * 3];
        int rowBytes = width * 3;
        for (int y = 0; y < height; y++)
            Buffer.BlockCopy(Pixels, ((top + y) * Width + left) * 3, dst, y * rowBytes, rowBytes);
        return new RgbImage(width, height, dst);
    }

    /// <summary>The image mirrored left-to-right.</summary>
    public RgbImage FlipHorizontal()
    {
        var dst = new byte[Pixels.Length];
        for (int y = 0; y < Height; y++)
        {
            int row = y * Width * 3;
            for (int x = 0; x < Width; x++)
            {
                int s = row + x * 3, d = row + (Width - 1 - x) * 3;
                dst[d] = Pixels[s];
                dst[d + 1] = Pixels[s + 1];
                dst[d + 2] = Pixels[s + 2];
            }
        }
        return new RgbImage(Width, Height, dst);
    }

    /// <summary>The image with <paramref name="left"/>, <paramref name="top"/>, <paramref name="right"/>
    /// and <paramref name="bottom"/> columns/rows of black added on each side.</summary>
    public RgbImage Pad(int left, int top, int right, int bottom)
    {
        if (left < 0 || top < 0 || right < 0 || bottom < 0)
            throw new ArgumentOutOfRangeException(nameof(left), $"padding ({left}, {top}, {right}, {bottom}) must not be negative");
        int w = checked(Width + left + right), h = checked(Height + top + bottom);
        var dst = new byte[checked(w * h * 3)];
        int rowBytes = Width * 3;
        for (int y = 0; y < Height; y++)
            Buffer.BlockCopy(Pixels, y * rowBytes, dst, ((top + y) * w + left) * 3, rowBytes);
        return new RgbImage(w, h, dst);
    }
}
