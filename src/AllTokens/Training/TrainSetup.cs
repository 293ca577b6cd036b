using AllTokens.Checkpoints;
using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>A ready-to-run training session: model, task, data and trainer built from one config.</summary>
public sealed class TrainSession : IDisposable
{
    internal TrainSession(TrainConfig config, ImageClassifier model, ITrainTask task, TrainDataSources data, Trainer trainer, LoadReport? initReport, bool resume)
    {
        Config = config;
        Model = model;
        Task = task;
        Data = data;
        Trainer = trainer;
        InitReport = initReport;
        Resume = resume;
    }

    public TrainConfig Config { get; }
    public ImageClassifier Model { get; }
    public ITrainTask Task { get; }
    public TrainDataSources Data { get; }
    public Trainer Trainer { get; }
    /// <summary>What <c>init_from</c> loaded (dropped head, resized pos-embed), or null.</summary>
    public LoadReport? InitReport { get; }
    public bool Resume { get; }

    public TrainResult Run(CancellationToken cancel = default) => Trainer.Run(Resume, cancel);

    public void Dispose()
    {
        Trainer.Dispose();
        Model.Dispose();
    }
}

/// <summary>Builds a <see cref="TrainSession"/> from a config: the library call behind <c>alltokens train</c>.</summary>
public static class TrainSetup
{
    /// <summary>Keys a resume may change; every other key must equal the checkpoint's.</summary>
    public static readonly IReadOnlySet<string> ResumableKeys = new HashSet<string>
        { "epochs", "cooldown_epochs", "workers", "log_interval", "eval_every", "checkpoint_every", "save_every_steps", "data" };

    /// <summary>
    /// The config a resume runs with: the checkpoint's, with <paramref name="overrides"/> applied; changing a key outside
    /// <see cref="ResumableKeys"/> is an error naming it.
    /// </summary>
    public static TrainConfig ResumeConfig(string runDir, IReadOnlyDictionary<string, string> overrides)
    {
        var ck = TrainCheckpoint.Load(Trainer.LastCheckpointPath(runDir));
        var config = new TrainConfig();
        foreach (var (k, v) in ck.State.Config)
            config.Set(k, v.StartsWith('\'') && v.EndsWith('\'') && v.Length >= 2 ? v[1..^1].Replace("''", "'") : v, ck.Path);
        var saved = config.ToDictionary();
        foreach (var (k, v) in overrides) config.Set(k, v, "command line");
        foreach (var (k, v) in config.ToDictionary())
            if (saved[k] != v && !ResumableKeys.Contains(k))
                throw new RecipeException($"--resume: '{k}' was {saved[k]} in {ck.Path}, now {v}; a resumed run keeps its config " +
                                          $"(changeable: {string.Join(", ", ResumableKeys.Order(StringComparer.Ordinal))})");
        return config;
    }

    /// <summary>Model, weights (<c>init_from</c>), data, task and trainer for <paramref name="config"/>.</summary>
    public static TrainSession Create(TrainConfig config, string runDir, bool resume, Device? device = null, IProgress<TrainProgress>? progress = null)
    {
        config.Validate("config");
        string name = config.Model ?? throw new ArgumentException("no model given: pass --model NAME (see `alltokens models`)");
        var info = ModelRegistry.Get(name);
        int imgSize = config.ImgSize ?? info.Defaults.ImgSize;
        var data = TrainData.Open(config, imgSize);
        int numClasses = config.NumClasses ?? data.ClassNames.Count;
        if (numClasses < data.ClassNames.Count)
            throw new ArgumentException($"num_classes {numClasses} is smaller than the {data.ClassNames.Count} classes of {data.Train.Dataset.Source}");
        // Seed before building: the initial weights (and T2T's fixed Performer projections) come from torch's default
        // generator, so without this two runs with the same seed started from different models (found by the kill -9
        // fault test). The trainer seeds again before the first step, or restores the generator on resume.
        torch.manual_seed(config.Seed);
        var model = info.Create(new ModelOptions(numClasses, imgSize, config.DropPath, config.Drop));
        try
        {
            LoadReport? report = null;
            if (config.InitFrom is { } init && !resume)
            {
                var file = ModelWeights.Read(init, config.InitEma);
                report = WeightLoader.LoadInto(model, file.StateDict, init);
            }
            var task = CreateTask(config, model);
            var trainer = new Trainer(config, task, data.Train, data.Val, new RunInfo(runDir, name, data.ClassNames, device), progress);
            return new TrainSession(config, model, task, data, trainer, report, resume);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>The task for a config: plain classification, or token labeling (its own issue) when <c>token_label</c> is set.</summary>
    public static ITrainTask CreateTask(TrainConfig config, ImageClassifier model)
    {
        if (config.TokenLabel)
            throw new NotSupportedException("token_label: the token-labeling task is not part of this build yet; set token_label: false to train with class labels only");
        return new ClassificationTask(model, config.Smoothing, config.MixupOptions(), (ulong)config.Seed);
    }
}
