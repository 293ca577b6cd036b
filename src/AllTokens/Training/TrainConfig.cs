using System.Globalization;
using System.Reflection;
using System.Text;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace AllTokens.Training;

/// <summary>A recipe that cannot be used: names the file (or flag), the key and what is wrong.</summary>
public sealed class RecipeException(string message) : Exception(message);

/// <summary>
/// Every training setting a recipe may name. YAML keys are the snake_case of the property names
/// (<c>warmup_lr</c> ↔ <see cref="WarmupLr"/>), matching timm/LV-ViT/T2T-ViT command-line flags where they exist.
/// Defaults are timm 0.4 / LV-ViT <c>main.py</c> defaults (LVVIT.md §8.1) unless noted.
/// </summary>
public sealed class TrainConfig
{
    // ---- model and data ----
    /// <summary>Registered model name.</summary>
    public string? Model { get; set; }
    /// <summary>Dataset path (Fashion-MNIST IDX folder, CIFAR binary folder, ImageFolder root).</summary>
    public string? Data { get; set; }
    /// <summary>Input resolution; null = the model's default.</summary>
    public int? ImgSize { get; set; }
    /// <summary>Classifier width; null = the dataset's class count.</summary>
    public int? NumClasses { get; set; }
    /// <summary>Train on a class-balanced subset of this many images.</summary>
    public int? Subset { get; set; }
    /// <summary>Validate on a class-balanced subset of this many images.</summary>
    public int? ValSubset { get; set; }
    /// <summary>Loader worker threads.</summary>
    public int Workers { get; set; } = 2;
    /// <summary>A corrupt or unreadable image stops the run instead of being skipped with a warning.</summary>
    public bool StrictData { get; set; }
    /// <summary>Weights to start from (fine-tuning): pos-embed resized, head re-initialised on a class-count change.</summary>
    public string? InitFrom { get; set; }
    /// <summary>Take the EMA weights from an <see cref="InitFrom"/> training checkpoint (T2T transfer: use_ema=True).</summary>
    public bool InitEma { get; set; }

    // ---- schedule ----
    /// <summary>Cosine length in epochs (timm --epochs); the run trains Epochs + CooldownEpochs.</summary>
    public int Epochs { get; set; } = 300;
    public int CooldownEpochs { get; set; } = 10;
    public double WarmupEpochs { get; set; } = 5;
    public double WarmupLr { get; set; } = 1e-6;
    /// <summary>Base learning rate (not scaled by batch size).</summary>
    public double Lr { get; set; } = 5e-4;
    public double MinLr { get; set; } = 1e-5;
    /// <summary>cosine or constant.</summary>
    public string Sched { get; set; } = "cosine";
    /// <summary>Update the lr every optimizer step (timm t_in_epochs=False) instead of every epoch.</summary>
    public bool SchedPerStep { get; set; }

    // ---- optimizer ----
    /// <summary>Images per optimizer step before accumulation (per micro-batch).</summary>
    public int BatchSize { get; set; } = 64;
    public int? ValBatchSize { get; set; }
    /// <summary>Micro-batches per optimizer step.</summary>
    public int GradAccum { get; set; } = 1;
    /// <summary>adamw or sgd.</summary>
    public string Opt { get; set; } = "adamw";
    public double OptEps { get; set; } = 1e-8;
    public double[] OptBetas { get; set; } = [0.9, 0.999];
    /// <summary>SGD momentum.</summary>
    public double Momentum { get; set; } = 0.9;
    public bool Nesterov { get; set; }
    public double WeightDecay { get; set; } = 0.05;
    /// <summary>timm's filter_bias_and_bn: no decay for 1-D tensors, biases and the model's list; false decays everything (torch SGD in the T2T transfer script).</summary>
    public bool FilterBiasAndBn { get; set; } = true;
    /// <summary>Clip gradients to this global L2 norm; null = off.</summary>
    public double? ClipGrad { get; set; }
    /// <summary>Backbone lr multiplier (head keeps the full lr); null = one lr for all (T2T_VIT.md §6.1).</summary>
    public double? TransferRatio { get; set; }
    /// <summary>Parameter-name prefixes kept frozen (out of the optimizer).</summary>
    public string[] Freeze { get; set; } = [];

