using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using AllTokens.Checkpoints;
using AllTokens.Data;
using AllTokens.Distributed;
using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>What the trainer reports while it runs (the CLI draws it; the library never writes to the console).</summary>
public sealed record TrainProgress(TrainProgressKind Kind, int Epoch, int TotalEpochs, int Batch, int BatchesPerEpoch, long GlobalStep,
    double Loss, double Lr, double ImagesPerSecond, TimeSpan Eta, string? Message = null, JsonObject? Record = null);

public enum TrainProgressKind
{
    /// <summary>After an optimizer step.</summary>
    Step,
    /// <summary>After an epoch's validation and checkpoint; <see cref="TrainProgress.Record"/> holds its metrics.</summary>
    Epoch,
    /// <summary>A note (resume, checkpoint written, weights loaded).</summary>
    Message,
}

/// <summary>The loss or the weights stopped being finite numbers; the run stops and keeps its last good checkpoint.</summary>
public sealed class NonFiniteLossException(string message) : Exception(message);

/// <summary>How a run ended.</summary>
public sealed record TrainResult(string RunDir, int EpochsDone, long GlobalStep, EvalResult? LastEval, EvalResult? LastEmaEval, double? BestMetric, int? BestEpoch);

/// <summary>Where a run lives and what it is.</summary>
/// <param name="RunDir">Run folder: config.yaml, metrics.jsonl, plots, checkpoints/, last/best weights.</param>
/// <param name="ModelName">Registry name written into checkpoints and exported weights.</param>
public sealed record RunInfo(string RunDir, string ModelName, IReadOnlyList<string>? ClassNames = null, Device? Device = null,
    Checkpoints.Preprocessing? Preprocessing = null);

/// <summary>
/// The training loop (minGPT-style: knows only <see cref="ITrainTask"/>). Epochs of micro-batches, gradient
/// accumulation, global-norm clipping, our AdamW/SGD over no-decay groups, timm cosine lr per epoch or per step,
/// EMA, bf16 compute with fp32 master weights, validation of model and EMA each epoch, metrics.jsonl and plots,
/// single-file atomic checkpoints (last, best, every N epochs) and exact resume.
/// <para>Data parallel (a process group of N &gt; 1 ranks, each with a sharded <see cref="DataLoader"/>): rank 0's
/// initial state (after init-from or resume) is broadcast; every micro-batch all-reduces its loss/accuracy sums and
/// one failure and one non-finite flag per rank, so all ranks stop together; gradients are averaged in one flat bucket
/// after backward (and accumulation) — TorchSharp 0.107 has no tensor or backward hooks to overlap the all-reduce with
/// backward. BatchNorm keeps per-rank statistics while training (no SyncBN, as the official LV-ViT/timm code) and its
/// buffers are averaged across ranks before each evaluation and checkpoint (timm's distribute_bn reduce). Validation
/// is sharded and its sums all-reduced. Only rank 0 reports progress and writes the run folder.</para>
/// </summary>
public sealed class Trainer : IDisposable
{
    /// <summary>One state-dict entry: the model's tensor and, for parameters in bf16 mode, its fp32 master.</summary>
    private sealed record Entry(string Name, Tensor ModelTensor, Tensor? Master, bool IsParameter)
    {
        public Tensor Canonical => Master ?? ModelTensor;
    }

    private readonly TrainConfig config;
    private readonly ITrainTask task;
    private readonly ImageClassifier model;
    private readonly IBatchSource train;
    private readonly IBatchSource? val;
    private readonly RunInfo run;
    private readonly IProgress<TrainProgress>? progress;
    private readonly List<Entry> entries;
    private readonly Optimizer optimizer;
    private readonly ModelEma? ema;
    private readonly LrSchedule schedule;
    private readonly ScalarType computeType;
    private readonly Device device;
    private readonly IProcessGroup group;
    private readonly string? tracePath = Environment.GetEnvironmentVariable(ParamTraceVariable);

    private int epoch, batchInEpoch;
    private long globalStep;
    private double? bestMetric;
    private int? bestEpoch;
    private double epochLossSum;
    private long epochCorrect, epochImages;

    /// <summary>
    /// Environment variable: when set to a path, every rank appends one JSON line per optimizer step (step, SHA-256 of
    /// the fp32 parameter bytes, their sum) to <c>PATH.rank{r}</c>, to check that the ranks stay identical. Inert unless set.
    /// </summary>
    public const string ParamTraceVariable = "ALLTOKENS_PARAM_TRACE";

