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
        var acc = new Accumulator(classes);
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
                float[] flat = logits.data<float>().ToArray();
                long[] labels = batch.Labels.data<long>().ToArray();
                for (int i = 0; i < batch.Size; i++)
                    acc.Add(flat.AsSpan(i * classes, classes), (int)labels[i]);
            }
            batches++;
            progress?.Report(new EvalProgress(acc.Count, total, batches, source.BatchesPerEpoch));
        }
        return acc.Result(names);
    }

    /// <summary>Scores pre-computed logits (row per sample) against labels; used by <see cref="Evaluate"/> and handy in tests.</summary>
    public static EvalResult Score(float[][] logits, int[] labels, IReadOnlyList<string> classNames)
    {
        var acc = new Accumulator(classNames.Count);
        for (int i = 0; i < logits.Length; i++) acc.Add(logits[i], labels[i]);
        return acc.Result(classNames);
    }

    private sealed class Accumulator(int classes)
    {
        private readonly long[] correct = new long[classes], count = new long[classes];
        private readonly long[][] confusion = Enumerable.Range(0, classes).Select(_ => new long[classes]).ToArray();
        private long top1, topK;
        private double lossSum;
        public int Count { get; private set; }

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
            count[label]++;
            if (argmax == label) correct[label]++;
            confusion[label][argmax]++;
            Count++;
        }

        public EvalResult Result(IReadOnlyList<string> names) => new(Count,
            Count == 0 ? double.NaN : (double)top1 / Count,
            Count == 0 ? double.NaN : (double)topK / Count,
            Count == 0 ? double.NaN : lossSum / Count,
            names, correct, count, confusion);
    }
}
