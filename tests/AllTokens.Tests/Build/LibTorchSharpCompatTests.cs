namespace AllTokens.Tests.Build;

/// <summary>The build's ELF compat step (build/PatchLibTorchSharp.cs, compiled into the tests too).</summary>
public class LibTorchSharpCompatTests
{
    private const string Version = "GLIBCXX_3.4.32";

    private static string OutputLibrary =>
        Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");

    [Fact]
    public void PatchSetsTheWeakFlagOnceAndIsIdempotent()
    {
        if (!File.Exists(OutputLibrary)) Assert.Skip("no linux-x64 libLibTorchSharp.so in the test output (not a Linux build)");
        string copy = Path.Combine(Path.GetTempPath(), $"alltokens-elf-{Guid.NewGuid():N}.so");
        try
        {
            byte[] bytes = File.ReadAllBytes(OutputLibrary);
            var offsets = ElfVersionNeedPatcher.FindVersionNeedFlags(bytes, Version);
            Assert.NotNull(offsets);
            Assert.Single(offsets); // one need entry for GLIBCXX_3.4.32 in TorchSharp 0.107.0
            // Undo whatever the build did, as in the NuGet package.
            foreach (int o in offsets) bytes[o] &= unchecked((byte)~ElfVersionNeedPatcher.VerFlgWeak);
            File.WriteAllBytes(copy, bytes);

            Assert.Equal(ElfVersionNeedPatcher.Outcome.Patched, ElfVersionNeedPatcher.MakeVersionNeedWeak(copy, Version));
            byte[] patched = File.ReadAllBytes(copy);
            Assert.Equal(bytes.Length, patched.Length);
            int differing = bytes.Zip(patched).Count(p => p.First != p.Second);
            Assert.Equal(1, differing); // exactly the flags byte
            Assert.Equal(ElfVersionNeedPatcher.VerFlgWeak, patched[offsets[0]] & ElfVersionNeedPatcher.VerFlgWeak);
            Assert.Equal(ElfVersionNeedPatcher.Outcome.AlreadyWeak, ElfVersionNeedPatcher.MakeVersionNeedWeak(copy, Version));
            Assert.Equal(ElfVersionNeedPatcher.Outcome.NotNeeded, ElfVersionNeedPatcher.MakeVersionNeedWeak(copy, "GLIBCXX_9.9.99"));
        }
        finally { File.Delete(copy); }
    }

    [Fact]
    public void NonElfFilesAreLeftAlone()
    {
        string f = Path.Combine(Path.GetTempPath(), $"alltokens-notelf-{Guid.NewGuid():N}");
        try
        {
            File.WriteAllText(f, "not an ELF file at all, just text that is long enough to have a header................");
            Assert.Equal(ElfVersionNeedPatcher.Outcome.NotElf, ElfVersionNeedPatcher.MakeVersionNeedWeak(f, Version));
        }
        finally { File.Delete(f); }
    }

    [Fact]
    public void TheLibraryInTheOutputLoads()
    {
        // If the compat step had not run where it is needed, TorchSharp could not load its native library here.
        Assert.Equal(6f, TorchSharp.torch.ones(2, 3).sum().item<float>());
    }
}
