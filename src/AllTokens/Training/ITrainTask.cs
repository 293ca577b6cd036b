using AllTokens.Data;
using AllTokens.Models;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>What one training step of a task returns.</summary>
/// <param name="Loss">Scalar loss with its graph attached.</param>
/// <param name="Logits">[B, C] class logits used for the running train accuracy.</param>
public sealed record TaskOutput(Tensor Loss, Tensor Logits);

/// <summary>
/// Pairs a model with its loss. The training loop knows only this: plain classification, Mixup/CutMix and
/// token labeling are tasks.
/// </summary>
public interface ITrainTask
{
    /// <summary>The model being trained.</summary>
    ImageClassifier Model { get; }

    /// <summary>Forward and loss for one batch, model in training mode. Runs inside the step's dispose scope.</summary>
    TaskOutput Step(Batch batch);

    /// <summary>The task's own random state (Mixup draws, MixToken boxes) for an exact resume.</summary>
    string SaveState();

    /// <summary>Restores what <see cref="SaveState"/> returned.</summary>
    void LoadState(string state);
}
