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
    /// libgomp's worker threads spin while they wait (OMP_WAIT_POLICY active). Our loader threads run beside libtorch's,
    /// and on a machine with as many busy threads as cores the spinning starves them: a training step measured 4×
    /// slower on 2 shared cores (bench --model lvvit_nano, 54 vs 211 img/s). Passive waiting is the default unless the
    /// user set OMP_WAIT_POLICY. Call before the first TorchSharp call.
    /// </summary>
    public static void ConfigureOpenMp()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is not null) return;
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
