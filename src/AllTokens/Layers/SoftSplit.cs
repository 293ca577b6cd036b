using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// The T2T soft split of the image (nn.Unfold followed by a transpose to tokens) written as strided windows, so the
/// tokens come out contiguous in one copy: the same values in the same order as
/// <c>Unfold(k, s, p)(image).transpose(1, 2)</c>, feature index c·k² + i·k + j. The unfold route writes the columns
/// [B, C·k², L], transposes them, and the LayerNorm after it copies them again (soft split 0 + LayerNorm forward and
/// backward, t2t_vit_7, b8: 11 vs 18 ms). Differentiable (pad, <c>Tensor.unfold</c> and reshape are), but its backward
/// (unfold_backward) is slower than col2im, so the later soft splits, whose input needs a gradient, keep nn.Unfold.
/// The last soft split feeds a Linear directly (the T2T module's <c>project</c>); <see cref="LinearOfTokens"/> runs the
/// pair as one convolution (<c>ALLTOKENS_T2T_PROJECT=linear</c>: nn.Unfold, then the linear).
/// </summary>
public static class SoftSplit
{
    public static bool Strided { get; set; } = SpeedSwitch.On("ALLTOKENS_SOFT_SPLIT", "unfold");
    public static bool ProjectAsConvolution { get; set; } = SpeedSwitch.On("ALLTOKENS_T2T_PROJECT", "linear");

    /// <summary>Image [B, C, H, W] → tokens [B, L, C·k²], L = output rows × output columns.</summary>
    public static Tensor FromImage(Tensor image, int kernel, int stride, int padding)
    {
        if (image.dim() != 4) throw new ArgumentException($"soft split needs a [B, C, H, W] image, got {image.dim()}-D");
        long b = image.shape[0], c = image.shape[1];
        var padded = padding == 0 ? image : nn.functional.pad(image, [padding, padding, padding, padding]);
        var windows = padded.unfold(2, kernel, stride).unfold(3, kernel, stride); // [B, C, oh, ow, k, k]
        long oh = windows.shape[2], ow = windows.shape[3];
        return windows.permute(0, 2, 3, 1, 4, 5).reshape(b, oh * ow, c * kernel * kernel);
    }

    /// <summary>
    /// Tokens [B, N, C] on a √N × √N grid (row-major) → <c>linear(Unfold(k, s, p)(restructure(tokens)).transpose(1, 2))</c>
    /// [B, L, out], computed as one convolution: the tokens viewed as a channels-last image (the re-structurization
    /// without a copy), the linear's weight [out, C·k²] viewed as a kernel [out, C, k, k] (the unfold's feature order
    /// c·k² + i·k + j is the kernel's memory order), and the channels-last output viewed back as tokens. No [B, L, C·k²]
    /// columns are written, forward or backward. t2t_vit_7's soft split 2 + project, batch 8 at 224 px, forward +
    /// backward, 2 Zen 4 cores: fp32 10.3 vs 14.2 ms, bf16 6.3 vs 10.8 ms (BENCHMARKS.md). Same maths, other float rounding.
    /// </summary>
    public static Tensor LinearOfTokens(Tensor tokens, Linear linear, int kernel, int stride, int padding)
    {
        if (tokens.dim() != 3) throw new ArgumentException($"soft split of tokens needs [B, N, C], got {tokens.dim()}-D");
        long b = tokens.shape[0], n = tokens.shape[1], c = tokens.shape[2];
        long side = (long)Math.Round(Math.Sqrt(n));
        if (side * side != n) throw new ArgumentException($"{n} tokens do not form a square grid");
        if (linear.in_features != c * kernel * kernel)
            throw new ArgumentException($"the linear takes {linear.in_features} features, the soft split gives {c * kernel * kernel}");
        using var scope = torch.NewDisposeScope();
        var image = tokens.reshape(b, side, side, c).permute(0, 3, 1, 2);                      // [B, C, √N, √N], NHWC strides
        var weight = linear.weight!.view(linear.out_features, c, kernel, kernel);
        var y = nn.functional.conv2d(image, weight, linear.bias, strides: [stride, stride], padding: [padding, padding]);
        return scope.MoveToOuter(y.permute(0, 2, 3, 1).reshape(b, -1, linear.out_features)); // [B, L, out]
    }
}
