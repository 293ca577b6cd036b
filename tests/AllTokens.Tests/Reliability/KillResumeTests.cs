using System.Diagnostics;
using AllTokens.Checkpoints;
using AllTokens.Training;

namespace AllTokens.Tests.Reliability;

/// <summary>
/// kill -9 of the real <c>train</c> process at 20 seeded random moments, some inside checkpoint writes: every resume must
/// succeed, lose at most one checkpoint interval and never meet a corrupt <c>last</c>; the run finished through all the
/// kills must equal an uninterrupted one bit for bit.
/// </summary>
public sealed class KillResumeTests : IDisposable
{
    // Six epochs leave headroom: a kill lands a few steps past its target (more on a faster build), and 20 of them must
    // fit before the run ends.
    private const int Kills = 20, SaveEvery = 2, StepsPerEpoch = 32, Epochs = 6, TotalSteps = StepsPerEpoch * Epochs;
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-kill-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    /// <summary>
    /// A small T2T-ViT with everything a resume must restore: EMA (decay 0.9, so it moves), mixup/cutmix (task RNG),
    /// drop path (torch RNG), AdamW state, warmup + cosine, numbered epoch checkpoints; a checkpoint every 2 steps.
    /// </summary>
    private static string[] Fresh(string data, string run) =>
    [
        "train", "--model", "t2t_vit_nano", "--data", data, "--img-size", "32", "--epochs", $"{Epochs}", "--batch", "8", "--out", run,
        "--threads", "1", "--warmup-epochs", "1", "--cooldown-epochs", "0", "--set", "aa=null", "--set", $"save_every_steps={SaveEvery}",
        "--set", "log_interval=1", "--set", "model_ema=true", "--set", "model_ema_decay=0.9", "--set", "mixup=0.8", "--set", "cutmix=1.0",
        "--set", "checkpoint_every=1",
    ];

    private static string[] Resume(string run) => ["train", "--resume", "--out", run, "--threads", "1"];

    private enum Moment
    {
        /// <summary>A random time after launch: process start, checkpoint read, metrics rewrite, first steps.</summary>
        Startup,
        /// <summary>A few milliseconds after a target step was logged: inside forward/backward/optimizer.</summary>
        Step,
        /// <summary>0–3 ms after the first temp file created once a target step was logged: inside a step checkpoint write.</summary>
        Write,
        /// <summary>0–3 ms after the n-th (random) temp file of an epoch end: best/last exports, checkpoint, epoch copy, plots.</summary>
        EpochEnd,
    }

