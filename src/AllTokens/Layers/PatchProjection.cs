using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// A patch projection — a convolution whose kernel equals its stride, without padding (LV-ViT's 8×8/s8 <c>proj</c>) — on a
/// channels-last image as one linear over the non-overlapping patches: the image [B, C, H, W] (NHWC strides) is cut
/// into rows [B, (H/k)·(W/k), k·k·C] (one copy, each patch row k·C contiguous values), the weight [D, C, k, k] is
/// reordered to [D, k·k·C] to match, and <see cref="Dense"/> does the product. oneDNN's direct kernel for that
/// convolution ran at ~77 GFLOP/s on 2 Zen 5 cores (lvvit_t's [8, 64, 112, 112] → 240: 40 ms a forward, a sixth of an
/// inference step), where its GEMM kernels reach ~370. Returns [B, D, H/k, W/k] with channels-last strides, as the
/// convolution did. Same maths, other float rounding; <c>ALLTOKENS_PATCH_PROJECT=conv</c> keeps the convolution.
/// </summary>
public static class PatchProjection
{
    public static bool Enabled { get; set; } = SpeedSwitch.On("ALLTOKENS_PATCH_PROJECT", "conv");

    /// <summary>
    /// With gradients, take the linear only where <see cref="Dense"/> runs it as its checked convolution. Where it falls
    /// back to the plain matmul (on the Zen 5 VM oneDNN's 1×1 kernel is wrong for lvvit_t's [8, 196, 4096] → 240) the
    /// matmul's backward raised lvvit_t's peak RSS by ~100–130 MiB, above PyTorch's, for ~15 ms a step; there training
    /// keeps the convolution, and inference (no gradients, no saved patches) still takes the linear. Tests turn it off
    /// to exercise the linear's backward on any CPU.
    /// </summary>
    internal static bool TrainingNeedsSoundConvolution { get; set; } = true;

    /// <summary>Whether <see cref="Forward"/> takes the linear for this convolution and input.</summary>
    public static bool Applies(Conv2d conv, Tensor x)
    {
        if (!Enabled || x.dim() != 4 || x.device_type != DeviceType.CPU || !Layout.IsChannelsLast(x)) return false;
        var w = conv.weight!;
        long k = w.shape[2];
        if (w.shape[3] != k || conv.groups != 1 || x.shape[1] != w.shape[1]) return false;
        var (stride, padding, dilation) = (conv.stride, conv.padding, conv.dilation);
        if (stride is null || padding is null || dilation is null) return false;
        if (stride.Length != 2 || stride[0] != k || stride[1] != k) return false;
        if (padding.Length != 2 || padding[0] != 0 || padding[1] != 0) return false;
        if (dilation.Length != 2 || dilation[0] != 1 || dilation[1] != 1) return false;
        return x.shape[2] % k == 0 && x.shape[3] % k == 0;
    }

    /// <summary><paramref name="conv"/>'s output for <paramref name="x"/>; the convolution itself where <see cref="Applies"/> is false.</summary>
    public static Tensor Forward(Conv2d conv, Tensor x)
    {
        if (!Applies(conv, x)) return conv.call(x);
        var w = conv.weight!;
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], wd = x.shape[3], k = w.shape[2], d = w.shape[0];
        long hp = h / k, wp = wd / k;
        bool training = torch.is_grad_enabled() && (x.requires_grad || w.requires_grad || conv.bias?.requires_grad == true);
        // Dense's verdict for this product already cached as wrong: the convolution, without the patch copy it would not use.
        if (training && TrainingNeedsSoundConvolution && Dense.KnownUnsound(x.dtype, b, hp * wp, k * k * c, d, conv.bias is not null, gradient: true))
            return conv.call(x);
        using var scope = torch.NewDisposeScope();
        var patches = x.permute(0, 2, 3, 1)                // [B, H, W, C], a view of the NHWC memory
            .view(b, hp, k, wp, k, c)
            .permute(0, 1, 3, 2, 4, 5)                     // [B, H/k, W/k, k, k, C]
            .reshape(b, hp * wp, k * k * c);               // the one copy
        var weight = w.permute(0, 2, 3, 1).reshape(d, k * k * c); // [D, k, k, C]: the patches' feature order
        if (training && TrainingNeedsSoundConvolution && !Dense.TakesSoundConvolution(weight, conv.bias, patches))
            return scope.MoveToOuter(conv.call(x));
        var y = Dense.Forward(patches, weight, conv.bias);         // [B, H/k · W/k, D]
        return scope.MoveToOuter(y.view(b, hp, wp, d).permute(0, 3, 1, 2)); // [B, D, H/k, W/k], NHWC strides
    }
}
