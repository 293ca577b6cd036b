using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// The T2T soft split of the image (nn.Unfold followed by a transpose to tokens) written as strided windows, so the
/// tokens come out contiguous in one copy: the same values in the same order as
/// <c>Unfold(k, s, p)(image).transpose(1, 2)</c>, feature index c·k² + i·k + j. The unfold route writes the columns
/// [B, C·k², L], transposes them, and the LayerNorm after it copies them again (soft split 0 + LayerNorm forward and
/// backward, t2t_vit_7, b8: 11 vs 18 ms). Differentiable (pad, <c>Tensor.unfold</c> and reshape are), but its backward
/// (unfold_backward) is slower than col2im, so the later soft splits, whose input needs a gradient, keep nn.Unfold.
/// <c>ALLTOKENS_SOFT_SPLIT=unfold</c> selects the nn.Unfold route for the first one too.
/// </summary>
public static class SoftSplit
{
    public static bool Strided { get; set; } = SpeedSwitch.On("ALLTOKENS_SOFT_SPLIT", "unfold");

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
}
