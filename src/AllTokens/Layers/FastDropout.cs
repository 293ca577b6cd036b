using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// Dropout whose mask is drawn in parallel. libtorch draws a CPU dropout mask one element at a time on one thread
/// (its vectorised MKL Bernoulli path is taken on Intel CPUs only), which cost ~15 % of a t2t_vit_7 train step (the
/// Performer layers drop 10 % of [B, 3136, 64] activations twice each). Here one 64-bit seed is taken from torch's
/// default generator per call (so torch.manual_seed and a checkpointed generator state still make runs repeatable)
/// and element i keeps its value when SplitMix64(seed, i) maps to u ∈ [0, 1) with u ≥ p; kept values are scaled by
/// 1/(1−p), as torch's dropout. Same distribution, other random stream. fp32 and bf16 CPU tensors take this path;
/// everything else (and <c>ALLTOKENS_DROPOUT=torch</c>) uses libtorch's dropout.
/// </summary>
public static unsafe class FastDropout
{
    public static bool Enabled { get; set; } = SpeedSwitch.On("ALLTOKENS_DROPOUT", "torch");

    /// <summary>Each thread's part of the mask starts at a multiple of this (whole vector passes in either dtype).</summary>
    private const int Grain = 1 << 10;

    private struct FillJob
    {
        public byte* Dst;
        public ulong Seed;
        public ulong Threshold;
        public float Scale;
        public ushort ScaleBits;
        public bool Bf16;
    }

    private static void FillPart(long from, long to, void* state)
    {
        var job = (FillJob*)state;
        if (job->Bf16) Fill((ushort*)job->Dst, from, to, job->Seed, job->Threshold, job->ScaleBits);
        else Fill((float*)job->Dst, from, to, job->Seed, job->Threshold, job->Scale);
    }

    /// <summary>
    /// Fill the mask with AVX-512, 8 hashes per vector (the same values as the scalar loop, which tests compare it
    /// with): a [8, 3136, 64] mask in ~0.8 ms instead of ~3.5 ms on 2 cores, ~0.4 ms since it runs on libtorch's OpenMP
    /// team. <c>ALLTOKENS_DROPOUT_FILL=scalar</c> to compare.
    /// </summary>
    internal static bool Vectorized { get; set; } = SpeedSwitch.On("ALLTOKENS_DROPOUT_FILL", "scalar");

    /// <summary>The module's dropout (its p and training flag) applied to <paramref name="x"/>.</summary>
    public static Tensor Apply(Dropout module, Tensor x) => Apply(x, module.p, module.training);

    public static Tensor Apply(Tensor x, double p, bool training)
    {
        if (!training || p == 0 || x.numel() == 0) return x;
        if (!Enabled || p >= 1 || x.device_type != DeviceType.CPU || (x.dtype != ScalarType.Float32 && x.dtype != ScalarType.BFloat16))
            return nn.functional.dropout(x, p, training);
        using var seedTensor = torch.randint(long.MaxValue, [1], dtype: ScalarType.Int64);
        ulong seed = (ulong)seedTensor.item<long>();
        using var mask = Mask(x.shape, p, seed, x.dtype); // a plain tensor: no gradient flows into it
        return x * mask;
    }

    /// <summary>A tensor of 0 and 1/(1−p) (in <paramref name="dtype"/>), element i kept when u(seed, i) ≥ p.</summary>
    public static Tensor Mask(long[] shape, double p, ulong seed, ScalarType dtype)
    {
        var mask = torch.empty(shape, dtype: dtype);
        long n = mask.numel();
        // Keep when the top 32 bits of the hash, as an integer, are ≥ p·2³² (u = bits / 2³²).
        ulong threshold = (ulong)Math.Min(Math.Ceiling(p * 4294967296.0), 4294967296.0);
        float scale = (float)(1.0 / (1.0 - p));
        fixed (byte* start = mask.bytes) // native memory: pinning is a no-op, the pointer stays valid while mask lives
        {
            var job = new FillJob { Dst = start, Seed = seed, Threshold = threshold, Scale = scale, Bf16 = dtype == ScalarType.BFloat16 };
            if (job.Bf16) job.ScaleBits = BFloat16Bits(scale); // bf16 elements as their 16-bit patterns
            // On libtorch's OpenMP team: Parallel.For right after a libtorch op got about one core (Layers/OpenMpTeam).
            OpenMpTeam.For(n, Grain, &FillPart, &job);
        }
        return mask;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Hash(ulong seed, long i)
    {
        ulong z = seed + (ulong)(i + 1) * 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Elements [from, to): <paramref name="scale"/> when kept, else zero (all-zero bits in fp32 and bf16 alike).</summary>
    private static void Fill(float* dst, long from, long to, ulong seed, ulong threshold, float scale)
    {
        long i = from;
        if (Vectorized && Vector512.IsHardwareAccelerated)
        {
            // 16 elements a pass: two vectors of 8 hashes, the 64-bit keep masks narrowed to 32-bit lanes and ANDed
            // with the scale's bits (identical values to the scalar loop below).
            var scaleBits = Vector512.Create(BitConverter.SingleToUInt32Bits(scale));
            var thr = Vector512.Create(threshold);
            for (; i + 16 <= to; i += 16)
            {
                var keep = Vector512.Narrow(Keep(seed, i, thr), Keep(seed, i + 8, thr));
                Vector512.Store((keep & scaleBits).AsSingle(), dst + i);
            }
        }
        for (; i < to; i++) dst[i] = (Hash(seed, i) >> 32) >= threshold ? scale : 0f;
    }

    private static void Fill(ushort* dst, long from, long to, ulong seed, ulong threshold, ushort scale)
    {
        long i = from;
        if (Vectorized && Vector512.IsHardwareAccelerated)
        {
            var scaleBits = Vector512.Create(scale);
            var thr = Vector512.Create(threshold);
            for (; i + 32 <= to; i += 32)
            {
                var low = Vector512.Narrow(Keep(seed, i, thr), Keep(seed, i + 8, thr));
                var high = Vector512.Narrow(Keep(seed, i + 16, thr), Keep(seed, i + 24, thr));
                Vector512.Store(Vector512.Narrow(low, high) & scaleBits, dst + i);
            }
        }
        for (; i < to; i++) dst[i] = (Hash(seed, i) >> 32) >= threshold ? scale : (ushort)0;
    }

    /// <summary>All-ones lanes where elements i … i+7 are kept: <see cref="Hash"/> lane by lane, top 32 bits ≥ threshold.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> Keep(ulong seed, long i, Vector512<ulong> threshold)
    {
        var index = Vector512.Create((ulong)i + 1) + Vector512<ulong>.Indices;
        var z = Vector512.Create(seed) + index * Vector512.Create(0x9E3779B97F4A7C15UL);
        z = (z ^ Vector512.ShiftRightLogical(z, 30)) * Vector512.Create(0xBF58476D1CE4E5B9UL);
        z = (z ^ Vector512.ShiftRightLogical(z, 27)) * Vector512.Create(0x94D049BB133111EBUL);
        z ^= Vector512.ShiftRightLogical(z, 31);
        return Vector512.GreaterThanOrEqual(Vector512.ShiftRightLogical(z, 32), threshold);
    }

    /// <summary>The bf16 bit pattern of <paramref name="v"/>, rounded to nearest even (as torch's conversion).</summary>
    internal static ushort BFloat16Bits(float v)
    {
        uint u = BitConverter.SingleToUInt32Bits(v);
        uint rounding = 0x7FFFu + ((u >> 16) & 1u);
        return (ushort)((u + rounding) >> 16);
    }
}
