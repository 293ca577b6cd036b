using System.Runtime.InteropServices;

namespace AllTokens;

/// <summary>
/// Settings of the native runtime that must be in the process environment before libtorch loads. .NET's
/// Environment.SetEnvironmentVariable does not reach the C environment on Unix, so this calls libc's setenv.
/// </summary>
public static partial class NativeEnvironment
{
    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int MallOpt(int parameter, int value);

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    [LibraryImport("libc", EntryPoint = "gnu_get_libc_version")]
    private static partial IntPtr GnuLibcVersion();

    private const int MallocTrimThreshold = -1; // glibc malloc.h: M_TRIM_THRESHOLD
    private const int MallocMmapThreshold = -3; // M_MMAP_THRESHOLD
    private const int MallocMaxFast = 1;        // M_MXFAST

    /// <summary>Blocks up to this size come from the heap rather than from their own mmap (see <see cref="ConfigureAllocator"/>).</summary>
    public const int HeapBlockLimit = 512 << 20;

    /// <summary>The heap gives freed memory back to the system only when this much is free at its top.</summary>
    public const int HeapTrimThreshold = int.MaxValue;

    /// <summary>Whether <see cref="ConfigureAllocator"/> changed glibc's malloc settings in this process.</summary>
    public static bool AllocatorConfigured { get; private set; }

    /// <summary>
    /// How libgomp's worker threads wait between parallel regions. Left alone (libgomp's default: spin briefly, then
    /// sleep) for a single process: spinning is what keeps libtorch's many small parallel regions fast, and passive
    /// waiting cost 12–15 % of a t2t_vit_7 train step on 2 quiet cores (bench --model t2t_vit_7: 667–698 ms per step
    /// with GOMP_SPINCOUNT=0 vs 572–597 ms with 30,000–300,000). Several Open MPI ranks on one host share its cores,
    /// and there spinning threads starve each other (a step measured 2–4× slower on 2 shared cores), so
    /// <c>OMP_WAIT_POLICY=PASSIVE</c> is set when mpirun started more than one rank on this host. A user's own
    /// OMP_WAIT_POLICY or GOMP_SPINCOUNT always wins. Call before the first TorchSharp call.
    /// </summary>
    public static void ConfigureOpenMp()
    {
        if (!OperatingSystem.IsLinux()) return;
        if (Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is not null || Environment.GetEnvironmentVariable("GOMP_SPINCOUNT") is not null) return;
        if (!int.TryParse(Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_LOCAL_SIZE"), out int localRanks) || localRanks <= 1) return;
        try
        {
            SetEnv("OMP_WAIT_POLICY", "PASSIVE", 0);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // Not glibc/musl: leave the default.
        }
    }

    /// <summary>
    /// Keeps libtorch's large tensors in glibc's heap between training steps. By default glibc serves blocks above a
    /// (dynamic, at most 32 MiB) threshold with their own mmap and gives heap memory back to the system when twice
    /// that threshold is free at its top, so every step maps fresh pages for its activations and the kernel zero-fills
    /// each on first touch. Measured with 2 threads (<c>bench</c> reports page faults per train step): t2t_vit_7
    /// 6.7–28 k faults per step by default against 0.2–1.1 k with these settings, lvvit_t's token-labeling step
    /// 44–113 k against 4.3–5.1 k; paired runs ×1.06–1.08 faster by the median; peak RSS +10–60 MiB (still below
    /// PyTorch's for the same step, which takes 25–55 k faults per step itself). The price is memory where single
    /// blocks are large: lvvit_nano at 384 px, batch 8 (37.7 MB stem activations) runs ×1.10–1.25 faster with
    /// 130–155 k fewer faults per step, but its peak RSS grows from 731 to 896–972 MiB, freed heap blocks staying
    /// resident between the live ones; <c>ALLTOKENS_MALLOC=default</c> trades the speed back for that memory. Blocks up to
    /// <see cref="HeapBlockLimit"/> come from the heap, and the heap is trimmed only when <see cref="HeapTrimThreshold"/>
    /// is free at its top: a training process keeps its peak step memory mapped, as PyTorch's caching allocators do on
    /// GPUs. glibc's fastbins are turned off too (see the code). Left alone when the user set <c>GLIBC_TUNABLES</c>' malloc tunables or <c>MALLOC_MMAP_THRESHOLD_</c> /
    /// <c>MALLOC_TRIM_THRESHOLD_</c>, with <c>ALLTOKENS_MALLOC=default</c>, and off glibc. Returns whether the settings
    /// were applied. Process-wide; the CLI calls it at start, a host application may.
    /// </summary>
    public static bool ConfigureAllocator()
    {
        if (!OperatingSystem.IsLinux()) return false;
        if (string.Equals(Environment.GetEnvironmentVariable("ALLTOKENS_MALLOC"), "default", StringComparison.OrdinalIgnoreCase)) return false;
        if ((Environment.GetEnvironmentVariable("GLIBC_TUNABLES") ?? "").Contains("glibc.malloc.", StringComparison.Ordinal)
            || Environment.GetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_") is not null
            || Environment.GetEnvironmentVariable("MALLOC_TRIM_THRESHOLD_") is not null)
            return false;
        try
        {
            if (GnuLibcVersion() == IntPtr.Zero) return false;
            // Both or neither: setting either one alone also turns off glibc's dynamic threshold.
            if (MallOpt(MallocMmapThreshold, HeapBlockLimit) == 0) return false;
            if (MallOpt(MallocTrimThreshold, HeapTrimThreshold) == 0) return false;
            // No fastbins: with the heap holding every step's large blocks, each large request first had glibc merge
            // the fastbins' small free chunks (malloc_consolidate), on the thread that drives libtorch while the other
            // cores wait; small blocks still come from the per-thread cache. t2t_vit_7 bf16 forward + backward ×1.007–
            // 1.023 faster (16 pairs, three runs, toggled in one process), fp32 level (×0.98–1.00).
            MallOpt(MallocMaxFast, 0);
            AllocatorConfigured = true;
            return true;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false; // musl and others: no gnu_get_libc_version, their malloc has other knobs
        }
    }

    /// <summary>
    /// Hands the heap's free pages back to the system (glibc's malloc_trim), where <see cref="ConfigureAllocator"/> keeps
    /// them. For a change of phase (training to evaluation and back), whose blocks differ from the last phase's: without
    /// it the new phase's blocks rarely fit the holes the old one left, and the heap grows past the training peak.
    /// Returns whether anything was released; nothing happens where the allocator was left alone.
    /// </summary>
    public static bool ReleaseFreeHeap()
    {
        if (!AllocatorConfigured) return false;
        return MallocTrim(0) != 0;
    }
}
