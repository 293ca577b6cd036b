using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// x̂ = (x − μ)/√(σ² + ε) over the last dimension, without affine — <c>layer_norm(x, [C], null, null, ε)</c> — as our own
/// AVX-512 kernel on libtorch's OpenMP team, for bf16 CPU tensors: the T2T layers' LayerNorms, whose affine
/// <see cref="NormLinear"/> folds into the next linear in bf16 training. libtorch's bf16 LayerNorm converts with AVX2
/// code and runs its moments and its backward as separate passes; here each row is widened to fp32 once, its mean and
/// variance taken in two passes over the widened copy (as libtorch: the mean of (x − μ)², not E[x²] − μ²), and x̂
/// rounded once. Backward from the saved x and the rows' μ, σ⁻¹: ∂x = σ⁻¹·(g − mean(g) − x̂·mean(g·x̂)), in fp32, rounded
/// once. Same maths as libtorch's, other summation order (within bf16 rounding of fp64; tests). fp32 tensors, other
/// devices and <c>ALLTOKENS_ROW_NORM=torch</c> take libtorch's layer_norm. Measured in BENCHMARKS.md.
/// </summary>
public static unsafe class RowNorm
{
    public static bool Enabled { get; set; } = SpeedSwitch.On("ALLTOKENS_ROW_NORM", "torch");

    /// <summary>Widest row the kernels take (their fp32 copy of a row lives on the stack).</summary>
    public const int MaxWidth = 4096;

    /// <summary>Whether <see cref="Normalize"/> takes the kernel: bf16 on a CPU, a row of 1…<see cref="MaxWidth"/> values.</summary>
    public static bool Applies(Tensor x) =>
        Enabled && Vector512.IsHardwareAccelerated && x.device_type == DeviceType.CPU && x.dtype == ScalarType.BFloat16
        && x.dim() >= 1 && x.shape[^1] is > 0 and <= MaxWidth && x.numel() > 0;

    /// <summary><c>layer_norm(x, [C], null, null, eps)</c> with autograd where x needs a gradient.</summary>
    public static Tensor Normalize(Tensor x, double eps)
    {
        if (!Applies(x)) return nn.functional.layer_norm(x, [x.shape[^1]], null, null, eps);
        if (torch.is_grad_enabled() && x.requires_grad) return Function.apply(x, eps);
        using var noGrad = torch.no_grad();
        var y = Forward(x, eps, out var stats);
        stats.Dispose();
        return y;
    }

    private struct Job
    {
        public ushort* X, Y, G;
        public float* Stats; // per row: μ, σ⁻¹
        public int C;
        public float Eps;
    }

    /// <summary>x̂ (bf16) and the rows' [μ, σ⁻¹] (fp32, [rows, 2]).</summary>
    internal static Tensor Forward(Tensor x, double eps, out Tensor stats)
    {
        using var xc = x.contiguous();
        long c = x.shape[^1], rows = x.numel() / c;
        var y = torch.empty(x.shape, dtype: ScalarType.BFloat16);
        stats = torch.empty([rows, 2], dtype: ScalarType.Float32);
        var job = new Job { X = (ushort*)TensorMemory.Address(xc), Y = (ushort*)TensorMemory.Address(y), Stats = (float*)TensorMemory.Address(stats), C = (int)c, Eps = (float)eps };
        OpenMpTeam.For(rows, Grain(c), &ForwardRows, &job);
        return y;
    }

    /// <summary>∂x (bf16) for ∂x̂ = <paramref name="grad"/>, from x and the forward's stats.</summary>
    internal static Tensor Backward(Tensor x, Tensor stats, Tensor grad)
    {
        using var xc = x.contiguous();
        using var gt = grad.dtype == ScalarType.BFloat16 ? grad.alias() : grad.to(ScalarType.BFloat16);
        using var gc = gt.contiguous();
        long c = x.shape[^1], rows = x.numel() / c;
        var dx = torch.empty(x.shape, dtype: ScalarType.BFloat16);
        var job = new Job { X = (ushort*)TensorMemory.Address(xc), G = (ushort*)TensorMemory.Address(gc), Y = (ushort*)TensorMemory.Address(dx), Stats = (float*)TensorMemory.Address(stats), C = (int)c };
        OpenMpTeam.For(rows, Grain(c), &BackwardRows, &job);
        return dx;
    }

    /// <summary>Rows per unit of work: about 4,096 values.</summary>
    private static long Grain(long c) => Math.Max(1, 4096 / c);

