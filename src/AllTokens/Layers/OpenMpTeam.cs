using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using TorchSharp;

namespace AllTokens.Layers;

/// <summary>
/// Runs a C# kernel on libtorch's own OpenMP thread team. After every libtorch parallel region the team's worker keeps
/// spinning for more work (libgomp's default, which we keep: see NativeEnvironment.ConfigureOpenMp), so a .NET
/// <c>Parallel.For</c> right after a libtorch op shares the cores with that spinning thread and a C# kernel ends up on
/// about one core (BENCHMARKS.md, "Tried and not kept"). Handing the kernel to the spinning team instead —
/// <c>GOMP_parallel</c>, the entry point GCC's <c>#pragma omp parallel</c> compiles to, which LLVM's and Intel's
/// OpenMP runtimes export too — starts it at once on every core: a bf16 dropout mask on [8, 3136, 64] filled in
/// 0.39 ms against 0.78 ms on one thread and 0.84 ms with <c>Parallel.For</c> (2 Zen 4 cores, 300 alternating reps).
/// The runtime is the one libtorch has loaded (found in /proc/self/maps, Linux only); where none is found, on
/// other systems, or with <c>ALLTOKENS_KERNEL_THREADS=dotnet</c>, <see cref="For"/> falls back to <c>Parallel.For</c>.
/// </summary>
public static unsafe class OpenMpTeam
{
    /// <summary>Off: always <c>Parallel.For</c> (for comparisons).</summary>
    public static bool Enabled { get; set; } = SpeedSwitch.On("ALLTOKENS_KERNEL_THREADS", "dotnet");

    private sealed class Runtime
    {
        public required string Path { get; init; }
        public required delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void> Parallel { get; init; }
        public required delegate* unmanaged<int> ThreadNum { get; init; }
        public required delegate* unmanaged<int> NumThreads { get; init; }
    }

    private static readonly Lazy<Runtime?> runtime = new(Find);

    /// <summary>The OpenMP runtime's file when kernels run on its team; null when they fall back to <c>Parallel.For</c>.</summary>
    public static string? RuntimePath => Enabled ? runtime.Value?.Path : null;

    /// <summary>
    /// Calls <paramref name="body"/>(from, to, state) over [0, <paramref name="count"/>) split into one contiguous part
    /// per thread, each part's start a multiple of <paramref name="grain"/> (so vector loops stay aligned to it); as many
    /// threads as libtorch's intra-op setting, fewer when there are fewer grains than threads. The body must not keep
    /// <paramref name="state"/> beyond the call. An exception in the body is rethrown here after every thread finished.
    /// </summary>
    public static void For(long count, long grain, delegate*<long, long, void*, void> body, void* state)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(grain, 1);
        if (count <= 0) return;
        long grains = (count + grain - 1) / grain;
        int threads = (int)Math.Min(Math.Max(1, torch.get_num_threads()), grains);
        if (threads == 1)
        {
            body(0, count, state);
            return;
        }
        var job = new Job { Body = body, State = state, Count = count, PerThread = (grains + threads - 1) / threads * grain };
        var rt = Enabled ? runtime.Value : null;
        if (rt is not null)
        {
            var handle = GCHandle.Alloc(new ErrorBox());
            try
            {
                job.Errors = GCHandle.ToIntPtr(handle);
                job.ThreadNum = rt.ThreadNum;
                job.NumThreads = rt.NumThreads;
                rt.Parallel(&RunPart, &job, (uint)threads, 0);
                if (((ErrorBox)handle.Target!).First is { } error) ExceptionDispatchInfo.Capture(error).Throw();
            }
            finally { handle.Free(); }
            return;
        }
        nint jobAddress = (nint)(&job); // the job lives on this frame until Parallel.For returns
        try
        {
            Parallel.For(0, threads, t => Part((Job*)jobAddress, t));
        }
        catch (AggregateException e) when (e.InnerExceptions.Count > 0)
        {
            ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw(); // as the team path: the part's own exception
        }
    }

    private sealed class ErrorBox
    {
        public Exception? First;
    }

    private struct Job
    {
        public delegate*<long, long, void*, void> Body;
        public void* State;
        public long Count;
        public long PerThread;
        public nint Errors;
        public delegate* unmanaged<int> ThreadNum;
        public delegate* unmanaged<int> NumThreads;
    }

    private static void Part(Job* job, int thread)
    {
        long from = Math.Min(job->Count, thread * job->PerThread);
        long to = Math.Min(job->Count, from + job->PerThread);
        if (from < to) job->Body(from, to, job->State);
    }

    /// <summary>What each team thread runs: its own part, by its number in the team. Never lets an exception out.</summary>
    [UnmanagedCallersOnly]
    private static void RunPart(void* data)
    {
        var job = (Job*)data;
        try
        {
            // The team may be smaller than asked (OMP_THREAD_LIMIT, nesting): then each thread also takes the parts of
            // the numbers beyond the team's size.
            int t = job->ThreadNum(), n = job->NumThreads();
            long parts = (job->Count + job->PerThread - 1) / job->PerThread;
            for (long part = t; part < parts; part += n) Part(job, (int)part);
        }
        catch (Exception e)
        {
            var box = (ErrorBox)GCHandle.FromIntPtr(job->Errors).Target!;
            Interlocked.CompareExchange(ref box.First, e, null);
        }
    }

    /// <summary>The OpenMP runtime libtorch loaded, with the three entry points; null when there is none to use.</summary>
    private static Runtime? Find()
    {
        if (!OperatingSystem.IsLinux()) return null;
        try
        {
            _ = torch.get_num_threads(); // libtorch (and its OpenMP runtime) loaded before we look
            var loaded = LoadedLibraries().ToList();
            // Another OpenMP runtime may be loaded too (a system libgomp through some other library): prefer the one that
            // sits next to libtorch_cpu, as the libtorch packages ship theirs; a second team would only add spinning threads.
            string? torchDir = loaded.Where(p => System.IO.Path.GetFileName(p).StartsWith("libtorch_cpu", StringComparison.Ordinal))
                .Select(System.IO.Path.GetDirectoryName).FirstOrDefault();
            var candidates = loaded.Where(p =>
                {
                    string name = System.IO.Path.GetFileName(p);
                    return name.StartsWith("libgomp", StringComparison.Ordinal) || name.StartsWith("libiomp5", StringComparison.Ordinal)
                           || name.StartsWith("libomp", StringComparison.Ordinal);
                })
                .OrderBy(p => System.IO.Path.GetDirectoryName(p) == torchDir ? 0 : 1);
            foreach (var path in candidates)
            {
                if (!NativeLibrary.TryLoad(path, out var lib)) continue;
                if (NativeLibrary.TryGetExport(lib, "GOMP_parallel", out var parallel)
                    && NativeLibrary.TryGetExport(lib, "omp_get_thread_num", out var threadNum)
                    && NativeLibrary.TryGetExport(lib, "omp_get_num_threads", out var numThreads))
                    return new Runtime
                    {
                        Path = path,
                        Parallel = (delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void>)parallel,
                        ThreadNum = (delegate* unmanaged<int>)threadNum,
                        NumThreads = (delegate* unmanaged<int>)numThreads,
                    };
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }

    /// <summary>Files mapped into this process (the last field of /proc/self/maps lines that name a path).</summary>
    internal static IEnumerable<string> LoadedLibraries()
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            int slash = line.IndexOf('/');
            if (slash < 0) continue;
            var path = line[slash..];
            if (path.EndsWith(" (deleted)", StringComparison.Ordinal)) continue;
            if (seen.Add(path)) yield return path;
        }
    }
}
