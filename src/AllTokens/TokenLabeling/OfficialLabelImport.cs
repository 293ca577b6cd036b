using System.Runtime.InteropServices;
using AllTokens.Checkpoints;

namespace AllTokens.TokenLabeling;

/// <summary>Progress of a label import or annotation run.</summary>
public readonly record struct LabelProgress(int Done, int Total, int Skipped);

/// <summary>
/// Converts official token-label data (LVVIT.md §6.1: one <c>&lt;dir&gt;/&lt;class&gt;/&lt;stem&gt;.pt</c> per image
/// holding a [2, k, h, w] float16 tensor, plane 0 the top-k logits, plane 1 their class indices as fp16) into a
/// <see cref="LabelStore"/>. Keys are <c>&lt;class&gt;/&lt;stem&gt;</c> (<see cref="LabelKeyStyle.OfficialStem"/>), so
/// an ImageFolder dataset's keys (<c>&lt;class&gt;/&lt;file&gt;</c>) find them after cutting the file name at its first '.'.
/// </summary>
public static class OfficialLabelImport
{
    /// <summary>Reads one official file: (k, h, w, values [k·h·w], indices [k·h·w]).</summary>
    public static LabelMap ReadFile(string path, int numClasses)
    {
        var obj = PthReader.ReadObject(path);
        if (obj is not RawTensor t)
            throw new InvalidDataException($"{path}: expected a bare tensor [2, k, h, w] (official token-label file), found {obj?.GetType().Name ?? "None"}");
        if (t.Shape.Length != 4 || t.Shape[0] != 2)
            throw new InvalidDataException($"{path}: expected shape [2, k, h, w], found [{string.Join(", ", t.Shape)}]");
        int k = (int)t.Shape[1], h = (int)t.Shape[2], w = (int)t.Shape[3], n = k * h * w;
        var plane = new float[2 * n];
        switch (t.DType)
        {
            case TensorDType.Float16:
                var halves = MemoryMarshal.Cast<byte, Half>(t.Data.AsSpan());
                for (int i = 0; i < plane.Length; i++) plane[i] = (float)halves[i];
                break;
            case TensorDType.Float32:
                MemoryMarshal.Cast<byte, float>(t.Data.AsSpan()).CopyTo(plane);
                break;
            default:
                throw new InvalidDataException($"{path}: expected float16 (or float32) data, found {t.DType}");
        }
        var values = plane[..n];
        var indices = new int[n];
        for (int i = 0; i < n; i++)
        {
            float c = plane[n + i];
            if (c != MathF.Floor(c) || c < 0 || c >= numClasses)
                throw new InvalidDataException($"{path}: class index {c} at element {i} is not an integer in [0, {numClasses})");
            indices[i] = (int)c;
        }
        return new LabelMap(k, h, w, values, indices);
    }

    /// <summary>
    /// Imports every <c>*.pt</c> under <paramref name="officialDir"/> (one level of class folders) into the store at
    /// <paramref name="outPath"/>. Resumable: files whose key is already stored are skipped.
    /// </summary>
    public static LabelStoreHeader Import(string officialDir, string outPath, int numClasses, string annotator = "official",
        int resolution = 0, IProgress<LabelProgress>? progress = null, CancellationToken cancel = default)
    {
        if (!Directory.Exists(officialDir)) throw new DirectoryNotFoundException($"{officialDir}: no such directory");
        var files = Directory.EnumerateDirectories(officialDir).Order(StringComparer.Ordinal)
            .SelectMany(d => Directory.EnumerateFiles(d, "*.pt").Order(StringComparer.Ordinal)
                .Select(f => (Path: f, Key: System.IO.Path.GetFileName(d) + "/" + System.IO.Path.GetFileNameWithoutExtension(f))))
            .ToList();
        if (files.Count == 0) throw new InvalidDataException($"{officialDir}: no <class>/<stem>.pt files found");
        var first = ReadFile(files[0].Path, numClasses);
        var header = new LabelStoreHeader(numClasses, first.K, first.Height, first.Width, annotator, resolution, LabelKeyStyle.OfficialStem);
        using var writer = LabelStoreWriter.OpenOrCreate(outPath, header);
        int done = 0, skipped = 0;
        foreach (var (path, key) in files)
        {
            cancel.ThrowIfCancellationRequested();
            if (writer.Contains(key))
            {
                skipped++;
            }
            else
            {
                var map = ReadFile(path, numClasses);
                if (map.K != header.K || map.Height != header.Height || map.Width != header.Width)
                    throw new InvalidDataException($"{path}: [2, {map.K}, {map.Height}, {map.Width}] differs from the first file's [2, {header.K}, {header.Height}, {header.Width}]");
                writer.Add(key, map);
            }
            done++;
            if (done % 1000 == 0)
            {
                writer.Flush();
                progress?.Report(new LabelProgress(done, files.Count, skipped));
            }
        }
        writer.Complete();
        progress?.Report(new LabelProgress(done, files.Count, skipped));
        return header;
    }
}
