using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// The T2T Performer's positive random features φ(z) = exp(W z − ‖z‖²/2 − shift) [B, T, m] of tokens z [B, T, e], in
/// fp32 whatever z's dtype (T2T_VIT.md §3.4: the original's <c>prm_exp</c> runs on <c>.float()</c> inputs), as one
/// AVX-512 pass over the tokens forward and one backward. libtorch's composition of the same maths (cast, square, row
/// sum, GEMM, subtraction, exp) wrote four [B, T, e]-sized intermediates forward, and its backward five more plus two
/// gradient accumulations and a cast, each a pass of its own; here φ is the only tensor written forward, and the
/// backward writes only ∂z. The backward reads the forward's φ (kept by autograd as the function's output, 128 bytes a
/// token; session 12: recomputing it instead cost 128 FMAs and two exponentials a token, fwd + bwd ×1.07–1.17 slower).
///
/// Backward: with u = g ⊙ φ, ∂z = uᵀW − (Σⱼ uⱼ)·z. A bf16 z is widened exactly and its gradient rounded to nearest even,
/// as a cast would. Same maths as the composition, other summation order (fp32 rounding); <c>ALLTOKENS_PRM=torch</c>
/// switches back to it for comparisons. Used on CPUs with AVX-512 for fp32/bf16 tokens whose widths are multiples of 16.
/// Both passes run on libtorch's OpenMP team (<see cref="OpenMpTeam"/>): with .NET's thread pool the kernel got about one
/// core and lost to the composition (session 10); on the team, forward + backward on t2t_vit_7's [8, 3136, 64] keys
/// take bf16 6.9–7.4 vs 9.1–10.3 ms, fp32 9.0–9.7 vs 11.1–12.5 ms (BENCHMARKS.md). Where the widths are multiples of 32
/// each product pass covers 32 columns with eight FMA chains (session 12: forward 65 vs 88 ns a bf16 row on one core).
/// </summary>
public static class RandomFeatures
{
    public static bool Enabled { get; set; } = SpeedSwitch.On("ALLTOKENS_PRM", "torch");

    private const int MaxWidth = 4096; // per-row scratch lives on the stack
    private const int ChunkRows = 256; // each thread's rows start at a multiple of this (and of the 4 rows a pass)

    /// <summary>Whether <see cref="Exp"/> takes z [B, T, e] with the frozen W [m, e].</summary>
    public static bool Applies(Tensor z, Tensor w) =>
        Enabled && Vector512.IsHardwareAccelerated && z.device_type == DeviceType.CPU
        && z.dtype is ScalarType.Float32 or ScalarType.BFloat16 && z.dim() == 3 && z.stride(2) == 1
        && w.dim() == 2 && w.shape[1] == z.shape[2] && !w.requires_grad
        && z.shape[2] % 16 == 0 && w.shape[0] % 16 == 0 && z.shape[2] <= MaxWidth && w.shape[0] <= MaxWidth;

    /// <summary>φ(z) = exp(W z − ‖z‖²/2 − <paramref name="shift"/>) in fp32 [B, T, m]; see the class remarks.</summary>
    public static Tensor Exp(Tensor z, Tensor w, double shift)
    {
        if (!Applies(z, w)) throw new ArgumentException($"random features: z [{string.Join(", ", z.shape)}] {z.dtype} with W [{string.Join(", ", w.shape)}] needs the libtorch path");
        var weights = Weights.Of(w, (float)shift);
        return z.requires_grad && torch.is_grad_enabled() ? Function.apply(z, weights) : Forward(z, weights);
    }

    /// <summary>W in both layouts the kernels read: Wᵀ [e, m] forward, W [m, e] backward.</summary>
    private sealed record Weights(float[] Transposed, float[] Rows, int E, int M, float Shift)
    {
        public static Weights Of(Tensor w, float shift)
        {
            using var scope = torch.NewDisposeScope();
            using var _ = torch.no_grad();
            var f = w.detach().to(ScalarType.Float32).cpu();
            static float[] Copy(Tensor t) => MemoryMarshal.Cast<byte, float>(t.contiguous().bytes).ToArray();
            return new Weights(Copy(f.t()), Copy(f), (int)w.shape[1], (int)w.shape[0], shift);
        }
    }