    /// <param name="group">The data-parallel ranks (null: one process); <paramref name="train"/> and <paramref name="val"/>
    /// must then be <see cref="DataLoader"/>s sharded for this rank.</param>
    public Trainer(TrainConfig config, ITrainTask task, IBatchSource train, IBatchSource? val, RunInfo run, IProgress<TrainProgress>? progress = null,
        IProcessGroup? group = null)
    {
        config.Validate("config");
        this.group = group ?? SingleProcess.Instance;
        if (this.group.Size > 1)
            foreach (var (source, what) in new[] { (train, "training"), (val, "validation") })
                if (source is not null && (source is not DataLoader dl || dl.Options.WorldSize != this.group.Size || dl.Options.Rank != this.group.Rank))
                    throw new ArgumentException($"{what} data: a data-parallel run of {this.group.Size} ranks needs a DataLoader sharded for rank {this.group.Rank} " +
                                                $"(LoaderOptions Rank/WorldSize), got {source.GetType().Name}");
        this.config = config;
        this.task = task;
        this.train = train;
        this.val = val;
        this.run = run;
        this.progress = progress;
        model = task.Model;
        device = run.Device ?? torch.CPU;
        schedule = config.Schedule();
        computeType = config.Bf16 ? ScalarType.BFloat16 : ScalarType.Float32;
        if (train.BatchesPerEpoch < 1)
            throw new InvalidOperationException($"{train.Dataset.Source}: no training batches (dataset of {train.Dataset.Count} images, global batch {GlobalBatchSize})");

        model.to(device);
        foreach (var (name, p) in model.named_parameters())
            if (ParameterGroups.IsFrozen(name, config.Freeze)) p.requires_grad_(false);
        var parameterNames = new HashSet<string>(model.named_parameters().Select(kv => kv.name), StringComparer.Ordinal);
        // Masters are taken before the cast so they keep full fp32 precision.
        entries = ModuleState.Ordered(model).Select(kv =>
        {
            bool isParam = parameterNames.Contains(kv.Key);
            Tensor? master = null;
            if (config.Bf16 && isParam)
            {
                master = kv.Value.detach().to(ScalarType.Float32, copy: true);
                master.DetachFromDisposeScope();
            }
            return new Entry(kv.Key, kv.Value, master, isParam);
        }).ToList();
        if (config.Bf16) model.to(ScalarType.BFloat16);
        // After a dtype cast TorchSharp may hand back new tensor objects: re-read the model's tensors.
        var current = ModuleState.Ordered(model).ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
        entries = entries.Select(e => e with { ModelTensor = current[e.Name] }).ToList();

        var trainable = entries.Where(e => e.IsParameter && e.ModelTensor.requires_grad).ToList();
        // Grouping is decided on the model's parameters; the groups then hold the tensors the optimizer updates (masters in bf16 mode).
        // In bf16 mode each update also writes the new master, rounded, into the model's parameter (its shadow).
        var byName = trainable.ToDictionary(e => e.Name, StringComparer.Ordinal);
        var groups = ParameterGroups.Build(model, trainable.Select(e => KeyValuePair.Create(e.Name, e.ModelTensor)).ToList(),
                new GroupOptions(config.WeightDecay, config.TransferRatio, config.Freeze, config.FilterBiasAndBn))
            .Select(g => new OptimGroup(g.Name, g.Params.Select(p =>
            {
                var e = byName[p.Name];
                return new OptimParam(p.Name, e.Canonical) { Shadow = e.Master is null ? null : e.ModelTensor };
            }).ToList(), g.WeightDecay, g.LrScale)).ToList();
        optimizer = config.Opt == "sgd"
            ? new Sgd(groups, config.Momentum, config.Nesterov)
            : new AdamW(groups, config.OptBetas[0], config.OptBetas[1], config.OptEps);
        if (config.ModelEma) ema = new ModelEma(CanonicalState(), config.ModelEmaDecay);
    }

    public Optimizer Optimizer => optimizer;
    public ModelEma? Ema => ema;
    public long GlobalStep => globalStep;

    /// <summary>Images per micro-batch over all ranks: ranks × batch_size.</summary>
    public int GlobalBatchSize => config.BatchSize * group.Size;

    private bool IsMain => group.Rank == 0;

    /// <summary>Path of the single-file checkpoint a resume reads.</summary>
    public static string LastCheckpointPath(string runDir) => Path.Combine(runDir, "checkpoints", "last.ckpt");

    /// <summary>(name, fp32-or-master tensor) over the whole state dict, model order.</summary>
    private List<KeyValuePair<string, Tensor>> CanonicalState() => entries.Select(e => KeyValuePair.Create(e.Name, e.Canonical)).ToList();

