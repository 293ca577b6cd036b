using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// The backward of the token soft split (<see cref="SoftSplit.OfTokens"/>) as a gather, on libtorch's OpenMP team: each
/// input token's gradient is the sum, over the 1–4 windows that cover it (k = 3, s = 2), of that window's gradient at
/// the token's offset — per channel c the feature c·k² + i·k + j, read with 8-lane gathers (stride k²), summed in fp32,
/// written once in the tokens' dtype. No zeroed fp32 image, no strided mixed-dtype adds, no slice-and-cast copy (the
/// libtorch route, kept for other devices and dtypes and with <c>ALLTOKENS_SOFT_SPLIT_GRAD=torch</c>). A bf16 value is
/// gathered as the 32-bit word that starts at it (its high half is the next value, shifted out); the very last window
/// of the tensor is read value by value, so nothing is read past the gradient's end.
/// </summary>
internal static unsafe class TokenSplitGradient
{
    public static bool Enabled { get; set; } = SpeedSwitch.On("ALLTOKENS_SOFT_SPLIT_GRAD", "torch");

    public static bool Applies(Tensor gradOutput, ScalarType dtype, long channels) =>
        Enabled && Avx512F.IsSupported && Avx2.IsSupported && gradOutput.device_type == DeviceType.CPU && gradOutput.dtype == dtype
        && dtype is ScalarType.Float32 or ScalarType.BFloat16 && channels is > 0 and <= 4096;

    private struct Job
    {
        public byte* Src, Dst;
        public long Side, OutSide, Channels, Features, Windows, LastWindow; // LastWindow: flat index of the tensor's last window
        public int Kernel, Stride, Padding;
        public bool Bf16;
    }

    /// <summary>∂tokens [B, side², C] from ∂windows [B, L, C·k²].</summary>
    public static Tensor Backward(Tensor gradOutput, SoftSplit.TokenGrid g)
    {
        using var src = gradOutput.contiguous();
        var grad = torch.empty([g.Batch, g.Side * g.Side, g.Channels], dtype: gradOutput.dtype, device: gradOutput.device);
        long windows = g.OutSide * g.OutSide;
        var job = new Job
        {
            Src = TensorMemory.Address(src), Dst = TensorMemory.Address(grad), Side = g.Side, OutSide = g.OutSide, Channels = g.Channels,
            Features = g.Channels * g.Kernel * g.Kernel, Windows = windows, LastWindow = g.Batch * windows - 1,
            Kernel = g.Kernel, Stride = g.Stride, Padding = g.Padding, Bf16 = gradOutput.dtype == ScalarType.BFloat16,
        };
        OpenMpTeam.For(g.Batch * g.Side, 4, &Rows, &job); // a unit: one row of one image's tokens
        return grad;
    }

    /// <summary>The windows covering padded coordinate <paramref name="pos"/> along one axis: first and last index.</summary>
    private static (long First, long Last) Covering(long pos, int kernel, int stride, long outSide)
    {
        long first = pos - kernel + 1 <= 0 ? 0 : (pos - kernel + 1 + stride - 1) / stride;
        long last = Math.Min(outSide - 1, pos / stride);
        return (first, last);
    }

    private static void Rows(long from, long to, void* state)
    {
        var j = (Job*)state;
        long side = j->Side, outSide = j->OutSide, c = j->Channels, features = j->Features, windows = j->Windows;
        int k = j->Kernel, s = j->Stride, p = j->Padding;
        bool bf16 = j->Bf16;
        long full = c & ~15L;
        float* acc = stackalloc float[(int)c];
        // Gather offsets of 16 consecutive channels: channel c sits at feature c·k² (+ the window offset).
        var index = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * Vector256.Create(k * k);
        for (long row = from; row < to; row++)
        {
            long b = row / side, y = row % side;
            var (oyFirst, oyLast) = Covering(y + p, k, s, outSide);
            for (long x = 0; x < side; x++)
            {
                var (oxFirst, oxLast) = Covering(x + p, k, s, outSide);
                new Span<float>(acc, (int)c).Clear();
                for (long oy = oyFirst; oy <= oyLast; oy++)
                    for (long ox = oxFirst; ox <= oxLast; ox++)
                    {
                        long window = b * windows + oy * outSide + ox;
                        long q = (y + p - s * oy) * k + (x + p - s * ox); // the token's offset i·k + j in the window
                        long first = window * features + q;                // feature q of channel 0
                        if (window == j->LastWindow) Accumulate(j->Src, bf16, first, k * k, 0, c, acc);
                        else
                        {
                            for (long c0 = 0; c0 < full; c0 += 16)
                            {
                                long at = first + c0 * k * k;
                                // Two 8-lane gathers (.NET exposes AVX2's, not AVX-512's), channels c0…c0+7 and c0+8…c0+15.
                                long at8 = at + 8L * k * k;
                                Vector256<float> lo, hi;
                                if (bf16)
                                {
                                    lo = Avx2.ShiftLeftLogical(Avx2.GatherVector256((int*)(j->Src + 2 * at), index, 2), 16).AsSingle();
                                    hi = Avx2.ShiftLeftLogical(Avx2.GatherVector256((int*)(j->Src + 2 * at8), index, 2), 16).AsSingle();
                                }
                                else
                                {
                                    lo = Avx2.GatherVector256((float*)j->Src + at, index, 4);
                                    hi = Avx2.GatherVector256((float*)j->Src + at8, index, 4);
                                }
                                (Vector512.Load(acc + c0) + Vector512.Create(lo, hi)).Store(acc + c0);
                            }
                            Accumulate(j->Src, bf16, first, k * k, full, c, acc);
                        }
                    }
                long token = (b * side + y) * side + x;
                if (bf16)
                {
                    ushort* dst = (ushort*)j->Dst + token * c;
                    for (long c0 = 0; c0 < full; c0 += 16) Bf16Vector.Store(Vector512.Load(acc + c0), dst + c0);
                    for (long ch = full; ch < c; ch++) dst[ch] = Bf16Vector.Round(acc[ch]);
                }
                else
                    new Span<float>(acc, (int)c).CopyTo(new Span<float>((float*)j->Dst + token * c, (int)c));
            }
        }
    }

    /// <summary>Channels [from, to) one by one: acc[ch] += src[first + ch·stride].</summary>
    private static void Accumulate(byte* src, bool bf16, long first, long stride, long from, long to, float* acc)
    {
        for (long ch = from; ch < to; ch++)
        {
            long at = first + ch * stride;
            acc[ch] += bf16 ? Bf16Vector.Widen(((ushort*)src)[at]) : ((float*)src)[at];
        }
    }
}
