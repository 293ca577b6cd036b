using AllTokens.Checkpoints;
using AllTokens.Training;
using TorchSharp;

namespace AllTokens.Tests.Reliability;

/// <summary>A run that diverges stops with a clear message and exit 1, and the checkpoint it names is good: finite and loadable.</summary>
public sealed class NonFiniteTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-nan-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    [Fact]
    public void DivergingRunStopsCleanlyAndKeepsTheLastGoodCheckpoint()
    {
        string data = FaultFixtures.IdxFolder(dir, train: 64, test: 16), run = Path.Combine(dir, "run");
        // AdamW at lr 1000 with a checkpoint after every step: the weights turn NaN within a few steps.
        string[] args =
        [
            "train", "--model", "t2t_vit_nano", "--data", data, "--img-size", "32", "--epochs", "1", "--batch", "8", "--out", run,
            "--threads", "1", "--warmup-epochs", "0", "--cooldown-epochs", "0", "--lr", "1000", "--set", "aa=null",
            "--set", "save_every_steps=1", "--set", "log_interval=1", "--set", "model_ema=true",
        ];
        var r = CliProcess.Run(args);
        Assert.False(r.Crashed, r.ToString());
        Assert.True(r.Code == 1, r.ToString());
        string ckPath = Trainer.LastCheckpointPath(run);
        Assert.Contains("alltokens train: error: ", r.Err);
        Assert.Contains("NaN", r.Err);
        Assert.Contains("stopped without saving", r.Err);
        Assert.Contains($"the last good checkpoint is {ckPath}", r.Err);

        // The named checkpoint is good: every tensor finite (model, EMA, optimizer state), and it is the last step before the failure.
        var ck = TrainCheckpoint.Load(ckPath);
        Assert.True(ck.State.GlobalStep >= 1, $"checkpoint at step {ck.State.GlobalStep}");
        foreach (var (name, raw) in ck.Model.Select(kv => ("model/" + kv.Key, kv.Value)).Concat(ck.Ema.Select(kv => ("ema/" + kv.Key, kv.Value)))
                     .Concat(ck.Optimizer.Select(kv => ("optim/" + kv.Key, kv.Value))))
        {
            using var t = raw.ToTorch();
            if (t.is_floating_point()) Assert.True(torch.isfinite(t).all().item<bool>(), $"{name} holds NaN/Inf in the 'good' checkpoint");
        }
        var failure = System.Text.RegularExpressions.Regex.Match(r.Err, @"(?:optimizer step|after optimizer step) (\d+)");
        Assert.True(failure.Success, r.Err);
        long failedAt = long.Parse(failure.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(ck.State.GlobalStep == failedAt - 1 || ck.State.GlobalStep == failedAt, $"checkpoint at step {ck.State.GlobalStep}, failure at {failedAt}: {r.Err}");

        // It loads: a resume starts from it and (same config, deterministic) diverges again at the same point, same message.
        var again = CliProcess.Run(["train", "--resume", "--out", run, "--threads", "1"]);
        Assert.True(again.Code == 1, again.ToString());
        Assert.Contains($"resumed {ckPath}: epoch 0, batch {ck.State.Batch}, step {ck.State.GlobalStep}", again.Err);
        Assert.Equal(r.Err.Split('\n').Single(l => l.StartsWith("alltokens train: error: ", StringComparison.Ordinal)),
                     again.Err.Split('\n').Single(l => l.StartsWith("alltokens train: error: ", StringComparison.Ordinal)));
        Assert.Equal(ck.State.GlobalStep, TrainCheckpoint.Load(ckPath).State.GlobalStep);
        FaultReport.Line($"non-finite: diverging run (lr 1000) stopped with exit 1 at step {failedAt}: \"{r.Err.Split('\n').Single(l => l.StartsWith("alltokens train: error: ", StringComparison.Ordinal)).Trim()}\"; " +
                         $"kept checkpoint at step {ck.State.GlobalStep} all finite and resumable");
    }
}
