using AllTokens.Data;
using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>
/// Plain image classification: CE with label smoothing, or soft-target CE on timm Mixup/CutMix targets when mixing
/// is on (T2T_VIT.md §5.1). Mixing draws come from the task's own seeded generator, saved in checkpoints.
/// </summary>
public sealed class ClassificationTask : ITrainTask
{
    private readonly Rng rng;

    public ClassificationTask(ImageClassifier model, double smoothing = 0, MixupOptions? mixup = null, ulong seed = 0)
    {
        if (smoothing is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(smoothing), $"label smoothing must be in [0, 1), got {smoothing}");
        Model = model;
        Smoothing = smoothing;
        Mixup = mixup ?? new MixupOptions();
        rng = new Rng(seed);
    }

    public ImageClassifier Model { get; }
    public double Smoothing { get; }
    public MixupOptions Mixup { get; }

    /// <summary>The last batch's draw (for logging and tests).</summary>
    public MixDraw LastDraw { get; private set; } = new(1.0, false, null);

    public TaskOutput Step(Batch batch)
    {
        var images = batch.Images;
        var labels = batch.Labels;
        if (Mixup.Enabled)
        {
            if (batch.Size % 2 != 0) throw new InvalidOperationException($"Mixup/CutMix needs an even batch size, got {batch.Size}");
            LastDraw = Training.Mixup.Draw(Mixup, rng, (int)images.shape[2], (int)images.shape[3]);
            images = images.clone(); // the batch stays as the loader made it
            Training.Mixup.Apply(images, LastDraw);
            var targets = Training.Mixup.Targets(labels, Model.NumClasses, Smoothing, LastDraw.Lambda);
            var logits = Logits(images);
            return new TaskOutput(Losses.SoftTargetCrossEntropy(logits, targets), logits);
        }
        var l = Logits(images);
        return new TaskOutput(Losses.CrossEntropy(l, labels, Smoothing), l);
    }

    // A model with a token head (lvvit_*) trained on class labels alone learns its evaluated prediction,
    // head(cls) + 0.5·max aux_head(tokens), so the aux head is trained rather than left random (the official code
    // crashes here instead, TokenLabeling issue #6). Other models: the class logits.
    private Tensor Logits(Tensor images) => Model.HasTokenHead ? Model.call(images) : Model.ForwardTrain(images).Logits;

    public string SaveState() => rng.SaveState();

    public void LoadState(string state) => rng.LoadState(state);
}
