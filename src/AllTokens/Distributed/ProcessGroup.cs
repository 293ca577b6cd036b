using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Distributed;

/// <summary>The processes training together. A single process is a group of one whose operations do nothing.</summary>
public interface IProcessGroup : IDisposable
{
    int Rank { get; }
    int Size { get; }
    bool IsMain => Rank == 0;

    /// <summary>Sums a float32 tensor over all ranks, in place.</summary>
    void AllReduceSum(Tensor tensor);

    /// <summary>Sums doubles over all ranks, in place (metrics, counters).</summary>
    void AllReduceSum(Span<double> values);

    /// <summary>Copies root's tensor contents into every rank's tensor (same shape and dtype everywhere).</summary>
    void Broadcast(Tensor tensor, int root = 0);

    void Barrier();

    /// <summary>
    /// Ends the whole job at once with <paramref name="code"/> (the other ranks too): for a failure on this rank the
    /// others cannot see. A single process just exits.
    /// </summary>
    void Abort(int code);
}

/// <summary>One process: every collective is the identity.</summary>
public sealed class SingleProcess : IProcessGroup
{
    public static readonly SingleProcess Instance = new();
    public int Rank => 0;
    public int Size => 1;
    public void AllReduceSum(Tensor tensor) { }
    public void AllReduceSum(Span<double> values) { }
    public void Broadcast(Tensor tensor, int root = 0) { }
    public void Barrier() { }
    public void Abort(int code) => Environment.Exit(code);
    public void Dispose() { }
}

/// <summary>MPI_COMM_WORLD as a process group. CPU tensors are reduced in place; others go through a CPU copy.</summary>
public sealed class MpiProcessGroup(Mpi mpi) : IProcessGroup
{
    public int Rank => mpi.Rank;
    public int Size => mpi.Size;

    public unsafe void AllReduceSum(Tensor tensor)
    {
        if (tensor.dtype != ScalarType.Float32) throw new ArgumentException($"all-reduce supports float32 tensors, got {tensor.dtype}");
        WithCpuContiguous(tensor, t =>
        {
            fixed (byte* p = t.bytes) mpi.AllReduceSum((nint)p, t.numel());
        });
    }

    public void AllReduceSum(Span<double> values) => mpi.AllReduceSum(values);

    public unsafe void Broadcast(Tensor tensor, int root = 0) => WithCpuContiguous(tensor, t =>
    {
        fixed (byte* p = t.bytes) mpi.Broadcast((nint)p, t.numel() * t.ElementSize, root);
    });

    public void Barrier() => mpi.Barrier();

    public void Abort(int code) => mpi.Abort(code);

    public void Dispose() => mpi.Dispose();

    // Runs a collective on a CPU, contiguous tensor, writing the result back when a copy had to be made.
    private static void WithCpuContiguous(Tensor tensor, Action<Tensor> collective)
    {
        if (tensor.device_type == DeviceType.CPU && tensor.is_contiguous())
        {
            collective(tensor);
            return;
        }
        using var staged = tensor.detach().cpu().contiguous();
        collective(staged);
        using (torch.no_grad()) tensor.copy_(staged);
    }
}

/// <summary>Chooses the process group: MPI under mpirun (or when forced), a single process otherwise.</summary>
public static class ProcessGroups
{
    /// <summary>
    /// <paramref name="mode"/>: "auto" uses MPI when launched by mpirun; "mpi" requires it (a clear error saying what to
    /// install when Open MPI is missing); "none" is always a single process.
    /// </summary>
    public static IProcessGroup Create(string mode = "auto") => mode switch
    {
        "none" => SingleProcess.Instance,
        "mpi" => new MpiProcessGroup(Mpi.Initialize()),
        "auto" => Mpi.LaunchedByMpirun ? new MpiProcessGroup(Mpi.Initialize()) : SingleProcess.Instance,
        _ => throw new ArgumentException($"distributed mode must be auto, mpi or none, got '{mode}'"),
    };
}

/// <summary>Data-parallel helpers: identical start, averaged gradients, averaged BatchNorm statistics.</summary>
public static class DataParallel
{
    /// <summary>Copies rank 0's parameters and buffers to every rank (call once after building the model).</summary>
    public static void BroadcastState(nn.Module module, IProcessGroup group)
    {
        if (group.Size == 1) return;
        using var _ = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        foreach (var (_, p) in module.named_parameters()) group.Broadcast(p);
        foreach (var (_, b) in module.named_buffers()) group.Broadcast(b);
    }

