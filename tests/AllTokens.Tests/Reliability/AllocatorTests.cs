using System.Runtime.InteropServices;
using System.Text.Json;

namespace AllTokens.Tests.Reliability;

/// <summary>
/// <see cref="NativeEnvironment.ConfigureAllocator"/>, which the CLI applies at start: libtorch's large blocks stay in
/// glibc's heap between steps instead of being mapped (and zero-filled by the kernel) afresh every step.
/// </summary>
public sealed class AllocatorTests
{
    /// <summary>
    /// Page faults per timed train step of a one-thread <c>bench</c> in a child CLI process: lvvit_nano at 384 px,
    /// batch 8, whose stem activations (8 × 32 × 192 × 192 fp32, 37.7 MB) are above glibc's largest dynamic mmap
    /// threshold (32 MiB), so with glibc's defaults each of them is mapped afresh every step, whatever the timing.
    /// </summary>
    private static double FaultsPerStep(bool glibcDefaults)
    {
        var psi = CliProcess.StartInfo(["bench", "--model", "lvvit_nano", "--task", "ce", "--res", "384", "--batch", "8",
            "--steps", "2", "--warmup", "1", "--fixed-warmup", "--threads", "1", "--json"]);
        if (glibcDefaults) psi.Environment["ALLTOKENS_MALLOC"] = "default";
        else psi.Environment.Remove("ALLTOKENS_MALLOC");
        using var cli = new RunningCli(psi);
        Assert.True(cli.Process.WaitForExit(300_000), "bench did not finish in 5 minutes");
        cli.Process.WaitForExit();
        Assert.True(cli.Process.ExitCode == 0, $"bench failed: {cli.Err}");
        var json = cli.Out.Split('\n').Last(l => l.TrimStart().StartsWith('{'));
        using var doc = JsonDocument.Parse(json);
        return doc.RootElement.GetProperty("page_faults_per_step").GetDouble();
    }

    [Fact]
    public void TheCliKeepsStepMemoryMappedBetweenSteps()
    {
        if (!OperatingSystem.IsLinux() || !File.Exists("/proc/self/stat")) return;
        if ((Environment.GetEnvironmentVariable("GLIBC_TUNABLES") ?? "").Contains("glibc.malloc.", StringComparison.Ordinal)) return;
        double glibc = FaultsPerStep(glibcDefaults: true);
        double configured = FaultsPerStep(glibcDefaults: false);
        // Measured: 170–183 k faults per step with glibc's defaults, 14–27 k configured (the heap still grows in step 2).
        Assert.True(configured < glibc / 3, $"page faults per train step: {configured:F0} configured vs {glibc:F0} with glibc's defaults");
    }

    [Fact]
    public void DoctorSaysWhichAllocatorSettingsAreInForce()
    {
        if (!OperatingSystem.IsLinux()) return;
        if ((Environment.GetEnvironmentVariable("GLIBC_TUNABLES") ?? "").Contains("glibc.malloc.", StringComparison.Ordinal)) return;
        Assert.Equal("heap kept between steps", CliProcess.DoctorField("malloc", "ALLTOKENS_MALLOC", null));
        Assert.Equal("glibc defaults", CliProcess.DoctorField("malloc", "ALLTOKENS_MALLOC", "default"));
    }

    [Fact]
    public void UserMallocSettingsAreLeftAlone()
    {
        if (!OperatingSystem.IsLinux()) return;
        foreach (var (name, value) in new[] { ("ALLTOKENS_MALLOC", "default"), ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"),
                     ("MALLOC_MMAP_THRESHOLD_", "131072") })
        {
            var saved = Environment.GetEnvironmentVariable(name);
            try
            {
                Environment.SetEnvironmentVariable(name, value);
                Assert.False(NativeEnvironment.ConfigureAllocator(), $"{name}={value} should be left to glibc");
            }
            finally
            {
                Environment.SetEnvironmentVariable(name, saved);
            }
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2
    {
        public nuint Arena, OrdBlks, SmBlks, HBlks, HBlkHd, UsmBlks, FsmBlks, UordBlks, FordBlks, KeepCost;
    }

    [DllImport("libc", EntryPoint = "mallinfo2")] private static extern MallInfo2 MallInfo();
    [DllImport("libc", EntryPoint = "mallopt")] private static extern int MallOpt(int parameter, int value);
    [DllImport("libc", EntryPoint = "malloc_trim")] private static extern int MallocTrim(nuint pad);

    /// <summary>Bytes in glibc's fastbins (all arenas) after freeing 512 small blocks (past the per-thread cache).</summary>
    private static unsafe ulong FastbinBytesAfterSmallFrees()
    {
        MallocTrim(0); // merges what the fastbins hold now, in every arena
        var blocks = new nint[512];
        for (int i = 0; i < blocks.Length; i++) blocks[i] = (nint)NativeMemory.Alloc(48);
        foreach (var b in blocks) NativeMemory.Free((void*)b);
        return MallInfo().FsmBlks;
    }

    [Fact]
    public void SmallFreesSkipTheFastbins()
    {
        if (!OperatingSystem.IsLinux()) return;
        if ((Environment.GetEnvironmentVariable("GLIBC_TUNABLES") ?? "").Contains("glibc.malloc.", StringComparison.Ordinal)) return;
        try
        {
            MallOpt(1, 128); // M_MXFAST at glibc's default: the measurement sees fastbin blocks
            Assert.True(FastbinBytesAfterSmallFrees() > 0, "with glibc's fastbins, freed small blocks should sit in them");
            Assert.True(NativeEnvironment.ConfigureAllocator());
            Assert.Equal(0UL, FastbinBytesAfterSmallFrees());
        }
        catch (EntryPointNotFoundException)
        {
            // not glibc (or older than 2.33, without mallinfo2): nothing to check
        }
    }

    /// <summary>This process's resident memory in bytes (/proc/self/statm's second field, in pages).</summary>
    private static long ResidentBytes() =>
        long.Parse(File.ReadAllText("/proc/self/statm").Split(' ')[1]) * Environment.SystemPageSize;

    [Fact]
    public unsafe void ReleaseFreeHeapHandsTheHolesFreedBlocksLeaveBack()
    {
        if (!OperatingSystem.IsLinux() || !File.Exists("/proc/self/statm")) return;
        if (!NativeEnvironment.ConfigureAllocator()) return; // the environment left malloc to glibc: nothing is kept
        const int blocks = 64, size = 2 << 20;
        var held = new nint[blocks];
        try
        {
            // 2 MiB blocks, kept in the heap by the settings, every page touched; freeing every other one leaves holes
            // between live blocks that cannot merge into the heap's top, so their pages stay resident until released.
            for (int i = 0; i < blocks; i++)
            {
                held[i] = (nint)NativeMemory.Alloc(size);
                new Span<byte>((void*)held[i], size).Fill(1);
            }
            for (int i = 0; i < blocks; i += 2) { NativeMemory.Free((void*)held[i]); held[i] = 0; }
            long before = ResidentBytes();
            Assert.True(NativeEnvironment.ReleaseFreeHeap(), "malloc_trim found nothing to release");
            long released = before - ResidentBytes();
            long holes = blocks / 2 * (long)size;
            Assert.True(released >= holes * 3 / 4, $"{released >> 20} MiB went back of the {holes >> 20} MiB freed");
        }
        finally
        {
            foreach (var p in held) if (p != 0) NativeMemory.Free((void*)p);
        }
    }
}