    /// <summary>Trains until the last epoch, or until <paramref name="cancel"/> fires (then stops at once without saving, like a kill).</summary>
    public TrainResult Run(bool resume = false, CancellationToken cancel = default)
    {
        Collective.Agree(group, "run folder setup", () => PrepareRunDir(resume));
        if (resume) Collective.Agree(group, "resume", Resume);
        // Per-rank streams for dropout/drop-path (timm seeds seed + rank); rank 0 draws as a single process would.
        if (!resume) torch.manual_seed(config.Seed + group.Rank);
        else if (group.Rank > 0) torch.manual_seed((long)(SeededRandom.Derive(config.Seed, group.Rank, globalStep, 0x7EED) >> 1));
        BroadcastState();
        if (group.Size > 1)
            Report($"data-parallel over {group.Size} ranks: global batch {GlobalBatchSize} = {group.Size} × {config.BatchSize}" +
                   (config.GradAccum > 1 ? $", {GlobalBatchSize * config.GradAccum} images per optimizer step (grad_accum {config.GradAccum})" : ""));
        using var metrics = IsMain ? new MetricsLog(Path.Combine(run.RunDir, "metrics.jsonl"), globalStep) : null;
        EvalResult? lastEval = null, lastEma = null;
        var clock = Stopwatch.StartNew();
        long stepsThisSession = 0;
        int bpe = train.BatchesPerEpoch;
        long totalSteps = (long)schedule.TotalEpochs * StepsPerEpoch(bpe);
        var logWindow = Stopwatch.StartNew();
        long logImages = 0;
        double logLoss = 0;
        int logCount = 0;

        for (; epoch < schedule.TotalEpochs; epoch++, batchInEpoch = 0)
        {
            model.train();
            logWindow.Restart();
            logImages = 0;
            int groupStart = batchInEpoch, groupSize = 0, groupTarget = GroupSize(batchInEpoch, bpe);
            using var batches = train.Epoch(epoch, batchInEpoch).GetEnumerator();
            while (true)
            {
                cancel.ThrowIfCancellationRequested();
                Batch? batch = null;
                Exception? failure = null;
                try
                {
                    if (batches.MoveNext()) batch = batches.Current;
                }
                catch (Exception e) when (group.Size > 1 && e is not OperationCanceledException)
                {
                    failure = e; // the other ranks learn of it in the step's all-reduce and stop too
                }
                using var b = batch;
                var stepped = MicroStep(b, groupTarget, failure);
                if (stepped is null) break; // no rank has a batch left: the epoch is done
                var (meanLoss, images) = stepped.Value;
                if (groupSize == 0) SetLr(schedule.Position(epoch, groupStart, bpe));
                groupSize++;
                if (images > 0)
                {
                    logLoss += meanLoss;
                    logCount++;
                }
                logImages += images;
                if (groupSize < groupTarget) continue;

                OptimizerStep();
                globalStep++;
                TraceParameters();
                stepsThisSession++;
                batchInEpoch = groupStart + groupSize;
                groupStart = batchInEpoch;
                groupSize = 0;
                groupTarget = GroupSize(batchInEpoch, bpe);

                double lr = optimizer.Groups[0].Lr / optimizer.Groups[0].LrScale;
                double ips = logImages / Math.Max(1e-9, logWindow.Elapsed.TotalSeconds);
                var eta = TimeSpan.FromSeconds(clock.Elapsed.TotalSeconds / stepsThisSession * Math.Max(0, totalSteps - globalStep));
                if (globalStep % config.LogInterval == 0)
                {
                    metrics?.Write(new JsonObject
                    {
                        ["kind"] = "step", ["epoch"] = epoch, ["step"] = globalStep, ["epoch_pos"] = MetricsLog.Num(epoch + (double)batchInEpoch / bpe),
                        ["loss"] = MetricsLog.Num(logLoss / logCount), ["lr"] = MetricsLog.Num(lr), ["img_s"] = MetricsLog.Num(ips),
                        ["time"] = MetricsLog.Num(clock.Elapsed.TotalSeconds),
                    });
                }
                if (IsMain) progress?.Report(new TrainProgress(TrainProgressKind.Step, epoch, schedule.TotalEpochs, batchInEpoch, bpe, globalStep, logLoss / logCount, lr, ips, eta));
                if (globalStep % config.LogInterval == 0)
                {
                    logWindow.Restart();
                    logImages = 0;
                    logLoss = 0;
                    logCount = 0;
                }
                if (config.SaveEverySteps > 0 && globalStep % config.SaveEverySteps == 0 && batchInEpoch < bpe)
                {
                    AverageBuffers();
                    if (IsMain) SaveCheckpoint(LastCheckpointPath(run.RunDir));
                }
                cancel.ThrowIfCancellationRequested();
            }
            // An epoch ends: validate, record, checkpoint.
            var record = new JsonObject
            {
                ["kind"] = "epoch", ["epoch"] = epoch, ["epoch_end"] = epoch + 1, ["step"] = globalStep,
                ["train_loss"] = MetricsLog.Num(epochImages > 0 ? epochLossSum / epochImages : double.NaN),
                ["train_top1"] = MetricsLog.Num(epochImages > 0 ? 100.0 * epochCorrect / epochImages : double.NaN),
                ["lr"] = MetricsLog.Num(optimizer.Groups[0].Lr / optimizer.Groups[0].LrScale),
                ["time"] = MetricsLog.Num(clock.Elapsed.TotalSeconds),
            };
            if (group.Size > 1) record["world_size"] = group.Size;
            bool evalNow = val is not null && ((epoch + 1) % config.EvalEvery == 0 || epoch + 1 == schedule.TotalEpochs);
            bool improved = false;
            AverageBuffers(); // the evaluated and saved BatchNorm statistics are the ranks' mean
            if (evalNow)
            {
                lastEval = Evaluator.Run(model, val!, device, computeType, cancel, group);
                record["val_top1"] = MetricsLog.Num(lastEval.Top1);
                record["val_top5"] = MetricsLog.Num(lastEval.Top5);
                record["val_loss"] = MetricsLog.Num(lastEval.Loss);
                if (ema is not null)
                {
                    lastEma = WithWeights(ema.State, () => Evaluator.Run(model, val!, device, computeType, cancel, group));
                    record["ema_top1"] = MetricsLog.Num(lastEma.Top1);
                    record["ema_top5"] = MetricsLog.Num(lastEma.Top5);
                    record["ema_loss"] = MetricsLog.Num(lastEma.Loss);
                }
                double metric = (lastEma ?? lastEval).Top1;
                if (bestMetric is null || metric > bestMetric)
                {
                    bestMetric = metric;
                    bestEpoch = epoch;
                    improved = true;
                }
            }
            cancel.ThrowIfCancellationRequested();
            batchInEpoch = bpe;
            epochLossSum = 0;
            epochCorrect = 0;
            epochImages = 0;
            record["best_top1"] = MetricsLog.Num(bestMetric ?? double.NaN);
            if (!IsMain) continue; // only rank 0 writes the run folder
            // The last checkpoint is written LAST: it marks the epoch as done, so everything else an epoch end writes comes
            // first. A kill anywhere before it resumes from the previous checkpoint, re-runs this epoch's end and rewrites
            // the same files (the epoch record is past that checkpoint's step, so the metrics log drops it). Writing it
            // first lost the numbered checkpoint, exports and epoch record of a kill in between (found by the kill -9 test).
            if (improved) ExportWeights(Path.Combine(run.RunDir, "best.safetensors"), ema?.State ?? CanonicalState());
            int nextEpoch = epoch + 1;
            string? numbered = config.CheckpointEvery > 0 && nextEpoch % config.CheckpointEvery == 0
                ? Path.Combine(run.RunDir, "checkpoints", $"epoch_{nextEpoch:D4}.ckpt") : null;
            if (numbered is not null) SaveCheckpoint(numbered, nextEpoch, 0);
            ExportWeights(Path.Combine(run.RunDir, "last.safetensors"), CanonicalState());
            if (ema is not null) ExportWeights(Path.Combine(run.RunDir, "last_ema.safetensors"), ema.State);
            metrics!.Write(record);
            Plots.WriteAll(run.RunDir, metrics.Records);
            if (numbered is not null) AtomicFile.Copy(numbered, LastCheckpointPath(run.RunDir));
            else SaveCheckpoint(LastCheckpointPath(run.RunDir), nextEpoch, 0);
            progress?.Report(new TrainProgress(TrainProgressKind.Epoch, epoch, schedule.TotalEpochs, bpe, bpe, globalStep,
                MetricsLog.ToDouble(record["train_loss"]) ?? double.NaN, MetricsLog.ToDouble(record["lr"]) ?? 0, 0,
                TimeSpan.FromSeconds(stepsThisSession == 0 ? 0 : clock.Elapsed.TotalSeconds / stepsThisSession * Math.Max(0, totalSteps - globalStep)), Record: record));
        }
        return new TrainResult(run.RunDir, epoch, globalStep, lastEval, lastEma, bestMetric, bestEpoch);
    }

