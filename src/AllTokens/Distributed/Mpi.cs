using System.Runtime.InteropServices;

namespace AllTokens.Distributed;

/// <summary>MPI is wanted (the process runs under mpirun, or it was asked for) but Open MPI cannot be loaded.</summary>
public sealed class MpiUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>An MPI call returned an error code.</summary>
public sealed class MpiException(string call, int code) : Exception($"MPI call {call} failed with error code {code}")
{
    public int Code { get; } = code;
}

/// <summary>
/// Open MPI called directly through P/Invoke (no MPI.NET). Only what data-parallel training needs: init, rank and size,
/// in-place all-reduce (sum) of float/double/long buffers, broadcast, barrier, finalize. Open MPI's handles are
/// addresses of exported objects (<c>ompi_mpi_comm_world</c>, <c>ompi_mpi_float</c>, <c>ompi_mpi_op_sum</c>, …) and
/// <c>MPI_IN_PLACE</c> is (void*)1 (Open MPI 4.1 mpi.h).
/// </summary>
public sealed unsafe class Mpi : IDisposable
{
    private static readonly string[] LibraryNames = ["libmpi.so.40", "libmpi.so", "libmpi"];
    private static readonly object gate = new();
    private static Mpi? instance;

    private readonly nint lib;
    private readonly nint commWorld, typeFloat, typeDouble, typeLong, typeByte, opSum, opMax;
    private readonly delegate* unmanaged<int*, byte***, int> init;
    private readonly delegate* unmanaged<int*, int> initialized;
    private readonly delegate* unmanaged<int> finalize;
    private readonly delegate* unmanaged<int*, int> finalized;
    private readonly delegate* unmanaged<nint, int*, int> commRank;
    private readonly delegate* unmanaged<nint, int*, int> commSize;
    private readonly delegate* unmanaged<void*, void*, int, nint, nint, nint, int> allreduce;
    private readonly delegate* unmanaged<void*, int, nint, int, nint, int> bcast;
    private readonly delegate* unmanaged<nint, int> barrier;
    private readonly delegate* unmanaged<nint, int, int> abort;
    private bool disposed;

    /// <summary>This process's rank in MPI_COMM_WORLD.</summary>
    public int Rank { get; }

    /// <summary>Number of processes in MPI_COMM_WORLD.</summary>
    public int Size { get; }

    /// <summary>True when the environment says this process was started by Open MPI's launcher.</summary>
    public static bool LaunchedByMpirun =>
        Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is not null || Environment.GetEnvironmentVariable("PMIX_RANK") is not null;

    /// <summary>Initialises MPI once per process (MPI allows a single init) and returns the shared instance.</summary>
    public static Mpi Initialize()
    {
        lock (gate)
        {
            if (instance is { disposed: false }) return instance;
            if (instance is { disposed: true })
                throw new InvalidOperationException("MPI was finalized in this process and cannot be initialised again");
            return instance = new Mpi();
        }
    }

    private Mpi()
    {
        lib = Load();
        init = (delegate* unmanaged<int*, byte***, int>)Export("MPI_Init");
        initialized = (delegate* unmanaged<int*, int>)Export("MPI_Initialized");
        finalize = (delegate* unmanaged<int>)Export("MPI_Finalize");
        finalized = (delegate* unmanaged<int*, int>)Export("MPI_Finalized");
        commRank = (delegate* unmanaged<nint, int*, int>)Export("MPI_Comm_rank");
        commSize = (delegate* unmanaged<nint, int*, int>)Export("MPI_Comm_size");
        allreduce = (delegate* unmanaged<void*, void*, int, nint, nint, nint, int>)Export("MPI_Allreduce");
        bcast = (delegate* unmanaged<void*, int, nint, int, nint, int>)Export("MPI_Bcast");
        barrier = (delegate* unmanaged<nint, int>)Export("MPI_Barrier");
        abort = (delegate* unmanaged<nint, int, int>)Export("MPI_Abort");
        commWorld = Export("ompi_mpi_comm_world");
        typeFloat = Export("ompi_mpi_float");
        typeDouble = Export("ompi_mpi_double");
        typeLong = Export("ompi_mpi_long_long_int");
        typeByte = Export("ompi_mpi_byte");
        opSum = Export("ompi_mpi_op_sum");
        opMax = Export("ompi_mpi_op_max");

        int flag = 0;
        Check("MPI_Initialized", initialized(&flag));
        if (flag == 0) Check("MPI_Init", init(null, null));
        int rank = 0, size = 0;
        Check("MPI_Comm_rank", commRank(commWorld, &rank));
        Check("MPI_Comm_size", commSize(commWorld, &size));
        Rank = rank;
        Size = size;
    }

