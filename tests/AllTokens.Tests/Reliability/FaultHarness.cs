using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using AllTokens.Checkpoints;
using AllTokens.Training;

namespace AllTokens.Tests.Reliability;

/// <summary>How a CLI child process ended.</summary>
/// <param name="TimedOut">It was still running at the time limit and was killed.</param>
internal sealed record CliResult(int Code, string Out, string Err, TimeSpan Elapsed, bool TimedOut)
{
    /// <summary>A crash rather than an answer: a signal (exit ≥ 128 as the shell reports it, 134 = abort) or an unhandled .NET exception.</summary>
    public bool Crashed => Code >= 128 || Code < 0 || Err.Contains("Unhandled exception", StringComparison.Ordinal) ||
                           Err.Contains("terminate called", StringComparison.Ordinal);

    public override string ToString() => $"exit {Code}{(TimedOut ? " (timed out)" : "")} after {Elapsed.TotalSeconds:F1} s\nstderr: {Err}\nstdout: {Out}";
}

/// <summary>Runs the real CLI (AllTokens.Cli.dll next to the test assembly) as a child process, as a user would.</summary>
internal static class CliProcess
{
    public static string CliDll => Path.Combine(AppContext.BaseDirectory, "AllTokens.Cli.dll");

    /// <summary>The dotnet host: the one running the tests when the SDK says so, else dotnet on PATH.</summary>
    private static string DotnetHost => Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h : "dotnet";

    /// <summary>
    /// A start info for <c>dotnet AllTokens.Cli.dll ARGS</c>. With <paramref name="fileSizeLimitKb"/> the CLI runs under
    /// <c>ulimit -f</c> with SIGXFSZ ignored, so a write past the limit fails with EFBIG as on a full disk instead of killing
    /// the process.
    /// </summary>
    public static ProcessStartInfo StartInfo(IEnumerable<string> args, long? fileSizeLimitKb = null)
    {
        ProcessStartInfo psi;
        if (fileSizeLimitKb is { } kb)
        {
            psi = new ProcessStartInfo("/bin/bash");
            // An ignored signal stays ignored across exec. bash counts ulimit -f in 1024-byte blocks.
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add($"trap '' XFSZ; ulimit -f {kb}; exec \"$0\" \"$@\"");
            psi.ArgumentList.Add(DotnetHost);
            // The runtime's W^X double mapping sizes a memfd with ftruncate, which RLIMIT_FSIZE also caps: the JIT then
            // aborts ("terminate called ... Exception*"). That is an artefact of the simulation (a full disk does not limit
            // memfds), so it is switched off for these runs only.
            psi.Environment["DOTNET_EnableWriteXorExecute"] = "0";
        }
        else
        {
            psi = new ProcessStartInfo(DotnetHost);
        }
        psi.ArgumentList.Add(CliDll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.RedirectStandardOutput = true;
        psi.RedirectStandardError = true;
        psi.RedirectStandardInput = true;
        psi.UseShellExecute = false;
        psi.Environment["OMP_NUM_THREADS"] = "1";
        psi.Environment.Remove("ALLTOKENS_DEBUG");
        return psi;
    }

    /// <summary>
    /// One string field of <c>doctor --json</c>, run with the environment variable <paramref name="variable"/> set to
    /// <paramref name="value"/> (or removed when null).
    /// </summary>
    public static string? DoctorField(string field, string variable, string? value)
    {
        var psi = StartInfo(["doctor", "--json"]);
        if (value is null) psi.Environment.Remove(variable);
        else psi.Environment[variable] = value;
        using var cli = new RunningCli(psi);
        Assert.True(cli.Process.WaitForExit(120_000), "doctor did not finish");
        cli.Process.WaitForExit();
        var json = cli.Out.Split('\n').Last(l => l.TrimStart().StartsWith('{'));
        using var doc = System.Text.Json.JsonDocument.Parse(json);
        return doc.RootElement.GetProperty(field).GetString();
    }

    /// <summary>Runs to the end or until <paramref name="timeoutSeconds"/> (then kills it and reports TimedOut).</summary>
    public static CliResult Run(IEnumerable<string> args, int timeoutSeconds = 120, long? fileSizeLimitKb = null)
    {
        var clock = Stopwatch.StartNew();
        using var p = new RunningCli(StartInfo(args, fileSizeLimitKb));
        bool exited = p.Process.WaitForExit(timeoutSeconds * 1000);
        if (!exited) p.Kill();
        p.Process.WaitForExit();
        return new CliResult(exited ? p.Process.ExitCode : -1, p.Out, p.Err, clock.Elapsed, !exited);
    }
}

/// <summary>A started CLI whose output is drained in the background (so a full pipe never blocks it).</summary>
internal sealed class RunningCli : IDisposable
{
    private readonly StringBuilder stdout = new(), stderr = new();