    private int StepsPerEpoch(int bpe) => (bpe + config.GradAccum - 1) / config.GradAccum;

    /// <summary>Micro-batches in the accumulation group starting at <paramref name="start"/> (the last group of an epoch may be short).</summary>
    private int GroupSize(int start, int bpe) => Math.Max(1, Math.Min(config.GradAccum, bpe - start));

    private void SetLr(double position)
    {
        foreach (var g in optimizer.Groups) g.Lr = schedule.At(position, config.Lr * g.LrScale);
    }

    /// <summary>
    /// Forward, loss, backward of one micro-batch, in its own dispose scope. The loss/accuracy sums, whether this rank had
    /// a batch, its failure and a non-finite flag are all-reduced before backward, so every rank stops at the same step.
    /// Returns the mean loss and image count over all ranks, or null when no rank had a batch (the epoch is over).
    /// </summary>
    private (double MeanLoss, long Images)? MicroStep(Batch? b, int groupSize, Exception? failure)
    {
        using var scope = torch.NewDisposeScope();
        Tensor? loss = null;
        double lossValue = 0;
        long top1 = 0;
        int size = b?.Size ?? 0;
        if (failure is null && size > 0)
        {
            try
            {
                var input = b!.Images.dtype == computeType && b.Images.device == device ? b :
                    new Batch { Images = b.Images.to(computeType, device), Labels = b.Labels.to(device), Indices = b.Indices, Augments = b.Augments };
                var output = task.Step(input);
                lossValue = output.Loss.item<float>();
                loss = output.Loss;
                if (double.IsFinite(lossValue)) (top1, _) = Evaluator.TopK(output.Logits.detach().to(ScalarType.Float32), input.Labels);
            }
            catch (Exception e) when (group.Size > 1 && e is not OperationCanceledException)
            {
                failure = e;
            }
        }
        bool nonFinite = loss is not null && !double.IsFinite(lossValue);
        // [loss·images, correct, images, ranks with a batch, non-finite flag per rank]
        var sums = new double[4 + group.Size];
        sums[0] = nonFinite ? 0 : lossValue * size;
        sums[1] = top1;
        sums[2] = size;
        sums[3] = b is not null || failure is not null ? 1 : 0;
        sums[4 + group.Rank] = nonFinite ? 1 : 0;
        Collective.AllReduceSum(group, sums, failure, $"training (epoch {epoch}, batch {batchInEpoch})");
        var badRanks = Enumerable.Range(0, group.Size).Where(r => sums[4 + r] > 0).ToList();
        if (badRanks.Count > 0)
        {
            string last = File.Exists(LastCheckpointPath(run.RunDir)) ? $"the last good checkpoint is {LastCheckpointPath(run.RunDir)}" : "no checkpoint was written yet";
            string what = group.Size == 1 ? $"loss is {lossValue}" : $"loss is not finite on rank{(badRanks.Count > 1 ? "s" : "")} {string.Join(", ", badRanks)}";
            throw new NonFiniteLossException($"{what} at epoch {epoch}, batch {batchInEpoch} (optimizer step {globalStep + 1}); stopped without saving; {last}. " +
                                             "Try a lower --lr, clip_grad, or fp32 instead of --bf16.");
        }
        if (sums[3] == 0) return null;
        if (sums[3] != group.Size)
            throw new InvalidOperationException($"ranks disagree on the batches of epoch {epoch}: {sums[3]} of {group.Size} have batch {batchInEpoch}");
        using (Scalar ranks = groupSize.ToScalar()) // held for the call (see Layers.Held)
            loss?.div(ranks).backward();
        epochLossSum += sums[0];
        epochCorrect += (long)sums[1];
        epochImages += (long)sums[2];
        return (sums[2] > 0 ? sums[0] / sums[2] : double.NaN, (long)sums[2]);
    }

