using AllTokens.Data;
using AllTokens.Training;

namespace AllTokens.Tests.Training;

/// <summary>
/// The loader's <see cref="SeededRandom"/> and the checkpointed <see cref="Rng"/> share one xoshiro256** core; both must
/// give the published generator's stream. Expected words computed by hand from the definitions (SplitMix64 seeding
/// of seed 42, then xoshiro256**'s output rotl(s1·5, 7)·9 and state update), not by this code.
/// </summary>
public sealed class GeneratorTests
{
    private static readonly ulong[] Seed42 = [0x15780b2e0c2ec716UL, 0x6104d9866d113a7eUL, 0xae17533239e499a1UL];

    [Fact]
    public void BothGeneratorsFollowXoshiro256StarStar()
    {
        var a = new SeededRandom(42);
        var b = new Rng(42);
        foreach (var expected in Seed42)
        {
            Assert.Equal(expected, a.NextUInt64());
            Assert.Equal(expected, b.NextUInt64());
        }
    }

    [Fact]
    public void RngStateRoundTripsMidStream()
    {
        var a = new Rng(7);
        for (int i = 0; i < 5; i++) a.NextUInt64();
        var b = new Rng(0);
        b.LoadState(a.SaveState());
        for (int i = 0; i < 8; i++) Assert.Equal(a.NextUInt64(), b.NextUInt64());
        Assert.Throws<FormatException>(() => b.LoadState("0:0:0:0"));
        Assert.Throws<FormatException>(() => b.LoadState("12:34"));
    }
}