    [Fact]
    public void TwentyKillsEachResumeAndTheRunEndsBitIdentical()
    {
        var clock = Stopwatch.StartNew();
        string data = FaultFixtures.IdxFolder(dir, train: StepsPerEpoch * 8, test: 32);
        string reference = Path.Combine(dir, "reference"), run = Path.Combine(dir, "killed");
        var straight = CliProcess.Run(Fresh(data, reference), timeoutSeconds: 300);
        Assert.True(straight.Code == 0, straight.ToString());
        Assert.Contains($"done: {Epochs} epochs, {TotalSteps} steps", straight.Out);

        string last = Trainer.LastCheckpointPath(run);
        Directory.CreateDirectory(Path.Combine(run, "checkpoints")); // so the temp-file watcher sees checkpoints/ from the start
        var rng = new Random(20251123);
        int kills = 0, insideWrites = 0, freshStarts = 0, resumes = 0;
        long previousCheckpoint = 0, maxLost = 0;
        var writesHit = new SortedSet<string>(StringComparer.Ordinal);
        while (kills < Kills)
        {
            bool hasCheckpoint = File.Exists(last);
            long checkpointStep = hasCheckpoint ? TrainCheckpoint.Load(last).State.GlobalStep : 0;
            long logged = FaultFixtures.LastLoggedStep(run);
            // Targets lie past every step already logged (so stale lines never trigger a kill) and spread the kills over
            // the run: at most twice the fair share of the steps left.
            long from = Math.Max(checkpointStep, logged);
            long maxAdvance = Math.Max(1, 2 * (TotalSteps - from - 4) / (Kills - kills + 1));
            long target = Math.Min(from + 1 + rng.NextInt64(maxAdvance), TotalSteps - 1); // never past the last step
            // Every other kill aims at a file write (three of them at the writes of an epoch end); the rest at a random time
            // after launch or a random point in a step.
            var moment = kills is 3 or 9 or 15 ? Moment.EpochEnd : kills % 2 == 0 ? Moment.Write : (Moment)rng.Next(2);
            int delayMs = moment switch { Moment.Startup => rng.Next(0, 1500), Moment.Step => rng.Next(0, 40), _ => rng.Next(0, 4) };
            int skipWrites = 0;
            if (moment == Moment.EpochEnd)
            {
                target = (from / StepsPerEpoch + 1) * StepsPerEpoch;
                skipWrites = rng.Next(0, 6);
            }
            var tempsBefore = FaultFixtures.TempFiles(run).ToHashSet();

            if (hasCheckpoint) resumes++;
            else freshStarts++;
            using var cli = new RunningCli(CliProcess.StartInfo(hasCheckpoint ? Resume(run) : Fresh(data, run)));
            string? hitWrite = null;
            int fired = 0, created = 0;
            bool armed = false;
            using var watcher = new FileSystemWatcher(run, "*.tmp") { IncludeSubdirectories = true };
            watcher.Created += (_, e) =>
            {
                if (!Volatile.Read(ref armed) || Interlocked.Increment(ref created) <= skipWrites || Interlocked.Exchange(ref fired, 1) == 1) return;
                if (delayMs > 0) Thread.Sleep(delayMs);
                cli.Kill();
                hitWrite = e.Name;
            };
            watcher.EnableRaisingEvents = moment is Moment.Write or Moment.EpochEnd;
            var deadline = Stopwatch.StartNew();
            while (Volatile.Read(ref fired) == 0)
            {
                if (cli.Process.HasExited)
                    Assert.Fail($"kill {kills + 1}: the process ended by itself before its {moment} kill at step {target} (exit {cli.Process.ExitCode}): {cli.Err}");
                Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(120), $"kill {kills + 1}: step {target} not reached in 120 s: {cli.Err}");
                // A startup kill comes after its delay, or at the target step on a machine fast enough to get there first.
                bool due = moment == Moment.Startup && deadline.ElapsedMilliseconds >= delayMs;
                if (due || FaultFixtures.LastLoggedStep(run) >= target)
                {
                    if (moment is Moment.Write or Moment.EpochEnd) Volatile.Write(ref armed, true);
                    else
                    {
                        if (moment == Moment.Step) Thread.Sleep(delayMs);
                        cli.Kill();
                        break;
                    }
                }
                Thread.Sleep(2);
            }
            cli.Process.WaitForExit();
            watcher.EnableRaisingEvents = false;
            // 137 = 128 + SIGKILL; anything else means the process ended on its own first (a failed resume, not a survived kill).
            Assert.True(cli.Process.ExitCode == 137, $"kill {kills + 1}: the process ended with exit {cli.Process.ExitCode} before the kill: {cli.Err}");
            kills++;

            // What the kill left behind.
            var newTemps = FaultFixtures.TempFiles(run).Where(t => !tempsBefore.Contains(t)).ToList();
            if (newTemps.Count > 0)
            {
                insideWrites++;
                foreach (var t in newTemps) writesHit.Add(TargetOf(t));
            }
            long maxLogged = FaultFixtures.LastLoggedStep(run);
            long lost;
            string checkpointText;
            if (File.Exists(last))
            {
                // Never corrupt: the whole file reads and validates, state and tensors.
                var ck = TrainCheckpoint.Load(last);
                Assert.True(ck.State.GlobalStep >= previousCheckpoint, $"kill {kills}: checkpoint went back from step {previousCheckpoint} to {ck.State.GlobalStep}");
                Assert.NotEmpty(ck.Model);
                Assert.NotEmpty(ck.Ema);
                Assert.NotEmpty(ck.Optimizer);
                previousCheckpoint = ck.State.GlobalStep;
                lost = maxLogged - ck.State.GlobalStep;
                checkpointText = $"checkpoint at step {ck.State.GlobalStep}";
            }
            else
            {
                lost = maxLogged;
                checkpointText = "no checkpoint yet (next start is a fresh one)";
            }
            Assert.True(lost <= SaveEvery, $"kill {kills}: {lost} steps lost (logged {maxLogged}, {checkpointText}); at most one interval ({SaveEvery}) may be lost");
            maxLost = Math.Max(maxLost, lost);
            foreach (var f in new[] { "last.safetensors", "best.safetensors", "last_ema.safetensors" }.Select(n => Path.Combine(run, n)).Where(File.Exists))
                Assert.NotEmpty(ModelWeights.Read(f).StateDict);
            foreach (var f in Directory.EnumerateFiles(Path.Combine(run, "checkpoints"), "epoch_*.ckpt"))
                TrainCheckpoint.Load(f);
            FaultReport.Line($"kill {kills,2}: {moment,-8} target step {target,3}{(moment == Moment.EpochEnd ? $" write {skipWrites + 1}" : "")} +{delayMs,4} ms → logged step {maxLogged,2}, {checkpointText}, lost {lost}" +
                             (newTemps.Count > 0 ? $", killed inside the write of {string.Join(", ", newTemps.Select(TargetOf))}" : "") +
                             (hitWrite is not null && newTemps.Count == 0 ? $" (just after the write of {TargetOf(hitWrite)})" : ""));
        }

