namespace AllTokens.Data.Datasets;

/// <summary>
/// MNIST-style IDX files (<c>train-images-idx3-ubyte[.gz]</c> + <c>train-labels-idx1-ubyte[.gz]</c>, and <c>t10k-*</c>
/// for the test split), held in memory. Gray images come out as RGB with R = G = B. Fashion-MNIST class names are used
/// when the folder name contains "fashion", else "0".."9".
/// </summary>
public sealed class IdxDataset : IImageDataset
{
    /// <summary>Fashion-MNIST's class names, index = label.</summary>
    public static IReadOnlyList<string> FashionMnistClasses { get; } =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    private readonly byte[] pixels; // header stripped: Count × Rows × Cols
    private readonly byte[] labels; // header stripped: Count
    private readonly string split;

    public int Count { get; }
    public int Rows { get; }
    public int Cols { get; }
    public IReadOnlyList<string> ClassNames { get; }
    public string Source { get; }

    /// <summary>The image and label files of one split; <paramref name="split"/> names the keys.</summary>
    public IdxDataset(string imagesPath, string labelsPath, string split, IReadOnlyList<string>? classNames = null)
    {
        this.split = split;
        byte[] img = DatasetFiles.ReadAll(imagesPath);
        byte[] lab = DatasetFiles.ReadAll(labelsPath);
        (int[] imgDims, int imgHeader) = Header(img, imagesPath, 0x0803, 3);
        (int[] labDims, int labHeader) = Header(lab, labelsPath, 0x0801, 1);
        if (imgDims[0] != labDims[0])
            throw new DatasetException($"{imagesPath} holds {imgDims[0]} images but {labelsPath} holds {labDims[0]} labels");
        Count = imgDims[0];
        Rows = imgDims[1];
        Cols = imgDims[2];
        pixels = img.AsSpan(imgHeader).ToArray();
        labels = lab.AsSpan(labHeader).ToArray();
        string folder = Path.GetFileName(Path.GetDirectoryName(Path.GetFullPath(imagesPath))) ?? "";
        ClassNames = classNames ?? (folder.Contains("fashion", StringComparison.OrdinalIgnoreCase)
            ? FashionMnistClasses
            : Enumerable.Range(0, 10).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray());
        for (int i = 0; i < labels.Length; i++)
            if (labels[i] >= ClassNames.Count)
                throw new DatasetException($"{labelsPath}: label {labels[i]} of sample {i} is outside the {ClassNames.Count} classes");
        Source = $"{imagesPath} ({split})";
    }

    /// <summary>Opens the split found in <paramref name="dir"/>, or returns null when the directory holds no IDX files for it.
    /// "val" reads the <c>t10k</c> (test) files.</summary>
    public static IdxDataset? TryOpen(string dir, string split)
    {
        DatasetFiles.CheckSplit(split);
        string prefix = split == "train" ? "train" : "t10k";
        string? images = Find(dir, prefix, "images", 3), labels = Find(dir, prefix, "labels", 1);
        if (images is null && labels is null) return null;
        if (images is null || labels is null)
            throw new DatasetException($"{dir}: found {Path.GetFileName(images ?? labels)} but not its {(images is null ? "images" : "labels")} file " +
                                       $"({prefix}-{(images is null ? "images-idx3" : "labels-idx1")}-ubyte[.gz])");
        return new IdxDataset(images, labels, split);
    }

    /// <summary>Names the IDX files of a split may have (Yann LeCun's and a common variant), with or without .gz.</summary>
    internal static string? Find(string dir, string prefix, string kind, int dims)
    {
        foreach (string stem in new[] { $"{prefix}-{kind}-idx{dims}-ubyte", $"{prefix}-{kind}.idx{dims}-ubyte" })
            foreach (string ext in new[] { "", ".gz" })
            {
                string p = Path.Combine(dir, stem + ext);
                if (File.Exists(p)) return p;
            }
        return null;
    }

    private static (int[] Dims, int HeaderBytes) Header(byte[] data, string path, int expectedMagic, int expectedDims)
    {
        if (data.Length < 4)
            throw new DatasetException($"{path}: truncated IDX file ({data.Length} bytes, the header alone needs {4 + 4 * expectedDims})");
        int magic = (data[0] << 24) | (data[1] << 16) | (data[2] << 8) | data[3];
        if (magic != expectedMagic)
            throw new DatasetException($"{path}: not an IDX {(expectedDims == 3 ? "image" : "label")} file: magic 0x{magic:X8}, expected 0x{expectedMagic:X8} " +
                                       "(unsigned bytes, " + expectedDims + " dimension" + (expectedDims == 1 ? "" : "s") + ")");
        int header = 4 + 4 * expectedDims;
        if (data.Length < header)
            throw new DatasetException($"{path}: truncated IDX header ({data.Length} of {header} bytes)");
        var dims = new int[expectedDims];
        long total = 1;
        for (int d = 0; d < expectedDims; d++)
        {
            int o = 4 + 4 * d;
            dims[d] = (data[o] << 24) | (data[o + 1] << 16) | (data[o + 2] << 8) | data[o + 3];
            if (dims[d] < 0 || (d > 0 && dims[d] == 0))
                throw new DatasetException($"{path}: invalid dimension {d} = {dims[d]} in the IDX header");
            total *= dims[d];
        }
        if (data.Length - header < total)
            throw new DatasetException($"{path}: truncated IDX data: the header promises {total} bytes ({string.Join("x", dims)}), the file has {data.Length - header}");
        return (dims, header);
    }

    public int GetLabel(int index) => labels[CheckIndex(index)];

    public string GetKey(int index) => $"{split}/{CheckIndex(index):D6}";

    public RgbImage Load(int index)
    {
        CheckIndex(index);
        int plane = Rows * Cols;
        var rgb = new byte[plane * 3];
        int src = index * plane;
        for (int i = 0; i < plane; i++)
        {
            byte v = pixels[src + i];
            rgb[i * 3] = v;
            rgb[i * 3 + 1] = v;
            rgb[i * 3 + 2] = v;
        }
        return new RgbImage(Cols, Rows, rgb);
    }

    private int CheckIndex(int index) =>
        (uint)index < (uint)Count ? index : throw new ArgumentOutOfRangeException(nameof(index), $"{Source}: sample {index} of {Count}");
}
