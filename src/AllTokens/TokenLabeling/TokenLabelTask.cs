using AllTokens.Data;
using AllTokens.Models;
using AllTokens.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.TokenLabeling;

/// <summary>Where a batch's dense targets come from: stored label maps, or a teacher run on the augmented batch.</summary>
public interface ITokenTargetSource
{
    /// <summary>Targets for <paramref name="batch"/> on the batch's device (runs inside the step's dispose scope).</summary>
    TokenTargets Targets(Batch batch, DenseTargetOptions options);
}

/// <summary>
/// Offline token labels: the label map of each sample (looked up by dataset index, e.g. through
/// <c>IImageDataset.GetKey</c> into a <see cref="LabelStore"/>) follows the sample's <see cref="AugmentRecord"/>.
/// A batch without records is taken as untransformed (the whole map is the crop).
/// </summary>
/// <param name="region">The part of each source image the maps cover (the store header's <see cref="LabelStoreHeader.Region"/>).</param>
public sealed class StoredTargetSource(Func<int, LabelMap> labelsForIndex, LabelMapRegion region = LabelMapRegion.FullImage) : ITokenTargetSource
{
    /// <summary>
    /// Labels of <paramref name="dataset"/>'s samples from <paramref name="store"/>, checked against the dataset once:
    /// classes, a record for every key, and (where the store keeps image checksums) a sample of the images themselves.
    /// </summary>
    public static StoredTargetSource FromStore(LabelStore store, IImageDataset dataset)
    {
        store.CheckMatches(Enumerable.Range(0, dataset.Count).Select(dataset.GetKey).ToList(), dataset.ClassNames.Count, dataset.Source);
        store.CheckImages(dataset);
        return new StoredTargetSource(i => store.Get(dataset.GetKey(i)), store.Header.Region);
    }

    public TokenTargets Targets(Batch batch, DenseTargetOptions options)
    {
        var maps = batch.Indices.Select(labelsForIndex).ToList();
        IReadOnlyList<AugmentRecord> records = batch.Augments
            ?? Enumerable.Repeat(AugmentRecord.None((int)batch.Images.shape[3], (int)batch.Images.shape[2]), batch.Size).ToList();
        return DenseTargets.FromLabelMaps(maps, records, options with { MapRegion = region }, batch.Labels, batch.Images.device);
    }
}

/// <summary>
/// Online token labels: a frozen annotator labels each augmented batch on the fly (no store). Its dense logits
/// on the image the student sees are RoIAligned with the full box to L×L and 1×1, then softmaxed and smoothed as
/// for stored labels. <paramref name="topK"/> &gt; 0 keeps only the top-k logits per location (others 0, as stored
/// labels); 0 keeps all classes. The teacher is not owned.
/// </summary>
public sealed class TeacherTargetSource(ImageClassifier teacher, int topK = 5) : ITokenTargetSource
{
    private readonly Annotator annotator = new(teacher);

    public TokenTargets Targets(Batch batch, DenseTargetOptions options)
    {
        if (teacher.NumClasses != options.NumClasses)
            throw new ArgumentException($"the teacher {teacher.GetName()} has {teacher.NumClasses} classes, the task {options.NumClasses}");
        teacher.eval();
        Tensor dense;
        using (torch.no_grad())
        {
            var x = batch.Images;
            int size = teacher.Options.ImgSize;
            if (x.shape[2] != size || x.shape[3] != size)
                x = nn.functional.interpolate(x, [size, size], mode: InterpolationMode.Bilinear, align_corners: false);
            dense = annotator.DenseLogits(x); // [B, C, g, g]
        }
        long b = dense.shape[0], c = dense.shape[1];
        int g = (int)dense.shape[2];
        dense = dense.flatten(2).transpose(1, 2); // [B, g·g, C]
        if (topK > 0 && topK < c)
        {
            var (v, i) = dense.topk(topK, dim: 2);
            dense = torch.zeros_like(dense).scatter_(2, i, v);
        }
        var full = new RoiBox(-0.5f, -0.5f, g - 0.5f, g - 0.5f);
        int l = options.LabelSize, rows = 1 + l * l;
        var w = new float[rows * g * g];
        RoiAlign.AccumulateWeights(full, g, g, 1, 1, w, 0);
        RoiAlign.AccumulateWeights(full, g, g, l, l, w, 1);
        var weights = torch.tensor(w, [1, rows, (long)g * g], device: dense.device).expand(b, -1, -1);
        return DenseTargets.FromDenseLogits(dense, weights, options, batch.Labels);
    }
}

