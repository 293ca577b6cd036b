namespace AllTokens.Data.Transforms;

/// <summary>
/// Pillow 9.4's <c>Image.transform(size, AFFINE, matrix, resample, fillcolor)</c> and <c>Image.rotate</c> on 8-bit RGB,
/// bit-exact. The matrix maps output to input coordinates (<see cref="Affine2D"/>), applied to pixel centres (x + 0.5,
/// y + 0.5). A centre that lands outside the input keeps the fill colour; BILINEAR and BICUBIC (cubic convolution with
/// a = −1, as libImaging's Geometry.c) read clamped neighbours.
/// </summary>
public static class PilAffine
{
    /// <summary>The transformed image, the same size as the input.</summary>
    public static RgbImage Transform(RgbImage image, Affine2D m, Interpolation resample, (byte R, byte G, byte B) fill)
    {
        if (resample == Interpolation.Nearest)
            throw new NotSupportedException("affine transforms support bilinear and bicubic resampling only");
        int w = image.Width, h = image.Height;
        var dst = new byte[w * h * 3];
        Span<byte> px = stackalloc byte[3];
        for (int y = 0; y < h; y++)
        {
            for (int x = 0; x < w; x++)
            {
                double xc = x + 0.5, yc = y + 0.5;
                double xin = m.A * xc + m.B * yc + m.C;
                double yin = m.D * xc + m.E * yc + m.F;
                int o = (y * w + x) * 3;
                bool inside = resample == Interpolation.Bilinear ? Bilinear(image, xin, yin, px) : Bicubic(image, xin, yin, px);
                if (inside)
                {
                    dst[o] = px[0];
                    dst[o + 1] = px[1];
                    dst[o + 2] = px[2];
                }
                else
                {
                    dst[o] = fill.R;
                    dst[o + 1] = fill.G;
                    dst[o + 2] = fill.B;
                }
            }
        }
        return new RgbImage(w, h, dst);
    }

    /// <summary>The output→input matrix of <c>Image.rotate(degrees)</c> about the image centre (counter-clockwise for
    /// positive angles), with Pillow's cos/sin rounded to 15 decimals.</summary>
    public static Affine2D RotationMatrix(int width, int height, double degrees)
    {
        double angle = -(degrees % 360.0) * Math.PI / 180.0;
        double a = Round15(Math.Cos(angle)), b = Round15(Math.Sin(angle));
        double d = Round15(-Math.Sin(angle)), e = a;
        double cx = width / 2.0, cy = height / 2.0;
        double c = a * -cx + b * -cy, f = d * -cx + e * -cy;
        return new Affine2D(a, b, c + cx, d, e, f + cy);
    }

    // Python's round(v, 15): correctly rounded through the exact decimal expansion, which .NET's "F15" formatting also gives.
    private static double Round15(double v) =>
        double.Parse(v.ToString("F15", System.Globalization.CultureInfo.InvariantCulture), System.Globalization.CultureInfo.InvariantCulture);

    /// <summary><c>Image.rotate(degrees, resample, fillcolor=fill)</c> (no expand): a copy when the angle is a multiple of 360.</summary>
    public static RgbImage Rotate(RgbImage image, double degrees, Interpolation resample, (byte R, byte G, byte B) fill, out Affine2D matrix)
    {
        if (degrees % 360.0 == 0)
        {
            matrix = Affine2D.Identity;
            return new RgbImage(image.Width, image.Height, (byte[])image.Pixels.Clone());
        }
        matrix = RotationMatrix(image.Width, image.Height, degrees);
        return Transform(image, matrix, resample, fill);
    }

    private static int Floor(double v) => v < 0.0 ? (int)Math.Floor(v) : (int)v;

    private static bool Bilinear(RgbImage im, double xin, double yin, Span<byte> output)
    {
        int w = im.Width, h = im.Height;
        if (xin < 0.0 || xin >= w || yin < 0.0 || yin >= h) return false;
        xin -= 0.5;
        yin -= 0.5;
        int x = Floor(xin), y = Floor(yin);
        double dx = xin - x, dy = yin - y;
        byte[] p = im.Pixels;
        int x0 = Math.Clamp(x, 0, w - 1) * 3, x1 = Math.Clamp(x + 1, 0, w - 1) * 3;
        int r0 = Math.Clamp(y, 0, h - 1) * w * 3;
        bool hasR1 = y + 1 >= 0 && y + 1 < h;
        int r1 = (y + 1) * w * 3;
        for (int c = 0; c < 3; c++)
        {
            double v1 = p[r0 + x0 + c] + (p[r0 + x1 + c] - (double)p[r0 + x0 + c]) * dx;
            double v2 = hasR1 ? p[r1 + x0 + c] + (p[r1 + x1 + c] - (double)p[r1 + x0 + c]) * dx : v1;
            double v = v1 + (v2 - v1) * dy;
            output[c] = (byte)v;
        }
        return true;
    }

    private static double Cubic(double v1, double v2, double v3, double v4, double d)
    {
        double p1 = v2;
        double p2 = -v1 + v3;
        double p3 = 2 * (v1 - v2) + v3 - v4;
        double p4 = -v1 + v2 - v3 + v4;
        return p1 + d * (p2 + d * (p3 + d * p4));
    }

    private static bool Bicubic(RgbImage im, double xin, double yin, Span<byte> output)
    {
        int w = im.Width, h = im.Height;
        if (xin < 0.0 || xin >= w || yin < 0.0 || yin >= h) return false;
        xin -= 0.5;
        yin -= 0.5;
        int x = Floor(xin), y = Floor(yin);
        double dx = xin - x, dy = yin - y;
        x--;
        y--;
        byte[] p = im.Pixels;
        Span<int> xs = [Math.Clamp(x, 0, w - 1) * 3, Math.Clamp(x + 1, 0, w - 1) * 3, Math.Clamp(x + 2, 0, w - 1) * 3, Math.Clamp(x + 3, 0, w - 1) * 3];
        for (int c = 0; c < 3; c++)
        {
            // Row y is clamped; each later row outside the image repeats the row value before it (libImaging's BICUBIC_BODY).
            int r = Math.Clamp(y, 0, h - 1) * w * 3 + c;
            double v1 = Cubic(p[r + xs[0]], p[r + xs[1]], p[r + xs[2]], p[r + xs[3]], dx);
            double v2 = v1, v3, v4;
            if (y + 1 >= 0 && y + 1 < h)
            {
                r = (y + 1) * w * 3 + c;
                v2 = Cubic(p[r + xs[0]], p[r + xs[1]], p[r + xs[2]], p[r + xs[3]], dx);
            }
            v3 = v2;
            if (y + 2 >= 0 && y + 2 < h)
            {
                r = (y + 2) * w * 3 + c;
                v3 = Cubic(p[r + xs[0]], p[r + xs[1]], p[r + xs[2]], p[r + xs[3]], dx);
            }
            v4 = v3;
            if (y + 3 >= 0 && y + 3 < h)
            {
                r = (y + 3) * w * 3 + c;
                v4 = Cubic(p[r + xs[0]], p[r + xs[1]], p[r + xs[2]], p[r + xs[3]], dx);
            }
            double v = Cubic(v1, v2, v3, v4, dy);
            output[c] = v <= 0.0 ? (byte)0 : v >= 255.0 ? (byte)255 : (byte)v;
        }
        return true;
    }
}