    /// <summary>Row addressing of z [B, T, e] with strides (sB, sT, 1), and its element type.</summary>
    private readonly unsafe struct Rows(byte* data, bool bf16, long t, long batchStride, long tokenStride)
    {
        public readonly bool Bf16 = bf16;

        /// <summary>Row (batch, token): a caller walking consecutive rows steps the pair instead of dividing per row.</summary>
        public byte* At(long batch, long token) => data + (batch * batchStride + token * tokenStride) * (Bf16 ? 2 : 4);

        public long Tokens => t;

        public static Rows Of(Tensor z) => new(DataPointer(z), z.dtype == ScalarType.BFloat16, z.shape[1], z.stride(0), z.stride(1));
    }

    /// <summary>The address of <paramref name="t"/>'s first element (TorchSharp's <c>bytes</c> refuses strided tensors).</summary>
    private static unsafe byte* DataPointer(Tensor t)
    {
        using var first = t.as_strided([1], [1], t.storage_offset()); // a one-element view of the same storage
        fixed (byte* p = first.bytes) return p; // native memory: pinning is a no-op, the pointer stays valid while t lives
    }

    private static unsafe Tensor Forward(Tensor z, Weights w)
    {
        long rows = z.shape[0] * z.shape[1];
        var phi = torch.empty([z.shape[0], z.shape[1], w.M], dtype: ScalarType.Float32);
        if (rows == 0) return phi;
        var src = Rows.Of(z);
        fixed (byte* outBytes = phi.bytes)
        fixed (float* wt = w.Transposed)
        {
            var job = new Job { Src = src, E = w.E, M = w.M, Shift = w.Shift, Wt = wt, Phi = (float*)outBytes };
            OpenMpTeam.For(rows, ChunkRows, &ForwardPart, &job);
        }
        return phi;
    }

    private static unsafe Tensor Backward(Tensor z, Tensor phi, Tensor grad, Weights w)
    {
        long rows = z.shape[0] * z.shape[1];
        var gz = torch.empty(z.shape, dtype: z.dtype);
        if (rows == 0) return gz;
        using var f = grad.to(ScalarType.Float32);
        using var g = f.contiguous();
        var src = Rows.Of(z);
        fixed (byte* gBytes = g.bytes)
        fixed (byte* phiBytes = phi.bytes)
        fixed (byte* outBytes = gz.bytes)
        fixed (float* wr = w.Rows)
        {
            var job = new Job { Src = src, E = w.E, M = w.M, Wr = wr, G = (float*)gBytes, Phi = (float*)phiBytes, Gz = outBytes };
            OpenMpTeam.For(rows, ChunkRows, &BackwardPart, &job);
        }
        return gz;
    }

    /// <summary>Rows [from, to) of φ, four at a time (four FMA chains over one load of each Wᵀ row).</summary>
    /// <summary>What a pass's threads share: z's rows, the widths, the shift, W in both layouts, g, and the output.</summary>
    private unsafe struct Job
    {
        public Rows Src;
        public int E, M;
        public float Shift;
        public float* Wt, Wr, G, Phi;
        public byte* Gz;
    }

    private static unsafe void ForwardPart(long from, long to, void* state)
    {
        var j = (Job*)state;
        ForwardRows(j->Src, j->E, j->M, j->Shift, j->Wt, j->Phi, from, to);
    }

    private static unsafe void BackwardPart(long from, long to, void* state)
    {
        var j = (Job*)state;
        BackwardRows(j->Src, j->E, j->M, j->Wr, j->G, j->Phi, j->Gz, from, to);
    }

