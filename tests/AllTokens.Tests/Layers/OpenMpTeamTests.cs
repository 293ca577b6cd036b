using AllTokens.Layers;
using AllTokens.Tests.Reliability;
using TorchSharp;

namespace AllTokens.Tests.Layers;

public unsafe class OpenMpTeamTests
{
    /// <summary>Each index gets the start of the part that covered it, and each part's thread id.</summary>
    private struct Record
    {
        public long* StartOf;
        public int* ThreadOf;
        public long Throw; // an index whose part throws (−1: none)
    }

    private static void Mark(long from, long to, void* state)
    {
        var r = (Record*)state;
        if (r->Throw >= from && r->Throw < to) throw new InvalidOperationException($"part [{from}, {to}) failed on purpose");
        for (long i = from; i < to; i++)
        {
            if (r->StartOf[i] != -1) r->StartOf[i] = -2; // covered twice
            else r->StartOf[i] = from;
            r->ThreadOf[i] = Environment.CurrentManagedThreadId;
        }
    }

    private static (long[] Starts, int[] Threads) Run(long count, long grain, long throwAt = -1)
    {
        var starts = new long[count];
        var threads = new int[count];
        Array.Fill(starts, -1L);
        fixed (long* s = starts)
        fixed (int* t = threads)
        {
            var record = new Record { StartOf = s, ThreadOf = t, Throw = throwAt };
            OpenMpTeam.For(count, grain, &Mark, &record);
        }
        return (starts, threads);
    }

    [Theory]
    [InlineData(true, 100_003L, 1024L)]
    [InlineData(true, 5L, 1024L)]      // fewer elements than one grain: one part
    [InlineData(true, 2049L, 1024L)]   // three grains over the threads
    [InlineData(false, 100_003L, 1024L)]
    public void EveryIndexIsCoveredOnceByPartsStartingOnAGrain(bool team, long count, long grain)
    {
        bool was = OpenMpTeam.Enabled;
        try
        {
            OpenMpTeam.Enabled = team;
            var (starts, _) = Run(count, grain);
            Assert.DoesNotContain(-1L, starts); // every index covered
            Assert.DoesNotContain(-2L, starts); // none twice
            foreach (var start in starts.Distinct()) Assert.Equal(0, start % grain);
            int parts = starts.Distinct().Count();
            long grains = (count + grain - 1) / grain;
            Assert.Equal(Math.Min(torch.get_num_threads(), grains), parts);
        }
        finally { OpenMpTeam.Enabled = was; }
    }

    [Fact]
    public void OnLinuxKernelsRunOnLibtorchsOpenMpTeamOnEveryIntraOpThread()
    {
        if (!OperatingSystem.IsLinux()) return;
        Assert.NotNull(OpenMpTeam.RuntimePath);
        Assert.Contains("libgomp", Path.GetFileName(OpenMpTeam.RuntimePath));
        // libtorch's own runtime, the one its parallel regions use: shipped next to libtorch_cpu.
        var torchCpu = File.ReadLines("/proc/self/maps").Select(l => l.IndexOf('/') is int i and >= 0 ? l[i..] : "")
            .First(p => Path.GetFileName(p).StartsWith("libtorch_cpu", StringComparison.Ordinal));
        Assert.Equal(Path.GetDirectoryName(torchCpu), Path.GetDirectoryName(OpenMpTeam.RuntimePath));
        int before = torch.get_num_threads();
        try
        {
            torch.set_num_threads(2);
            var (_, threads) = Run(1 << 16, 1024);
            // Two parts, two threads: the calling thread and the team's worker (not a .NET pool thread).
            Assert.Equal(2, threads.Distinct().Count());
            Assert.Contains(Environment.CurrentManagedThreadId, threads);
        }
        finally { torch.set_num_threads(before); }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void AnExceptionInAPartReachesTheCaller(bool team)
    {
        bool was = OpenMpTeam.Enabled;
        try
        {
            OpenMpTeam.Enabled = team;
            var e = Assert.Throws<InvalidOperationException>(() => Run(100_000, 1024, throwAt: 99_999));
            Assert.Contains("failed on purpose", e.Message);
            // The team still works afterwards.
            var (starts, _) = Run(10_000, 1024);
            Assert.DoesNotContain(-1L, starts);
        }
        finally { OpenMpTeam.Enabled = was; }
    }

    [Fact]
    public void DoctorSaysWhereCSharpKernelsRun()
    {
        if (!OperatingSystem.IsLinux()) return;
        Assert.StartsWith("libtorch's OpenMP team (libgomp", CliProcess.DoctorField("kernel_threads", "ALLTOKENS_KERNEL_THREADS", null));
        Assert.StartsWith("Parallel.For", CliProcess.DoctorField("kernel_threads", "ALLTOKENS_KERNEL_THREADS", "dotnet"));
    }
}
