using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Data.Evaluation;

/// <summary>Progress of an evaluation: samples done of the total.</summary>
public readonly record struct EvalProgress(int Samples, int Total, int Batches, int TotalBatches);

/// <summary>
/// Results of one evaluation pass. Accuracies are fractions in [0, 1]; <see cref="Confusion"/>[t][p] counts samples of
/// true class t predicted as p (the top-1 prediction; ties go to the lower class index).
/// </summary>
public sealed record EvalResult(
    int Count,
    double Top1,
    double Top5,
    double MeanLoss,
    IReadOnlyList<string> ClassNames,
    long[] PerClassCorrect,
    long[] PerClassCount,
    long[][] Confusion)
{
    /// <summary>k of the "top-5" figure: min(5, classes).</summary>
    public int TopK => Math.Min(5, ClassNames.Count);

    /// <summary>Top-1 accuracy per class; NaN for a class with no samples.</summary>
    public double[] PerClassAccuracy => PerClassCorrect.Zip(PerClassCount, (c, n) => n == 0 ? double.NaN : (double)c / n).ToArray();
}

/// <summary>Runs a classifier over batches and scores it: top-1, top-5, mean cross-entropy, per-class accuracy, confusion matrix.</summary>
public static class Evaluator
{
    /// <summary>
    /// Evaluates <paramref name="model"/> (logits [B, C] from images [B, 3, H, W]) on epoch 0 of <paramref name="source"/>
    /// under no_grad, one dispose scope per batch. The model must already be in eval mode on <paramref name="device"/>.
    /// Loss and rankings are computed in double from the float32 logits.
    /// </summary>
    public static EvalResult Evaluate(nn.Module<Tensor, Tensor> model, IBatchSource source, Device? device = null,
        IProgress<EvalProgress>? progress = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(source);
        var names = source.Dataset.ClassNames;
        int classes = names.Count;
        var acc = new ScoreAccumulator(classes);
        int total = source.Dataset.Count, batches = 0;
        using var noGrad = torch.no_grad();
        foreach (var batch in source.Epoch(0))
        {
            using (batch)
            {
                cancellation.ThrowIfCancellationRequested();
                using var scope = torch.NewDisposeScope();
                Tensor x = device is null ? batch.Images : batch.Images.to(device);
                Tensor logits = model.call(x).to(ScalarType.Float32).cpu();
                if (logits.dim() != 2 || logits.shape[0] != batch.Size || logits.shape[1] != classes)
                    throw new InvalidOperationException(
                        $"the model returned logits of shape [{string.Join(", ", logits.shape)}], expected [{batch.Size}, {classes}] for {classes} classes ({source.Dataset.Source})");
                acc.AddBatch(logits, batch.Labels);
            }
            batches++;
            progress?.Report(new EvalProgress(acc.Count, total, batches, source.BatchesPerEpoch));
        }
        return acc.Result(names);
    }

    /// <summary>Scores pre-computed logits (row per sample) against labels; used by <see cref="Evaluate"/> and handy in tests.</summary>
    public static EvalResult Score(float[][] logits, int[] labels, IReadOnlyList<string> classNames)
    {
        var acc = new ScoreAccumulator(classNames.Count);
        for (int i = 0; i < logits.Length; i++) acc.Add(logits[i], labels[i]);
        return acc.Result(classNames);
    }
}

/// <summary>
/// The scoring rules shared by <c>eval</c> (<see cref="Evaluator"/>) and the trainer's validation: cross-entropy in
/// double from float32 logits, the true class's rank in a stable descending order (a tie goes to the lower class
/// index) for top-1 and top-k, k = min(5, classes). Per-class counts and the confusion matrix only when asked for.
/// </summary>
public sealed class ScoreAccumulator(int classes, bool perClass = true)
{
    private readonly long[] correct = new long[perClass ? classes : 0], count = new long[perClass ? classes : 0];
    private readonly long[][] confusion = perClass ? Enumerable.Range(0, classes).Select(_ => new long[classes]).ToArray() : [];
    private long top1, topK;
    private double lossSum;

    public int Count { get; private set; }
    public double LossSum => lossSum;
    public long Top1Hits => top1;
    public long TopKHits => topK;

    /// <summary>Scores a batch: float32 logits [B, C] (any device) against labels [B].</summary>
    public void AddBatch(Tensor logits, Tensor labels)
    {
        if (logits.dim() != 2 || logits.shape[1] != classes || labels.numel() != logits.shape[0])
            throw new ArgumentException($"logits [{string.Join(", ", logits.shape)}] and {labels.numel()} labels do not fit {classes} classes");
        float[] flat = logits.to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
        long[] y = labels.to(ScalarType.Int64).cpu().contiguous().data<long>().ToArray();
        for (int i = 0; i < y.Length; i++) Add(flat.AsSpan(i * classes, classes), (int)y[i]);
    }

    public void Add(ReadOnlySpan<float> logits, int label)
    {
        if ((uint)label >= (uint)classes) throw new ArgumentOutOfRangeException(nameof(label), $"label {label} outside 0..{classes - 1}");
        if (logits.Length != classes) throw new ArgumentException($"{logits.Length} logits for {classes} classes");
        int k = Math.Min(5, classes);
        double max = double.NegativeInfinity;
        int argmax = 0;
        for (int c = 0; c < classes; c++)
            if (logits[c] > max)
            {
                max = logits[c];
                argmax = c;
            }
        double sumExp = 0;
        for (int c = 0; c < classes; c++) sumExp += Math.Exp(logits[c] - max);
        lossSum += Math.Log(sumExp) - (logits[label] - max);
        // Rank of the true class in a stable descending sort: classes scored higher, or equal with a lower index.
        int rank = 0;
        float t = logits[label];
        for (int c = 0; c < classes; c++)
            if (logits[c] > t || (logits[c] == t && c < label)) rank++;
        if (rank == 0) top1++;
        if (rank < k) topK++;
        Count++;
        if (!perClass) return;
        count[label]++;
        if (argmax == label) correct[label]++;
        confusion[label][argmax]++;
    }

    /// <summary>The figures so far (needs per-class counting).</summary>
    public EvalResult Result(IReadOnlyList<string> names) => !perClass
        ? throw new InvalidOperationException("this accumulator keeps no per-class counts")
        : new(Count,
            Count == 0 ? double.NaN : (double)top1 / Count,
            Count == 0 ? double.NaN : (double)topK / Count,
            Count == 0 ? double.NaN : lossSum / Count,
            names, correct, count, confusion);
}
