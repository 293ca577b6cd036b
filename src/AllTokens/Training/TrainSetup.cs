using AllTokens.Checkpoints;
using AllTokens.Distributed;
using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>A ready-to-run training session: model, task, data and trainer built from one config.</summary>
public sealed class TrainSession : IDisposable
{
    private readonly List<IDisposable> owned;

    internal TrainSession(TrainConfig config, ImageClassifier model, ITrainTask task, TrainDataSources data, Trainer trainer, LoadReport? initReport, bool resume,
        List<IDisposable> owned)
    {
        this.owned = owned;
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
        foreach (var o in owned) o.Dispose();
    }
}

/// <summary>Builds a <see cref="TrainSession"/> from a config: the library call behind <c>alltokens train</c>.</summary>
public static class TrainSetup
{
    /// <summary>Keys a resume may change; every other key must equal the checkpoint's.</summary>
    public static readonly IReadOnlySet<string> ResumableKeys = new HashSet<string>
        { "epochs", "cooldown_epochs", "workers", "log_interval", "eval_every", "checkpoint_every", "save_every_steps", "data", "distributed" };

    /// <summary>
    /// The config a resume runs with: the checkpoint's, with <paramref name="overrides"/> applied; changing a key outside
    /// <see cref="ResumableKeys"/> is an error naming it.
    /// </summary>
    public static TrainConfig ResumeConfig(string runDir, IReadOnlyDictionary<string, string> overrides)
    {
        string last = Trainer.LastCheckpointPath(runDir);
        if (!File.Exists(last))
            throw new FileNotFoundException(Directory.Exists(runDir)
                ? $"{runDir}: nothing to resume: no {Path.GetRelativePath(runDir, last)} there (a run writes it at its first checkpoint); start the run without --resume"
                : $"{runDir}: no such run folder to resume");
        var ck = TrainCheckpoint.Load(last);
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

    /// <summary>
    /// Model, weights (<c>init_from</c>), data, task and trainer for <paramref name="config"/>. With a data-parallel
    /// <paramref name="group"/> (made by the caller from <c>distributed</c>, see <see cref="ProcessGroups.Create"/>) the
    /// loaders are sharded for this rank and the trainer averages across the ranks; the session does not own the group.
    /// </summary>
    public static TrainSession Create(TrainConfig config, string runDir, bool resume, Device? device = null, IProgress<TrainProgress>? progress = null,
        Action<string>? warn = null, IProcessGroup? group = null)
    {
        config.Validate("config");
        string name = config.Model ?? throw new ArgumentException("no model given: pass --model NAME (see `alltokens models`)");
        var info = ModelRegistry.Get(name);
        int imgSize = config.ImgSize ?? info.Defaults.ImgSize;
        var data = TrainData.Open(config, imgSize, info.Defaults, warn, group);
        int numClasses = config.NumClasses ?? data.ClassNames.Count;
        if (numClasses < data.ClassNames.Count)
            throw new ArgumentException($"num_classes {numClasses} is smaller than the {data.ClassNames.Count} classes of {data.Train.Dataset.Source}");
        // The initial weights follow the seed, so a rerun (or the demo) starts from the same model.
        torch.manual_seed(config.Seed);
        var model = info.Create(new ModelOptions(numClasses, imgSize, config.DropPath, config.Drop));
        var owned = new List<IDisposable>();
        try
        {
            LoadReport? report = null;
            if (config.InitFrom is { } init && !resume)
            {
                var file = ModelWeights.Read(init, config.InitEma);
                report = WeightLoader.LoadInto(model, file.StateDict, init);
            }
            var task = CreateTask(config, model, data, owned, device);
            var trainer = new Trainer(config, task, data.Train, data.Val, new RunInfo(runDir, name, data.ClassNames, device, data.Preprocessing), progress, group);
            return new TrainSession(config, model, task, data, trainer, report, resume, owned);
        }
        catch
        {
            model.Dispose();
            foreach (var o in owned) o.Dispose();
            throw;
        }
    }

    /// <summary>
    /// <c>token_label_data</c> value for training without label data (official 2-D targets): the class token and every
    /// patch token learn the image's smoothed one-hot label (transfer recipe; also how the demo trains its annotator).
    /// </summary>
    public const string GroundTruthLabels = "ground-truth";

    /// <summary>
    /// The task for a config: plain classification (with Mixup/CutMix if set), or token labeling when <c>token_label</c>
    /// is set — labels from the store in <c>token_label_data</c> (checked against the training set) or, online, from
    /// the <c>teacher</c> model.
    /// </summary>
    public static ITrainTask CreateTask(TrainConfig config, ImageClassifier model, TrainDataSources? data = null, ICollection<IDisposable>? owned = null,
        Device? device = null)
    {
        if (!config.TokenLabel)
            return new ClassificationTask(model, config.Smoothing, config.MixupOptions(), (ulong)config.Seed);
        if (config.TokenLabelData is null && config.Teacher is null)
            throw new RecipeException("token_label: true needs token_label_data (a store written by `alltokens label`, or " +
                                      $"'{GroundTruthLabels}' for 2-D targets) or teacher + teacher_weights (online labels)");
        if (config.Mixup > 0 || config.Cutmix > 0)
            throw new RecipeException("token_label: Mixup/CutMix are off in every token-labeling recipe (MixToken replaces them); set mixup and cutmix to 0");
        int labelSize = config.TokenLabelSize ?? model.GridSize;
        var targets = new TokenLabeling.DenseTargetOptions(model.NumClasses, labelSize, config.Smoothing, config.OfficialBoxAxes,
            config.GroundTruth switch
            {
                "corrected" => TokenLabeling.GroundTruthBlend.Corrected,
                "official" => TokenLabeling.GroundTruthBlend.Official,
                _ => TokenLabeling.GroundTruthBlend.None,
            });
        bool groundTruth = config.TokenLabelData == GroundTruthLabels;
        var loss = new TokenLabeling.TokenLabelLossOptions(config.ClsWeight, config.DenseWeight,
            labelSize == 1 ? TokenLabeling.TokenLabelLossMode.ReLabel
            : groundTruth ? TokenLabeling.TokenLabelLossMode.TwoD
            : TokenLabeling.TokenLabelLossMode.Dense);
        TokenLabeling.ITokenTargetSource source;
        if (groundTruth)
            source = new TokenLabeling.GroundTruthTargetSource();
        else if (config.Teacher is { } teacherName)
        {
            var loaded = ModelWeights.Load(new ModelRequest(teacherName, config.TeacherWeights, model.NumClasses));
            owned?.Add(loaded.Model);
            loaded.Model.to(device ?? CPU);
            source = new TokenLabeling.TeacherTargetSource(loaded.Model);
        }
        else
        {
            if (data is null) throw new ArgumentException("token labels from a store need the training data to look them up");
            string path = config.TokenLabelData!;
            var store = TokenLabeling.LabelStore.Open(path);
            owned?.Add(store);
            source = TokenLabeling.StoredTargetSource.FromStore(store, data.Train.Dataset);
        }
        return new TokenLabeling.TokenLabelTask(model, source,
            new TokenLabeling.TokenLabelTaskOptions(targets, loss, config.MixToken && model.HasTokenHead, (ulong)config.Seed));
    }
}
