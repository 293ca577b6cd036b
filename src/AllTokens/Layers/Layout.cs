using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>Memory layouts TorchSharp 0.107 has no API for.</summary>
public static class Layout
{
    /// <summary>
    /// The same [B, C, H, W] tensor with channels-last strides [H·W·C, 1, W·C, C] (torch.channels_last), copied only when
    /// it is not laid out that way already. Differentiable (permute and contiguous are).
    /// </summary>
    public static Tensor ToChannelsLast(Tensor x)
    {
        if (x.dim() != 4) throw new ArgumentException($"channels-last needs a 4-D [B, C, H, W] tensor, got {x.dim()}-D");
        if (IsChannelsLast(x)) return x;
        return x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2);
    }

    /// <summary>Whether a 4-D tensor is dense in channels-last order (size-1 dimensions may have any stride).</summary>
    public static bool IsChannelsLast(Tensor x)
    {
        if (x.dim() != 4) return false;
        var size = x.shape;
        var stride = x.stride();
        long expected = 1;
        foreach (int d in new[] { 1, 3, 2, 0 })
        {
            if (size[d] != 1 && stride[d] != expected) return false;
            expected *= size[d];
        }
        return true;
    }
}
