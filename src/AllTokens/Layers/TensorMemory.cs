using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>Native addresses of CPU tensors for our own kernels.</summary>
internal static unsafe class TensorMemory
{
    /// <summary>
    /// The first element of a contiguous CPU tensor. Native memory: pinning is a no-op, and the pointer stays valid while
    /// the tensor lives (TorchSharp's <c>bytes</c> refuses strided tensors; see RandomFeatures for a strided view's).
    /// </summary>
    public static byte* Address(Tensor t)
    {
        fixed (byte* p = t.bytes) return p;
    }
}
