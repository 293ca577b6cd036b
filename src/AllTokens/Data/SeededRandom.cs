namespace AllTokens.Data;

/// <summary>
/// A small, fast, seeded generator: xoshiro256** (Blackman &amp; Vigna, 2018) seeded through SplitMix64.
/// <see cref="ForSample"/> derives an independent stream from (seed, epoch, sample index), so what a sample's
/// transforms draw does not depend on which worker runs it or in which order.
/// Not thread-safe: one instance per thread or per sample.
/// </summary>
public sealed class SeededRandom
{
    private Xoshiro256 state;
    private double? spareGaussian;

    /// <summary>A generator seeded from a single 64-bit value.</summary>
    public SeededRandom(ulong seed) => state = Xoshiro256.Seeded(seed);

    /// <summary>The stream of sample <paramref name="index"/> in <paramref name="epoch"/> under <paramref name="seed"/>.</summary>
    public static SeededRandom ForSample(long seed, int epoch, long index) => new(Derive(seed, epoch, index, 0x5A17));

    /// <summary>A 64-bit seed mixed from the given parts (order matters); used for per-epoch shuffles and per-sample streams.</summary>
    public static ulong Derive(long seed, long a, long b, long salt)
    {
        ulong x = (ulong)seed;
        ulong h = Xoshiro256.SplitMix64(ref x);
        x = h ^ ((ulong)salt * 0xD6E8FEB86659FD93UL);
        h = Xoshiro256.SplitMix64(ref x);
        x = h ^ ((ulong)a * 0x9E3779B97F4A7C15UL);
        h = Xoshiro256.SplitMix64(ref x);
        x = h ^ ((ulong)b * 0xC2B2AE3D27D4EB4FUL);
        return Xoshiro256.SplitMix64(ref x);
    }

    /// <summary>The next 64 random bits.</summary>
    public ulong NextUInt64() => state.Next();

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => state.NextDouble();

    /// <summary>Uniform in [<paramref name="lo"/>, <paramref name="hi"/>) (Python's <c>random.uniform</c>).</summary>
    public double Uniform(double lo, double hi) => lo + (hi - lo) * NextDouble();

    /// <summary>Uniform integer in [<paramref name="lo"/>, <paramref name="hiInclusive"/>] without modulo bias (Python's <c>random.randint</c>).</summary>
    public int NextInt(int lo, int hiInclusive)
    {
        if (hiInclusive < lo) throw new ArgumentOutOfRangeException(nameof(hiInclusive), $"empty range [{lo}, {hiInclusive}]");
        ulong range = (ulong)((long)hiInclusive - lo) + 1;
        // Lemire's multiply-shift with rejection.
        ulong m = Math.BigMul(NextUInt64(), range, out ulong low);
        if (low < range)
        {
            ulong threshold = (0 - range) % range;
            while (low < threshold)
                m = Math.BigMul(NextUInt64(), range, out low);
        }
        return (int)(lo + (long)m);
    }

    /// <summary>True with probability <paramref name="p"/>.</summary>
    public bool Chance(double p) => NextDouble() < p;

    /// <summary>A standard normal draw (Box–Muller, both values used).</summary>
    public double NextGaussian()
    {
        if (spareGaussian is double spare)
        {
            spareGaussian = null;
            return spare;
        }
        double u1 = 1.0 - NextDouble(); // (0, 1]
        double u2 = NextDouble();
        double r = Math.Sqrt(-2.0 * Math.Log(u1));
        spareGaussian = r * Math.Sin(2 * Math.PI * u2);
        return r * Math.Cos(2 * Math.PI * u2);
    }

    /// <summary>Normal draw with the given mean and standard deviation (Python's <c>random.gauss</c>).</summary>
    public double Gaussian(double mean, double std) => mean + std * NextGaussian();

    /// <summary>Fisher–Yates shuffle in place.</summary>
    public void Shuffle<T>(T[] items)
    {
        for (int i = items.Length - 1; i > 0; i--)
        {
            int j = NextInt(0, i);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }
}
