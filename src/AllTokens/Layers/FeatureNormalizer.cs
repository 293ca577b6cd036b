using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// The Performer's row normalisation φ̂_t = φ(q_t) / (φ(q_t)·s + ε) with s = Σ_t' φ(k_t') ([B, m]), as one AVX-512 pass
/// forward and one backward on libtorch's OpenMP team, written in the dtype the next product takes (bf16 or fp32) — in
/// place of libtorch's broadcast multiply, row sum, add, divide and cast forward and their eight-odd ops backward over
/// [B, T, m] fp32 tensors. d_t = φ_t·s + ε and the quotient are fp32, as before; the rows' d_t are saved. Backward, with
/// a_t = g_t·φ̂_t: ∂φ_t = (g_t − a_t·s)/d_t and ∂s = −Σ_t a_t·φ̂_t (fp32 sums per block of rows, then over blocks in
/// order). For fp32 CPU features of width m ≤ 1024 (a multiple of 16); <c>ALLTOKENS_PERFORMER_NORM=torch</c> keeps
/// the composition. Measured in BENCHMARKS.md.
/// </summary>
internal static unsafe class FeatureNormalizer
{
    public static bool Enabled { get; set; } = SpeedSwitch.On("ALLTOKENS_PERFORMER_NORM", "torch");

    private const long BlockRows = 256; // backward: rows whose ∂s one partial sum collects (a block never spans two images)

    public static bool Applies(Tensor features, Tensor sums) =>
        Enabled && Vector512.IsHardwareAccelerated && features.device_type == DeviceType.CPU && sums.device_type == DeviceType.CPU
        && features.dtype == ScalarType.Float32 && sums.dtype == ScalarType.Float32 && features.dim() == 3 && sums.dim() == 2
        && sums.shape[0] == features.shape[0] && sums.shape[1] == features.shape[2]
        && features.shape[2] % 16 == 0 && features.shape[2] is > 0 and <= 1024 && features.shape[1] > 0;

    /// <summary>φ / (φ·s + ε) in <paramref name="outType"/>; the composition where <see cref="Applies"/> is false.</summary>
    public static Tensor Normalize(Tensor features, Tensor sums, double eps, ScalarType outType)
    {
        if (!Applies(features, sums) || outType is not (ScalarType.Float32 or ScalarType.BFloat16))
        {
            using var scope = torch.NewDisposeScope();
            using var e = eps.ToScalar(); // held for the call (see Held)
            var d = features.mul(sums.unsqueeze(1)).sum(-1, keepdim: true);
            return scope.MoveToOuter(features.div(Held.Add(d, e)).to(outType));
        }
        if (torch.is_grad_enabled() && (features.requires_grad || sums.requires_grad)) return Function.apply(features, sums, eps, outType);
        var y = Forward(features, sums, eps, outType, out var denominators);
        denominators.Dispose();
        return y;
    }

    private struct Job
    {
        public float* Phi, Sums, Denominators, Grad, DPhi, Partial;
        public byte* Out;
        public long Tokens, Blocks; // blocks per image (backward)
        public int M;
        public float Eps;
        public bool Bf16;
    }

    internal static Tensor Forward(Tensor features, Tensor sums, double eps, ScalarType outType, out Tensor denominators)
    {
        using var phi = features.contiguous();
        using var s = sums.contiguous();
        long b = features.shape[0], t = features.shape[1], m = features.shape[2];
        var y = torch.empty(features.shape, dtype: outType);
        denominators = torch.empty([b, t], dtype: ScalarType.Float32);
        var job = new Job
        {
            Phi = (float*)TensorMemory.Address(phi), Sums = (float*)TensorMemory.Address(s), Denominators = (float*)TensorMemory.Address(denominators),
            Out = TensorMemory.Address(y), Tokens = t, M = (int)m, Eps = (float)eps, Bf16 = outType == ScalarType.BFloat16,
        };
        OpenMpTeam.For(b * t, 64, &ForwardRows, &job);
        return y;
    }