    /// <summary>
    /// Averages the gradients of every trainable parameter over the ranks with one all-reduce of a flat float32
    /// bucket. A parameter without a gradient on this rank contributes zeros; one without a gradient on every rank keeps
    /// none (as in a single process, so the optimizer skips it): the bucket ends with one has-gradient count per parameter.
    /// </summary>
    public static void AverageGradients(IEnumerable<Parameter> parameters, IProcessGroup group)
    {
        if (group.Size == 1) return;
        var ps = parameters.Where(p => p.requires_grad).ToList();
        if (ps.Count == 0) return;
        using var _ = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var parts = ps.Select(p => (p.grad is { } g ? g : torch.zeros_like(p)).to(ScalarType.Float32).reshape(-1).cpu()).ToList();
        parts.Add(torch.tensor(ps.Select(p => p.grad is null ? 0f : 1f).ToArray()));
        var flat = torch.cat(parts);
        group.AllReduceSum(flat);
        long total = flat.numel() - ps.Count;
        float[] has = flat.narrow(0, total, ps.Count).data<float>().ToArray();
        using (Scalar size = group.Size.ToScalar()) // held for the call (see Layers.Held)
            flat.narrow(0, 0, total).div_(size);
        long offset = 0;
        for (int i = 0; i < ps.Count; i++)
        {
            var p = ps[i];
            long n = p.numel();
            if (has[i] > 0)
            {
                var avg = flat.narrow(0, offset, n).view_as(p).to(p.device).to(p.dtype);
                if (p.grad is { } g) g.copy_(avg);
                else p.grad = avg.clone().MoveToOuterDisposeScope();
            }
            offset += n;
        }
    }

    /// <summary>
    /// Averages floating-point buffers (BatchNorm running mean/var) over the ranks so that the model saved by rank 0
    /// reflects every rank's data; integer buffers (num_batches_tracked) are left as they are (equal on every rank).
    /// </summary>
    public static void AverageBuffers(nn.Module module, IProcessGroup group)
    {
        if (group.Size == 1) return;
        using var _ = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        using Scalar size = group.Size.ToScalar(); // held for the calls (see Layers.Held)
        foreach (var (_, b) in module.named_buffers())
        {
            if (!b.is_floating_point()) continue;
            var f = b.to(ScalarType.Float32).cpu().contiguous();
            group.AllReduceSum(f);
            f.div_(size);
            b.copy_(f);
        }
    }
}

/// <summary>Another rank failed, so this one stopped with it; the failing rank reports the cause.</summary>
public sealed class PeerFailureException(string message) : Exception(message);

/// <summary>
/// Failures that every rank agrees on. A rank that fails on its own while the others wait in a collective would hang
/// the job, so the collectives of a step carry one failure flag per rank: when any is set, every rank stops together —
/// the failing rank rethrows its exception (marked as agreed), the others throw <see cref="PeerFailureException"/>.
/// </summary>
public static class Collective
{
    private const string AgreedKey = "alltokens.agreed_stop";

    /// <summary>True when every rank stopped together on this failure (the job can finalize cleanly instead of aborting).</summary>
    public static bool IsAgreed(Exception e) => e is PeerFailureException || e.Data[AgreedKey] is true;

    /// <summary>
    /// Sums <paramref name="values"/> over the ranks together with this rank's failure (<paramref name="own"/>, or null);
    /// throws on every rank when any rank failed (<paramref name="what"/> names the phase). A single process rethrows
    /// <paramref name="own"/> as it is.
    /// </summary>
    public static void AllReduceSum(IProcessGroup group, Span<double> values, Exception? own, string what)
    {
        if (group.Size == 1)
        {
            if (own is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(own);
            return;
        }
        var all = new double[values.Length + group.Size];
        values.CopyTo(all);
        if (own is not null) all[values.Length + group.Rank] = 1;
        group.AllReduceSum(all);
        int flags = values.Length;
        var failed = Enumerable.Range(0, group.Size).Where(r => all[flags + r] > 0).ToList();
        if (failed.Count > 0)
        {
            if (own is not null)
            {
                own.Data[AgreedKey] = true;
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(own);
            }
            throw new PeerFailureException($"stopped because rank{(failed.Count > 1 ? "s" : "")} {string.Join(", ", failed)} failed during {what} (see {(failed.Count > 1 ? "their errors" : "its error")})");
        }
        all.AsSpan(0, values.Length).CopyTo(values);
    }

    /// <summary>Runs <paramref name="action"/> on every rank; if it fails on any rank, every rank stops (see <see cref="AllReduceSum"/>).</summary>
    public static void Agree(IProcessGroup group, string what, Action action)
    {
        Exception? own = null;
        try
        {
            action();
        }
        catch (Exception e) when (group.Size > 1)
        {
            own = e;
        }
        AllReduceSum(group, Span<double>.Empty, own, what);
    }
}
