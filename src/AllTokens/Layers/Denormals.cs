using System.Runtime.InteropServices;
using TorchSharp;

namespace AllTokens.Layers;

/// <summary>
/// Flush-to-zero and denormals-are-zero (MXCSR FTZ and DAZ) on the threads that run libtorch's kernels.
/// </summary>
public static unsafe class Denormals
{
    /// <summary>Off (<c>ALLTOKENS_DENORMALS=keep</c>): <see cref="Flush"/> leaves the threads' settings alone.</summary>
    public static bool Enabled { get; set; } = SpeedSwitch.On("ALLTOKENS_DENORMALS", "keep");

    private static readonly Lazy<nint> setter = new(FindSetter);

    [ThreadStatic] private static bool? setHere;

    /// <summary>
    /// What <see cref="Flush"/> last set on the calling thread (and its team): true flushing, false not, null never called
    /// here (or it failed). An in-process caller of the CLI uses it to put the setting back (Program.Run).
    /// </summary>
    public static bool? SetOnThisThread => setHere;

    /// <summary>
    /// Sets (or clears) FTZ and DAZ on the calling thread and on every thread of libtorch's OpenMP team, through
    /// libtorch's own <c>at::Context::setFlushDenormal</c> (what <c>torch.set_flush_denormal</c> calls). Threads the
    /// team creates later inherit the caller's setting (Linux copies the floating-point state to a new thread).
    /// Returns false where libtorch or the CPU does not support it.
    /// </summary>
    public static bool Flush(bool on = true)
    {
        if (!Enabled || setter.Value == 0) return false;
        var set = (delegate* unmanaged<byte, byte>)setter.Value;
        byte flag = on ? (byte)1 : (byte)0;
        if (set(flag) == 0) return false;
        var state = new State { Set = set, On = flag };
        OpenMpTeam.For(Math.Max(1, torch.get_num_threads()), 1, &OnTeamThread, &state);
        setHere = state.Failed == 0 ? on : null;
        return state.Failed == 0;
    }

    private struct State
    {
        public delegate* unmanaged<byte, byte> Set;
        public byte On;
        public int Failed;
    }

    private static void OnTeamThread(long from, long to, void* data)
    {
        var s = (State*)data;
        if (s->Set(s->On) == 0) Interlocked.Exchange(ref s->Failed, 1);
    }

    private static nint FindSetter()
    {
        if (!OperatingSystem.IsLinux()) return 0;
        _ = torch.get_num_threads(); // libtorch loaded before we look
        foreach (var path in OpenMpTeam.LoadedLibraries())
        {
            if (!System.IO.Path.GetFileName(path).StartsWith("libtorch_cpu", StringComparison.Ordinal)) continue;
            // static bool at::Context::setFlushDenormal(bool), by its Itanium C++ ABI name.
            if (NativeLibrary.TryLoad(path, out var lib) && NativeLibrary.TryGetExport(lib, "_ZN2at7Context16setFlushDenormalEb", out var set))
                return set;
        }
        return 0;
    }
}
