using System.Globalization;
using AllTokens.Models;

namespace AllTokens.TokenLabeling;

/// <summary>
/// A small seeded generator whose whole state is four 64-bit words (xoshiro256**, seeded by SplitMix64), so a
/// training run can save it in a checkpoint and resume the exact same draws.
/// </summary>
public sealed class StatefulRandom
{
    private ulong s0, s1, s2, s3;

    public StatefulRandom(ulong seed)
    {
        ulong x = seed;
        s0 = SplitMix(ref x);
        s1 = SplitMix(ref x);
        s2 = SplitMix(ref x);
        s3 = SplitMix(ref x);
    }

    private static ulong SplitMix(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong NextUInt64()
    {
        ulong result = ulong.RotateLeft(s1 * 5, 7) * 9;
        ulong t = s1 << 17;
        s2 ^= s0;
        s3 ^= s1;
        s1 ^= s2;
        s0 ^= s3;
        s2 ^= t;
        s3 = ulong.RotateLeft(s3, 45);
        return result;
    }

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform integer in [0, n), unbiased (rejection).</summary>
    public int NextInt(int n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n), $"NextInt needs n > 0, got {n}");
        ulong limit = ulong.MaxValue - ulong.MaxValue % (ulong)n;
        ulong v;
        do v = NextUInt64(); while (v >= limit);
        return (int)(v % (ulong)n);
    }

    /// <summary>The state as text: four hex words.</summary>
    public string SaveState() => string.Join(':', new[] { s0, s1, s2, s3 }.Select(v => v.ToString("x16", CultureInfo.InvariantCulture)));

    /// <summary>Restores <see cref="SaveState"/>'s text.</summary>
    public void LoadState(string state)
    {
        var parts = state.Split(':');
        if (parts.Length != 4 || !parts.All(p => ulong.TryParse(p, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out _)))
            throw new FormatException($"not a random state (four hex words separated by ':'): '{state}'");
        var v = parts.Select(p => ulong.Parse(p, NumberStyles.HexNumber, CultureInfo.InvariantCulture)).ToArray();
        if (v.All(x => x == 0)) throw new FormatException("random state of all zeros is invalid");
        (s0, s1, s2, s3) = (v[0], v[1], v[2], v[3]);
    }
}

/// <summary>
/// MixToken boxes as the official code samples them (LV-ViT <c>rand_bbox</c>, LVVIT.md §5): λ ~ Beta(1, 1) = U(0, 1),
/// r = √(1−λ), cut = int(side·r), centre ~ randint[0, side), range = clip(centre ∓ cut//2, 0, side) per axis (rows
/// first, then columns); unclipped sides are even. One box per batch; the partner of sample i is B−1−i.
/// </summary>
public sealed class MixTokenSampler(ulong seed)
{
    private readonly StatefulRandom rng = new(seed);

    /// <summary>Draws λ, then the row centre, then the column centre, and returns the clipped box on a gridH × gridW grid.</summary>
    public MixBox Sample(int gridH, int gridW)
    {
        if (gridH < 1 || gridW < 1) throw new ArgumentOutOfRangeException(nameof(gridH), $"grid must be at least 1×1, got {gridH}×{gridW}");
        double lambda = rng.NextDouble(); // Beta(1, 1) is U(0, 1)
        return BoxFor(lambda, rng.NextInt(gridH), rng.NextInt(gridW), gridH, gridW);
    }

    /// <summary>The box for given draws (pure): cut = int(side·√(1−λ)), [clip(c − cut//2), clip(c + cut//2)).</summary>
    public static MixBox BoxFor(double lambda, int centreRow, int centreCol, int gridH, int gridW)
    {
        double r = Math.Sqrt(1.0 - lambda);
        int cutH = (int)(gridH * r), cutW = (int)(gridW * r);
        int top = Math.Clamp(centreRow - cutH / 2, 0, gridH), bottom = Math.Clamp(centreRow + cutH / 2, 0, gridH);
        int left = Math.Clamp(centreCol - cutW / 2, 0, gridW), right = Math.Clamp(centreCol + cutW / 2, 0, gridW);
        return new MixBox(top, left, bottom, right);
    }

    public string SaveState() => rng.SaveState();

    public void LoadState(string state) => rng.LoadState(state);
}
