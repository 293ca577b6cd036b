using System.Text.Json;

namespace AllTokens.Tests.Reliability;

/// <summary>
/// <see cref="NativeEnvironment.ConfigureAllocator"/>, which the CLI applies at start: libtorch's large blocks stay in
/// glibc's heap between steps instead of being mapped (and zero-filled by the kernel) afresh every step.
/// </summary>
public sealed class AllocatorTests
{
    /// <summary>Page faults per timed train step of a small 2-thread <c>bench</c> in a child CLI process.</summary>
    private static double FaultsPerStep(bool glibcDefaults)
    {
        var psi = CliProcess.StartInfo(["bench", "--model", "t2t_vit_7", "--task", "ce", "--res", "160", "--batch", "4",
            "--steps", "3", "--warmup", "2", "--threads", "2", "--json"]);
        psi.Environment["OMP_NUM_THREADS"] = "2"; // the fault storm comes with libtorch's worker threads
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
        // Measured: 3,600–8,100 faults per step with glibc's defaults, 300–400 configured.
        Assert.True(configured < glibc / 3, $"page faults per train step: {configured:F0} configured vs {glibc:F0} with glibc's defaults");
    }

    [Fact]
    public void DoctorSaysWhichAllocatorSettingsAreInForce()
    {
        if (!OperatingSystem.IsLinux()) return;
        if ((Environment.GetEnvironmentVariable("GLIBC_TUNABLES") ?? "").Contains("glibc.malloc.", StringComparison.Ordinal)) return;
        foreach (var (off, expected) in new[] { (false, "heap kept between steps"), (true, "glibc defaults") })
        {
            var psi = CliProcess.StartInfo(["doctor", "--json"]);
            if (off) psi.Environment["ALLTOKENS_MALLOC"] = "default";
            else psi.Environment.Remove("ALLTOKENS_MALLOC");
            using var cli = new RunningCli(psi);
            Assert.True(cli.Process.WaitForExit(120_000), "doctor did not finish");
            cli.Process.WaitForExit();
            var json = cli.Out.Split('\n').Last(l => l.TrimStart().StartsWith('{'));
            using var doc = JsonDocument.Parse(json);
            Assert.Equal(expected, doc.RootElement.GetProperty("malloc").GetString());
        }
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
}
