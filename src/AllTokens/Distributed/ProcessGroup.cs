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
    /// bucket (a parameter without a gradient on this rank contributes zeros).
    /// </summary>
    public static void AverageGradients(IEnumerable<Parameter> parameters, IProcessGroup group)
    {
        if (group.Size == 1) return;
        var ps = parameters.Where(p => p.requires_grad).ToList();
        if (ps.Count == 0) return;
        using var _ = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var flat = torch.cat(ps.Select(p => (p.grad is { } g ? g : torch.zeros_like(p)).to(ScalarType.Float32).reshape(-1).cpu()).ToList());
        group.AllReduceSum(flat);
        flat.div_(group.Size);
        long offset = 0;
        foreach (var p in ps)
        {
            long n = p.numel();
            var avg = flat.narrow(0, offset, n).view_as(p).to(p.device).to(p.dtype);
            if (p.grad is { } g) g.copy_(avg);
            else p.grad = avg.clone().MoveToOuterDisposeScope();
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
        foreach (var (_, b) in module.named_buffers())
        {
            if (!b.is_floating_point()) continue;
            var f = b.to(ScalarType.Float32).cpu().contiguous();
            group.AllReduceSum(f);
            f.div_(group.Size);
            b.copy_(f);
        }
    }
}
