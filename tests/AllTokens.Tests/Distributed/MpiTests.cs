using System.Diagnostics;
using System.Text.Json;
using AllTokens.Distributed;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Distributed;

public class MpiTests
{
    /// <summary>mpirun on PATH, or null (the MPI tests are skipped without Open MPI; CI installs it).</summary>
    public static string? FindMpirun() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, "mpirun")).FirstOrDefault(File.Exists);

    /// <summary>Runs the CLI (next to the test assembly) under mpirun with <paramref name="ranks"/> processes on loopback.</summary>
    public static (int Code, string Out, string Err) RunUnderMpirun(int ranks, IEnumerable<string> args, int timeoutSeconds = 300,
        IReadOnlyDictionary<string, string>? env = null, string? outputDir = null)
    {
        string mpirun = FindMpirun() ?? throw new InvalidOperationException("mpirun not found");
        string cli = Path.Combine(AppContext.BaseDirectory, "AllTokens.Cli.dll");
        var psi = new ProcessStartInfo(mpirun) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--allow-run-as-root", "--oversubscribe", "-np", ranks.ToString(System.Globalization.CultureInfo.InvariantCulture),
                     "--mca", "btl", "self,vader", "-x", "OMP_NUM_THREADS=1" })
            psi.ArgumentList.Add(a);
        // Each rank's output also to OUTPUTDIR/1/rank.N/stdout: mpirun forwards the ranks' ptys in chunks of 256 bytes,
        // so in its merged stdout a longer line of one rank can be cut by the other's output.
        if (outputDir is not null)
        {
            psi.ArgumentList.Add("--output-filename");
            psi.ArgumentList.Add(outputDir);
        }
        foreach (var (k, v) in env ?? new Dictionary<string, string>())
        {
            psi.ArgumentList.Add("-x");
            psi.ArgumentList.Add($"{k}={v}");
        }
        psi.ArgumentList.Add("dotnet");
        psi.ArgumentList.Add(cli);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["OMPI_MCA_plm_rsh_agent"] = "";   // never try ssh on a single host
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutSeconds * 1000))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"mpirun did not finish in {timeoutSeconds} s: {stderr.Result}");
        }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [Fact]
    public void SingleProcessCollectivesAreTheIdentity()
    {
        using var _ = torch.NewDisposeScope();
        var g = ProcessGroups.Create("none");
        Assert.Equal(0, g.Rank);
        Assert.Equal(1, g.Size);
        var t = torch.tensor(new float[] { 1, 2 });
        g.AllReduceSum(t);
        g.Broadcast(t);
        Assert.Equal([1f, 2f], t.data<float>().ToArray());
        Assert.Throws<ArgumentException>(() => ProcessGroups.Create("nccl"));
    }

    [Fact]
    public void TwoRanksAllReduceAndBroadcastOnLoopback()
    {
        if (FindMpirun() is null) Assert.Skip("Open MPI is not installed (apt-get install openmpi-bin libopenmpi-dev)");
        var dir = Path.Combine(Path.GetTempPath(), $"alltokens-mpi-doctor-{Guid.NewGuid():N}");
        try
        {
            var (code, output, err) = RunUnderMpirun(2, ["doctor", "--mpi", "--json"], outputDir: dir);
            Assert.True(code == 0, $"exit {code}: {err}\n{output}");
            // Each rank's own stdout (doctor's line is longer than mpirun's 256-byte forwarding chunks). A line may start
            // with terminal escape codes that .NET prints under mpirun's pty; the JSON starts at '{'.
            var ranks = Directory.GetFiles(dir, "stdout", SearchOption.AllDirectories)
                .SelectMany(f => File.ReadAllLines(f)).Where(l => l.Contains('{'))
                .Select(l => JsonDocument.Parse(l[l.IndexOf('{')..].Trim()).RootElement).ToList();
            Assert.Equal(2, ranks.Count);
            Assert.Equal([0, 1], ranks.Select(r => r.GetProperty("rank").GetInt32()).Order());
            Assert.All(ranks, r =>
            {
                Assert.Equal(2, r.GetProperty("size").GetInt32());
                Assert.Equal("ok", r.GetProperty("allreduce").GetString());
                Assert.Equal("ok", r.GetProperty("broadcast").GetString());
            });
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }
}
