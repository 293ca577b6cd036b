namespace AllTokens.Data.Transforms;

/// <summary>
/// Bit-exact re-implementation of Pillow's <c>Image.resize((w, h), resample)</c> (Pillow 9.x) for 8-bit
/// RGB images, without a box argument or reducing_gap.
/// <para>BILINEAR and BICUBIC (a = −0.5) follow libImaging's separable resampler: each output pixel
/// takes a window of support = filter support × max(in/out, 1) input pixels (so down-scaling
/// antialiases), the normalised weights are turned into 22-bit fixed point, the sums are rounded and
/// clipped to 8 bits. The horizontal pass runs first, on the rows the vertical pass needs, and its
/// result is stored as 8-bit; a pass whose axis keeps its size is skipped.</para>
/// <para>NEAREST is Pillow's affine scaling: output pixel x reads input pixel ⌊(x + 0.5) × in/out⌋, with
/// the product formed by repeated addition in double as Pillow does (which can round down at exact
/// integers).</para>
/// </summary>
public static class PilResize
{
    // 32 bits of accumulator minus 8 bits of pixel value minus 2 bits of headroom for negative lobes.
    private const int PrecisionBits = 32 - 8 - 2;

    /// <summary>The image resized to <paramref name="width"/>×<paramref name="height"/>; a same-size
    /// resize returns a copy.</summary>
    public static RgbImage Resize(RgbImage image, int width, int height, Interpolation filter)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (width <= 0 || height <= 0)
            throw new ArgumentOutOfRangeException(nameof(width), $"resize target {width}x{height} must be positive");
        if (width == image.Width && height == image.Height)
            return new RgbImage(width, height, (byte[])image.Pixels.Clone());
        return filter switch
        {
            Interpolation.Nearest => Nearest(image, width, height),
            Interpolation.Bilinear => Resample(image, width, height, Triangle, 1.0),
            Interpolation.Bicubic => Resample(image, width, height, Cubic, 2.0),
            _ => throw new ArgumentOutOfRangeException(nameof(filter), $"unknown interpolation {filter}"),
        };
    }

    private static double Triangle(double x)
    {
        if (x < 0.0) x = -x;
        return x < 1.0 ? 1.0 - x : 0.0;
    }

    // Keys' cubic convolution with a = -0.5, written in the same evaluation order as Pillow so that
    // every double is rounded the same way.
    private static double Cubic(double x)
    {
        const double a = -0.5;
        if (x < 0.0) x = -x;
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
        return 0.0;
    }

    /// <summary>Per output position: first input index, tap count, and fixed-point weights
    /// (<c>Weights[o * KernelSize + i]</c>).</summary>
    private sealed record Coefficients(int KernelSize, int[] First, int[] Count, int[] Weights);

    private static Coefficients Precompute(int inSize, int outSize, Func<double, double> kernel, double kernelSupport)
    {
        double scale = (double)inSize / outSize;
        double filterScale = scale < 1.0 ? 1.0 : scale;
        double support = kernelSupport * filterScale;
        int kernelSize = (int)Math.Ceiling(support) * 2 + 1;
        var first = new int[outSize];
        var count = new int[outSize];
        var weights = new int[checked(outSize * kernelSize)];
        var w = new double[kernelSize];
        double inverseScale = 1.0 / filterScale;
        for (int o = 0; o < outSize; o++)
        {
            double center = (o + 0.5) * scale;
            int lo = (int)(center - support + 0.5);
            if (lo < 0) lo = 0;
            int hi = (int)(center + support + 0.5);
            if (hi > inSize) hi = inSize;
            int n = hi - lo;
            double total = 0.0;
            for (int i = 0; i < n; i++)
            {
                w[i] = kernel((i + lo - center + 0.5) * inverseScale);
                total += w[i];
            }
            for (int i = 0; i < n; i++)
            {
                double v = total != 0.0 ? w[i] / total : w[i];
                // Round half away from zero into 22-bit fixed point.
                weights[o * kernelSize + i] = v < 0
                    ? (int)(-0.5 + v * (1 << PrecisionBits))
                    : (int)(0.5 + v * (1 << PrecisionBits));
            }
            first[o] = lo;
            count[o] = n;
        }
        return new Coefficients(kernelSize, first, count, weights);
    }

    private static byte Clip8(int acc)
    {
        if (acc >= (1 << PrecisionBits << 8)) return 255;
        if (acc <= 0) return 0;
        return (byte)(acc >> PrecisionBits);
    }

    private static RgbImage Resample(RgbImage image, int outW, int outH, Func<double, double> kernel, double support)
    {
        int inW = image.Width, inH = image.Height;
        bool horizontal = outW != inW, vertical = outH != inH;
        Coefficients cx = Precompute(inW, outW, kernel, support);
        Coefficients cy = Precompute(inH, outH, kernel, support);

        // The vertical pass reads rows [firstRow, lastRow) only, so only those go through the horizontal pass.
        int firstRow = cy.First[0];
        int lastRow = cy.First[outH - 1] + cy.Count[outH - 1];

        byte[] src = image.Pixels;
        int srcW = inW, rowOffset = 0;
        if (horizontal)
        {
            int rows = lastRow - firstRow;
            var tmp = new byte[checked(outW * rows * 3)];
            for (int y = 0; y < rows; y++)
            {
                int inRow = (y + firstRow) * inW * 3, outRow = y * outW * 3;
                for (int x = 0; x < outW; x++)
                {
                    int lo = cx.First[x], n = cx.Count[x], k = x * cx.KernelSize;
                    int r = 1 << (PrecisionBits - 1), g = r, b = r;
                    for (int i = 0; i < n; i++)
                    {
                        int p = inRow + (lo + i) * 3, wt = cx.Weights[k + i];
                        r += src[p] * wt;
                        g += src[p + 1] * wt;
                        b += src[p + 2] * wt;
                    }
                    int o = outRow + x * 3;
                    tmp[o] = Clip8(r);
                    tmp[o + 1] = Clip8(g);
                    tmp[o + 2] = Clip8(b);
                }
            }
            src = tmp;
            srcW = outW;
            rowOffset = firstRow;
        }
        if (!vertical)
            return new RgbImage(outW, outH, src);

        var dst = new byte[checked(outW * outH * 3)];
        int stride = srcW * 3;
        for (int y = 0; y < outH; y++)
        {
            int lo = cy.First[y] - rowOffset, n = cy.Count[y], k = y * cy.KernelSize;
            int outRow = y * outW * 3;
            for (int x = 0; x < outW * 3; x += 3)
            {
                int r = 1 << (PrecisionBits - 1), g = r, b = r;
                for (int i = 0; i < n; i++)
                {
                    int p = (lo + i) * stride + x, wt = cy.Weights[k + i];
                    r += src[p] * wt;
                    g += src[p + 1] * wt;
                    b += src[p + 2] * wt;
                }
                dst[outRow + x] = Clip8(r);
                dst[outRow + x + 1] = Clip8(g);
                dst[outRow + x + 2] = Clip8(b);
            }
        }
        return new RgbImage(outW, outH, dst);
    }

    // Pillow resizes with NEAREST through its affine "scale" path: the source coordinate of output pixel
    // 0 is half a step, and each next one adds the step in/out (accumulated in double, so rounding
    // drifts as in Pillow); the index is that coordinate truncated. An index that drifts outside the
    // source leaves the output pixel black, as Pillow's fill does.
    private static int[] NearestIndices(int inSize, int outSize)
    {
        double step = (double)inSize / outSize;
        double pos = 0.0 + step * 0.5;
        var idx = new int[outSize];
        for (int o = 0; o < outSize; o++)
        {
            int i = pos < 0.0 ? -1 : (int)pos;
            idx[o] = i < inSize ? i : -1;
            pos += step;
        }
        return idx;
    }

    private static RgbImage Nearest(RgbImage image, int outW, int outH)
    {
        int inW = image.Width;
        int[] xs = NearestIndices(inW, outW), ys = NearestIndices(image.Height, outH);
        byte[] src = image.Pixels;
        var dst = new byte[checked(outW * outH * 3)];
        for (int y = 0; y < outH; y++)
        {
            if (ys[y] < 0) continue;
            int inRow = ys[y] * inW * 3, outRow = y * outW * 3;
            for (int x = 0; x < outW; x++)
            {
                if (xs[x] < 0) continue;
                int s = inRow + xs[x] * 3, d = outRow + x * 3;
                dst[d] = src[s];
                dst[d + 1] = src[s + 1];
                dst[d + 2] = src[s + 2];
            }
        }
        return new RgbImage(outW, outH, dst);
    }
}
