using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using AllTokens.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>
/// AdamW for a bf16 model with fp32 master weights, one pass per element over every parameter of a group: reads the
/// model's bf16 gradient, updates the fp32 master and its two moments, and writes the new master, rounded to bf16, into
/// the model's parameter (<see cref="OptimParam.Shadow"/>). It replaces three passes a bf16 step made before — the
/// gradients cast to fp32, libtorch's fused AdamW on the masters, and the masters copied back into the model — with one
/// (BENCHMARKS.md). The formula is <see cref="AdamW"/>'s (torch.optim.AdamW): p ← p·(1 − lr·wd);
/// m ← m + (1 − β1)(g − m); v ← β2·v + (1 − β2)·g²; p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε); the
/// same arithmetic as libtorch's fused kernel up to float rounding (fused multiply-adds). Runs on libtorch's OpenMP team
/// (<see cref="OpenMpTeam"/>), the elements of all parameters split evenly between the threads.
/// </summary>
internal static unsafe class MixedAdamW
{
    /// <summary>
    /// Whether this kernel takes <paramref name="ready"/>: every tensor on the CPU and contiguous, fp32 masters, bf16 or
    /// fp32 gradients, bf16 shadows or none — and mixed precision somewhere (a bf16 gradient or a shadow), so fp32
    /// training keeps libtorch's fused kernel and its float rounding. Needs AVX-512 (Vector512 in hardware).
    /// </summary>
    public static bool Applies(IReadOnlyList<OptimParam> ready)
    {
        if (!Vector512.IsHardwareAccelerated) return false;
        bool mixed = false;
        foreach (var p in ready)
        {
            var g = p.Grad!;
            if (!OnCpuContiguous(p.Value) || p.Value.dtype != ScalarType.Float32) return false;
            if (!OnCpuContiguous(g) || g.dtype is not (ScalarType.BFloat16 or ScalarType.Float32)) return false;
            if (p.Shadow is { } s && (!OnCpuContiguous(s) || s.dtype != ScalarType.BFloat16)) return false;
            mixed |= g.dtype == ScalarType.BFloat16 || p.Shadow is not null;
        }
        return mixed;
    }

    private static bool OnCpuContiguous(Tensor t) => t.device_type == DeviceType.CPU && t.is_contiguous();

    /// <summary>One parameter's tensors and step constants.</summary>
    private struct Segment
    {
        public float* Master, ExpAvg, ExpAvgSq;
        public byte* Grad;   // bf16 or fp32 (GradBf16)
        public ushort* Model; // bf16, or null: no shadow
        public long Start, Length; // in the job's flat element range
        public float Decay, StepSize, Bias2Sqrt; // 1 − lr·wd, lr / (1 − β1^t), √(1 − β2^t)
        public bool GradBf16;
    }

    private struct Job
    {
        public Segment* Segments;
        public int Count;
        public float AvgWeight, Beta2, SqWeight, Eps; // 1 − β1, β2, 1 − β2, ε
    }

    /// <summary>
    /// One AdamW step of <paramref name="ready"/> (steps already counted, <see cref="Applies"/> true);
    /// <paramref name="moments"/> gives each parameter's (exp_avg, exp_avg_sq), fp32 like its master.
    /// </summary>
    public static void Step(IReadOnlyList<OptimParam> ready, Func<OptimParam, (Tensor ExpAvg, Tensor ExpAvgSq)> moments,
        double lr, double weightDecay, double beta1, double beta2, double eps)
    {
        var segments = new Segment[ready.Count];
        long total = 0;
        int count = 0;
        foreach (var p in ready)
        {
            var (m, v) = moments(p); // created for empty parameters too: the checkpoint state has the same slots on every path
            long n = p.Value.numel();
            if (n == 0) continue;
            if (!m.is_contiguous() || !v.is_contiguous() || m.dtype != ScalarType.Float32 || v.dtype != ScalarType.Float32)
                throw new InvalidOperationException($"AdamW state of {p.Name} is not contiguous fp32");
            segments[count++] = new Segment
            {
                Master = (float*)TensorMemory.Address(p.Value), ExpAvg = (float*)TensorMemory.Address(m), ExpAvgSq = (float*)TensorMemory.Address(v),
                Grad = TensorMemory.Address(p.Grad!), GradBf16 = p.Grad!.dtype == ScalarType.BFloat16,
                Model = p.Shadow is { } s ? (ushort*)TensorMemory.Address(s) : null,
                Start = total, Length = n,
                Decay = (float)(1 - lr * weightDecay),
                StepSize = (float)(lr / (1 - Math.Pow(beta1, p.Steps))),
                Bias2Sqrt = (float)Math.Sqrt(1 - Math.Pow(beta2, p.Steps)),
            };
            total += n;
        }
        if (total == 0) return;
        fixed (Segment* segs = segments)
        {
            var job = new Job
            {
                Segments = segs, Count = count,
                AvgWeight = (float)(1 - beta1), Beta2 = (float)beta2, SqWeight = (float)(1 - beta2), Eps = (float)eps,
            };
            OpenMpTeam.For(total, 1024, &Run, &job);
        }
    }

