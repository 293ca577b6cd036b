using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Models;

/// <summary>Construction options every registered model accepts.</summary>
/// <param name="NumClasses">Classifier width; 0 builds no head (features only).</param>
/// <param name="ImgSize">Square input side in pixels; a multiple of 16 for the token models.</param>
/// <param name="DropPathRate">Stochastic depth of the last block; rises linearly from 0 over the blocks.</param>
/// <param name="DropRate">Dropout after the position embedding and inside MLPs/projections.</param>
public sealed record ModelOptions(int NumClasses = 1000, int ImgSize = 224, double DropPathRate = 0, double DropRate = 0, int InChans = 3)
{
    public void Validate(string model)
    {
        if (NumClasses < 0) throw new ArgumentException($"{model}: num_classes must be >= 0, got {NumClasses}");
        if (ImgSize < 16 || ImgSize % 16 != 0) throw new ArgumentException($"{model}: img_size must be a positive multiple of 16, got {ImgSize}");
        if (DropPathRate is < 0 or >= 1) throw new ArgumentException($"{model}: drop_path_rate must be in [0, 1), got {DropPathRate}");
        if (DropRate is < 0 or >= 1) throw new ArgumentException($"{model}: drop_rate must be in [0, 1), got {DropRate}");
        if (InChans < 1) throw new ArgumentException($"{model}: in_chans must be >= 1, got {InChans}");
    }
}

/// <summary>
/// A MixToken box on the patch-token grid, half-open: rows [Top, Bottom), columns [Left, Right). The official
/// code calls these (bbx1, bby1, bbx2, bby2) with bbx indexing rows (LVVIT.md §5).
/// </summary>
public readonly record struct MixBox(int Top, int Left, int Bottom, int Right)
{
    public int Area => Math.Max(0, Bottom - Top) * Math.Max(0, Right - Left);
    public bool IsEmpty => Area == 0;
    /// <summary>λ' = 1 − area/N: the share of each image left unmixed, recomputed after clipping.</summary>
    public double Lambda(int gridH, int gridW) => 1.0 - (double)Area / (gridH * gridW);
}

/// <summary>What a training forward returns (timm/VOLO's <c>forward_train</c> as a typed record).</summary>
/// <param name="Logits">Class-token logits [B, C].</param>
/// <param name="TokenLogits">Per-patch logits [B, N, C], already un-mixed so row i refers to image i's own
/// tokens; null for models without an auxiliary head.</param>
/// <param name="Box">The MixToken box that was applied, or null.</param>
public sealed record TrainOutput(Tensor Logits, Tensor? TokenLogits, MixBox? Box);

/// <summary>
/// The surface every model shares (timm's): features, head, eval forward, training forward, no-decay list.
/// <c>forward</c> is the evaluation prediction [B, C].
/// </summary>
public abstract class ImageClassifier : nn.Module<Tensor, Tensor>
{
    protected ImageClassifier(string name, ModelOptions options) : base(name)
    {
        Options = options;
    }

    public ModelOptions Options { get; }
    public int NumClasses => Options.NumClasses;
    public abstract long EmbedDim { get; }
    /// <summary>Side of the patch-token grid (img_size / 16 for every model here).</summary>
    public abstract int GridSize { get; }
    /// <summary>True when the model has an auxiliary per-token head (token labeling, MixToken).</summary>
    public virtual bool HasTokenHead => false;
    /// <summary>Number of transformer blocks in the backbone.</summary>
    public abstract int Depth { get; }

    /// <summary>Normalised tokens [B, 1+N, D], class token first; never mixes.</summary>
    public abstract Tensor ForwardFeatures(Tensor x);

    /// <summary>Training forward; <paramref name="box"/> applies MixToken where the model supports it.</summary>
    public virtual TrainOutput ForwardTrain(Tensor x, MixBox? box = null)
    {
        if (box is { IsEmpty: false })
            throw new NotSupportedException($"{GetName()} has no token head; MixToken needs one (use an lvvit_t/s/m/l model)");
        return new TrainOutput(call(x), null, null);
    }

    /// <summary>Tokens after block <paramref name="blockIndex"/> (0-based) and that block's attention [B, H, 1+N, 1+N].</summary>
    public abstract (Tensor Tokens, Tensor Attention) ForwardToBlock(Tensor x, int blockIndex);

    /// <summary>Parameter names that take no weight decay besides 1-D tensors and biases (timm's no_weight_decay).</summary>
    public virtual IReadOnlySet<string> NoWeightDecay() => new HashSet<string> { "pos_embed", "cls_token" };

    /// <summary>Maps a foreign checkpoint's keys to ours (pure function); identity where the official keys are ours.</summary>
    public virtual IEnumerable<KeyValuePair<string, Checkpoints.RawTensor>> RemapCheckpoint(IEnumerable<KeyValuePair<string, Checkpoints.RawTensor>> stateDict) => stateDict;

    /// <summary>Whether a checkpoint's position embedding may be resampled to this model's grid on load.</summary>
    public virtual bool PosEmbedResizable => true;

    /// <summary>Tokens ahead of the patch grid in <c>pos_embed</c> (the class token).</summary>
    public virtual int NumPrefixTokens => 1;

    /// <summary>Keys of the classifier weights, dropped when a checkpoint's class count differs.</summary>
    public virtual IReadOnlyList<string> ClassifierPrefixes() => ["head."];
}
