namespace AllTokens.Data.Transforms;

/// <summary>What erased pixels get (timm's RandomErasing modes).</summary>
public enum EraseMode
{
    /// <summary>Zeros.</summary>
    Const,
    /// <summary>One N(0, 1) value per channel.</summary>
    Rand,
    /// <summary>An N(0, 1) value per pixel and channel.</summary>
    Pixel,
}

/// <summary>
/// timm's <c>RandomErasing</c> on a normalised CHW tensor: with probability <see cref="Probability"/>, erase
/// <see cref="Count"/> rectangles, each from up to 10 tries of area uniform in [MinArea, MaxArea]·H·W / count and aspect
/// log-uniform in [MinAspect, 1/MinAspect], h = round(√(area·aspect)), w = round(√(area/aspect)), accepted when
/// w &lt; W and h &lt; H.
/// </summary>
public sealed class RandomErasing(double probability, EraseMode mode = EraseMode.Pixel, int count = 1,
    double minArea = 0.02, double maxArea = 1.0 / 3, double minAspect = 0.3)
{
    public double Probability { get; } = probability;
    public EraseMode Mode { get; } = mode;
    public int Count { get; } = count >= 1 ? count : throw new ArgumentOutOfRangeException(nameof(count), "count must be at least 1");
    public double MinArea { get; } = minArea;
    public double MaxArea { get; } = maxArea;
    public double MinAspect { get; } = minAspect;

    /// <summary>Parses timm's mode names (const, rand, pixel).</summary>
    public static EraseMode ParseMode(string mode) => mode switch
    {
        "const" => EraseMode.Const,
        "rand" => EraseMode.Rand,
        "pixel" => EraseMode.Pixel,
        _ => throw new ArgumentException($"erase mode must be const, rand or pixel, got '{mode}'", nameof(mode)),
    };

    /// <summary>Erases in place; returns the rectangles erased as (top, left, height, width).</summary>
    public List<(int Top, int Left, int Height, int Width)> Apply(Span<float> chw, int channels, int height, int width, SeededRandom rng)
    {
        var boxes = new List<(int, int, int, int)>();
        if (rng.NextDouble() > Probability) return boxes;
        double area = (double)height * width;
        double logLo = Math.Log(MinAspect), logHi = Math.Log(1 / MinAspect);
        for (int k = 0; k < Count; k++)
        {
            for (int attempt = 0; attempt < 10; attempt++)
            {
                double target = rng.Uniform(MinArea, MaxArea) * area / Count;
                double aspect = Math.Exp(rng.Uniform(logLo, logHi));
                int h = (int)Math.Round(Math.Sqrt(target * aspect), MidpointRounding.ToEven);
                int w = (int)Math.Round(Math.Sqrt(target / aspect), MidpointRounding.ToEven);
                if (w < width && h < height)
                {
                    int top = rng.NextInt(0, height - h), left = rng.NextInt(0, width - w);
                    Fill(chw, channels, height, width, top, left, h, w, rng);
                    boxes.Add((top, left, h, w));
                    break;
                }
            }
        }
        return boxes;
    }

    private void Fill(Span<float> chw, int channels, int height, int width, int top, int left, int h, int w, SeededRandom rng)
    {
        Span<float> perChannel = stackalloc float[channels];
        if (Mode == EraseMode.Rand)
            for (int c = 0; c < channels; c++) perChannel[c] = (float)rng.NextGaussian();
        for (int c = 0; c < channels; c++)
            for (int y = top; y < top + h; y++)
            {
                Span<float> row = chw.Slice(c * height * width + y * width + left, w);
                for (int x = 0; x < w; x++)
                    row[x] = Mode switch { EraseMode.Pixel => (float)rng.NextGaussian(), EraseMode.Rand => perChannel[c], _ => 0f };
            }
    }
}
