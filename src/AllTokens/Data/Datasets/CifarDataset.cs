namespace AllTokens.Data.Datasets;

/// <summary>
/// CIFAR-10 / CIFAR-100 in the "binary version" layout, held in memory. CIFAR-10: <c>data_batch_1..5.bin</c> (train),
/// <c>test_batch.bin</c> (val), records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32×32), class names from
/// <c>batches.meta.txt</c>. CIFAR-100: <c>train.bin</c> / <c>test.bin</c>, records of coarse label, fine label + 3072
/// bytes; the fine labels are used, names from <c>fine_label_names.txt</c>.
/// </summary>
public sealed class CifarDataset : IImageDataset
{
    private const int Side = 32, Plane = Side * Side, ImageBytes = 3 * Plane;

    /// <summary>CIFAR-10's class names, used when <c>batches.meta.txt</c> is missing.</summary>
    public static IReadOnlyList<string> Cifar10Classes { get; } =
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

    private readonly byte[][] chunks;
    private readonly int[] chunkStart;
    private readonly string[] chunkFiles;
    private readonly int recordBytes, labelOffset;
    private readonly string split;

    public int Count { get; }
    public IReadOnlyList<string> ClassNames { get; }
    public string Source { get; }

    /// <summary>True for CIFAR-100 (fine labels), false for CIFAR-10.</summary>
    public bool IsCifar100 { get; }

    private CifarDataset(string dir, string[] files, bool cifar100, string split, IReadOnlyList<string> classNames)
    {
        this.split = split;
        IsCifar100 = cifar100;
        recordBytes = ImageBytes + (cifar100 ? 2 : 1);
        labelOffset = cifar100 ? 1 : 0;
        ClassNames = classNames;
        chunkFiles = files;
        chunks = new byte[files.Length][];
        chunkStart = new int[files.Length + 1];
        for (int f = 0; f < files.Length; f++)
        {
            byte[] data = DatasetFiles.ReadAll(files[f]);
            if (data.Length == 0 || data.Length % recordBytes != 0)
                throw new DatasetException($"{files[f]}: {data.Length} bytes is not a whole number of {(cifar100 ? "CIFAR-100" : "CIFAR-10")} " +
                                           $"records of {recordBytes} bytes (truncated or not a CIFAR binary file)");
            for (int r = 0; r < data.Length; r += recordBytes)
                if (data[r + labelOffset] >= classNames.Count)
                    throw new DatasetException($"{files[f]}: record {r / recordBytes} has label {data[r + labelOffset]}, outside the {classNames.Count} classes");
            chunks[f] = data;
            chunkStart[f + 1] = chunkStart[f] + data.Length / recordBytes;
        }
        Count = chunkStart[^1];
        Source = $"{dir} ({(cifar100 ? "CIFAR-100" : "CIFAR-10")}, {split})";
    }

    /// <summary>Opens the split found in <paramref name="dir"/> (or its <c>cifar-10-batches-bin</c> / <c>cifar-100-binary</c>
    /// subfolder), or returns null when there is no CIFAR binary data there. "val" reads the test files.</summary>
    public static CifarDataset? TryOpen(string dir, string split)
    {
        DatasetFiles.CheckSplit(split);
        foreach (string d in new[] { dir, Path.Combine(dir, "cifar-10-batches-bin"), Path.Combine(dir, "cifar-100-binary") })
        {
            if (!Directory.Exists(d)) continue;
            bool c10 = File.Exists(Path.Combine(d, "data_batch_1.bin")) || File.Exists(Path.Combine(d, "test_batch.bin"));
            bool c100 = File.Exists(Path.Combine(d, "train.bin")) || File.Exists(Path.Combine(d, "test.bin"));
            if (c10)
            {
                string[] files = split == "train"
                    ? Enumerable.Range(1, 5).Select(i => Path.Combine(d, $"data_batch_{i}.bin")).ToArray()
                    : [Path.Combine(d, "test_batch.bin")];
                RequireAll(d, files, "CIFAR-10");
                string meta = Path.Combine(d, "batches.meta.txt");
                var names = File.Exists(meta) ? ReadNames(meta) : Cifar10Classes;
                return new CifarDataset(d, files, false, split, names);
            }
            if (c100)
            {
                string[] files = [Path.Combine(d, split == "train" ? "train.bin" : "test.bin")];
                RequireAll(d, files, "CIFAR-100");
                string meta = Path.Combine(d, "fine_label_names.txt");
                var names = File.Exists(meta)
                    ? ReadNames(meta)
                    : Enumerable.Range(0, 100).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray();
                return new CifarDataset(d, files, true, split, names);
            }
        }
        return null;
    }

    private static void RequireAll(string dir, string[] files, string what)
    {
        var missing = files.Where(f => !File.Exists(f)).Select(Path.GetFileName).ToList();
        if (missing.Count > 0)
            throw new DatasetException($"{dir}: looks like {what} binary data but {string.Join(", ", missing)} {(missing.Count == 1 ? "is" : "are")} missing");
    }

    private static string[] ReadNames(string path)
    {
        string[] names;
        try
        {
            names = File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0).ToArray();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DatasetException($"{path}: cannot read class names: {e.Message}", e);
        }
        if (names.Length == 0) throw new DatasetException($"{path}: no class names in the file");
        return names;
    }

    private (byte[] Data, int Offset, int File) Locate(int index)
    {
        if ((uint)index >= (uint)Count)
            throw new ArgumentOutOfRangeException(nameof(index), $"{Source}: sample {index} of {Count}");
        int f = Array.BinarySearch(chunkStart, index);
        if (f < 0) f = ~f - 1;
        while (chunkStart[f + 1] <= index) f++;
        return (chunks[f], (index - chunkStart[f]) * recordBytes, f);
    }

    public int GetLabel(int index)
    {
        var (data, offset, _) = Locate(index);
        return data[offset + labelOffset];
    }

    public string GetKey(int index)
    {
        Locate(index);
        return $"{split}/{index:D6}";
    }

    /// <summary>The file sample <paramref name="index"/> was read from.</summary>
    public string FileOf(int index) => chunkFiles[Locate(index).File];

    public RgbImage Load(int index)
    {
        var (data, offset, _) = Locate(index);
        int p = offset + labelOffset + 1;
        var rgb = new byte[ImageBytes];
        for (int i = 0; i < Plane; i++)
        {
            rgb[i * 3] = data[p + i];
            rgb[i * 3 + 1] = data[p + Plane + i];
            rgb[i * 3 + 2] = data[p + 2 * Plane + i];
        }
        return new RgbImage(Side, Side, rgb);
    }
}