/// <summary>
/// No label data (official 2-D targets, e.g. transfer fine-tuning): the class target is the smoothed one-hot ground
/// truth; with <see cref="TokenLabelLossMode.TwoD"/> every token gets it too.
/// </summary>
public sealed class GroundTruthTargetSource : ITokenTargetSource
{
    public TokenTargets Targets(Batch batch, DenseTargetOptions options)
    {
        var gt = DenseTargets.SmoothOneHot(batch.Labels.to(batch.Images.device), options.NumClasses, options.Smoothing);
        return new TokenTargets(gt, null, gt);
    }
}

/// <summary>Settings of a token-labeling task.</summary>
/// <param name="Targets">Target construction; LabelSize must equal the model's token grid side (or 1 for ReLabel).</param>
/// <param name="Loss">Loss weights and mode.</param>
/// <param name="MixToken">Sample a MixToken box per batch (models with a token head only).</param>
/// <param name="Seed">Seed of the MixToken generator.</param>
public sealed record TokenLabelTaskOptions(DenseTargetOptions Targets, TokenLabelLossOptions Loss, bool MixToken = true, ulong Seed = 0);

/// <summary>
/// Token labeling as a training task: dense targets for the batch (stored or from a teacher), a MixToken box from
/// the task's seeded generator, <c>model.ForwardTrain(x, box)</c>, and <see cref="TokenLabelLoss"/>.
/// </summary>
public sealed class TokenLabelTask : ITrainTask
{
    private readonly ITokenTargetSource source;
    private readonly TokenLabelLoss loss;
    private readonly MixTokenSampler sampler;

    public TokenLabelTask(ImageClassifier model, ITokenTargetSource source, TokenLabelTaskOptions options)
    {
        options.Targets.Validate();
        if (options.Targets.NumClasses != model.NumClasses)
            throw new ArgumentException($"{model.GetName()} has {model.NumClasses} classes, the token labels {options.Targets.NumClasses}");
        bool relabel = options.Loss.Mode == TokenLabelLossMode.ReLabel;
        if (relabel && options.Targets.LabelSize != 1)
            throw new ArgumentException($"ReLabel mode uses label size 1, got {options.Targets.LabelSize}");
        if (!relabel && options.Targets.LabelSize != model.GridSize)
            throw new ArgumentException($"label size {options.Targets.LabelSize} must equal {model.GetName()}'s token grid side {model.GridSize} (img_size/16)");
        if (!relabel && options.Loss.DenseWeight > 0 && !model.HasTokenHead)
            throw new ArgumentException($"{model.GetName()} has no token head: dense token labels need an lvvit_t/s/m/l model (or ReLabel mode)");
        Model = model;
        this.source = source;
        Options = options;
        loss = new TokenLabelLoss(options.Loss);
        sampler = new MixTokenSampler(options.Seed);
    }

    public ImageClassifier Model { get; }
    public TokenLabelTaskOptions Options { get; }

    /// <summary>The box of the last step (null when MixToken is off).</summary>
    public MixBox? LastBox { get; private set; }

    public TaskOutput Step(Batch batch)
    {
        var targets = source.Targets(batch, Options.Targets);
        MixBox? box = Options.MixToken && Model.HasTokenHead ? sampler.Sample(Model.GridSize, Model.GridSize) : null;
        LastBox = box;
        var output = Model.ForwardTrain(batch.Images, box);
        var l = loss.Compute(output, targets, Model.GridSize);
        return new TaskOutput(l, output.Logits);
    }

    public string SaveState() => sampler.SaveState();

    public void LoadState(string state) => sampler.LoadState(state);
}