    private static void ForwardRows(long from, long to, void* state)
    {
        var j = (Job*)state;
        int m = j->M;
        long tokens = j->Tokens;
        float* phi0 = j->Phi, sums = j->Sums, den = j->Denominators;
        byte* out0 = j->Out;
        bool bf16 = j->Bf16;
        float eps = j->Eps;
        for (long r = from; r < to; r++)
        {
            float* phi = phi0 + r * m, s = sums + r / tokens * m;
            var acc = Vector512<float>.Zero;
            for (int i = 0; i < m; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(phi + i), Vector512.Load(s + i), acc);
            float d = Vector512.Sum(acc) + eps;
            den[r] = d;
            var dv = Vector512.Create(d);
            for (int i = 0; i < m; i += 16)
            {
                var q = Vector512.Load(phi + i) / dv;
                if (bf16) Bf16Vector.Store(q, (ushort*)out0 + r * m + i);
                else q.Store((float*)out0 + r * m + i);
            }
        }
    }

    /// <summary>(∂φ, ∂s) for ∂φ̂ = <paramref name="grad"/>.</summary>
    internal static (Tensor DPhi, Tensor DSums) Backward(Tensor features, Tensor sums, Tensor denominators, Tensor grad)
    {
        using var phi = features.contiguous();
        using var s = sums.contiguous();
        using var gf = grad.to(ScalarType.Float32);
        using var g = gf.contiguous();
        long b = features.shape[0], t = features.shape[1], m = features.shape[2];
        long blocks = (t + BlockRows - 1) / BlockRows;
        var dphi = torch.empty(features.shape, dtype: ScalarType.Float32);
        using var partial = torch.empty([b * blocks, m], dtype: ScalarType.Float32);
        var job = new Job
        {
            Phi = (float*)TensorMemory.Address(phi), Sums = (float*)TensorMemory.Address(s), Denominators = (float*)TensorMemory.Address(denominators),
            Grad = (float*)TensorMemory.Address(g), DPhi = (float*)TensorMemory.Address(dphi), Partial = (float*)TensorMemory.Address(partial),
            Tokens = t, Blocks = blocks, M = (int)m,
        };
        OpenMpTeam.For(b * blocks, 1, &BackwardBlocks, &job); // a unit: one block of one image's rows
        // ∂s per image: its blocks' partial sums in order.
        var ds = torch.empty([b, m], dtype: ScalarType.Float32);
        float* p = (float*)TensorMemory.Address(partial), dst = (float*)TensorMemory.Address(ds);
        for (long img = 0; img < b; img++)
            for (int i = 0; i < m; i++)
            {
                float sum = 0;
                for (long k = 0; k < blocks; k++) sum += p[(img * blocks + k) * m + i];
                dst[img * m + i] = sum;
            }
        return (dphi, ds);
    }

    private static void BackwardBlocks(long from, long to, void* state)
    {
        var j = (Job*)state;
        int m = j->M;
        long tokens = j->Tokens, blocks = j->Blocks;
        float* phi0 = j->Phi, sums = j->Sums, den = j->Denominators, g0 = j->Grad, dphi0 = j->DPhi, partial = j->Partial;
        for (long unit = from; unit < to; unit++)
        {
            long img = unit / blocks, first = img * tokens + unit % blocks * BlockRows;
            long end = Math.Min((img + 1) * tokens, first + BlockRows);
            float* s = sums + img * m, ds = partial + unit * m;
            new Span<float>(ds, m).Clear();
            for (long r = first; r < end; r++)
            {
                float* phi = phi0 + r * m, g = g0 + r * m, dphi = dphi0 + r * m;
                var inv = Vector512.Create(1f / den[r]);
                var acc = Vector512<float>.Zero;
                for (int i = 0; i < m; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(g + i), Vector512.Load(phi + i) * inv, acc);
                var a = Vector512.Create(Vector512.Sum(acc)); // g·φ̂
                for (int i = 0; i < m; i += 16)
                {
                    var q = Vector512.Load(phi + i) * inv; // φ̂
                    ((Vector512.Load(g + i) - a * Vector512.Load(s + i)) * inv).Store(dphi + i);
                    (Vector512.Load(ds + i) - a * q).Store(ds + i);
                }
            }
        }
    }

    /// <summary>The autograd function: φ, s (inputs, kept by autograd) and the rows' d saved.</summary>
    private sealed class Function : torch.autograd.SingleTensorFunction<Function>
    {
        public override string Name => "PerformerFeatureNormalizer";

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            var phi = (Tensor)vars[0];
            var s = (Tensor)vars[1];
            var y = Forward(phi, s, (double)vars[2], (ScalarType)vars[3], out var den);
            ctx.save_for_backward([phi, s, den]);
            return y;
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var saved = ctx.get_saved_variables();
            var (dphi, ds) = Backward(saved[0], saved[1], saved[2], gradOutput);
            return [dphi, ds, null!, null!];
        }
    }
}