    // ---- regularisation ----
    public double Smoothing { get; set; } = 0.1;
    /// <summary>Mixup α (0 = off).</summary>
    public double Mixup { get; set; }
    /// <summary>CutMix α (0 = off).</summary>
    public double Cutmix { get; set; }
    public double MixupProb { get; set; } = 1.0;
    public double MixupSwitchProb { get; set; } = 0.5;
    /// <summary>Only "batch" (timm's default mode) is implemented.</summary>
    public string MixupMode { get; set; } = "batch";
    public double DropPath { get; set; } = 0.1;
    public double Drop { get; set; }
    public bool ModelEma { get; set; }
    public double ModelEmaDecay { get; set; } = 0.99996;

    // ---- train transforms (consumed by the data loader) ----
    /// <summary>timm, cifar (resize + padded random crop + flip), or none.</summary>
    public string TrainTransform { get; set; } = "timm";
    /// <summary>RandAugment spec, e.g. rand-m9-mstd0.5-inc1; null = off.</summary>
    public string? Aa { get; set; } = "rand-m9-mstd0.5-inc1";
    public double Reprob { get; set; } = 0.25;
    public string Remode { get; set; } = "pixel";
    public int Recount { get; set; } = 1;
    public double Hflip { get; set; } = 0.5;
    public double[] Scale { get; set; } = [0.08, 1.0];
    public double[] Ratio { get; set; } = [3.0 / 4, 4.0 / 3];
    public double ColorJitter { get; set; } = 0.4;
    public string TrainInterpolation { get; set; } = "random";
    /// <summary>Eval crop fraction; null = the model's.</summary>
    public double? CropPct { get; set; }
    /// <summary>Normalisation mean; null = ImageNet's.</summary>
    public double[]? Mean { get; set; }
    public double[]? Std { get; set; }

    // ---- token labeling (the token-label task) ----
    /// <summary>Train with token labels (stored in <see cref="TokenLabelData"/>, or from <see cref="Teacher"/> online).</summary>
    public bool TokenLabel { get; set; }
    /// <summary>Label store written by <c>alltokens label</c> (or imported official label data); <c>ground-truth</c> trains every token on the image label (no label data).</summary>
    public string? TokenLabelData { get; set; }
    /// <summary>Token grid side L of the labels (img_size/16); 1 is ReLabel mode (class token only). Default: the model's grid.</summary>
    public int? TokenLabelSize { get; set; }
    /// <summary>β, the weight of the mean token loss: 0.5 in the paper; the official recipes and code use 1.0.</summary>
    public double DenseWeight { get; set; } = 0.5;
    public double ClsWeight { get; set; } = 1.0;
    /// <summary>MixToken on the patch tokens (LV-ViT models with a token head).</summary>
    public bool MixToken { get; set; } = true;
    /// <summary>Online token labels: this annotator model labels every augmented batch (no store needed).</summary>
    public string? Teacher { get; set; }
    /// <summary>Weights of <see cref="Teacher"/>.</summary>
    public string? TeacherWeights { get; set; }
    /// <summary>Blend the class-token target with the ground truth: none (official default), corrected, or official (--ground-truth).</summary>
    public string GroundTruth { get; set; } = "none";
    /// <summary>Crop boxes in the official (top, left, bottom, right) axis order, to reproduce official label data exactly.</summary>
    public bool OfficialBoxAxes { get; set; }

    // ---- run ----
    public int Seed { get; set; } = 42;
    /// <summary>bf16 compute with fp32 master weights and optimizer state.</summary>
    public bool Bf16 { get; set; }
    /// <summary>Write a metrics line every this many optimizer steps.</summary>
    public int LogInterval { get; set; } = 50;
    /// <summary>Keep a numbered checkpoint every this many epochs (0 = only last/best).</summary>
    public int CheckpointEvery { get; set; }
    /// <summary>Also write the <c>last</c> checkpoint every this many optimizer steps (0 = at epoch ends only).</summary>
    public int SaveEverySteps { get; set; }
    /// <summary>Validate every this many epochs (and always after the last).</summary>
    public int EvalEvery { get; set; } = 1;
    /// <summary>Data parallelism: auto (Open MPI when launched by mpirun), mpi (required) or none (one process).</summary>
    public string Distributed { get; set; } = "auto";

    // ---- schema ----

    /// <summary>One recipe key.</summary>
    public sealed record Key(string Name, PropertyInfo Property)
    {
        public Type Type => Property.PropertyType;
    }

