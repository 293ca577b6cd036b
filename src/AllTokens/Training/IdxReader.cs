using System.Buffers.Binary;
using System.IO.Compression;

namespace AllTokens.Training;

/// <summary>
/// Minimal reader for (Fashion-)MNIST gzip IDX files (<c>train-images-idx3-ubyte.gz</c> …), standing in for the data
/// loader until it is wired into <see cref="TrainData"/>.
/// </summary>
public static class IdxReader
{
    public static readonly string[] FashionMnistClasses =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    /// <summary>Reads split <c>train</c> or <c>test</c> (file prefix t10k) from <paramref name="dir"/>.</summary>
    public static InMemoryDataset Open(string dir, string split)
    {
        string prefix = split switch { "train" => "train", "test" or "val" => "t10k", _ => throw new ArgumentException($"unknown split '{split}' (train or test)") };
        string images = Find(dir, $"{prefix}-images-idx3-ubyte"), labels = Find(dir, $"{prefix}-labels-idx1-ubyte");
        var (img, imgDims) = ReadIdx(images, 3);
        var (lab, labDims) = ReadIdx(labels, 1);
        if (imgDims[0] != labDims[0]) throw new InvalidDataException($"{images}: {imgDims[0]} images but {labels} has {labDims[0]} labels");
        bool fashion = dir.Contains("fashion", StringComparison.OrdinalIgnoreCase);
        var names = fashion ? FashionMnistClasses : Enumerable.Range(0, 10).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        int bad = Array.FindIndex(lab, b => b >= names.Length);
        if (bad >= 0) throw new InvalidDataException($"{labels}: label {lab[bad]} of sample {bad} is outside the {names.Length} classes");
        return new InMemoryDataset(img, lab.Select(b => (int)b).ToArray(), imgDims[2], imgDims[1], 1, names, $"{dir} ({split})", split);
    }

    private static string Find(string dir, string stem)
    {
        foreach (var name in new[] { stem + ".gz", stem })
            if (File.Exists(Path.Combine(dir, name))) return Path.Combine(dir, name);
        throw new FileNotFoundException($"{dir}: no {stem}.gz (expected an MNIST-style IDX folder)", Path.Combine(dir, stem + ".gz"));
    }

    private static (byte[] Data, int[] Dims) ReadIdx(string path, int expectedDims)
    {
        using var file = File.OpenRead(path);
        using Stream s = path.EndsWith(".gz", StringComparison.Ordinal) ? new GZipStream(file, CompressionMode.Decompress) : file;
        var head = new byte[4];
        ReadExactly(s, head, path);
        if (head[0] != 0 || head[1] != 0 || head[2] != 0x08 || head[3] != expectedDims)
            throw new InvalidDataException($"{path}: not an unsigned-byte IDX file with {expectedDims} dimensions");
        var dims = new int[expectedDims];
        var b4 = new byte[4];
        for (int i = 0; i < expectedDims; i++)
        {
            ReadExactly(s, b4, path);
            dims[i] = BinaryPrimitives.ReadInt32BigEndian(b4);
            if (dims[i] <= 0) throw new InvalidDataException($"{path}: dimension {i} is {dims[i]}");
        }
        long n = dims.Aggregate(1L, (a, d) => a * d);
        if (n > int.MaxValue) throw new InvalidDataException($"{path}: {n} bytes is too large");
        var data = new byte[n];
        ReadExactly(s, data, path);
        return (data, dims);
    }

    private static void ReadExactly(Stream s, byte[] buffer, string path)
    {
        try
        {
            s.ReadExactly(buffer);
        }
        catch (EndOfStreamException)
        {
            throw new InvalidDataException($"{path}: file is truncated");
        }
        catch (InvalidDataException e)
        {
            // GZipStream's own error names no file (found by the hostile-input suite).
            throw new InvalidDataException($"{path}: not valid gzip data ({e.Message})", e);
        }
    }
}
