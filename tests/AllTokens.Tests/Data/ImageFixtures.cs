using System.Text.Json;
using AllTokens.Data;
using AllTokens.Data.Transforms;

namespace AllTokens.Tests.Data;

/// <summary>Access to fixtures/images, written by tools/make_image_fixtures.py (Pillow 9.4, torch 1.13).</summary>
internal static class ImageFixtures
{
    public static string Dir { get; } = Path.Combine(AppContext.BaseDirectory, "fixtures", "images");

    public static string PathOf(string name) => Path.Combine(Dir, name);

    public static byte[] Bytes(string name) => File.ReadAllBytes(PathOf(name));

    private static readonly Lazy<JsonElement> ManifestRoot = new(() =>
        JsonDocument.Parse(File.ReadAllBytes(PathOf("manifest.json"))).RootElement);

    public static JsonElement.ArrayEnumerator Cases(string section) => ManifestRoot.Value.GetProperty(section).EnumerateArray();

    public static JsonElement Case(string section, string key, string value) =>
        Cases(section).Single(c => c.GetProperty(key).GetString() == value);

    public static RgbImage RawImage(string name, int width, int height) => new(width, height, Bytes(name));

    public static Interpolation Filter(string name) => name switch
    {
        "nearest" => Interpolation.Nearest,
        "bilinear" => Interpolation.Bilinear,
        "bicubic" => Interpolation.Bicubic,
        _ => throw new ArgumentException($"unknown filter {name} in manifest.json"),
    };

    public static float[] Floats(string name)
    {
        byte[] b = Bytes(name);
        var f = new float[b.Length / 4];
        for (int i = 0; i < f.Length; i++)
            f[i] = BitConverter.ToSingle(b, i * 4); // fixtures are little-endian, like this machine
        return f;
    }

    /// <summary>Index and values of the first differing byte, for failure messages.</summary>
    public static string FirstDifference(byte[] expected, byte[] actual, int width)
    {
        if (expected.Length != actual.Length) return $"length {actual.Length}, expected {expected.Length}";
        int count = 0, first = -1;
        for (int i = 0; i < expected.Length; i++)
            if (expected[i] != actual[i]) { count++; if (first < 0) first = i; }
        if (first < 0) return "identical";
        int px = first / 3;
        return $"{count} bytes differ; first at pixel ({px % width}, {px / width}) channel {first % 3}: expected {expected[first]}, got {actual[first]}";
    }
}