    private static void ForwardRows(long from, long to, void* state)
    {
        var j = (Job*)state;
        int c = j->C, full = c & ~15;
        float eps = j->Eps;
        ushort* x = j->X, y = j->Y;
        float* stats = j->Stats;
        float* row = stackalloc float[c];
        for (long r = from; r < to; r++)
        {
            var (mean, rstd) = Moments(x + r * c, row, c, eps);
            stats[2 * r] = mean;
            stats[2 * r + 1] = rstd;
            var mv = Vector512.Create(mean);
            var rv = Vector512.Create(rstd);
            ushort* dst = y + r * c;
            for (int i = 0; i < full; i += 16) Bf16Vector.Store((Vector512.Load(row + i) - mv) * rv, dst + i);
            for (int i = full; i < c; i++) dst[i] = Bf16Vector.Round((row[i] - mean) * rstd);
        }
    }

    /// <summary>A bf16 row widened into <paramref name="row"/>; its mean and σ⁻¹ (two passes: the mean of (x − μ)²).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static (float Mean, float Rstd) Moments(ushort* src, float* row, int c, float eps)
    {
        int full = c & ~15;
        var acc = Vector512<float>.Zero;
        for (int i = 0; i < full; i += 16)
        {
            var v = Bf16Vector.Load(src + i);
            v.Store(row + i);
            acc += v;
        }
        float sum = Vector512.Sum(acc);
        for (int i = full; i < c; i++) sum += row[i] = Bf16Vector.Widen(src[i]);
        float mean = sum / c; // a division, so that a constant row's mean is exact (x̂ = 0, as libtorch's)
        var mv = Vector512.Create(mean);
        var sq = Vector512<float>.Zero;
        for (int i = 0; i < full; i += 16)
        {
            var d = Vector512.Load(row + i) - mv;
            sq = Vector512.FusedMultiplyAdd(d, d, sq);
        }
        float var = Vector512.Sum(sq);
        for (int i = full; i < c; i++) var += (row[i] - mean) * (row[i] - mean);
        return (mean, 1f / MathF.Sqrt(var / c + eps));
    }

    /// <summary>Rows [from, to): ∂x = σ⁻¹·(g − mean(g) − x̂·mean(g·x̂)) with g = ∂y.</summary>
    private static void BackwardRows(long from, long to, void* state)
    {
        var j = (Job*)state;
        int c = j->C;
        float inv = 1f / c;
        ushort* x = j->X, gy = j->G, dx = j->Y;
        float* stats = j->Stats;
        float* h = stackalloc float[c];
        float* g = stackalloc float[c];
        for (long r = from; r < to; r++)
            RowGradient(x + r * c, gy + r * c, dx + r * c, stats[2 * r], stats[2 * r + 1], h, g, c, inv);
    }

    /// <summary>One row's ∂x; h and g are scratch rows (x̂ and ∂y in fp32).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static void RowGradient(ushort* xs, ushort* gs, ushort* dst, float mean, float rstd, float* h, float* g, int c, float inv)
    {
        int full = c & ~15;
        var mv = Vector512.Create(mean);
        var rv = Vector512.Create(rstd);
        var sg = Vector512<float>.Zero;
        var sgh = Vector512<float>.Zero;
        for (int i = 0; i < full; i += 16)
        {
            var hv = (Bf16Vector.Load(xs + i) - mv) * rv;
            var gv = Bf16Vector.Load(gs + i);
            hv.Store(h + i);
            gv.Store(g + i);
            sg += gv;
            sgh = Vector512.FusedMultiplyAdd(gv, hv, sgh);
        }
        float sumG = Vector512.Sum(sg), sumGh = Vector512.Sum(sgh);
        for (int i = full; i < c; i++)
        {
            h[i] = (Bf16Vector.Widen(xs[i]) - mean) * rstd;
            g[i] = Bf16Vector.Widen(gs[i]);
            sumG += g[i];
            sumGh += g[i] * h[i];
        }
        float a = sumG * inv, b = sumGh * inv;
        var av = Vector512.Create(a);
        var bv = Vector512.Create(b);
        for (int i = 0; i < full; i += 16)
            Bf16Vector.Store((Vector512.Load(g + i) - av - Vector512.Load(h + i) * bv) * rv, dst + i);
        for (int i = full; i < c; i++) dst[i] = Bf16Vector.Round((g[i] - a - h[i] * b) * rstd);
    }

    /// <summary>The autograd function: x (the caller's tensor, kept by autograd) and the rows' stats saved.</summary>
    private sealed class Function : torch.autograd.SingleTensorFunction<Function>
    {
        public override string Name => "RowNorm";

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var y = Forward(x, (double)vars[1], out var stats);
            ctx.save_for_backward([x, stats]);
            return y;
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var saved = ctx.get_saved_variables();
            return [Backward(saved[0], saved[1], gradOutput), null!];
        }
    }
}
