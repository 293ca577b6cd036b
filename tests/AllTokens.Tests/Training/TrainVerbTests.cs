using AllTokens.Checkpoints;
using AllTokens.Models;
using AllTokens.Training;
using TorchSharp;
using static AllTokens.Tests.Cli.InProcessCli;

namespace AllTokens.Tests.Training;

public sealed class TrainVerbTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-trainverb-").FullName;
    private readonly int threads = torch.get_num_threads();

    public void Dispose()
    {
        torch.set_num_threads(threads);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void TokenLabelFlagsSwitchTheTask()
    {
        var (code, output, err) = Run("train", "--model", "lvvit_nano", "--data", "/nonexistent", "--token-labels", "labels.tls", "--dense-weight", "1.0", "--print-config");
        Assert.True(code == 0, err);
        Assert.Contains("token_label: true", output);
        Assert.Contains("token_label_data: 'labels.tls'", output);
        Assert.Contains("dense_weight: 1", output);
        (code, output, err) = Run("train", "--model", "lvvit_nano", "--data", "/nonexistent", "--teacher", "lvvit_nano", "--teacher-weights", "t.safetensors", "--print-config");
        Assert.True(code == 0, err);
        Assert.Contains("token_label: true", output);
        Assert.Contains("teacher: 'lvvit_nano'", output);
        (code, _, err) = Run("train", "--model", "lvvit_nano", "--data", "/nonexistent", "--teacher", "lvvit_nano", "--print-config");
        Assert.Equal(2, code);
        Assert.Contains("teacher_weights", err);
    }

    /// <summary>A tiny Fashion-MNIST-shaped IDX folder (the fault suite's: class c is a bright band at rows 2c…2c+3).</summary>
    private string IdxFolder(int train = 32, int test = 16) => Reliability.FaultFixtures.IdxFolder(dir, train, test);

    private static string[] Base(string data, string run, params string[] more) => BaseFor("t2t_vit_7", data, run, more);

    private static string[] BaseFor(string model, string data, string run, params string[] more) =>
    [
        "train", "--model", model, "--data", data, "--img-size", "32", "--epochs", "1", "--batch", "8", "--out", run,
        "--threads", "1", "--warmup-epochs", "0", "--cooldown-epochs", "0", "--set", "aa=null", .. more,
    ];

    [Fact]
    public void ResumingWhatHasNoCheckpointSaysSo()
    {
        string run = Path.Combine(dir, "never-ran");
        var (code, _, err) = Run("train", "--out", run, "--resume");
        Assert.Equal(1, code);
        Assert.Contains($"{run}: no such run folder to resume", err);
        Directory.CreateDirectory(run); // a run folder whose run stopped before its first checkpoint
        (code, _, err) = Run("train", "--out", run, "--resume");
        Assert.Equal(1, code);
        Assert.Contains($"{run}: nothing to resume: no {Path.Combine("checkpoints", "last.ckpt")} there", err);
        Assert.Contains("without --resume", err);
        Assert.Empty(Directory.EnumerateFileSystemEntries(run)); // nothing written
    }

    [Fact]
    public void WithoutAValidationSetTheSummaryNamesTheLastWeights()
    {
        // An image folder with train/ only: nothing to rank epochs by, so there is no best.safetensors to point at.
        string data = Path.Combine(dir, "trainonly"), run = Path.Combine(dir, "run-noval");
        var png = File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "fixtures", "images", "gradient_37x23.png"));
        for (int c = 0; c < 2; c++)
        {
            Directory.CreateDirectory(Path.Combine(data, "train", $"c{c}"));
            for (int i = 0; i < 4; i++) File.WriteAllBytes(Path.Combine(data, "train", $"c{c}", $"img{i}.png"), png);
        }
        var (code, output, err) = Run(Base(data, run));
        Assert.True(code == 0, err);
        Assert.Contains($"done: 1 epochs, 1 steps; no validation set; weights: {Path.Combine(run, "last.safetensors")}", output);
        Assert.True(File.Exists(Path.Combine(run, "last.safetensors")));
        Assert.False(File.Exists(Path.Combine(run, "best.safetensors")));
    }

    [Fact]
    public void TrainsResumesAndRefusesConfigChanges()
    {
        string data = IdxFolder(), run = Path.Combine(dir, "run");
        var (code, output, err) = Run(Base(data, run, "--set", "model_ema=true", "--set", "checkpoint_every=1"));
        Assert.True(code == 0, err);
        Assert.Contains("done: 1 epochs, 4 steps", output);
        Assert.Contains("training t2t_vit_7", err);
        foreach (var f in new[] { "config.yaml", "metrics.jsonl", "best.safetensors", "last.safetensors", "loss.png", "checkpoints/last.ckpt", "checkpoints/epoch_0001.ckpt" })
            Assert.True(File.Exists(Path.Combine(run, f)), f);
        Assert.Contains("model_ema: true", File.ReadAllText(Path.Combine(run, "config.yaml")));
        // Continue the finished run for one more cosine epoch.
        (code, output, err) = Run("train", "--resume", "--out", run, "--epochs", "2", "--threads", "1");
        Assert.True(code == 0, err);
        Assert.Contains("resumed", err);
        Assert.Contains("done: 2 epochs, 8 steps", output);
        Assert.True(File.Exists(Path.Combine(run, "checkpoints", "epoch_0002.ckpt")));
        (code, _, err) = Run("train", "--resume", "--out", run, "--lr", "0.1");
        Assert.Equal(2, code);
        Assert.Contains("'lr' was", err);
        // Same folder without --resume: refused.
        (code, _, err) = Run(Base(data, run));
        Assert.Equal(1, code);
        Assert.Contains("--resume", err);
    }

    [Fact]
    public void WeightsCarryTheRunsPreprocessingAndEvalUsesIt()
    {
        string data = IdxFolder(), run = Path.Combine(dir, "pre");
        var (code, _, err) = Run(Base(data, run, "--set", "mean=[0.25,0.25,0.25]", "--set", "std=[0.5,0.5,0.5]", "--set", "crop_pct=1.0"));
        Assert.True(code == 0, err);
        string weights = Path.Combine(run, "last.safetensors");
        var meta = WeightsMetadata.From(Safetensors.ReadMetadata(weights), weights)!;
        Assert.NotNull(meta.Preprocess);
        Assert.Equal([0.25f, 0.25f, 0.25f], meta.Preprocess!.Mean);
        Assert.Equal([0.5f, 0.5f, 0.5f], meta.Preprocess.Std);
        Assert.Equal(1.0, meta.Preprocess.CropPct);

        // eval reproduces the run's own validation (same images, same preprocessing), not the ImageNet defaults.
        (code, var output, err) = Run("eval", "--weights", weights, "--data", data, "--threads", "1", "--workers", "0", "--json", "--out", run);
        Assert.True(code == 0, err);
        Assert.Contains("preprocessing from the weights: mean [0.25, 0.25, 0.25], std [0.5, 0.5, 0.5], crop_pct 1", err);
        double evalTop1 = System.Text.Json.JsonDocument.Parse(output).RootElement.GetProperty("top1").GetDouble();
        var last = File.ReadLines(Path.Combine(run, "metrics.jsonl")).Last(l => l.Contains("\"val_top1\""));
        double valTop1 = System.Text.Json.JsonDocument.Parse(last).RootElement.GetProperty("val_top1").GetDouble();
        Assert.Equal(valTop1, evalTop1, 3);

        // Flags still win over the weights.
        (code, _, err) = Run("eval", "--weights", weights, "--data", data, "--threads", "1", "--workers", "0", "--crop-pct", "0.5", "--json", "--out", run);
        Assert.True(code == 0, err);
    }

    [Fact]
    public void UnknownRecipeKeyIsAUsageError()
    {
        string recipe = Path.Combine(dir, "bad.yaml");
        File.WriteAllText(recipe, "model: t2t_vit_7\nwarmup_epoch: 3\n");
        var (code, _, err) = Run("train", "--recipe", recipe, "--data", dir);
        Assert.Equal(2, code);
        Assert.Contains(recipe + ":2", err);
        Assert.Contains("'warmup_epoch'", err);
        Assert.Contains("did you mean 'warmup_epochs'", err);
        (code, _, err) = Run("train", "--model", "t2t_vit_7", "--data", dir, "--set", "mixup_alpha=0.8");
        Assert.Equal(2, code);
        Assert.Contains("'mixup_alpha'", err);
    }

    [Fact]
    public void UnwritableRunDirIsNamed()
    {
        string data = IdxFolder(), blocker = Path.Combine(dir, "file");
        File.WriteAllText(blocker, "not a folder");
        var (code, _, err) = Run(Base(data, Path.Combine(blocker, "run")));
        Assert.Equal(1, code);
        Assert.Contains("cannot write to the run folder", err);
        Assert.Contains(blocker, err);
    }

    [Fact]
    public void InitFromFineTunesWithANewHeadAndRejectsAnotherModel()
    {
        string data = IdxFolder(), weights = Path.Combine(dir, "w3.safetensors");
        torch.manual_seed(0);
        using (var m = ModelRegistry.Create("t2t_vit_7", new ModelOptions(3, 32))) ModelWeights.Save(m, "t2t_vit_7", weights);
        var (code, _, err) = Run(Base(data, Path.Combine(dir, "ft"), "--init-from", weights));
        Assert.True(code == 0, err);
        Assert.Contains("head dropped: checkpoint has 3 classes, model 10", err);
        // A new resolution: the position embedding is resampled (2×2 grid → 3×3).
        var args = Base(data, Path.Combine(dir, "ft48"), "--init-from", weights);
        args[Array.IndexOf(args, "--img-size") + 1] = "48";
        (code, _, err) = Run(args);
        Assert.True(code == 0, err);
        Assert.Contains("pos_embed resized [1,5,256] → [1,10,256]", err);
        (code, _, err) = Run(BaseFor("t2t_vit_10", data, Path.Combine(dir, "ft2"), "--init-from", weights));
        Assert.Equal(1, code);
        Assert.Contains("weights do not fit", err);
        Assert.Contains("blocks.7", err);
    }
}
