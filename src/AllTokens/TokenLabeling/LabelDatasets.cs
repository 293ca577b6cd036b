using System.Buffers.Binary;
using System.IO.Compression;
using AllTokens.Data;

namespace AllTokens.TokenLabeling;

/// <summary>
/// The datasets the <c>label</c> verb reads, behind one factory method (to be replaced by the data layer's
/// dataset factory): an ImageFolder (<c>PATH/[split/]class/file</c>) or IDX files
/// (<c>PATH/{split}-images-idx3-ubyte[.gz]</c>, MNIST/Fashion-MNIST; split "test" reads <c>t10k</c>).
/// </summary>
public static class LabelDatasets
{
    /// <summary>Opens <paramref name="path"/>'s <paramref name="split"/>, recognising the layout by its files.</summary>
    public static IImageDataset Open(string path, string split = "train")
    {
        if (File.Exists(path)) throw new ArgumentException($"{path}: expected a dataset directory, found a file");
        if (!Directory.Exists(path)) throw new DirectoryNotFoundException($"{path}: no such dataset directory");
        if (IdxDataset.Find(path, split) is { } idx) return idx;
        string root = Directory.Exists(System.IO.Path.Combine(path, split)) ? System.IO.Path.Combine(path, split) : path;
        return new FolderDataset(root, $"{root} (ImageFolder)");
    }

    private sealed class FolderDataset : IImageDataset
    {
        private static readonly HashSet<string> Extensions = new(StringComparer.OrdinalIgnoreCase)
            { ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp" };

        private readonly string root;
        private readonly List<(string Key, int Label)> items = [];

        public FolderDataset(string root, string source)
        {
            this.root = root;
            Source = source;
            var classes = Directory.EnumerateDirectories(root).Select(System.IO.Path.GetFileName).OfType<string>()
                .Where(n => !n.StartsWith('.')).Order(StringComparer.Ordinal).ToList();
            if (classes.Count == 0) throw new InvalidDataException($"{root}: no class folders (expected ROOT/<class>/<image>)");
            ClassNames = classes;
            for (int c = 0; c < classes.Count; c++)
                foreach (var f in Directory.EnumerateFiles(System.IO.Path.Combine(root, classes[c])).Order(StringComparer.Ordinal))
                    if (Extensions.Contains(System.IO.Path.GetExtension(f))) items.Add((classes[c] + "/" + System.IO.Path.GetFileName(f), c));
            if (items.Count == 0) throw new InvalidDataException($"{root}: no images in its class folders");
        }

        public int Count => items.Count;
        public IReadOnlyList<string> ClassNames { get; }
        public string Source { get; }
        public int GetLabel(int index) => items[index].Label;
        public string GetKey(int index) => items[index].Key;
        public RgbImage Load(int index) => ImageDecoder.Decode(System.IO.Path.Combine(root, items[index].Key));
    }

    private sealed class IdxDataset : IImageDataset
    {
        private readonly byte[] pixels;
        private readonly byte[] labels;
        private readonly int rows, cols;
        private readonly string split;

        private IdxDataset(string split, byte[] pixels, byte[] labels, int rows, int cols, string source)
        {
            this.split = split;
            this.pixels = pixels;
            this.labels = labels;
            this.rows = rows;
            this.cols = cols;
            Source = source;
            ClassNames = Enumerable.Range(0, labels.Length == 0 ? 0 : labels.Max() + 1).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToList();
        }

        public static IdxDataset? Find(string dir, string split)
        {
            string prefix = split == "test" ? "t10k" : split;
            string? images = Existing(dir, $"{prefix}-images-idx3-ubyte"), labels = Existing(dir, $"{prefix}-labels-idx1-ubyte");
            if (images is null) return null;
            if (labels is null) throw new FileNotFoundException($"{images}: found, but no {prefix}-labels-idx1-ubyte[.gz] next to it");
            var img = ReadAll(images);
            var lab = ReadAll(labels);
            if (img.Length < 16 || BinaryPrimitives.ReadInt32BigEndian(img) != 0x803)
                throw new InvalidDataException($"{images}: not an IDX image file (magic 0x00000803)");
            if (lab.Length < 8 || BinaryPrimitives.ReadInt32BigEndian(lab) != 0x801)
                throw new InvalidDataException($"{labels}: not an IDX label file (magic 0x00000801)");
            int n = BinaryPrimitives.ReadInt32BigEndian(img.AsSpan(4)), r = BinaryPrimitives.ReadInt32BigEndian(img.AsSpan(8)), c = BinaryPrimitives.ReadInt32BigEndian(img.AsSpan(12));
            if (n < 0 || r < 1 || c < 1 || img.Length != 16 + (long)n * r * c)
                throw new InvalidDataException($"{images}: {n} images of {r}×{c} do not fit its {img.Length} bytes");
            if (BinaryPrimitives.ReadInt32BigEndian(lab.AsSpan(4)) != n || lab.Length != 8 + n)
                throw new InvalidDataException($"{labels}: label count does not match the {n} images of {images}");
            return new IdxDataset(split, img[16..], lab[8..], r, c, $"{images} ({split})");
        }

        private static string? Existing(string dir, string name)
        {
            string p = System.IO.Path.Combine(dir, name);
            return File.Exists(p) ? p : File.Exists(p + ".gz") ? p + ".gz" : null;
        }

        private static byte[] ReadAll(string path)
        {
            using var fs = File.OpenRead(path);
            using Stream s = path.EndsWith(".gz", StringComparison.Ordinal) ? new GZipStream(fs, CompressionMode.Decompress) : fs;
            using var ms = new MemoryStream();
            try
            {
                s.CopyTo(ms);
            }
            catch (InvalidDataException e)
            {
                throw new InvalidDataException($"{path}: corrupt gzip data ({e.Message})", e);
            }
            return ms.ToArray();
        }

        public int Count => labels.Length;
        public IReadOnlyList<string> ClassNames { get; }
        public string Source { get; }
        public int GetLabel(int index) => labels[index];
        public string GetKey(int index) => $"{split}/{index:D6}";

        public RgbImage Load(int index)
        {
            int n = rows * cols;
            var rgb = new byte[n * 3];
            var src = pixels.AsSpan(index * n, n);
            for (int i = 0; i < n; i++) rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = src[i];
            return new RgbImage(cols, rows, rgb);
        }
    }
}