    /// <summary>Elements [from, to) of the job's flat range, parameter by parameter.</summary>
    private static void Run(long from, long to, void* state)
    {
        var job = (Job*)state;
        int lo = 0, hi = job->Count - 1; // the segment that holds element `from`
        while (lo < hi)
        {
            int mid = (lo + hi + 1) / 2;
            if (job->Segments[mid].Start <= from) lo = mid;
            else hi = mid - 1;
        }
        for (int s = lo; s < job->Count && job->Segments[s].Start < to; s++)
        {
            var seg = job->Segments + s;
            long a = Math.Max(from, seg->Start) - seg->Start, b = Math.Min(to, seg->Start + seg->Length) - seg->Start;
            Update(seg, job, a, b);
        }
    }

    private static void Update(Segment* s, Job* job, long from, long to)
    {
        float w1 = job->AvgWeight, b2 = job->Beta2, w2 = job->SqWeight, eps = job->Eps;
        float decay = s->Decay, step = -s->StepSize, bias2 = s->Bias2Sqrt;
        long i = from;
        var vw1 = Vector512.Create(w1);
        var vb2 = Vector512.Create(b2);
        var vw2 = Vector512.Create(w2);
        var veps = Vector512.Create(eps);
        var vdecay = Vector512.Create(decay);
        var vstep = Vector512.Create(step);
        var vbias2 = Vector512.Create(bias2);
        for (; i + 16 <= to; i += 16)
        {
            var g = s->GradBf16 ? Bf16Vector.Load((ushort*)s->Grad + i) : Vector512.Load((float*)s->Grad + i);
            var p = Vector512.Load(s->Master + i) * vdecay;
            var m = Vector512.FusedMultiplyAdd(vw1, g - Vector512.Load(s->ExpAvg + i), Vector512.Load(s->ExpAvg + i));
            var v = Vector512.FusedMultiplyAdd(Vector512.Load(s->ExpAvgSq + i), vb2, vw2 * g * g);
            var denom = Vector512.Sqrt(v) / vbias2 + veps;
            p += vstep * m / denom;
            m.Store(s->ExpAvg + i);
            v.Store(s->ExpAvgSq + i);
            p.Store(s->Master + i);
            if (s->Model != null) Bf16Vector.Store(p, s->Model + i);
        }
        for (; i < to; i++)
        {
            float g = s->GradBf16 ? Bf16Vector.Widen(((ushort*)s->Grad)[i]) : ((float*)s->Grad)[i];
            float p = s->Master[i] * decay;
            float m = MathF.FusedMultiplyAdd(w1, g - s->ExpAvg[i], s->ExpAvg[i]);
            float v = MathF.FusedMultiplyAdd(s->ExpAvgSq[i], b2, w2 * g * g);
            float denom = MathF.Sqrt(v) / bias2 + eps;
            p += step * m / denom;
            s->ExpAvg[i] = m;
            s->ExpAvgSq[i] = v;
            s->Master[i] = p;
            if (s->Model != null) s->Model[i] = Bf16Vector.Round(p);
        }
    }
}
