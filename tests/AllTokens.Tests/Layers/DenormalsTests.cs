using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using AllTokens.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Layers;

/// <summary>
/// FTZ/DAZ live in each thread's MXCSR, so every test here runs on a thread of its own: the test runner's pool
/// threads carry whatever the code run on them before left there, and libgomp gives each master thread its own team, so
/// a fresh thread also brings a fresh team whose every member is one this test set up. A failure message carries the thread's MXCSR, to tell a setting that did not hold from one
/// that something else changed.
/// </summary>
public class DenormalsTests
{
    private const float Tiny = 1e-39f; // below float's smallest normal (1.18e-38)

    /// <summary>How many elements of tiny · 1 came out non-zero, over a tensor of <paramref name="n"/> elements.</summary>
    internal static long NonZeroProducts(long n)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.full(n, Tiny);
        return x.mul(1.0f).count_nonzero().item<long>();
    }

    [DllImport("libm.so.6")]
    private static extern unsafe int fegetenv(byte* env);

    /// <summary>The calling thread's MXCSR (glibc's x86-64 fenv_t keeps it at byte 28 of 32), for failure messages.</summary>
    private static unsafe string Mxcsr()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return "n/a";
        byte* env = stackalloc byte[32];
        return fegetenv(env) == 0 ? $"0x{*(uint*)(env + 28):X4}" : "unreadable";
    }

    private static void Expect(long expected, long n)
    {
        long got = NonZeroProducts(n);
        Assert.True(got == expected, $"{got} of {n} products non-zero, expected {expected}; MXCSR {Mxcsr()} " +
                                     $"(FTZ 0x8000, DAZ 0x0040), {torch.get_num_threads()} threads");
    }

    /// <summary>Runs <paramref name="body"/> on a new thread and rethrows what it threw.</summary>
    internal static void OnOwnThread(Action body)
    {
        ExceptionDispatchInfo? error = null;
        var thread = new Thread(() =>
        {
            try { body(); }
            catch (Exception e) { error = ExceptionDispatchInfo.Capture(e); }
        }) { Name = "denormals-test" };
        thread.Start();
        thread.Join();
        error?.Throw();
    }

    [Fact]
    public void FlushZeroesDenormalsOnTheCallerAndOnTheOpenMpTeam()
    {
        if (!Denormals.Enabled || !OperatingSystem.IsLinux()) return; // ALLTOKENS_DENORMALS=keep: nothing to test
        OnOwnThread(() =>
        {
            int threads = torch.get_num_threads();
            try
            {
                torch.set_num_threads(Math.Max(2, threads)); // a parallel multiply below needs a team of more than one
                Assert.True(Denormals.Flush(false));
                Expect(5, 5);                 // one thread, denormals kept
                Expect(1 << 20, 1 << 20);     // split over the team
                Assert.True(Denormals.Flush(true));
                Expect(0, 5);
                Expect(0, 1 << 20);           // every team thread flushes too
                Assert.Equal(2.5f, torch.tensor(new[] { 2.5f }).mul(1.0f).item<float>()); // normal values untouched
            }
            finally
            {
                Denormals.Flush(false);
                torch.set_num_threads(threads);
            }
        });
    }

    [Fact]
    public void ThreadsTheTeamCreatesLaterInheritTheSetting()
    {
        if (!Denormals.Enabled || !OperatingSystem.IsLinux()) return;
        OnOwnThread(() =>
        {
            int threads = torch.get_num_threads();
            try
            {
                torch.set_num_threads(1);
                Assert.True(Denormals.Flush(true)); // this thread has no team yet: only the caller is set
                torch.set_num_threads(Math.Max(2, threads)); // the team forms after the setting
                Expect(0, 1 << 20);
            }
            finally
            {
                Denormals.Flush(false);
                torch.set_num_threads(threads);
            }
        });
    }
}
