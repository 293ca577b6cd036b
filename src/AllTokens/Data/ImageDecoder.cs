using System.Runtime.InteropServices;
using SkiaSharp;

namespace AllTokens.Data;

/// <summary>An image file that could not be read or decoded. The message names the file.</summary>
public sealed class ImageDecodeException : Exception
{
    /// <summary>The path or name of the offending file, as given to the decoder.</summary>
    public string FileName { get; }

    public ImageDecodeException(string fileName, string problem, Exception? inner = null)
        : base($"{fileName}: {problem}", inner) => FileName = fileName;
}

/// <summary>
/// Decodes JPEG, PNG, BMP, WebP and GIF (first frame) files into <see cref="RgbImage"/> with SkiaSharp,
/// with the semantics of Pillow's <c>Image.open(f).convert("RGB")</c>: grey is replicated into R, G and
/// B; alpha is dropped, not composited (the RGB of the unpremultiplied pixel is kept); palettes are
/// expanded; no colour management and no EXIF orientation is applied.
/// </summary>
public static class ImageDecoder
{
    /// <summary>Largest accepted width or height.</summary>
    public const int MaxSide = 16384;

    /// <summary>Largest accepted pixel count (width × height).</summary>
    public const long MaxPixels = 100_000_000;

    /// <summary>Reads and decodes the image file at <paramref name="path"/>.</summary>
    public static RgbImage Decode(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        byte[] data;
        try
        {
            data = File.ReadAllBytes(path);
        }
        catch (FileNotFoundException e)
        {
            throw new ImageDecodeException(path, "file not found", e);
        }
        catch (DirectoryNotFoundException e)
        {
            throw new ImageDecodeException(path, "file not found (directory does not exist)", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ImageDecodeException(path, $"cannot read file: {e.Message}", e);
        }
        return Decode(data, path);
    }

    /// <summary>Decodes an encoded image held in memory; <paramref name="nameForErrors"/> names it in
    /// error messages.</summary>
    public static RgbImage Decode(byte[] data, string nameForErrors)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(nameForErrors);
        if (data.Length == 0)
            throw new ImageDecodeException(nameForErrors, "file is empty (0 bytes)");

        // The codec owns the stream from here on (also when creation fails), so it is not disposed here.
        var stream = new SKMemoryStream(data);
        using var codec = SKCodec.Create(stream, out SKCodecResult createResult);
        if (codec is null)
        {
            string why = createResult switch
            {
                SKCodecResult.IncompleteInput => "truncated data: the image header is incomplete",
                SKCodecResult.Unimplemented => "unknown or unsupported image format (expected JPEG, PNG, BMP, WebP or GIF)",
                SKCodecResult.ErrorInInput or SKCodecResult.InvalidInput => "corrupt image header",
                _ => $"not a readable image ({createResult})",
            };
            throw new ImageDecodeException(nameForErrors, why);
        }

        SKImageInfo header = codec.Info;
        int width = header.Width, height = header.Height;
        if (width <= 0 || height <= 0)
            throw new ImageDecodeException(nameForErrors, $"invalid image size {width}x{height} in the header");
        if (width > MaxSide || height > MaxSide || (long)width * height > MaxPixels)
            throw new ImageDecodeException(nameForErrors,
                $"image size {width}x{height} in the header exceeds the limit ({MaxSide} pixels per side, {MaxPixels} pixels in all)");

        var info = new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        var rgba = new byte[checked(width * height * 4)];
        SKCodecResult result;
        var handle = GCHandle.Alloc(rgba, GCHandleType.Pinned);
        try
        {
            result = codec.GetPixels(info, handle.AddrOfPinnedObject(), info.RowBytes, new SKCodecOptions(0));
        }
        finally
        {
            handle.Free();
        }
        switch (result)
        {
            case SKCodecResult.Success:
                break;
            case SKCodecResult.IncompleteInput:
                throw new ImageDecodeException(nameForErrors, $"truncated data: the {codec.EncodedFormat} image ({width}x{height}) ends early");
            case SKCodecResult.ErrorInInput:
            case SKCodecResult.InvalidInput:
                throw new ImageDecodeException(nameForErrors, $"corrupt {codec.EncodedFormat} image data ({result})");
            default:
                throw new ImageDecodeException(nameForErrors, $"cannot decode the {codec.EncodedFormat} image ({result})");
        }

        var rgb = new byte[checked(width * height * 3)];
        for (int i = 0, j = 0; j < rgb.Length; i += 4, j += 3)
        {
            rgb[j] = rgba[i];
            rgb[j + 1] = rgba[i + 1];
            rgb[j + 2] = rgba[i + 2];
        }
        return new RgbImage(width, height, rgb);
    }
}