    public RunningCli(ProcessStartInfo psi)
    {
        Process = new Process { StartInfo = psi };
        Process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (stdout) stdout.AppendLine(e.Data); };
        Process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stderr) stderr.AppendLine(e.Data);
            ErrLine?.Invoke(e.Data);
        };
        Process.Start();
        Process.StandardInput.Close();
        Process.BeginOutputReadLine();
        Process.BeginErrorReadLine();
    }

    public Process Process { get; }

    /// <summary>Raised on a pool thread for each stderr line.</summary>
    public event Action<string>? ErrLine;

    public string Out { get { lock (stdout) return stdout.ToString(); } }

    public string Err { get { lock (stderr) return stderr.ToString(); } }

    /// <summary>SIGKILL (Process.Kill sends SIGKILL on Unix): no handler, no finally block, no flush runs.</summary>
    public void Kill()
    {
        try
        {
            Process.Kill(entireProcessTree: false);
        }
        catch (InvalidOperationException)
        {
            // already gone
        }
    }

    public void Dispose()
    {
        if (!Process.HasExited) Kill();
        Process.WaitForExit();
        Process.Dispose();
    }
}

/// <summary>Small inputs the fault tests write: an IDX dataset, run-folder readers.</summary>
internal static class FaultFixtures
{
    /// <summary>
    /// A Fashion-MNIST-shaped gzip IDX folder (name contains "fashion"): class c is a bright band at rows 2c…2c+3 on
    /// seeded noise, so a tiny model learns it in a few steps.
    /// </summary>
    public static string IdxFolder(string parent, int train, int test, string name = "fashion-tiny")
    {
        string root = Path.Combine(parent, name);
        Directory.CreateDirectory(root);
        var rng = new Rng(1);
        foreach (var (prefix, n) in new[] { ("train", train), ("t10k", test) })
        {
            var labels = Enumerable.Range(0, n).Select(i => (byte)(i % 10)).ToArray();
            var pixels = new byte[n * 28 * 28];
            for (int i = 0; i < n; i++)
                for (int p = 0; p < 784; p++)
                    pixels[i * 784 + p] = (byte)(p / 28 / 2 - labels[i] is >= 0 and < 2 ? 200 : rng.NextInt(0, 60));
            WriteIdx(Path.Combine(root, $"{prefix}-images-idx3-ubyte.gz"), [n, 28, 28], pixels);
            WriteIdx(Path.Combine(root, $"{prefix}-labels-idx1-ubyte.gz"), [n], labels);
        }
        return root;
    }

    /// <summary>Writes a gzip IDX file: magic 00 00 typeCode ndim, big-endian dims, data.</summary>
    public static void WriteIdx(string path, int[] dims, byte[] data, byte typeCode = 0x08, bool gzip = true)
    {
        using var file = File.Create(path);
        using Stream s = gzip ? new GZipStream(file, CompressionLevel.Fastest) : file;
        s.Write([0, 0, typeCode, (byte)dims.Length]);
        Span<byte> b = stackalloc byte[4];
        foreach (var d in dims)
        {
            BinaryPrimitives.WriteInt32BigEndian(b, d);
            s.Write(b);
        }
        s.Write(data);
    }

    /// <summary>Highest optimizer step in a run's metrics.jsonl step lines (a line cut short by a kill is ignored), or 0.</summary>
    public static long LastLoggedStep(string runDir) => StepLosses(runDir).Keys.DefaultIfEmpty(0).Max();

    /// <summary>step → logged loss text, from the step lines of metrics.jsonl.</summary>
    public static SortedDictionary<long, string> StepLosses(string runDir)
    {
        var result = new SortedDictionary<long, string>();
        string path = Path.Combine(runDir, "metrics.jsonl");
        if (!File.Exists(path)) return result;
        string text;
        using (var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete))
        using (var r = new StreamReader(f))
            text = r.ReadToEnd();
        foreach (var line in text.Split('\n'))
        {
            if (line.Length == 0) continue;
            try
            {
                using var doc = System.Text.Json.JsonDocument.Parse(line);
                var e = doc.RootElement;
                if (e.GetProperty("kind").GetString() == "step")
                    result[e.GetProperty("step").GetInt64()] = e.GetProperty("loss").GetRawText();
            }
            catch (System.Text.Json.JsonException)
            {
                // the last line of a killed writer may be cut short
            }
        }
        return result;
    }

    /// <summary>The epoch lines of metrics.jsonl without their wall-clock "time", in order.</summary>
    public static List<string> EpochRecords(string runDir) =>
        File.ReadAllLines(Path.Combine(runDir, "metrics.jsonl")).Where(l => l.Length > 0)
            .Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!.AsObject())
            .Where(o => (string?)o["kind"] == "epoch")
            .Select(o =>
            {
                o.Remove("time");
                return o.ToJsonString();
            }).ToList();

    /// <summary>Every tensor of a checkpoint as (name → dtype, shape, bytes), for exact comparisons.</summary>
    public static SortedDictionary<string, (TensorDType DType, long[] Shape, byte[] Data)> Tensors(string path)
    {
        var file = Safetensors.Read(path);
        var d = new SortedDictionary<string, (TensorDType, long[], byte[])>(StringComparer.Ordinal);
        foreach (var (k, v) in file.Tensors) d[k] = (v.DType, v.Shape.ToArray(), v.Data.ToArray());
        return d;
    }

    /// <summary>Temp files our atomic writers leave when a kill cuts a write short.</summary>
    public static List<string> TempFiles(string runDir) =>
        Directory.Exists(runDir) ? Directory.EnumerateFiles(runDir, "*.tmp", SearchOption.AllDirectories).ToList() : [];
}
