using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Visualization;

/// <summary>Per-channel maps of one token set reshaped to its grid (the T2T paper's Fig. 2 view).</summary>
/// <param name="Name">Which stage the tokens come from.</param>
/// <param name="Grid">Side of the square token grid.</param>
/// <param name="Channels">Selected channel indices.</param>
/// <param name="Maps">One row-major Grid×Grid map per selected channel.</param>
public sealed record TokenFeatureMaps(string Name, int Grid, int[] Channels, float[][] Maps);

/// <summary>Class-token attention over the patch tokens at one block.</summary>
/// <param name="Block">Block index (0-based).</param>
/// <param name="Grid">Side of the patch grid.</param>
/// <param name="PerHead">One Grid×Grid map per head: attention of the class token to each patch token.</param>
/// <param name="Mean">The head average.</param>
public sealed record ClsAttentionMaps(int Block, int Grid, float[][] PerHead, float[] Mean);

/// <summary>What <see cref="ModelInspector.Inspect"/> found for one image.</summary>
public sealed record Inspection(IReadOnlyList<TokenFeatureMaps> Features, ClsAttentionMaps Attention, float[] Logits);

/// <summary>Runs a model on one image and extracts feature and attention maps for pictures.</summary>
public static class ModelInspector
{
    /// <summary>
    /// Inspects <paramref name="image"/> ([1, 3, R, R], normalised) at block <paramref name="block"/> (negative counts from
    /// the end: −1 is the last block). Feature maps show the <paramref name="channels"/> channels with the largest spatial
    /// variance of each token set: for T2T-ViT the two T2T layers' tokens, then the patch tokens after the block.
    /// </summary>
    public static Inspection Inspect(ImageClassifier model, Tensor image, int block = -1, int channels = 8)
    {
        if (image.dim() != 4 || image.shape[0] != 1)
            throw new ArgumentException($"expected one image [1, 3, R, R], got [{string.Join(", ", image.shape)}]");
        int depth = model.Depth;
        int b = block < 0 ? depth + block : block;
        if (b < 0 || b >= depth) throw new ArgumentOutOfRangeException(nameof(block), $"{model.GetName()} has blocks 0..{depth - 1} (or -1..-{depth})");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        model.eval();
        var features = new List<TokenFeatureMaps>();
        if (model is T2tVit t2t && t2t.TokensToToken is { } t2tModule && t2tModule.Kind is T2tTokens.Performer or T2tTokens.Transformer)
        {
            var stages = t2tModule.ForwardStages(image);
            if (stages.Attention1 is { } a1) features.Add(Maps("T2T layer 1", a1[0], channels));
            if (stages.Attention2 is { } a2) features.Add(Maps("T2T layer 2", a2[0], channels));
        }
        var (tokens, attention) = model.ForwardToBlock(image, b);
        int prefix = model.NumPrefixTokens, grid = model.GridSize;
        features.Add(Maps($"block {b} tokens", tokens[0, prefix..], channels));
        // attention [1, H, P+N, P+N]: row 0 is the class token attending to everything.
        var cls = attention[0, .., 0, prefix..].to(ScalarType.Float32).cpu();   // [H, N]
        int heads = (int)cls.shape[0];
        var perHead = Enumerable.Range(0, heads).Select(h => cls[h].data<float>().ToArray()).ToArray();
        var mean = cls.mean([0]).data<float>().ToArray();
        var logits = model.call(image)[0].to(ScalarType.Float32).cpu().data<float>().ToArray();
        return new Inspection(features, new ClsAttentionMaps(b, grid, perHead, mean), logits);
    }

    /// <summary>Selects the highest-variance channels of tokens [N, D] on a square grid.</summary>
    public static TokenFeatureMaps Maps(string name, Tensor tokens, int count)
    {
        long n = tokens.shape[0], d = tokens.shape[1];
        int grid = (int)Math.Round(Math.Sqrt(n));
        if ((long)grid * grid != n) throw new ArgumentException($"{name}: {n} tokens do not form a square grid");
        using var scope = torch.NewDisposeScope();
        var t = tokens.to(ScalarType.Float32).cpu();
        var variance = t.var(0).data<float>().ToArray();
        int[] chosen = Enumerable.Range(0, (int)d).OrderByDescending(c => variance[c]).ThenBy(c => c).Take(Math.Max(1, count)).ToArray();
        var maps = chosen.Select(c => t[.., c].contiguous().data<float>().ToArray()).ToArray();
        return new TokenFeatureMaps(name, grid, chosen, maps);
    }
}