    private static readonly Lazy<IReadOnlyList<Key>> keys = new(() =>
        typeof(TrainConfig).GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.CanWrite).Select(p => new Key(SnakeCase(p.Name), p)).ToList());

    /// <summary>Every known key, in declaration order.</summary>
    public static IReadOnlyList<Key> Keys => keys.Value;

    /// <summary>snake_case of a PascalCase name (ImgSize → img_size, Bf16 → bf16).</summary>
    public static string SnakeCase(string name)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < name.Length; i++)
        {
            char c = name[i];
            if (char.IsUpper(c) && i > 0) sb.Append('_');
            sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }

    private static Key Find(string key, string where)
    {
        var k = Keys.FirstOrDefault(k => k.Name == key);
        if (k is not null) return k;
        string norm = key.Replace('-', '_').ToLowerInvariant();
        // Close by edit distance, by the same words in another order (lr_min → min_lr), or by containing the query.
        static string Words(string k) => string.Join('_', k.Split('_').Order(StringComparer.Ordinal));
        var close = Keys.Select(k => (k.Name, d: Words(k.Name) == Words(norm) ? 0 : EditDistance.Between(norm, k.Name)))
            .Where(x => x.d <= Math.Max(2, norm.Length / 3) || (norm.Length >= 3 && x.Name.Contains(norm, StringComparison.Ordinal)))
            .OrderBy(x => x.d).Take(3).Select(x => x.Name).ToList();
        throw new RecipeException($"{where}: unknown key '{key}'" + (close.Count > 0 ? $"; did you mean {string.Join(" or ", close.Select(c => $"'{c}'"))}?" : "") +
                                  " (`alltokens train --keys` lists every key)");
    }

    /// <summary>Sets <paramref name="key"/> from text (a flag value); lists as comma-separated values or [a, b].</summary>
    public void Set(string key, string value, string where)
    {
        var k = Find(key, where);
        string v = value.Trim();
        if (k.Type.IsArray && v is "null" or "~" && IsNullableRef(k.Property))
        {
            k.Property.SetValue(this, null);
            return;
        }
        if (k.Type.IsArray && v.StartsWith('[') && v.EndsWith(']')) v = v[1..^1];
        object? parsed = k.Type.IsArray
            ? ParseList(k, v.Length == 0 ? [] : v.Split(',').Select(s => s.Trim()).ToList(), where)
            : ParseScalar(k, v, where);
        k.Property.SetValue(this, parsed);
    }

    private static object? ParseScalar(Key k, string s, string where)
    {
        var t = Nullable.GetUnderlyingType(k.Type) ?? k.Type;
        bool nullable = Nullable.GetUnderlyingType(k.Type) is not null || (t == typeof(string) && IsNullableRef(k.Property));
        if (s is "~" or "null" or "" && nullable) return null;
        string Bad(string what) => $"{where}: key '{k.Name}' expects {what}, got '{s}'";
        if (t == typeof(string)) return s.Length == 0 ? throw new RecipeException(Bad("a non-empty string")) : s;
        if (t == typeof(int)) return int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int i) ? i : throw new RecipeException(Bad("an integer"));
        if (t == typeof(double))
            return double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) && double.IsFinite(d) ? d : throw new RecipeException(Bad("a number"));
        if (t == typeof(bool))
            return s.ToLowerInvariant() switch { "true" or "yes" or "on" => true, "false" or "no" or "off" => false, _ => throw new RecipeException(Bad("true or false")) };
        throw new InvalidOperationException($"unsupported config type {t}");
    }

    private static object ParseList(Key k, List<string> items, string where)
    {
        var elem = k.Type.GetElementType()!;
        if (elem == typeof(string)) return items.ToArray();
        return items.Select(s => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) && double.IsFinite(d)
            ? d : throw new RecipeException($"{where}: key '{k.Name}' expects a list of numbers, got '{s}'")).ToArray();
    }

    private static bool IsNullableRef(PropertyInfo p) =>
        new NullabilityInfoContext().Create(p).WriteState == NullabilityState.Nullable;

    /// <summary>Applies a YAML recipe file (a flat mapping of known keys) on top of this config.</summary>
    public void ApplyFile(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such recipe file", path);
        var stream = new YamlStream();
        try
        {
            using var reader = new StreamReader(path);
            stream.Load(reader);
        }
        catch (YamlException e)
        {
            throw new RecipeException($"{path}:{e.Start.Line}: malformed YAML: {e.Message}");
        }
        catch (InvalidOperationException e)
        {
            // YamlDotNet's scanner throws this instead of a YamlException on some malformed input (an unclosed
            // flow sequence such as "lr: [0.1" followed by more keys; found by the hostile-input suite).
            throw new RecipeException($"{path}: malformed YAML (the parser stopped: {e.Message})");
        }
        if (stream.Documents.Count == 0) return;
        if (stream.Documents[0].RootNode is not YamlMappingNode root)
            throw new RecipeException($"{path}: a recipe is a mapping of keys to values (key: value lines)");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (keyNode, valueNode) in root.Children)
        {
            string where = $"{path}:{keyNode.Start.Line}";
            string key = ((YamlScalarNode)keyNode).Value ?? "";
            if (!seen.Add(key)) throw new RecipeException($"{where}: key '{key}' given twice");
            var k = Find(key, where);
            object? value = valueNode switch
            {
                YamlSequenceNode seq when k.Type.IsArray => ParseList(k, seq.Children.Select(c => c is YamlScalarNode s ? s.Value ?? "" :
                    throw new RecipeException($"{where}: key '{key}' expects a flat list")).ToList(), where),
                YamlScalarNode s when k.Type.IsArray && (s.Value is null or "~" or "null") && IsNullableRef(k.Property) => null,
                YamlScalarNode s when k.Type.IsArray => ParseList(k, (s.Value ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries).Select(x => x.Trim()).ToList(), where),
                YamlScalarNode s => ParseScalar(k, s.Value ?? "", where),
                _ => throw new RecipeException($"{where}: key '{key}' expects a {(k.Type.IsArray ? "list" : "single value")}"),
            };
            k.Property.SetValue(this, value);
        }
    }

    /// <summary>Loads a recipe file on top of the defaults.</summary>
    public static TrainConfig Load(string path)
    {
        var c = new TrainConfig();
        c.ApplyFile(path);
        return c;
    }

    /// <summary>A copy.</summary>
    public TrainConfig Clone()
    {
        var c = new TrainConfig();
        foreach (var k in Keys)
        {
            var v = k.Property.GetValue(this);
            k.Property.SetValue(c, v is Array a ? a.Clone() : v);
        }
        return c;
    }

    /// <summary>The effective config as YAML that <see cref="ApplyFile"/> reads back to an equal config.</summary>
    public string ToYaml(string? header = null)
    {
        var sb = new StringBuilder();
        if (header is not null) foreach (var line in header.Split('\n')) sb.Append("# ").AppendLine(line);
        foreach (var k in Keys) sb.Append(k.Name).Append(": ").AppendLine(Format(k.Property.GetValue(this)));
        return sb.ToString();
    }

    /// <summary>Value as YAML text.</summary>
    public static string Format(object? v) => v switch
    {
        null => "null",
        bool b => b ? "true" : "false",
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        int i => i.ToString(CultureInfo.InvariantCulture),
        string s => Quote(s),
        double[] a => "[" + string.Join(", ", a.Select(x => x.ToString("R", CultureInfo.InvariantCulture))) + "]",
        string[] a => "[" + string.Join(", ", a.Select(Quote)) + "]",
        _ => throw new InvalidOperationException($"unsupported config value {v.GetType()}"),
    };

    private static string Quote(string s) => "'" + s.Replace("'", "''") + "'";

    /// <summary>Key → value text, for equality checks and the checkpoint.</summary>
    public Dictionary<string, string> ToDictionary() => Keys.ToDictionary(k => k.Name, k => Format(k.Property.GetValue(this)));

    /// <summary>Checks ranges and choices; <paramref name="where"/> names the source for messages.</summary>
    public void Validate(string where)
    {
        void Require(bool ok, string key, string what)
        {
            if (!ok) throw new RecipeException($"{where}: '{key}' {what}, got {Format(Keys.First(k => k.Name == key).Property.GetValue(this))}");
        }
        Require(Epochs >= 1, "epochs", "must be ≥ 1");
        Require(CooldownEpochs >= 0, "cooldown_epochs", "must be ≥ 0");
        Require(WarmupEpochs >= 0, "warmup_epochs", "must be ≥ 0");
        Require(Lr > 0, "lr", "must be > 0");
        Require(WarmupLr >= 0, "warmup_lr", "must be ≥ 0");
        Require(MinLr >= 0, "min_lr", "must be ≥ 0");
        Require(Sched is "cosine" or "constant", "sched", "must be cosine or constant");
        Require(BatchSize >= 1, "batch_size", "must be ≥ 1");
        Require(ValBatchSize is null or >= 1, "val_batch_size", "must be ≥ 1");
        Require(GradAccum >= 1, "grad_accum", "must be ≥ 1");
        Require(Opt is "adamw" or "sgd", "opt", "must be adamw or sgd");
        Require(OptBetas.Length == 2 && OptBetas.All(b => b is >= 0 and < 1), "opt_betas", "must be two numbers in [0, 1)");
        Require(OptEps > 0, "opt_eps", "must be > 0");
        Require(Momentum is >= 0 and < 1, "momentum", "must be in [0, 1)");
        Require(WeightDecay >= 0, "weight_decay", "must be ≥ 0");
        Require(ClipGrad is null or > 0, "clip_grad", "must be > 0");
        Require(TransferRatio is null or > 0, "transfer_ratio", "must be > 0");
        Require(Smoothing is >= 0 and < 1, "smoothing", "must be in [0, 1)");
        Require(Mixup >= 0, "mixup", "must be ≥ 0");
        Require(Cutmix >= 0, "cutmix", "must be ≥ 0");
        Require(MixupProb is >= 0 and <= 1, "mixup_prob", "must be in [0, 1]");
        Require(MixupSwitchProb is >= 0 and <= 1, "mixup_switch_prob", "must be in [0, 1]");
        Require(MixupMode == "batch", "mixup_mode", "must be batch (timm's elem/pair modes are not implemented)");
        Require(DropPath is >= 0 and < 1, "drop_path", "must be in [0, 1)");
        Require(Drop is >= 0 and < 1, "drop", "must be in [0, 1)");
        Require(ModelEmaDecay is >= 0 and <= 1, "model_ema_decay", "must be in [0, 1]");
        // The upper bounds match predict/eval's flags: a ViT at img_size 100000 allocated 20 GB for its position
        // embedding before saying anything (found by the hostile-input suite).
        Require(ImgSize is null or (>= 16 and <= 8192), "img_size", "must be in [16, 8192]");
        Require(NumClasses is null or >= 1, "num_classes", "must be ≥ 1");
        Require(Subset is null or >= 1, "subset", "must be ≥ 1");
        Require(ValSubset is null or >= 1, "val_subset", "must be ≥ 1");
        Require(Workers is >= 0 and <= 256, "workers", "must be in [0, 256]");
        Require(LogInterval >= 1, "log_interval", "must be ≥ 1");
        Require(CheckpointEvery >= 0, "checkpoint_every", "must be ≥ 0");
        Require(SaveEverySteps >= 0, "save_every_steps", "must be ≥ 0");
        Require(EvalEvery >= 1, "eval_every", "must be ≥ 1");
        Require(TrainTransform is "timm" or "cifar" or "none", "train_transform", "must be timm, cifar or none");
        Require(Seed >= 0, "seed", "must be ≥ 0");
        Require(Distributed is "auto" or "mpi" or "none", "distributed", "must be auto, mpi or none");
        Require(GroundTruth is "none" or "corrected" or "official", "ground_truth", "must be none, corrected or official");
        Require(DenseWeight >= 0, "dense_weight", "must be ≥ 0");
        Require(ClsWeight >= 0, "cls_weight", "must be ≥ 0");
        Require(TokenLabelSize is null or >= 1, "token_label_size", "must be ≥ 1");
        Require(Teacher is null || TeacherWeights is not null, "teacher_weights", "must be set with teacher");
        Require(Remode is "pixel" or "rand" or "const", "remode", "must be pixel, rand or const");
        Require(TrainInterpolation is "random" or "bilinear" or "bicubic", "train_interpolation", "must be random, bilinear or bicubic");
        Require(Reprob is >= 0 and <= 1, "reprob", "must be in [0, 1]");
        Require(Hflip is >= 0 and <= 1, "hflip", "must be in [0, 1]");
        Require(Scale.Length == 2 && Scale[0] > 0 && Scale[0] <= Scale[1] && Scale[1] <= 1, "scale", "must be two numbers 0 < min ≤ max ≤ 1");
        Require(Ratio.Length == 2 && Ratio[0] > 0 && Ratio[0] <= Ratio[1], "ratio", "must be two numbers 0 < min ≤ max");
        if (Aa is { Length: > 0 } aa && aa != "none")
        {
            try { AllTokens.Data.Transforms.RandAugmentOptions.Parse(aa); }
            catch (Exception e) when (e is ArgumentException or FormatException) { throw new RecipeException($"{where}: 'aa' {e.Message}"); }
        }
    }

    /// <summary>The schedule this config describes.</summary>
    public LrSchedule Schedule() => new(Sched == "constant" ? ScheduleKind.Constant : ScheduleKind.Cosine,
        Epochs, WarmupEpochs, WarmupLr, MinLr, CooldownEpochs, SchedPerStep);

    /// <summary>Mixup settings of this config.</summary>
    public MixupOptions MixupOptions() => new(Mixup, Cutmix, MixupProb, MixupSwitchProb);
}
