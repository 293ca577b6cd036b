using System.Diagnostics;
using AllTokens.Checkpoints;
using AllTokens.Training;

namespace AllTokens.Tests.Reliability;

/// <summary>
/// A full disk while the trainer writes: a clear error naming the file, the previous checkpoint byte-identical, no temp
/// file left, and the run resumes once there is space again. Simulated portably with <c>ulimit -f</c> (EFBIG), and with a
/// real full file system (ENOSPC on a small tmpfs) where the machine lets us mount one.
/// </summary>
public sealed class DiskFullTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-diskfull-").FullName;

    public void Dispose()
    {
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
    }

    private static string[] Fresh(string data, string run, int saveEvery) =>
    [
        "train", "--model", "t2t_vit_nano", "--data", data, "--img-size", "32", "--epochs", "1", "--batch", "8", "--out", run,
        "--threads", "1", "--warmup-epochs", "0", "--cooldown-epochs", "0", "--set", "aa=null", "--set", $"save_every_steps={saveEvery}",
        "--set", "log_interval=1", "--set", "model_ema=true",
    ];

    private static string[] Resume(string run) => ["train", "--resume", "--out", run, "--epochs", "2", "--threads", "1"];

    /// <summary>A finished one-epoch run (8 steps) and the bytes of its last checkpoint.</summary>
    private (string Run, byte[] Checkpoint) FinishedRun(string name, int saveEvery)
    {
        string data = Path.Combine(dir, "fashion-tiny");
        if (!Directory.Exists(data)) FaultFixtures.IdxFolder(dir, train: 64, test: 16);
        string run = Path.Combine(dir, name);
        var r = CliProcess.Run(Fresh(data, run, saveEvery));
        Assert.True(r.Code == 0, r.ToString());
        return (run, File.ReadAllBytes(Trainer.LastCheckpointPath(run)));
    }

    /// <summary>The run failed cleanly on <paramref name="file"/>, kept its checkpoint and left no temp file.</summary>
    private static void AssertCleanFailure(CliResult full, string run, byte[] checkpoint, string reason, params string[] files)
    {
        Assert.False(full.Crashed, full.ToString());
        Assert.True(full.Code == 1, full.ToString());
        Assert.True(files.Any(f => full.Err.Contains($"{Path.Combine(run, f)}: could not write the file ({reason}", StringComparison.Ordinal)), full.ToString());
        Assert.Contains("the previous version is unchanged", full.Err);
        Assert.Equal(checkpoint, File.ReadAllBytes(Trainer.LastCheckpointPath(run)));
        Assert.Equal(8, TrainCheckpoint.Load(Trainer.LastCheckpointPath(run)).State.GlobalStep);
        Assert.Empty(FaultFixtures.TempFiles(run));
    }

    /// <summary>With space again, the run resumes from the kept checkpoint and finishes.</summary>
    private static void AssertResumes(string run)
    {
        var again = CliProcess.Run(Resume(run));
        Assert.True(again.Code == 0, again.ToString());
        Assert.Contains("done: 2 epochs, 16 steps", again.Out);
    }

    [Fact]
    public void FileSizeLimitDuringCheckpointAndExportWritesIsAClearErrorAndKeepsTheCheckpoint()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("ulimit -f and SIGXFSZ: Linux only");
        var clock = Stopwatch.StartNew();
        // (a) A step checkpoint (9 MB) over a 4 MB limit: the first save of the resumed run, at step 10.
        var (run, checkpoint) = FinishedRun("step-save", saveEvery: 2);
        var full = CliProcess.Run(Resume(run), fileSizeLimitKb: 4096);
        AssertCleanFailure(full, run, checkpoint, "file too large", "checkpoints/last.ckpt");
        AssertResumes(run);

        // (b) The epoch-end exports (3 MB each) over a 1 MB limit: best.safetensors (if the epoch improved) or
        // last.safetensors is the first write of the epoch end.
        (run, checkpoint) = FinishedRun("epoch-end", saveEvery: 0);
        full = CliProcess.Run(Resume(run), fileSizeLimitKb: 1024);
        AssertCleanFailure(full, run, checkpoint, "file too large", "best.safetensors", "last.safetensors");
        AssertResumes(run);
        FaultReport.Line($"disk full (ulimit -f): step checkpoint and epoch-end export writes both failed with a clear error naming the file; " +
                         $"previous checkpoint byte-identical, no temp file left, resume completed; {clock.Elapsed.TotalSeconds:F0} s");
    }

    [Fact]
    public void FileSizeLimitWhileWritingALabelStoreIsAClearErrorAndResumes()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("ulimit -f and SIGXFSZ: Linux only");
        string data = FaultFixtures.IdxFolder(dir, train: 256, test: 8, name: "fashion-labels");
        string weights = Path.Combine(dir, "annotator.safetensors");
        TorchSharp.torch.manual_seed(0);
        using (var m = AllTokens.Models.ModelRegistry.Create("lvvit_nano", new AllTokens.Models.ModelOptions(10, 32))) ModelWeights.Save(m, "lvvit_nano", weights);
        string[] Label(string store) => ["label", "--weights", weights, "--data", data, "--out", store, "--batch", "16", "--threads", "1"];
        var straight = CliProcess.Run(Label(Path.Combine(dir, "straight.labels")));
        Assert.True(straight.Code == 0, straight.ToString());
        long size = new FileInfo(Path.Combine(dir, "straight.labels")).Length;

        // About half the store fits under the limit.
        string store = Path.Combine(dir, "limited.labels");
        var full = CliProcess.Run(Label(store), fileSizeLimitKb: size / 2048);
        Assert.False(full.Crashed, full.ToString());
        Assert.True(full.Code == 1, full.ToString());
        Assert.Contains($"{store}.partial: could not write the label store (file too large", full.Err);
        Assert.Contains("resumes from them", full.Err);
        Assert.False(File.Exists(store), "a half-written store must never appear under its final name");
        Assert.True(new FileInfo(store + ".partial").Length > 512);

        // With space again the same command resumes and ends with the same store as the uninterrupted run.
        var again = CliProcess.Run(Label(store));
        Assert.True(again.Code == 0, again.ToString());
        Assert.Contains("already labelled", again.Err);
        Assert.Equal(File.ReadAllBytes(Path.Combine(dir, "straight.labels")), File.ReadAllBytes(store));
        using (var opened = AllTokens.TokenLabeling.LabelStore.Open(store))
        {
            Assert.Equal(256, opened.Count);
            opened.VerifyAll();
        }
        FaultReport.Line("disk full (ulimit -f) while writing a label store: clear error naming the .partial file, no store under the final name, " +
                         "resume completed byte-identical to an uninterrupted run");
    }

    [Fact]
    public void RealFullFileSystemIsAClearErrorAndKeepsTheCheckpoint()
    {
        if (!OperatingSystem.IsLinux() || Environment.UserName != "root") Assert.Skip("needs root on Linux to mount a small tmpfs");
        var (run, checkpoint) = FinishedRun("enospc", saveEvery: 2);
        string mount = Path.Combine(dir, "small-disk");
        Directory.CreateDirectory(mount);
        long used = Directory.EnumerateFiles(run, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);
        // Room for everything there plus 4 MB: not for a second 9 MB checkpoint temp file.
        long sizeKb = used / 1024 + 4096;
        var m = Process.Start("mount", ["-t", "tmpfs", "-o", $"size={sizeKb}k", "tmpfs", mount]);
        m.WaitForExit();
        if (m.ExitCode != 0) Assert.Skip("this machine does not let us mount a tmpfs (a container without CAP_SYS_ADMIN)");
        try
        {
            string small = Path.Combine(mount, "run");
            CopyTree(run, small);
            var full = CliProcess.Run(Resume(small));
            AssertCleanFailure(full, small, checkpoint, "No space left on device", "checkpoints/last.ckpt");
            // The user frees space: the same folder resumes.
            var grow = Process.Start("mount", ["-o", $"remount,size={sizeKb + 65536}k", mount]);
            grow.WaitForExit();
            Assert.Equal(0, grow.ExitCode);
            AssertResumes(small);
            FaultReport.Line("disk full (real ENOSPC on a small tmpfs): clear error naming last.ckpt, previous checkpoint byte-identical, resume after freeing space completed");
        }
        finally
        {
            Process.Start("umount", [mount]).WaitForExit();
        }
    }

    private static void CopyTree(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var d in Directory.EnumerateDirectories(from, "*", SearchOption.AllDirectories))
            Directory.CreateDirectory(Path.Combine(to, Path.GetRelativePath(from, d)));
        foreach (var f in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
            File.Copy(f, Path.Combine(to, Path.GetRelativePath(from, f)));
    }
}