    private static unsafe void ForwardRows(Rows src, int e, int m, float shift, float* wt, float* phi, long from, long to)
    {
        float* zr = stackalloc float[4 * e];
        float* h = stackalloc float[4];
        float* acc = stackalloc float[4 * 32];
        int block = BlockOf(m);
        for (long r = from; r < to; r += 4)
        {
            int n = (int)Math.Min(4, to - r);
            LoadRows(src, r, n, e, shift, zr, h);
            for (int jb = 0; jb < m; jb += block)
            {
                Exponents(zr, e, wt + jb, m, block, acc);
                float* dst = phi + r * m + jb;
                for (int k = 0; k < n; k++)
                    for (int c = 0; c < block; c += 16)
                        Vector512.Store(ExpF(Vector512.Load(acc + block * k + c) - Vector512.Create(h[k])), dst + k * m + c);
            }
        }
    }

    /// <summary>Rows [from, to) of ∂z = uᵀW − (Σ u)·z with u = g ⊙ φ, φ the forward's (saved).</summary>
    private static unsafe void BackwardRows(Rows src, int e, int m, float* wr, float* g, float* phi, byte* gz, long from, long to)
    {
        float* zr = stackalloc float[4 * e];
        float* u = stackalloc float[4 * m];
        float* h = stackalloc float[4]; // LoadRows' ‖z‖², not needed here
        float* s = stackalloc float[4];
        float* acc = stackalloc float[4 * 32];
        int block = BlockOf(e);
        for (long r = from; r < to; r += 4)
        {
            int n = (int)Math.Min(4, to - r);
            LoadRows(src, r, n, e, 0f, zr, h);
            // Rows past the end (n < 4) get u = 0: their z rows are zero and they are never stored.
            for (int k = n; k < 4; k++) s[k] = 0;
            for (int k = n * m; k < 4 * m; k++) u[k] = 0;
            for (int k = 0; k < n; k++)
            {
                var sum = Vector512<float>.Zero;
                for (int jb = 0; jb < m; jb += 16)
                {
                    var uk = Vector512.Load(phi + (r + k) * m + jb) * Vector512.Load(g + (r + k) * m + jb);
                    Vector512.Store(uk, u + k * m + jb);
                    sum += uk;
                }
                s[k] = Vector512.Sum(sum);
            }
            for (int ib = 0; ib < e; ib += block)
            {
                InputGradients(zr, e, u, m, s, wr + ib, ib, block, acc);
                for (int k = 0; k < n; k++)
                    for (int c = 0; c < block; c += 16)
                        StoreRow(gz, src.Bf16, (r + k) * e + ib + c, Vector512.Load(acc + block * k + c));
            }
        }
    }

    /// <summary>Rows r..r+n−1 of z widened to fp32 into zr [4, e] (missing rows zeroed), h = ‖z‖²/2 + shift.</summary>
    private static unsafe void LoadRows(Rows src, long r, int n, int e, float shift, float* zr, float* h)
    {
        long t = src.Tokens, batch = r / t, token = r % t; // one division for the four rows
        int rowBytes = e * (src.Bf16 ? 2 : 4);
        for (int k = 0; k < 4; k++)
        {
            float* dst = zr + k * e;
            var sq = Vector512<float>.Zero;
            if (k < n)
            {
                byte* row = src.At(batch, token);
                // The row four ahead (the next pass's), so that its strided lines are on their way while this pass
                // computes (past the last row the address is only a hint: a prefetch never faults). z is a slice of kqv
                // with a row stride of 3e, which the hardware prefetchers did not keep up with: forward + backward on
                // t2t_vit_7's keys bf16 ×1.41, fp32 ×1.23 with it (session 12).
                byte* ahead = token + 4 < t ? src.At(batch, token + 4) : src.At(batch + 1, token + 4 - t);
                for (int off = 0; off < rowBytes; off += 64) Sse.Prefetch0(ahead + off);
                if (++token == t) { token = 0; batch++; }
                for (int i = 0; i < e; i += 16)
                {
                    var v = src.Bf16 ? Bf16Vector.Load((ushort*)row + i) : Vector512.Load((float*)row + i);
                    Vector512.Store(v, dst + i);
                    sq = Vector512.FusedMultiplyAdd(v, v, sq);
                }
            }
            else
                for (int i = 0; i < e; i += 16) Vector512.Store(Vector512<float>.Zero, dst + i);
            h[k] = 0.5f * Vector512.Sum(sq) + shift;
        }
    }

