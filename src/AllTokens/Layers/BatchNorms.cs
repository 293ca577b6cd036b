using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// BatchNorm's forward without TorchSharp's temporary scalar. TorchSharp 0.107's <c>BatchNorm.forward</c> counts
/// batches with <c>num_batches_tracked.add_(1)</c>, whose two temporary Scalars (the 1 and its implicit alpha) can be
/// freed by a garbage collection on another thread mid-call (see <see cref="Held"/>). A full demo run died that way
/// in the LV-ViT stem's BatchNorm, 4 epochs in: "For integral input tensors, argument alpha must not be a floating
/// point number" — the freed alpha's memory already held a float. Same arithmetic as the module (and as PyTorch's
/// _BatchNorm.forward): count the batch, then batch_norm with the running statistics, momentum and eps.
/// </summary>
public static class BatchNorms
{
    public static Tensor Forward(BatchNorm2d bn, Tensor x)
    {
        if (x.dim() != 4) throw new ArgumentException($"BatchNorm2d expects a 4-D [B, C, H, W] input, got {x.dim()}-D");
        double factor = bn.momentum ?? 0.0;
        var tracked = bn.num_batches_tracked;
        if (bn.training && bn.track_running_stats && tracked is not null)
        {
            using (no_grad()) tracked.add_(Held.One, Held.One);
            // momentum null: a cumulative average over the batches seen (PyTorch's rule).
            if (bn.momentum is null) factor = 1.0 / tracked.item<long>();
        }
        bool useRunning = !bn.training || bn.track_running_stats;
        bool batchStats = bn.training || (bn.running_mean is null && bn.running_var is null);
        return nn.functional.batch_norm(x, useRunning ? bn.running_mean : null, useRunning ? bn.running_var : null,
            bn.weight, bn.bias, batchStats, factor, bn.eps);
    }
}
