using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using AllTokens.Checkpoints;
using AllTokens.Distributed;
using AllTokens.Models;
using AllTokens.Training;
using TorchSharp;
using static AllTokens.Tests.Cli.InProcessCli;

namespace AllTokens.Tests.Distributed;

/// <summary>`alltokens train` under mpirun: 2 ranks on loopback against one process with the same global batch.</summary>
public sealed class DataParallelTrainTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-dp-").FullName;
    private readonly int threads = torch.get_num_threads();

    public void Dispose()
    {
        torch.set_num_threads(threads);
        Directory.Delete(dir, true);
    }

    /// <summary>A tiny Fashion-MNIST-shaped IDX folder: class c is a bright band at rows 3c…3c+2 plus noise.</summary>
    private string IdxFolder(int train = 32, int test = 12)
    {
        string root = Path.Combine(dir, "idx");
        Directory.CreateDirectory(root);
        var rng = new Rng(5);
        foreach (var (prefix, n) in new[] { ("train", train), ("t10k", test) })
        {
            var labels = Enumerable.Range(0, n).Select(i => (byte)(i % 8)).ToArray();
            var pixels = new byte[n * 28 * 28];
            for (int i = 0; i < n; i++)
                for (int p = 0; p < 784; p++)
                    pixels[i * 784 + p] = (byte)(p / 28 / 3 == labels[i] ? 220 : rng.NextInt(0, 80));
            WriteIdx(Path.Combine(root, $"{prefix}-images-idx3-ubyte.gz"), [n, 28, 28], pixels);
            WriteIdx(Path.Combine(root, $"{prefix}-labels-idx1-ubyte.gz"), [n], labels);
        }
        return root;
    }

    private static void WriteIdx(string path, int[] dims, byte[] data)
    {
        using var gz = new GZipStream(File.Create(path), CompressionLevel.Fastest);
        gz.Write([0, 0, 8, (byte)dims.Length]);
        Span<byte> b = stackalloc byte[4];
        foreach (var d in dims)
        {
            BinaryPrimitives.WriteInt32BigEndian(b, d);
            gz.Write(b);
        }
        gz.Write(data);
    }

    // vit_nano at 32 px (4 patches), SGD, no drop-path/dropout (torch RNG streams differ per rank); the timm train
    // transform stays on: its per-sample streams depend on (seed, epoch, index), not on the rank.
    private static string[] Args(string data, string run, string init, int batch) =>
    [
        "train", "--model", "vit_nano", "--data", data, "--img-size", "32", "--epochs", "1", "--batch", batch.ToString(System.Globalization.CultureInfo.InvariantCulture),
        "--out", run, "--init-from", init, "--threads", "1", "--workers", "0", "--warmup-epochs", "0", "--cooldown-epochs", "0", "--lr", "0.05", "--opt", "sgd",
        "--set", "aa=null", "--set", "drop_path=0", "--set", "drop=0", "--set", "log_interval=1", "--set", "clip_grad=1.0",
    ];

    private static Dictionary<string, float[]> Weights(string path) =>
        Safetensors.Read(path).Tensors.ToDictionary(kv => kv.Key, kv => MemoryMarshal.Cast<byte, float>(kv.Value.Data).ToArray());

    [Fact]
    public void TwoRanksStayIdenticalAndMatchOneProcessWithTheSameGlobalBatch()
    {
        if (MpiTests.FindMpirun() is null) Assert.Skip("Open MPI is not installed (apt-get install openmpi-bin libopenmpi-dev)");
        string data = IdxFolder(), init = Path.Combine(dir, "init.safetensors"), trace = Path.Combine(dir, "trace");
        torch.manual_seed(3);
        using (var m = ModelRegistry.Create("vit_nano", new ModelOptions(10, 32))) ModelWeights.Save(m, "vit_nano", init);

        string run2 = Path.Combine(dir, "run2"), run1 = Path.Combine(dir, "run1");
        var (code, output, err) = MpiTests.RunUnderMpirun(2, Args(data, run2, init, 4), 120,
            new Dictionary<string, string> { [Trainer.ParamTraceVariable] = trace });
        Assert.True(code == 0, $"exit {code}: {err}\n{output}");
        // Only rank 0 prints.
        Assert.Single(output.Split('\n'), l => l.Contains("done: 1 epochs, 4 steps"));
        Assert.Single(err.Split('\n'), l => l.Contains("training vit_nano"));
        Assert.Contains("4 batches of 8 (2 ranks × 4)", err);
        Assert.Contains("global batch 8 = 2 × 4", err);

        // Identical parameters on both ranks after every optimizer step.
        var traces = Enumerable.Range(0, 2).Select(r => File.ReadAllLines($"{trace}.rank{r}").Select(l => JsonNode.Parse(l)!.AsObject()).ToList()).ToList();
        Assert.All(traces, t => Assert.Equal([1L, 2, 3, 4], t.Select(o => (long)o["step"]!)));
        for (int s = 0; s < 4; s++)
            Assert.Equal((string)traces[0][s]["sha256"]!, (string)traces[1][s]["sha256"]!);
        Assert.NotEqual((string)traces[0][0]["sha256"]!, (string)traces[0][3]["sha256"]!); // and they did train

        // One process, batch 8 = the union of the two ranks' batches of 4.
        (code, _, err) = Run(Args(data, run1, init, 8));
        Assert.True(code == 0, err);
        var w1 = Weights(Path.Combine(run1, "last.safetensors"));
        var w2 = Weights(Path.Combine(run2, "last.safetensors"));
        var w0 = Weights(init);
        Assert.Equal(w1.Keys.Order(), w2.Keys.Order());
        double maxDiff = 0, maxStep = 0;
        foreach (var (k, a) in w1)
            for (int i = 0; i < a.Length; i++)
            {
                maxDiff = Math.Max(maxDiff, Math.Abs(a[i] - w2[k][i]));
                maxStep = Math.Max(maxStep, Math.Abs(a[i] - w0[k][i]));
            }
        // The runs differ only in the order of float sums (mean of two half-batch means vs one mean of 8), so the
        // weights agree to a few float32 ulps (measured 7.5e-9; SGD passes gradient rounding through linearly, where
        // Adam's g/√v would magnify it for near-zero gradients), while training moved them by ~1e-2.
        Assert.True(maxStep > 1e-3, $"weights moved at most {maxStep}");
        Assert.True(maxDiff < 1e-6, $"2 ranks vs 1 process: max |Δw| = {maxDiff}");
        var e1 = EpochRecord(run1);
        var e2 = EpochRecord(run2);
        Assert.Equal(2, (int)e2["world_size"]!);
        Assert.Equal((double)e1["val_top1"]!, (double)e2["val_top1"]!);
        Assert.Equal((double)e1["train_top1"]!, (double)e2["train_top1"]!);
        Assert.Equal((double)e1["train_loss"]!, (double)e2["train_loss"]!, 4);
        Assert.Equal((double)e1["val_loss"]!, (double)e2["val_loss"]!, 4);

        // Resume the 2-rank run with one process (global batch 4 now): epoch 2 has 8 steps.
        (code, output, err) = Run("train", "--resume", "--out", run2, "--epochs", "2", "--threads", "1");
        Assert.True(code == 0, err);
        Assert.Contains("saved by 2 rank(s), global batch 8; now 1, global batch 4", err);
        Assert.Contains("done: 2 epochs, 12 steps", output);
    }

    private static JsonObject EpochRecord(string run) =>
        File.ReadAllLines(Path.Combine(run, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).Last(o => (string)o["kind"]! == "epoch");

    [Fact]
    public async Task AskingForMpiWithoutItIsAClearError()
    {
        // The load is made to fail by pointing the library override at a file that does not exist; a subprocess keeps
        // the variable out of the other tests.
        string cli = Path.Combine(AppContext.BaseDirectory, "AllTokens.Cli.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { cli, "train", "--model", "vit_nano", "--data", dir, "--out", Path.Combine(dir, "run"), "--distributed", "mpi" })
            psi.ArgumentList.Add(a);
        psi.Environment[Mpi.LibraryVariable] = Path.Combine(dir, "no-such-libmpi.so.40");
        foreach (var v in new[] { "OMPI_COMM_WORLD_SIZE", "PMIX_RANK" }) psi.Environment.Remove(v);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        string err = await p.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        await p.WaitForExitAsync(TestContext.Current.CancellationToken);
        Assert.Equal(1, p.ExitCode);
        Assert.Contains("distributed: mpi: Open MPI is not installed", err);
        Assert.Contains("no-such-libmpi.so.40", err);
        Assert.Contains("apt-get install openmpi-bin libopenmpi-dev", err);
        Assert.DoesNotContain("   at ", err); // a message, not a stack trace
        Assert.Equal("", await stdout);
        Assert.False(Directory.Exists(Path.Combine(dir, "run")));
    }

    [Theory]
    [InlineData(3, 8, 4, 6)]   // sample 24: 6 global batches of 4
    [InlineData(3, 8, 8, 3)]   // same global batch: same index
    [InlineData(5, 4, 8, -1)]  // sample 20 is not a multiple of 8
    [InlineData(0, 8, 12, 0)]  // an epoch start fits any rank count
    public void ResumePositionKeepsTheSampleOrRefuses(int savedBatch, int savedGlobal, int global, int expected)
    {
        if (expected >= 0)
        {
            Assert.Equal(expected, Trainer.ResumePosition(savedBatch, savedGlobal, global));
            return;
        }
        var e = Assert.Throws<InvalidOperationException>(() => Trainer.ResumePosition(savedBatch, savedGlobal, global));
        Assert.Contains("does not divide 20", e.Message);
        Assert.Contains("epoch end", e.Message);
    }
}