    private void OptimizerStep()
    {
        using var scope = torch.NewDisposeScope();
        DataParallel.AverageGradients(model.parameters(), group); // after backward and accumulation; before clipping
        var byName = entries.ToDictionary(e => e.Name);
        var grads = new List<Tensor>();
        foreach (var p in optimizer.Params)
        {
            var g = byName[p.Name].ModelTensor.grad;
            // bf16 gradients go to the optimizer as they are (it computes in fp32 and refreshes the bf16 parameters, see
            // OptimParam.Shadow); clipping scales fp32 copies, so its norm is summed in fp32 as before.
            p.Grad = g is null ? null : g.dtype == ScalarType.Float32 || config.ClipGrad is null ? g : g.to(ScalarType.Float32);
            if (p.Grad is not null) grads.Add(p.Grad);
        }
        if (config.ClipGrad is { } clip) GradClip.ClipGlobalNorm(grads, clip);
        optimizer.Step();
        foreach (var p in optimizer.Params) p.Grad = null;
        model.zero_grad();
        ema?.Update(CanonicalState());
    }

    /// <summary>Runs <paramref name="body"/> with <paramref name="weights"/> copied into the model, then puts the trained weights back.</summary>
    private T WithWeights<T>(IReadOnlyList<KeyValuePair<string, Tensor>> weights, Func<T> body)
    {
        using var scope = torch.NewDisposeScope();
        List<Tensor> backup;
        using (torch.no_grad())
        {
            backup = entries.Select(e => e.ModelTensor.clone()).ToList();
            for (int i = 0; i < entries.Count; i++) entries[i].ModelTensor.copy_(weights[i].Value);
        }
        try
        {
            return body();
        }
        finally
        {
            using (torch.no_grad())
                for (int i = 0; i < entries.Count; i++) entries[i].ModelTensor.copy_(backup[i]);
        }
    }