    /// <summary>Environment variable naming the MPI library to load instead of libmpi.so.40 (another Open MPI build).</summary>
    public const string LibraryVariable = "ALLTOKENS_MPI_LIBRARY";

    private static nint Load()
    {
        var errors = new List<string>();
        string? chosen = Environment.GetEnvironmentVariable(LibraryVariable);
        foreach (var name in string.IsNullOrEmpty(chosen) ? LibraryNames : [chosen])
        {
            if (NativeLibrary.TryLoad(name, out var handle)) return handle;
            errors.Add(name);
        }
        throw new MpiUnavailableException(
            $"Open MPI is not installed (could not load {string.Join(", ", errors)}). " +
            "On Debian/Ubuntu: sudo apt-get install openmpi-bin libopenmpi-dev; then launch with mpirun -np N ./alltokens train ...");
    }

    private nint Export(string name) => NativeLibrary.TryGetExport(lib, name, out var address)
        ? address
        : throw new MpiUnavailableException($"the loaded MPI library has no symbol {name}: AllTokens needs Open MPI 4.x (openmpi-bin libopenmpi-dev)");

    private static void Check(string call, int code)
    {
        if (code != 0) throw new MpiException(call, code);
    }

    private void EnsureOpen() => ObjectDisposedException.ThrowIf(disposed, this);

    /// <summary>Sums <paramref name="buffer"/> over all ranks in place.</summary>
    public void AllReduceSum(Span<float> buffer) => AllReduce(buffer, typeFloat, opSum);

    /// <summary>Sums <paramref name="buffer"/> over all ranks in place.</summary>
    public void AllReduceSum(Span<double> buffer) => AllReduce(buffer, typeDouble, opSum);

    /// <summary>Sums <paramref name="buffer"/> over all ranks in place.</summary>
    public void AllReduceSum(Span<long> buffer) => AllReduce(buffer, typeLong, opSum);

    /// <summary>Element-wise maximum over all ranks in place.</summary>
    public void AllReduceMax(Span<double> buffer) => AllReduce(buffer, typeDouble, opMax);

    /// <summary>Sums a raw float32 buffer (e.g. a contiguous CPU tensor's memory) over all ranks in place.</summary>
    public void AllReduceSum(nint data, long count)
    {
        EnsureOpen();
        foreach (var (offset, n) in Chunks(count))
            Check("MPI_Allreduce", allreduce((void*)1, (void*)(data + offset * sizeof(float)), n, typeFloat, opSum, commWorld));
    }

    /// <summary>Copies root's raw bytes into every rank's buffer.</summary>
    public void Broadcast(nint data, long bytes, int root = 0)
    {
        EnsureOpen();
        foreach (var (offset, n) in Chunks(bytes))
            Check("MPI_Bcast", bcast((void*)(data + offset), n, typeByte, root, commWorld));
    }

    /// <summary>Copies root's values into every rank's buffer.</summary>
    public void Broadcast<T>(Span<T> buffer, int root = 0) where T : unmanaged
    {
        fixed (T* p = buffer) Broadcast((nint)p, (long)buffer.Length * sizeof(T), root);
    }

    /// <summary>Blocks until every rank has called it.</summary>
    public void Barrier()
    {
        EnsureOpen();
        Check("MPI_Barrier", barrier(commWorld));
    }

    /// <summary>
    /// Ends every rank of the job (MPI_Abort on MPI_COMM_WORLD) with <paramref name="code"/>: the way out when this rank
    /// fails where the others cannot know it and would wait in a collective for ever.
    /// </summary>
    public void Abort(int code)
    {
        EnsureOpen();
        abort(commWorld, code);
    }

    private void AllReduce<T>(Span<T> buffer, nint type, nint op) where T : unmanaged
    {
        EnsureOpen();
        fixed (T* p = buffer)
            foreach (var (offset, n) in Chunks(buffer.Length))
                Check("MPI_Allreduce", allreduce((void*)1, p + offset, n, type, op, commWorld));
    }

    // MPI counts are C ints: split larger buffers.
    private static IEnumerable<(long Offset, int Count)> Chunks(long count)
    {
        const int max = 1 << 30;
        for (long o = 0; o < count; o += max) yield return (o, (int)Math.Min(max, count - o));
    }

    /// <summary>Finalizes MPI (once; MPI cannot be initialised again in this process).</summary>
    public void Dispose()
    {
        lock (gate)
        {
            if (disposed) return;
            disposed = true;
            int flag = 0;
            if (finalized(&flag) == 0 && flag == 0) finalize();
        }
    }
}