        // The last resume runs to the end.
        var end = CliProcess.Run(Resume(run), timeoutSeconds: 300);
        Assert.True(end.Code == 0, end.ToString());
        resumes++;
        Assert.Contains($"done: {Epochs} epochs, {TotalSteps} steps", end.Out);
        Assert.Empty(FaultFixtures.TempFiles(run)); // partial files of cut writes are cleaned up by the next start

        // Bit-identical to the uninterrupted run: every tensor of every checkpoint and export, and every logged loss.
        foreach (var f in new[] { "checkpoints/last.ckpt", "checkpoints/epoch_0001.ckpt", "checkpoints/epoch_0002.ckpt", "checkpoints/epoch_0003.ckpt",
                     "last.safetensors", "last_ema.safetensors", "best.safetensors" })
        {
            var a = FaultFixtures.Tensors(Path.Combine(reference, f));
            var b = FaultFixtures.Tensors(Path.Combine(run, f));
            Assert.Equal(a.Keys, b.Keys);
            foreach (var (name, ta) in a)
            {
                var tb = b[name];
                Assert.True(ta.DType == tb.DType && ta.Shape.SequenceEqual(tb.Shape) && ta.Data.AsSpan().SequenceEqual(tb.Data), $"{f}: '{name}' differs from the uninterrupted run");
            }
        }
        Assert.Equal(TotalSteps, TrainCheckpoint.Load(last).State.GlobalStep);
        var lossesStraight = FaultFixtures.StepLosses(reference);
        var lossesKilled = FaultFixtures.StepLosses(run);
        Assert.Equal(Enumerable.Range(1, TotalSteps).Select(i => (long)i), lossesKilled.Keys);
        Assert.Equal(lossesStraight, lossesKilled);
        var epochsStraight = FaultFixtures.EpochRecords(reference);
        Assert.Equal(Epochs, epochsStraight.Count);
        Assert.Equal(epochsStraight, FaultFixtures.EpochRecords(run)); // each epoch's record once, with the same figures

        FaultReport.Line($"kill -9: {kills} kills survived ({insideWrites} inside a file write: {string.Join(", ", writesHit)}); {resumes} resumes and " +
                         $"{freshStarts} fresh start(s) all succeeded; at most {maxLost} of {SaveEvery} steps lost per kill; final parameters, EMA, optimizer " +
                         $"state and all {TotalSteps} logged losses bit-identical to the uninterrupted run; {clock.Elapsed.TotalSeconds:F0} s");
        Assert.Equal(Kills, kills);
        Assert.True(insideWrites >= 3, $"only {insideWrites} kills landed inside a write");
    }

    /// <summary>"checkpoints/.last.ckpt.GUID.tmp" → "last.ckpt".</summary>
    private static string TargetOf(string tempPath)
    {
        string name = Path.GetFileName(tempPath).TrimStart('.');
        var parts = name.Split('.');
        return string.Join('.', parts.Take(parts.Length - 2));
    }
}