    private static List<KeyValuePair<string, RawTensor>> Raw(IEnumerable<KeyValuePair<string, Tensor>> tensors) =>
        tensors.Select(kv =>
        {
            using var scope = torch.NewDisposeScope();
            var t = kv.Value.is_floating_point() && kv.Value.dtype != ScalarType.Float32 ? kv.Value.to(ScalarType.Float32) : kv.Value;
            return KeyValuePair.Create(kv.Key, RawTensor.FromTorch(t));
        }).ToList();

    /// <summary>Model weights in our ModelWeights format (fp32, with metadata) so `predict` and `--init-from` read them.</summary>
    private void ExportWeights(string path, IReadOnlyList<KeyValuePair<string, Tensor>> state)
    {
        ThrowIfNonFinite(state, "");
        Safetensors.Write(path, Raw(state), new WeightsMetadata(run.ModelName, model.Options, run.ClassNames, run.Preprocessing).ToDictionary());
    }

    /// <summary>
    /// Refuses to write NaN/Inf: an optimizer step can turn the weights non-finite while its own loss was still finite
    /// (found by the fault suite: at lr 1e3 the "last good checkpoint" held NaN weights). Stopping here keeps the
    /// checkpoint on disk good.
    /// </summary>
    private void ThrowIfNonFinite(IEnumerable<KeyValuePair<string, Tensor>> tensors, string prefix)
    {
        using var scope = torch.NewDisposeScope();
        foreach (var (name, t) in tensors)
        {
            if (!t.is_floating_point() || torch.isfinite(t).all().item<bool>()) continue;
            string last = File.Exists(LastCheckpointPath(run.RunDir)) ? $"the last good checkpoint is {LastCheckpointPath(run.RunDir)}" : "no checkpoint was written yet";
            throw new NonFiniteLossException($"'{prefix}{name}' holds NaN or Inf after optimizer step {globalStep} (epoch {epoch}): training diverged; " +
                                             $"stopped without saving; {last}. Try a lower --lr, clip_grad, or fp32 instead of --bf16.");
        }
    }

    private void SaveCheckpoint(string path) => SaveCheckpoint(path, epoch, batchInEpoch);

    private void SaveCheckpoint(string path, int atEpoch, int atBatch)
    {
        ThrowIfNonFinite(CanonicalState(), "");
        if (ema is not null) ThrowIfNonFinite(ema.State, "ema/");
        ThrowIfNonFinite(optimizer.StateTensors(), "optimizer state ");
        var state = new TrainState
        {
            Model = run.ModelName, Options = model.Options, ClassNames = run.ClassNames,
            Epoch = atEpoch, Batch = atBatch, GlobalStep = globalStep,
            OptimizerSteps = optimizer.StepCounts(), TaskState = task.SaveState(), HasEma = ema is not null,
            BestMetric = bestMetric, BestEpoch = bestEpoch,
            EpochLossSum = epochLossSum, EpochCorrect = epochCorrect, EpochImages = epochImages,
            WorldSize = group.Size, GlobalBatchSize = GlobalBatchSize,
            Config = config.ToDictionary(),
        };
        RawTensor rng;
        using (var scope = torch.NewDisposeScope()) rng = RawTensor.FromTorch(torch.Generator.Default.get_state());
        TrainCheckpoint.Save(path, state, Raw(CanonicalState()), ema is null ? [] : Raw(ema.State), Raw(optimizer.StateTensors()), rng);
        progress?.Report(new TrainProgress(TrainProgressKind.Message, epoch, schedule.TotalEpochs, batchInEpoch, train.BatchesPerEpoch, globalStep, 0, 0, 0, TimeSpan.Zero,
            $"checkpoint {path} (epoch {atEpoch}, batch {atBatch}, step {globalStep})"));
    }