    /// <summary>Output columns a product pass covers: 32 (two vectors, eight FMA chains) where the width allows, else 16.</summary>
    private static int BlockOf(int width) => width % 32 == 0 ? 32 : 16;

    /// <summary>(W z)[jb..jb+block) of the four rows in zr into acc [4, block]; <paramref name="wt"/> points at Wᵀ[0, jb].</summary>
    private static unsafe void Exponents(float* zr, int e, float* wt, int m, int block, float* acc)
    {
        new Span<float>(acc, 4 * block).Clear();
        if (block == 32) AccumulateFourRowsWide(zr, e, wt, m, e, acc);
        else AccumulateFourRows(zr, e, wt, m, e, acc);
    }

    /// <summary>∂z[ib..ib+block) = Σⱼ uⱼ W[j, ib..] − s·z of the four rows into acc [4, block]; <paramref name="w"/> points at W[0, ib].</summary>
    private static unsafe void InputGradients(float* zr, int e, float* u, int m, float* s, float* w, int ib, int block, float* acc)
    {
        for (int k = 0; k < 4; k++)
            for (int c = 0; c < block; c += 16)
                Vector512.Store(-Vector512.Create(s[k]) * Vector512.Load(zr + k * e + ib + c), acc + block * k + c);
        if (block == 32) AccumulateFourRowsWide(u, m, w, e, m, acc);
        else AccumulateFourRows(u, m, w, e, m, acc);
    }

