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
        bool bicubic = resample == Interpolation.Bicubic;
        for (int y = 0; y < h; y++)
        {
            for (int x = 0; x < w; x++)
            {
                double xc = x + 0.5, yc = y + 0.5;
                double xin = m.A * xc + m.B * yc + m.C;
                double yin = m.D * xc + m.E * yc + m.F;
                int o = (y * w + x) * 3;
                if (xin < 0.0 || xin >= w || yin < 0.0 || yin >= h)
                {
                    dst[o] = fill.R;
                    dst[o + 1] = fill.G;
                    dst[o + 2] = fill.B;
                }
                else if (bicubic)
                {
                    Bicubic(image, xin, yin, dst, o);
                }
                else
                {
                    Bilinear(image, xin, yin, dst, o);
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

    private static int Clip(int v, int size) => v < 0 ? 0 : v < size ? v : size - 1;

    // The centre (xin, yin) is inside the image. libImaging reads row y clamped and, for each later row outside the
    // image, repeats the value of the row before it; substituting that row's index gives the same doubles.
    private static void Bilinear(RgbImage im, double xin, double yin, byte[] dst, int o)
    {
        int w = im.Width, h = im.Height, stride = w * 3;
        xin -= 0.5;
        yin -= 0.5;
        int x = Floor(xin), y = Floor(yin);
        double dx = xin - x, dy = yin - y;
        byte[] p = im.Pixels;
        int x0 = Clip(x, w) * 3, x1 = Clip(x + 1, w) * 3;
        int r0 = Clip(y, h) * stride;
        int r1 = y + 1 >= 0 && y + 1 < h ? (y + 1) * stride : r0;
        for (int c = 0; c < 3; c++)
        {
            double v1 = p[r0 + x0 + c] + (p[r0 + x1 + c] - (double)p[r0 + x0 + c]) * dx;
            double v2 = p[r1 + x0 + c] + (p[r1 + x1 + c] - (double)p[r1 + x0 + c]) * dx;
            double v = v1 + (v2 - v1) * dy;
            dst[o + c] = (byte)v;
        }
    }

    private static double Cubic(double v1, double v2, double v3, double v4, double d)
    {
        double p1 = v2;
        double p2 = -v1 + v3;
        double p3 = 2 * (v1 - v2) + v3 - v4;
        double p4 = -v1 + v2 - v3 + v4;
        return p1 + d * (p2 + d * (p3 + d * p4));
    }

    private static void Bicubic(RgbImage im, double xin, double yin, byte[] dst, int o)
    {
        int w = im.Width, h = im.Height, stride = w * 3;
        xin -= 0.5;
        yin -= 0.5;
        int x = Floor(xin), y = Floor(yin);
        double dx = xin - x, dy = yin - y;
        x--;
        y--;
        byte[] p = im.Pixels;
        int x0 = Clip(x, w) * 3, x1 = Clip(x + 1, w) * 3, x2 = Clip(x + 2, w) * 3, x3 = Clip(x + 3, w) * 3;
        int r0 = Clip(y, h) * stride;
        int r1 = y + 1 >= 0 && y + 1 < h ? (y + 1) * stride : r0;
        int r2 = y + 2 >= 0 && y + 2 < h ? (y + 2) * stride : r1;
        int r3 = y + 3 >= 0 && y + 3 < h ? (y + 3) * stride : r2;
        for (int c = 0; c < 3; c++)
        {
            double v1 = Cubic(p[r0 + x0 + c], p[r0 + x1 + c], p[r0 + x2 + c], p[r0 + x3 + c], dx);
            double v2 = Cubic(p[r1 + x0 + c], p[r1 + x1 + c], p[r1 + x2 + c], p[r1 + x3 + c], dx);
            double v3 = Cubic(p[r2 + x0 + c], p[r2 + x1 + c], p[r2 + x2 + c], p[r2 + x3 + c], dx);
            double v4 = Cubic(p[r3 + x0 + c], p[r3 + x1 + c], p[r3 + x2 + c], p[r3 + x3 + c], dx);
            double v = Cubic(v1, v2, v3, v4, dy);
            dst[o + c] = v <= 0.0 ? (byte)0 : v >= 255.0 ? (byte)255 : (byte)v;
        }
    }
}
