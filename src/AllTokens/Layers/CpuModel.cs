using System.Runtime.Intrinsics.X86;
using System.Text;

namespace AllTokens.Layers;

/// <summary>The x86 CPU's vendor and family from CPUID, for the few kernel choices that depend on the core design.</summary>
public static class CpuModel
{
    /// <summary>"AuthenticAMD", "GenuineIntel", …; empty where CPUID is not available (not x86).</summary>
    public static string Vendor { get; }

    /// <summary>The display family (base family, plus the extended family when the base is 0xF); 0 where unknown.</summary>
    public static int Family { get; }

    static CpuModel()
    {
        Vendor = "";
        if (!X86Base.IsSupported) return;
        var (_, ebx, ecx, edx) = X86Base.CpuId(0, 0);
        var name = new byte[12];
        BitConverter.TryWriteBytes(name.AsSpan(0, 4), ebx);
        BitConverter.TryWriteBytes(name.AsSpan(4, 4), edx);
        BitConverter.TryWriteBytes(name.AsSpan(8, 4), ecx);
        Vendor = Encoding.ASCII.GetString(name);
        Family = DisplayFamily(X86Base.CpuId(1, 0).Eax);
    }

    /// <summary>The display family of a CPUID leaf-1 EAX: bits 8–11, plus bits 20–27 when those are 0xF.</summary>
    public static int DisplayFamily(int leaf1Eax)
    {
        int family = (leaf1Eax >> 8) & 0xF;
        return family == 0xF ? family + ((leaf1Eax >> 20) & 0xFF) : family;
    }

    /// <summary>AMD family 1Ah (Zen 5) or later.</summary>
    public static bool IsAmdZen5OrLater => IsAmdZen5OrLaterFamily(Vendor, Family);

    internal static bool IsAmdZen5OrLaterFamily(string vendor, int family) => vendor == "AuthenticAMD" && family >= 0x1A;

    /// <summary>"AuthenticAMD family 1Ah" and the like, for reports.</summary>
    public static string Describe() => Vendor.Length == 0 ? "not x86" : $"{Vendor} family {Family:X}h";
}
