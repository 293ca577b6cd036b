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
}