    /// <summary>
    /// acc[k, 0..16) += Σᵢ a[k·lda + i] · b[i·ldb .. +16) for the four rows k of a, i &lt; <paramref name="length"/>: both
    /// products of the kernel (W z forward, uᵀW backward). Kept out of line: inlined next to the exponential, the JIT
    /// spilled the four accumulators to the stack on every iteration (calls clobber all vector registers), which tripled
    /// the kernel's time.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe void AccumulateFourRows(float* a, int lda, float* b, int ldb, int length, float* acc)
    {
        var c0 = Vector512.Load(acc); var c1 = Vector512.Load(acc + 16); var c2 = Vector512.Load(acc + 32); var c3 = Vector512.Load(acc + 48);
        float* a1 = a + lda, a2 = a + 2 * lda, a3 = a + 3 * lda;
        for (int i = 0; i < length; i++, b += ldb)
        {
            var bv = Vector512.Load(b);
            c0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[i]), bv, c0);
            c1 = Vector512.FusedMultiplyAdd(Vector512.Create(a1[i]), bv, c1);
            c2 = Vector512.FusedMultiplyAdd(Vector512.Create(a2[i]), bv, c2);
            c3 = Vector512.FusedMultiplyAdd(Vector512.Create(a3[i]), bv, c3);
        }
        Vector512.Store(c0, acc); Vector512.Store(c1, acc + 16); Vector512.Store(c2, acc + 32); Vector512.Store(c3, acc + 48);
    }

    /// <summary>
    /// <see cref="AccumulateFourRows"/> over 32 output columns, acc [4, 32]: eight independent FMA chains instead of four
    /// (a 512-bit FMA's latency is four of its issue slots on Zen 4, so four chains left no slack), and each broadcast of
    /// a[k, i] feeds two FMAs.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe void AccumulateFourRowsWide(float* a, int lda, float* b, int ldb, int length, float* acc)
    {
        var c00 = Vector512.Load(acc); var c01 = Vector512.Load(acc + 16);
        var c10 = Vector512.Load(acc + 32); var c11 = Vector512.Load(acc + 48);
        var c20 = Vector512.Load(acc + 64); var c21 = Vector512.Load(acc + 80);
        var c30 = Vector512.Load(acc + 96); var c31 = Vector512.Load(acc + 112);
        float* a1 = a + lda, a2 = a + 2 * lda, a3 = a + 3 * lda;
        for (int i = 0; i < length; i++, b += ldb)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var x = Vector512.Create(a[i]);
            c00 = Vector512.FusedMultiplyAdd(x, b0, c00); c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(a1[i]);
            c10 = Vector512.FusedMultiplyAdd(x, b0, c10); c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(a2[i]);
            c20 = Vector512.FusedMultiplyAdd(x, b0, c20); c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(a3[i]);
            c30 = Vector512.FusedMultiplyAdd(x, b0, c30); c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
        }
        Vector512.Store(c00, acc); Vector512.Store(c01, acc + 16);
        Vector512.Store(c10, acc + 32); Vector512.Store(c11, acc + 48);
        Vector512.Store(c20, acc + 64); Vector512.Store(c21, acc + 80);
        Vector512.Store(c30, acc + 96); Vector512.Store(c31, acc + 112);
    }

    /// <summary>
    /// eˣ for 16 floats, within ~1 ulp of the exact value: x = n·ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 in two parts, so r
    /// is exact), eʳ by Cephes' degree-5 minimax polynomial for expf (its published coefficients), times 2ⁿ applied as
    /// two powers of two so that results between the smallest normal and zero come out as denormals. NaN stays NaN,
    /// −∞ gives 0, +∞ and overflow give +∞. .NET's Vector512.Exp computes floats through doubles and cost ~4× as much here.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> ExpF(Vector512<float> x)
    {
        // The native min/max and conversion (one instruction each; .NET's Min/Max/ConvertToInt32 add NaN and saturation
        // fix-ups): NaN is restored by the last line, and n is a whole number in [−253, 129].
        var c = Vector512.MinNative(Vector512.MaxNative(x, Vector512.Create(-175f)), Vector512.Create(89f));
        var n = Vector512.Round(c * Vector512.Create(1.44269504088896341f));
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-0.693359375f), c);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(2.12194440e-4f), r);
        var p = Vector512.Create(1.9875691500e-4f);
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1.3981999507e-3f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(8.3334519073e-3f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(4.1665795894e-2f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1.6666665459e-1f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(5.0000001201e-1f));
        p = Vector512.FusedMultiplyAdd(p, r * r, r) + Vector512<float>.One;
        var ni = Vector512.ConvertToInt32Native(n);
        var half = Vector512.ShiftRightArithmetic(ni, 1);
        var twoA = Vector512.ShiftLeft(half + Vector512.Create(127), 23).AsSingle();
        var twoB = Vector512.ShiftLeft(ni - half + Vector512.Create(127), 23).AsSingle();
        var y = p * twoA * twoB;
        return Vector512.ConditionalSelect(Vector512.Equals(x, x), y, x); // NaN in, NaN out
    }

    /// <summary>16 fp32 values stored at element <paramref name="index"/> of an fp32 or bf16 (round to nearest even) tensor.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void StoreRow(byte* dst, bool bf16, long index, Vector512<float> v)
    {
        if (!bf16)
        {
            Vector512.Store(v, (float*)dst + index);
            return;
        }
        Bf16Vector.Store(v, (ushort*)dst + index);
    }

    /// <summary>φ as an autograd function: z (a view its producer keeps anyway) and φ saved for the backward.</summary>
    private sealed class Function : torch.autograd.SingleTensorFunction<Function>
    {
        public override string Name => "PositiveRandomFeatures";

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            var z = (Tensor)vars[0];
            var w = (Weights)vars[1];
            var phi = Forward(z, w);
            ctx.save_for_backward([z, phi]);
            ctx.save_data("weights", w);
            return phi;
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var saved = ctx.get_saved_variables();
            var w = (Weights)ctx.get_data("weights");
            return [Backward(saved[0], saved[1], gradOutput, w), null!];
        }
    }
}
