using System.Runtime.Intrinsics;
using AllTokens.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Layers;

/// <summary>Our bf16 ↔ fp32 vector conversions give libtorch's bits (c10::BFloat16: round to nearest even, NaN kept).</summary>
public unsafe class Bf16VectorTests
{
    /// <summary>Values that exercise the rounding: ties both ways, carries into the exponent, specials, denormals.</summary>
    private static float[] Awkward()
    {
        var bits = new List<uint>
        {
            0x3F808000, // 1 + 2⁻⁸: a tie, rounds down to even (1.0)
            0x3F818000, // a tie that rounds up to even
            0x3F80FFFF, 0x3F807FFF, 0x3F808001, // just above/below ties
            0x7F7FFFFF, // the largest float: rounds up to +∞
            0x7F7F7FFF, // the largest finite bf16 region, rounding down
            0x00000001, 0x00008000, 0x00018000, 0x807FFFFF, // denormals, a denormal tie, a negative one
            0x80000000, 0x00000000, // ±0
            0x7F800000, 0xFF800000, // ±∞
            0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF, // quiet/signalling NaNs, one whose rounding would carry
            0xBF7FFFFF, 0x40490FDB, 0xC2F6E979, // −(1 − 2⁻²⁴), π, −123.456
        };
        var rng = new Random(5);
        while (bits.Count % 16 != 0 || bits.Count < 64) bits.Add((uint)rng.NextInt64(0, 1L << 32));
        return bits.Select(BitConverter.UInt32BitsToSingle).ToArray();
    }

    [Fact]
    public void StoreRoundsAsLibtorch()
    {
        using var _ = torch.NewDisposeScope();
        float[] values = Awkward();
        var expected = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(torch.tensor(values).to(ScalarType.BFloat16).bytes).ToArray();
        var ours = new ushort[values.Length];
        fixed (float* src = values)
        fixed (ushort* dst = ours)
            for (int i = 0; i < values.Length; i += 16) Bf16Vector.Store(Vector512.Load(src + i), dst + i);
        for (int i = 0; i < values.Length; i++)
        {
            uint inBits = BitConverter.SingleToUInt32Bits(values[i]);
            if (float.IsNaN(values[i])) Assert.True((ours[i] & 0x7F80) == 0x7F80 && (ours[i] & 0x7F) != 0, $"NaN {inBits:X8} → {ours[i]:X4}");
            else Assert.True(expected[i] == ours[i], $"{inBits:X8}: libtorch {expected[i]:X4}, ours {ours[i]:X4}");
            if (!float.IsNaN(values[i])) Assert.Equal(ours[i], Bf16Vector.Round(values[i])); // the scalar tail agrees
        }
    }

    [Fact]
    public void LoadWidensExactly()
    {
        var all = Enumerable.Range(0, 1 << 16).Select(i => (ushort)i).ToArray(); // every bf16 bit pattern
        var widened = new float[all.Length];
        fixed (ushort* src = all)
        fixed (float* dst = widened)
            for (int i = 0; i < all.Length; i += 16) Bf16Vector.Load(src + i).Store(dst + i);
        for (int i = 0; i < all.Length; i++)
        {
            Assert.Equal((uint)all[i] << 16, BitConverter.SingleToUInt32Bits(widened[i]));
            Assert.Equal(BitConverter.SingleToUInt32Bits(Bf16Vector.Widen(all[i])), BitConverter.SingleToUInt32Bits(widened[i]));
        }
    }
}
