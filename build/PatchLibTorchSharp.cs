// Marks libLibTorchSharp.so's need for GLIBCXX_3.4.32 as weak (VER_FLG_WEAK) so the library loads on
// systems whose libstdc++ stops at GLIBCXX_3.4.30 (Debian 12). See shared/reference/TORCHSHARP.md:
// TorchSharp 0.107.0 was linked by GCC 15, and the only symbol behind that version is
// std::ios_base_library_init(), a link-time reference that is never called.
// This file is compiled twice: by MSBuild's RoslynCodeTaskFactory (Directory.Build.targets), task
// included, and into the test project with ALLTOKENS_TESTS defined, where only the pure patcher is
// tested. It must stay self-contained and free of nullable annotations (the task compiler's defaults).
#nullable disable
public static class ElfVersionNeedPatcher
{
    public const ushort VerFlgWeak = 0x2;
    private const uint ShtGnuVerneed = 0x6ffffffe;

    /// <summary>Result of a patch attempt.</summary>
    public enum Outcome { Patched, AlreadyWeak, NotNeeded, NotElf }

    /// <summary>Byte offsets of the vna_flags fields of every version-need entry named <paramref name="version"/>;
    /// null when the bytes are not a 64-bit little-endian ELF.</summary>
    public static System.Collections.Generic.List<int> FindVersionNeedFlags(byte[] b, string version)
    {
        if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[2] != (byte)'L' || b[3] != (byte)'F' || b[4] != 2 || b[5] != 1)
            return null;
        var found = new System.Collections.Generic.List<int>();
        ulong shoff = U64(b, 0x28);
        int shentsize = U16(b, 0x3A), shnum = U16(b, 0x3C);
        for (int s = 0; s < shnum; s++)
        {
            int sh = checked((int)shoff + s * shentsize);
            if (U32(b, sh + 4) != ShtGnuVerneed) continue;
            int vn = checked((int)U64(b, sh + 0x18));
            int link = (int)U32(b, sh + 0x28);
            int strOff = checked((int)U64(b, checked((int)shoff + link * shentsize) + 0x18));
            while (true)
            {
                int cnt = U16(b, vn + 2);
                int aux = vn + (int)U32(b, vn + 8);
                for (int a = 0; a < cnt; a++)
                {
                    if (CString(b, strOff + (int)U32(b, aux + 8)) == version) found.Add(aux + 4);
                    uint next = U32(b, aux + 12);
                    if (next == 0) break;
                    aux += (int)next;
                }
                uint vnNext = U32(b, vn + 12);
                if (vnNext == 0) break;
                vn += (int)vnNext;
            }
        }
        return found;
    }

    /// <summary>Sets VER_FLG_WEAK on every version-need entry named <paramref name="version"/>.</summary>
    public static Outcome MakeVersionNeedWeak(string path, string version)
    {
        byte[] b = System.IO.File.ReadAllBytes(path);
        var offsets = FindVersionNeedFlags(b, version);
        if (offsets == null) return Outcome.NotElf;
        if (offsets.Count == 0) return Outcome.NotNeeded;
        bool changed = false;
        foreach (int o in offsets)
        {
            int flags = U16(b, o);
            if ((flags & VerFlgWeak) != 0) continue;
            flags |= VerFlgWeak;
            b[o] = (byte)flags;
            b[o + 1] = (byte)(flags >> 8);
            changed = true;
        }
        if (!changed) return Outcome.AlreadyWeak;
        // Write beside, then replace; keep the original timestamp so MSBuild's incremental copy
        // (same size and time = unchanged) does not copy the unpatched file over it again.
        System.DateTime stamp = System.IO.File.GetLastWriteTimeUtc(path);
        string tmp = path + ".patching";
        System.IO.File.WriteAllBytes(tmp, b);
        System.IO.File.SetLastWriteTimeUtc(tmp, stamp);
        System.IO.File.Copy(tmp, path, true);
        System.IO.File.SetLastWriteTimeUtc(path, stamp);
        System.IO.File.Delete(tmp);
        return Outcome.Patched;
    }

    /// <summary>True when some libstdc++.so.6 the loader would find defines <paramref name="version"/>.</summary>
    public static bool SystemLibStdCxxHas(string version, out string which)
    {
        string[] candidates =
        {
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
        };
        which = null;
        byte[] needle = System.Text.Encoding.ASCII.GetBytes(version + "\0");
        foreach (string c in candidates)
        {
            if (!System.IO.File.Exists(c)) continue;
            which ??= c;
            byte[] lib = System.IO.File.ReadAllBytes(c);
            if (IndexOf(lib, needle) >= 0) { which = c; return true; }
        }
        return false;
    }

    private static int IndexOf(byte[] hay, byte[] needle)
    {
        for (int i = 0; i + needle.Length <= hay.Length; i++)
        {
            int j = 0;
            while (j < needle.Length && hay[i + j] == needle[j]) j++;
            if (j == needle.Length) return i;
        }
        return -1;
    }

    internal static int U16(byte[] b, int o) => b[o] | (b[o + 1] << 8);
    private static uint U32(byte[] b, int o) => (uint)(b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24));
    private static ulong U64(byte[] b, int o) => U32(b, o) | ((ulong)U32(b, o + 4) << 32);
    private static string CString(byte[] b, int o)
    {
        int e = o;
        while (b[e] != 0) e++;
        return System.Text.Encoding.ASCII.GetString(b, o, e - o);
    }
}

#if !ALLTOKENS_TESTS
/// <summary>MSBuild task: apply the patch to one output's libLibTorchSharp.so where the system needs it.</summary>
public class PatchLibTorchSharp : Microsoft.Build.Utilities.Task
{
    [Microsoft.Build.Framework.Required] public string LibraryPath { get; set; }
    public string Version { get; set; } = "GLIBCXX_3.4.32";

    public override bool Execute()
    {
        if (!System.IO.File.Exists(LibraryPath)) return true;
        string lib;
        if (ElfVersionNeedPatcher.SystemLibStdCxxHas(Version, out lib))
        {
            Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Low, "libLibTorchSharp compat: " + lib + " provides " + Version + "; nothing to do.");
            return true;
        }
        var outcome = ElfVersionNeedPatcher.MakeVersionNeedWeak(LibraryPath, Version);
        var importance = outcome == ElfVersionNeedPatcher.Outcome.Patched
            ? Microsoft.Build.Framework.MessageImportance.High : Microsoft.Build.Framework.MessageImportance.Normal;
        string what = outcome switch
        {
            ElfVersionNeedPatcher.Outcome.Patched => "marked its " + Version + " need weak (system libstdc++ lacks it)",
            ElfVersionNeedPatcher.Outcome.AlreadyWeak => Version + " need already weak",
            ElfVersionNeedPatcher.Outcome.NotNeeded => "no " + Version + " need; left as is",
            _ => "not a 64-bit ELF; left as is",
        };
        Log.LogMessage(importance, "libLibTorchSharp compat: " + what + ": " + LibraryPath);
        return true;
    }
}
#endif
