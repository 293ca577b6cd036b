using System.Globalization;
using AllTokens.Data;

namespace AllTokens.Training;

/// <summary>
/// A small seeded generator whose whole state is four 64-bit words, so it can be saved in a checkpoint and restored
/// exactly (System.Random cannot). xoshiro256** (Blackman and Vigna), seeded through SplitMix64 (<see cref="Xoshiro256"/>,
/// shared with the loader's <see cref="SeededRandom"/>).
/// </summary>
public sealed class Rng
{
    private Xoshiro256 state;

    /// <summary>A generator seeded with <paramref name="seed"/>.</summary>
    public Rng(ulong seed) => state = Xoshiro256.Seeded(seed);

    /// <summary>Next 64 random bits.</summary>
    public ulong NextUInt64() => state.Next();

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => state.NextDouble();

    /// <summary>Uniform integer in [<paramref name="low"/>, <paramref name="high"/>) (numpy's randint bounds).</summary>
    public int NextInt(int low, int high)
    {
        if (high <= low) throw new ArgumentOutOfRangeException(nameof(high), $"empty range [{low}, {high})");
        ulong range = (ulong)((long)high - low);
        // Rejection sampling keeps the draw unbiased.
        ulong limit = ulong.MaxValue - ulong.MaxValue % range;
        ulong r;
        do r = NextUInt64(); while (r >= limit);
        return (int)(low + (long)(r % range));
    }

    /// <summary>Standard normal (Box–Muller, no cached spare so the state stays four words).</summary>
    public double NextNormal()
    {
        double u1 = 1.0 - NextDouble(), u2 = NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }

    /// <summary>Gamma(shape, 1) by Marsaglia and Tsang (2000); shape &lt; 1 through the u^(1/shape) boost.</summary>
    public double NextGamma(double shape)
    {
        if (!(shape > 0)) throw new ArgumentOutOfRangeException(nameof(shape), $"gamma shape must be > 0, got {shape}");
        if (shape < 1) return NextGamma(shape + 1) * Math.Pow(1.0 - NextDouble(), 1.0 / shape);
        double d = shape - 1.0 / 3, c = 1 / Math.Sqrt(9 * d);
        while (true)
        {
            double x, v;
            do
            {
                x = NextNormal();
                v = 1 + c * x;
            } while (v <= 0);
            v = v * v * v;
            double u = 1.0 - NextDouble();
            if (Math.Log(u) < 0.5 * x * x + d - d * v + d * Math.Log(v)) return d * v;
        }
    }

    /// <summary>Beta(a, b) as X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b).</summary>
    public double NextBeta(double a, double b)
    {
        double x = NextGamma(a), y = NextGamma(b);
        return x / (x + y);
    }

    /// <summary>The state as text (four hex words), for checkpoints.</summary>
    public string SaveState() => string.Create(CultureInfo.InvariantCulture, $"{state.S0:x16}:{state.S1:x16}:{state.S2:x16}:{state.S3:x16}");

    /// <summary>Restores what <see cref="SaveState"/> returned.</summary>
    public void LoadState(string state)
    {
        var parts = state.Split(':');
        if (parts.Length != 4 || !parts.All(p => ulong.TryParse(p, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out _)))
            throw new FormatException($"malformed generator state '{state}'");
        var w = parts.Select(p => ulong.Parse(p, NumberStyles.HexNumber, CultureInfo.InvariantCulture)).ToArray();
        if (w.All(v => v == 0)) throw new FormatException("generator state is all zeros");
        this.state = new Xoshiro256 { S0 = w[0], S1 = w[1], S2 = w[2], S3 = w[3] };
    }
}
