using AllTokens.Data;
using AllTokens.Data.Evaluation;
using AllTokens.Distributed;
using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>Validation figures, timm-style: accuracies in percent, mean cross-entropy per image.</summary>
public sealed record EvalResult(double Top1, double Top5, double Loss, int Count);

/// <summary>
/// The trainer's validation over an <see cref="IBatchSource"/>: eval forward without gradients, plain CE (T2T_VIT.md
/// §5.1), scored as <c>eval</c> scores (<see cref="ScoreAccumulator"/>), summed over the ranks of a data-parallel run.
/// </summary>
public static class Evaluator
{
    /// <summary>
    /// Evaluates <paramref name="model"/> on epoch 0 of <paramref name="source"/>; the model's train/eval mode is restored.
    /// In a data-parallel <paramref name="group"/> each rank evaluates its shard of the source and the loss sum and hit
    /// counts are all-reduced, so every rank returns the figures of the whole set.
    /// </summary>
    public static EvalResult Run(ImageClassifier model, IBatchSource source, Device? device = null, ScalarType dtype = ScalarType.Float32, CancellationToken cancel = default,
        IProcessGroup? group = null)
    {
        group ??= SingleProcess.Instance;
        bool wasTraining = model.training;
        // Training's freed blocks go back to the system before validation's differently sized ones need room, and
        // validation's before training resumes: the kept heap (NativeEnvironment.ConfigureAllocator) would otherwise grow
        // by each phase's misfits (lvvit_t bench: 939 MiB after training, 1136 after inference without this).
        NativeEnvironment.ReleaseFreeHeap();
        model.eval();
        // The same scoring as `eval` (Data.Evaluation.ScoreAccumulator), so a run's validation figures and eval's agree.
        var acc = new ScoreAccumulator(model.NumClasses, perClass: false);
        Exception? failure = null;
        try
        {
            using var noGrad = torch.no_grad();
            foreach (var batch in source.Epoch(0))
            {
                using var scope = torch.NewDisposeScope();
                using var b = batch;
                cancel.ThrowIfCancellationRequested();
                var x = b.Images.to(dtype, device ?? b.Images.device);
                acc.AddBatch(model.call(x), b.Labels);
            }
        }
        catch (Exception e) when (group.Size > 1 && e is not OperationCanceledException)
        {
            failure = e;
        }
        finally
        {
            model.train(wasTraining);
            NativeEnvironment.ReleaseFreeHeap();
        }
        Span<double> sums = [acc.LossSum, acc.Top1Hits, acc.TopKHits, acc.Count];
        Collective.AllReduceSum(group, sums, failure, "validation");
        var (lossSum, top1, top5, count) = (sums[0], (long)sums[1], (long)sums[2], (long)sums[3]);
        if (count == 0) throw new InvalidOperationException($"{source.Dataset.Source}: the validation set yielded no batches");
        return new EvalResult(100.0 * top1 / count, 100.0 * top5 / count, lossSum / count, (int)count);
    }

    /// <summary>
    /// Number of rows whose label is the arg-max, and among the 5 largest logits (fewer classes: all), on the logits'
    /// device: the training log's running batch accuracy (validation uses <see cref="ScoreAccumulator"/>).
    /// </summary>
    public static (long Top1, long Top5) TopK(Tensor logits, Tensor labels)
    {
        using var scope = torch.NewDisposeScope();
        int k = (int)Math.Min(5, logits.shape[1]);
        var idx = logits.topk(k, 1).indexes; // [B, k]
        var hit = idx.eq(labels.view(-1, 1));
        long t1 = hit[.., 0].sum().item<long>();
        long t5 = hit.any(1).sum().item<long>();
        return (t1, t5);
    }
}