    private void PrepareRunDir(bool resume)
    {
        if (!IsMain)
        {
            // Rank 0 owns the run folder; the others only read the checkpoint of a resume (a shared filesystem across hosts).
            if (resume && !File.Exists(LastCheckpointPath(run.RunDir)))
                throw new FileNotFoundException($"rank {group.Rank} on {Environment.MachineName}: nothing to resume (no {LastCheckpointPath(run.RunDir)}); " +
                                                "every rank reads the checkpoint, so keep the run folder on a filesystem all hosts share", LastCheckpointPath(run.RunDir));
            return;
        }
        try
        {
            Directory.CreateDirectory(Path.Combine(run.RunDir, "checkpoints"));
            string probe = Path.Combine(run.RunDir, $".write-test-{Guid.NewGuid():N}");
            File.WriteAllText(probe, "");
            File.Delete(probe);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"{run.RunDir}: cannot write to the run folder ({e.Message})", e);
        }
        RemoveStaleTempFiles();
        bool hasRun = File.Exists(LastCheckpointPath(run.RunDir));
        if (!resume && hasRun)
            throw new InvalidOperationException($"{run.RunDir} already holds a run ({LastCheckpointPath(run.RunDir)}); pass --resume to continue it or choose another --out");
        if (resume && !hasRun)
            throw new FileNotFoundException($"{run.RunDir}: nothing to resume (no {LastCheckpointPath(run.RunDir)})", LastCheckpointPath(run.RunDir));
        if (!resume)
            AtomicFile.WriteAllText(Path.Combine(run.RunDir, "config.yaml"),
                config.ToYaml($"effective config of this run ({run.ModelName}), written {DateTime.UtcNow:u}"));
    }

    /// <summary>
    /// Deletes the temp files of writes a kill cut short (<c>.NAME.[PID.]GUID.tmp</c>, the pattern of our atomic writers) in
    /// the run folder and its checkpoints/: each is a partial copy of a file that was never renamed into place, and a run
    /// killed during its checkpoint writes would otherwise collect one per kill (found by the kill -9 fault test).
    /// </summary>
    private void RemoveStaleTempFiles()
    {
        int removed = 0;
        foreach (var folder in new[] { run.RunDir, Path.Combine(run.RunDir, "checkpoints") })
            foreach (var f in Directory.EnumerateFiles(folder, ".*.tmp"))
                if (StaleTemp.IsMatch(Path.GetFileName(f)))
                {
                    File.Delete(f);
                    removed++;
                }
        if (removed > 0)
            progress?.Report(new TrainProgress(TrainProgressKind.Message, epoch, schedule.TotalEpochs, 0, train.BatchesPerEpoch, globalStep, 0, 0, 0, TimeSpan.Zero,
                $"removed {removed} partial file(s) left by an interrupted write in {run.RunDir}"));
    }

    private static readonly System.Text.RegularExpressions.Regex StaleTemp = new(@"^\..+\.(\d+\.)?[0-9a-f]{32}\.tmp$");

    private void Resume()
    {
        var ck = TrainCheckpoint.Load(LastCheckpointPath(run.RunDir));
        var s = ck.State;
        if (s.Model != run.ModelName)
            throw new InvalidOperationException($"{ck.Path}: checkpoint is for model {s.Model}, this run builds {run.ModelName}");
        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
        {
            foreach (var e in entries)
            {
                if (!ck.Model.TryGetValue(e.Name, out var raw)) throw new CheckpointFormatException(ck.Path, $"checkpoint lacks model tensor '{e.Name}'");
                var t = raw.ToTorch();
                if (!t.shape.SequenceEqual(e.ModelTensor.shape))
                    throw new CheckpointFormatException(ck.Path, $"'{e.Name}' has shape [{string.Join(",", t.shape)}], model [{string.Join(",", e.ModelTensor.shape)}]");
                e.Canonical.copy_(t);
                if (e.Master is not null) e.ModelTensor.copy_(e.Master);
            }
            if (ema is not null)
            {
                if (!s.HasEma) throw new CheckpointFormatException(ck.Path, "checkpoint has no EMA but model_ema is on");
                ema.Load(ck.Ema.ToDictionary(kv => kv.Key, kv => kv.Value.ToTorch()), ck.Path);
            }
            optimizer.LoadState(ck.Optimizer.ToDictionary(kv => kv.Key, kv => kv.Value.ToTorch()), s.OptimizerSteps, ck.Path);
            if (ck.TorchRng is not null) torch.Generator.Default.set_state(ck.TorchRng.ToTorch());
        }
        task.LoadState(s.TaskState);
        epoch = s.Epoch;
        batchInEpoch = ResumeBatch(s, ck.Path);
        globalStep = s.GlobalStep;
        bestMetric = s.BestMetric;
        bestEpoch = s.BestEpoch;
        epochLossSum = s.EpochLossSum;
        epochCorrect = s.EpochCorrect;
        epochImages = s.EpochImages;
        Report($"resumed {ck.Path}: epoch {epoch}, batch {batchInEpoch}, step {globalStep}" +
               (s.WorldSize != group.Size ? $" (saved by {s.WorldSize} rank(s), global batch {s.GlobalBatchSize ?? config.BatchSize}; now {group.Size}, global batch {GlobalBatchSize})" : ""));
    }

    private int ResumeBatch(TrainState s, string path) =>
        ResumePosition(s.Batch, s.GlobalBatchSize ?? config.BatchSize, GlobalBatchSize, // checkpoints from before data parallelism: one process
            $"{path}: saved mid-epoch {s.Epoch} by {s.WorldSize} rank(s)", $"resume with {s.WorldSize} rank(s)");

    /// <summary>
    /// The global batch to resume at when the global batch changes (another rank count). A checkpoint's position is a
    /// number of samples into the epoch's order, <paramref name="savedBatch"/> × <paramref name="savedGlobalBatch"/>;
    /// the run continues from that sample when <paramref name="globalBatch"/> divides it, and is refused otherwise
    /// (an epoch-end checkpoint, batch 0, always fits).
    /// </summary>
    public static int ResumePosition(int savedBatch, int savedGlobalBatch, int globalBatch, string where = "checkpoint", string fix = "resume with the rank count that saved it")
    {
        long samples = (long)savedBatch * savedGlobalBatch;
        if (samples % globalBatch != 0)
            throw new InvalidOperationException($"{where} at global batch {savedBatch} of {savedGlobalBatch} images (sample {samples} of the epoch); the global batch is now " +
                                                $"{globalBatch}, which does not divide {samples}: {fix}, or from a checkpoint at an epoch end");
        return checked((int)(samples / globalBatch));
    }

    /// <summary>Makes every rank start from rank 0's weights, buffers, masters, EMA and optimizer state.</summary>
    private void BroadcastState()
    {
        if (group.Size == 1) return;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        foreach (var e in entries)
        {
            group.Broadcast(e.Canonical);
            if (e.Master is not null) e.ModelTensor.copy_(e.Master);
        }
        if (ema is not null)
            foreach (var (_, t) in ema.State) group.Broadcast(t);
        foreach (var (_, t) in optimizer.StateTensors()) group.Broadcast(t);
    }

    /// <summary>Averages the floating-point buffers (BatchNorm running statistics) of the model and its EMA across the ranks.</summary>
    private void AverageBuffers()
    {
        if (group.Size == 1 || entries.All(e => e.IsParameter || !e.ModelTensor.is_floating_point())) return;
        DataParallel.AverageBuffers(model, group);
        if (ema is null) return;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        using Scalar size = group.Size.ToScalar(); // held for the calls (see Layers.Held)
        for (int i = 0; i < entries.Count; i++)
        {
            var t = ema.State[i].Value;
            if (entries[i].IsParameter || !t.is_floating_point()) continue;
            var f = t.to(ScalarType.Float32).cpu().contiguous();
            group.AllReduceSum(f);
            t.copy_(f.div_(size));
        }
    }

    /// <summary>With <see cref="ParamTraceVariable"/> set: one line per step with a hash of this rank's parameters.</summary>
    private void TraceParameters()
    {
        if (string.IsNullOrEmpty(tracePath)) return;
        using var scope = torch.NewDisposeScope();
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        double sum = 0;
        foreach (var e in entries.Where(e => e.IsParameter))
        {
            var t = e.Canonical.detach().to(ScalarType.Float32).cpu().contiguous();
            hash.AppendData(t.bytes);
            sum += t.sum().item<float>(); // not ToDouble(): it reads through a temporary Scalar (see Layers.Held)
        }
        var line = new JsonObject
        {
            ["rank"] = group.Rank, ["world_size"] = group.Size, ["step"] = globalStep,
            ["sha256"] = Convert.ToHexString(hash.GetHashAndReset()), ["sum"] = MetricsLog.Num(sum),
        };
        File.AppendAllText($"{tracePath}.rank{group.Rank}", line.ToJsonString() + "\n");
    }

    private void Report(string message)
    {
        if (IsMain)
            progress?.Report(new TrainProgress(TrainProgressKind.Message, epoch, schedule.TotalEpochs, batchInEpoch, train.BatchesPerEpoch, globalStep, 0, 0, 0, TimeSpan.Zero, message));
    }

    public void Dispose()
    {
        optimizer.Dispose();
        ema?.Dispose();
        foreach (var e in entries) e.Master?.Dispose();
    }
}
