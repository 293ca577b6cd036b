using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.TokenLabeling;

/// <summary>
/// A machine annotator: any classifier applied at every location of its final feature map (official
/// <c>TokenLabelHead</c>, LVVIT.md §6.1). For token models the prefix (class) tokens are dropped and the classifier
/// — <c>aux_head</c> when the model has one, as the official head prefers it, else <c>head</c> — runs on each patch
/// token, giving dense logits [B, C, g, g]. The model is not owned.
/// </summary>
public sealed class Annotator
{
    private readonly nn.Module<Tensor, Tensor> classifier;

    public Annotator(ImageClassifier model)
    {
        Model = model;
        if (model.NumClasses < 1) throw new ArgumentException($"{model.GetName()} has no classifier (num_classes 0); an annotator needs one");
        var children = model.named_children().ToDictionary(c => c.name, c => c.module);
        ClassifierName = children.ContainsKey("aux_head") ? "aux_head" : "head";
        classifier = children.TryGetValue(ClassifierName, out var m) && m is nn.Module<Tensor, Tensor> f
            ? f
            : throw new ArgumentException($"{model.GetName()} has no 'head' module to apply per location");
    }

    public ImageClassifier Model { get; }

    /// <summary>The module used as the per-location classifier (<c>aux_head</c> or <c>head</c>).</summary>
    public string ClassifierName { get; }

    public int GridSize => Model.GridSize;

    /// <summary>Dense logits [B, C, g, g] of images [B, 3, R, R] (eval mode, no gradient is the caller's choice).</summary>
    public Tensor DenseLogits(Tensor images)
    {
        var t = Model.ForwardFeatures(images); // [B, P+N, D]
        long b = t.shape[0], n = t.shape[1] - Model.NumPrefixTokens;
        int g = (int)Math.Round(Math.Sqrt(n));
        if ((long)g * g != n) throw new InvalidOperationException($"{Model.GetName()}: {n} patch tokens do not form a square grid");
        var logits = classifier.call(t[.., Model.NumPrefixTokens..]); // [B, N, C]
        return logits.transpose(1, 2).reshape(b, logits.shape[2], g, g); // [B, C, g, g]
    }

    /// <summary>Top-k values and class indices per location, each [B, k, g, g] (values descending).</summary>
    public (Tensor Values, Tensor Indices) TopK(Tensor images, int k)
    {
        var dense = DenseLogits(images);
        if (k < 1 || k > dense.shape[1]) throw new ArgumentOutOfRangeException(nameof(k), $"top-k must be in [1, {dense.shape[1]}], got {k}");
        var (values, indices) = dense.topk(k, dim: 1, largest: true, sorted: true);
        return (values, indices);
    }

    /// <summary>Runs <see cref="TopK"/> without gradient and copies the result into one <see cref="LabelMap"/> per image.</summary>
    public LabelMap[] Annotate(Tensor images, int k)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var (values, indices) = TopK(images, k);
        // fp16 on disk: round here so what is returned equals what a store gives back.
        var v = values.to(ScalarType.Float16).to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
        var ix = indices.to(ScalarType.Int32).cpu().contiguous().data<int>().ToArray();
        int b = (int)values.shape[0], g = (int)values.shape[2], per = k * g * g;
        var maps = new LabelMap[b];
        for (int i = 0; i < b; i++) maps[i] = new LabelMap(k, g, g, v[(i * per)..((i + 1) * per)], ix[(i * per)..((i + 1) * per)]);
        return maps;
    }
}
