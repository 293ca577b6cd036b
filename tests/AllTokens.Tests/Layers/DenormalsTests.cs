using AllTokens.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Layers;

public class DenormalsTests
{
    private const float Tiny = 1e-39f; // below float's smallest normal (1.18e-38)

    /// <summary>How many elements of tiny · 1 came out non-zero, over a tensor of <paramref name="n"/> elements.</summary>
    private static long NonZeroProducts(long n)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.full(n, Tiny);
        return x.mul(1.0f).count_nonzero().item<long>();
    }

    [Fact]
    public void FlushZeroesDenormalsOnTheCallerAndOnTheOpenMpTeam()
    {
        if (!Denormals.Enabled || !OperatingSystem.IsLinux()) return; // ALLTOKENS_DENORMALS=keep: nothing to test
        int threads = torch.get_num_threads();
        try
        {
            torch.set_num_threads(Math.Max(2, threads)); // a parallel multiply below needs a team of more than one
            Assert.True(Denormals.Flush(false));
            Assert.Equal(5, NonZeroProducts(5));                       // one thread, denormals kept
            Assert.Equal(1 << 20, NonZeroProducts(1 << 20));           // split over the team
            Assert.True(Denormals.Flush(true));
            Assert.Equal(0, NonZeroProducts(5));
            Assert.Equal(0, NonZeroProducts(1 << 20));                 // every team thread flushes too
            Assert.Equal(2.5f, torch.tensor(new[] { 2.5f }).mul(1.0f).item<float>()); // normal values untouched
        }
        finally
        {
            Denormals.Flush(false);
            torch.set_num_threads(threads);
        }
    }

    [Fact]
    public void ThreadsTheTeamCreatesLaterInheritTheSetting()
    {
        if (!Denormals.Enabled || !OperatingSystem.IsLinux()) return;
        int threads = torch.get_num_threads();
        try
        {
            torch.set_num_threads(1);
            Assert.True(Denormals.Flush(true));
            torch.set_num_threads(Math.Max(2, threads)); // the team re-formed after the setting
            Assert.Equal(0, NonZeroProducts(1 << 20));
        }
        finally
        {
            Denormals.Flush(false);
            torch.set_num_threads(threads);
        }
    }
}
