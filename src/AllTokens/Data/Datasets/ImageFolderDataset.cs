namespace AllTokens.Data.Datasets;

/// <summary>
/// torchvision-style ImageFolder: <c>root/train/&lt;class&gt;/…</c> and <c>root/val/&lt;class&gt;/…</c>, or <c>root/&lt;class&gt;/…</c>
/// as a single split (served for either split name). Class folders are sorted ordinally; files are found recursively
/// (jpg, jpeg, png, bmp, webp, gif, any case) and sorted ordinally by their path. Images are decoded on
/// <see cref="Load"/> with <see cref="ImageDecoder"/>. Keys are split-relative paths with '/' separators.
/// </summary>
public sealed class ImageFolderDataset : IImageDataset
{
    /// <summary>File extensions (lower case, with the dot) taken as images.</summary>
    public static IReadOnlySet<string> Extensions { get; } = new HashSet<string>(StringComparer.OrdinalIgnoreCase)
        { ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif" };

    private readonly string[] keys;
    private readonly int[] labels;

    /// <summary>The folder that holds the class folders.</summary>
    public string Root { get; }
    public int Count => keys.Length;
    public IReadOnlyList<string> ClassNames { get; }
    public string Source { get; }

    /// <summary>Scans <paramref name="splitRoot"/>, a folder of class folders.</summary>
    public ImageFolderDataset(string splitRoot, string? splitName = null)
    {
        if (!Directory.Exists(splitRoot))
            throw new DatasetException($"{splitRoot}: no such folder");
        Root = Path.GetFullPath(splitRoot);
        var classDirs = Directory.GetDirectories(Root).Select(Path.GetFileName).OfType<string>()
            .Where(n => !n.StartsWith('.')).OrderBy(n => n, StringComparer.Ordinal).ToArray();
        if (classDirs.Length == 0)
            throw new DatasetException($"{Root}: no class folders (expected {Root}/<class>/<image>)");
        var k = new List<string>();
        var l = new List<int>();
        for (int c = 0; c < classDirs.Length; c++)
        {
            string dir = Path.Combine(Root, classDirs[c]);
            var files = Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories)
                .Where(f => Extensions.Contains(Path.GetExtension(f)))
                .Select(f => Path.GetRelativePath(Root, f).Replace(Path.DirectorySeparatorChar, '/'))
                .OrderBy(f => f, StringComparer.Ordinal);
            foreach (string f in files)
            {
                k.Add(f);
                l.Add(c);
            }
        }
        if (k.Count == 0)
            throw new DatasetException($"{Root}: the class folders hold no images ({string.Join(", ", Extensions.Order(StringComparer.Ordinal))})");
        keys = [.. k];
        labels = [.. l];
        ClassNames = classDirs;
        Source = splitName is null ? Root : $"{Root} ({splitName})";
    }

    /// <summary>Opens the split of the ImageFolder at <paramref name="root"/>, or returns null when the folder does not look
    /// like one (neither split folders nor class folders with images).</summary>
    public static ImageFolderDataset? TryOpen(string root, string split)
    {
        DatasetFiles.CheckSplit(split);
        string train = Path.Combine(root, "train"), val = Path.Combine(root, "val");
        if (Directory.Exists(train) || Directory.Exists(val))
        {
            string want = split == "train" ? train : val;
            if (!Directory.Exists(want))
                throw new DatasetException($"{root}: has {(split == "train" ? "val" : "train")}/ but no {split}/ folder for the '{split}' split");
            return new ImageFolderDataset(want, split);
        }
        bool hasClassImages = Directory.Exists(root) && Directory.EnumerateDirectories(root)
            .Any(d => Directory.EnumerateFiles(d, "*", SearchOption.AllDirectories).Any(f => Extensions.Contains(Path.GetExtension(f))));
        return hasClassImages ? new ImageFolderDataset(root, split) : null;
    }

    /// <summary>Full path of sample <paramref name="index"/>.</summary>
    public string PathOf(int index) => Path.Combine(Root, GetKey(index));

    public int GetLabel(int index) => labels[Check(index)];

    public string GetKey(int index) => keys[Check(index)];

    public RgbImage Load(int index) => ImageDecoder.Decode(PathOf(index));

    private int Check(int index) =>
        (uint)index < (uint)Count ? index : throw new ArgumentOutOfRangeException(nameof(index), $"{Source}: sample {index} of {Count}");
}
