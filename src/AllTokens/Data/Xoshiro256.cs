namespace AllTokens.Data;

/// <summary>
/// xoshiro256** (Blackman and Vigna, 2018) seeded through SplitMix64: the four-word state and step shared by
/// <see cref="SeededRandom"/> (per-sample transform streams) and <see cref="Training.Rng"/> (checkpointed draws).
/// A mutable struct: keep it in a field and call its methods there, never on a copy.
/// </summary>
internal struct Xoshiro256
{
    public ulong S0, S1, S2, S3;

    /// <summary>The state SplitMix64 makes of <paramref name="seed"/> (never all zero, which xoshiro cannot leave).</summary>
    public static Xoshiro256 Seeded(ulong seed)
    {
        ulong x = seed;
        var s = new Xoshiro256 { S0 = SplitMix64(ref x), S1 = SplitMix64(ref x), S2 = SplitMix64(ref x), S3 = SplitMix64(ref x) };
        if ((s.S0 | s.S1 | s.S2 | s.S3) == 0) s.S0 = 1;
        return s;
    }

    /// <summary>One SplitMix64 step: advances <paramref name="x"/> and returns its mixed output.</summary>
    public static ulong SplitMix64(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>The next 64 random bits.</summary>
    public ulong Next()
    {
        ulong result = ulong.RotateLeft(S1 * 5, 7) * 9;
        ulong t = S1 << 17;
        S2 ^= S0;
        S3 ^= S1;
        S1 ^= S2;
        S0 ^= S3;
        S2 ^= t;
        S3 = ulong.RotateLeft(S3, 45);
        return result;
    }

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));
}
