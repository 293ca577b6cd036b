using System.IO.Compression;
using AllTokens.Data;
using AllTokens.Data.Datasets;

namespace AllTokens.Tests.Data;

public sealed class DatasetTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-ds-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    private static byte[] Be32(int v) => [(byte)(v >> 24), (byte)(v >> 16), (byte)(v >> 8), (byte)v];

    private static byte[] IdxImages(int n, int rows, int cols, Func<int, int, byte> pixel) =>
        [.. Be32(0x0803), .. Be32(n), .. Be32(rows), .. Be32(cols), .. Enumerable.Range(0, n * rows * cols).Select(i => pixel(i / (rows * cols), i % (rows * cols)))];

    private static byte[] IdxLabels(params byte[] labels) => [.. Be32(0x0801), .. Be32(labels.Length), .. labels];

    private static void Write(string path, byte[] data, bool gz)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        if (!gz)
        {
            File.WriteAllBytes(path, data);
            return;
        }
        using var f = File.Create(path + ".gz");
        using var z = new GZipStream(f, CompressionLevel.Fastest);
        z.Write(data);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void IdxReadsImagesLabelsAndKeys(bool gz)
    {
        string d = Path.Combine(dir, "fashion-mini");
        Write(Path.Combine(d, "t10k-images-idx3-ubyte"), IdxImages(3, 2, 4, (i, p) => (byte)(i * 100 + p)), gz);
        Write(Path.Combine(d, "t10k-labels-idx1-ubyte"), IdxLabels(7, 0, 9), gz);
        var ds = DatasetFactory.Open(d, "val");
        Assert.IsType<IdxDataset>(ds);
        Assert.Equal(3, ds.Count);
        Assert.Equal([7, 0, 9], Enumerable.Range(0, 3).Select(ds.GetLabel));
        Assert.Equal("val/000002", ds.GetKey(2));
        Assert.Equal("Ankle boot", ds.ClassNames[9]); // folder name contains "fashion"
        var img = ds.Load(1);
        Assert.Equal((4, 2), (img.Width, img.Height));
        Assert.Equal(((byte)106, (byte)106, (byte)106), img.GetPixel(2, 1)); // sample 1, pixel 1·4+2 = 6 → 100 + 6, R = G = B
        var ex = Assert.Throws<DatasetException>(() => DatasetFactory.Open(d, "train"));
        Assert.Contains("no dataset found", ex.Message);
    }

    [Fact]
    public void IdxDigitsNamesOutsideFashionFolders()
    {
        string d = Path.Combine(dir, "mnist");
        Write(Path.Combine(d, "train-images-idx3-ubyte"), IdxImages(1, 1, 1, (_, _) => 5), false);
        Write(Path.Combine(d, "train-labels-idx1-ubyte"), IdxLabels(3), false);
        Assert.Equal(Enumerable.Range(0, 10).Select(i => i.ToString()), DatasetFactory.Open(d, "train").ClassNames);
    }

    [Fact]
    public void IdxBadMagicTruncationAndCountMismatchNameTheFile()
    {
        string d = Path.Combine(dir, "bad");
        string images = Path.Combine(d, "train-images-idx3-ubyte"), labels = Path.Combine(d, "train-labels-idx1-ubyte");
        Write(labels, IdxLabels(1, 2), false);
        byte[] good = IdxImages(2, 3, 3, (_, p) => (byte)p);

        byte[] badMagic = (byte[])good.Clone();
        badMagic[3] = 0x01;
        Write(images, badMagic, false);
        var e = Assert.Throws<DatasetException>(() => DatasetFactory.Open(d, "train"));
        Assert.Contains(images, e.Message);
        Assert.Contains("magic 0x00000801", e.Message);

        Write(images, good[..^4], false);
        e = Assert.Throws<DatasetException>(() => DatasetFactory.Open(d, "train"));
        Assert.Contains(images, e.Message);
        Assert.Contains("truncated", e.Message);

        Write(images, IdxImages(3, 3, 3, (_, p) => (byte)p), false);
        e = Assert.Throws<DatasetException>(() => DatasetFactory.Open(d, "train"));
        Assert.Contains("3 images", e.Message);
        Assert.Contains("2 labels", e.Message);

        File.WriteAllBytes(images + ".gz", [1, 2, 3]);
        File.Delete(images);
        e = Assert.Throws<DatasetException>(() => DatasetFactory.Open(d, "train"));
        Assert.Contains(images + ".gz", e.Message);
    }

    private static byte[] CifarRecords(int n, int labelBytes, Func<int, byte> label)
    {
        var data = new List<byte>();
        for (int i = 0; i < n; i++)
        {
            if (labelBytes == 2) data.Add((byte)(label(i) / 5)); // coarse label
            data.Add(label(i));
            for (int c = 0; c < 3; c++)
                for (int p = 0; p < 1024; p++) data.Add((byte)(c * 80 + i + p % 7));
        }
        return [.. data];
    }

    [Fact]
    public void Cifar10ReadsPlanesLabelsAndMapsValToTest()
    {
        string d = Path.Combine(dir, "cifar-10-batches-bin");
        Directory.CreateDirectory(d);
        for (int b = 1; b <= 5; b++) File.WriteAllBytes(Path.Combine(d, $"data_batch_{b}.bin"), CifarRecords(2, 1, i => (byte)(b + i)));
        File.WriteAllBytes(Path.Combine(d, "test_batch.bin"), CifarRecords(3, 1, i => (byte)(9 - i)));
        File.WriteAllLines(Path.Combine(d, "batches.meta.txt"), ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", ""]);
        var train = DatasetFactory.Open(dir, "train"); // found in the cifar-10-batches-bin subfolder
        Assert.Equal(10, train.Count);
        Assert.Equal([1, 2, 2, 3, 3, 4, 4, 5, 5, 6], Enumerable.Range(0, 10).Select(train.GetLabel));
        Assert.Equal("j", train.ClassNames[9]);
        var val = DatasetFactory.Open(d, "val");
        Assert.Equal(3, val.Count);
        Assert.Equal(7, val.GetLabel(2));
        var img = val.Load(2);
        Assert.Equal((32, 32), (img.Width, img.Height));
        // Pixel p of channel c of record i holds c·80 + i + p % 7; pixel (x=3, y=1) is p = 35.
        Assert.Equal(((byte)(2 + 0), (byte)(80 + 2), (byte)(160 + 2)), img.GetPixel(3, 1));
        Assert.Equal(((byte)(2 + 3), (byte)(80 + 5), (byte)(160 + 5)), img.GetPixel(3, 0));

        File.WriteAllBytes(Path.Combine(d, "test_batch.bin"), CifarRecords(3, 1, _ => 1)[..^10]);
        var e = Assert.Throws<DatasetException>(() => DatasetFactory.Open(d, "val"));
        Assert.Contains("test_batch.bin", e.Message);
        File.Delete(Path.Combine(d, "data_batch_4.bin"));
        e = Assert.Throws<DatasetException>(() => DatasetFactory.Open(d, "train"));
        Assert.Contains("data_batch_4.bin", e.Message);
    }

    [Fact]
    public void Cifar100UsesFineLabels()
    {
        string d = Path.Combine(dir, "c100");
        Directory.CreateDirectory(d);
        File.WriteAllBytes(Path.Combine(d, "train.bin"), CifarRecords(4, 2, i => (byte)(97 - i * 11)));
        File.WriteAllBytes(Path.Combine(d, "test.bin"), CifarRecords(1, 2, _ => 42));
        File.WriteAllLines(Path.Combine(d, "fine_label_names.txt"), Enumerable.Range(0, 100).Select(i => $"n{i}"));
        var ds = (CifarDataset)DatasetFactory.Open(d, "train");
        Assert.True(ds.IsCifar100);
        Assert.Equal([97, 86, 75, 64], Enumerable.Range(0, 4).Select(ds.GetLabel));
        Assert.Equal("n42", DatasetFactory.Open(d, "val").ClassNames[42]);
        Assert.Equal((byte)(80 + 3 + 5), ds.Load(3).GetPixel(5, 0).G);
    }

    internal static void WriteImage(string path, int w, int h, byte value)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var bmp = new SkiaSharp.SKBitmap(w, h);
        bmp.Erase(new SkiaSharp.SKColor(value, (byte)(255 - value), 7));
        using var data = bmp.Encode(path.EndsWith(".jpg") ? SkiaSharp.SKEncodedImageFormat.Jpeg : SkiaSharp.SKEncodedImageFormat.Png, 95);
        File.WriteAllBytes(path, data.ToArray());
    }

    [Fact]
    public void ImageFolderSplitsClassesAndKeys()
    {
        string root = Path.Combine(dir, "folder");
        WriteImage(Path.Combine(root, "train", "zebra", "b.png"), 5, 4, 10);
        WriteImage(Path.Combine(root, "train", "zebra", "a.PNG"), 5, 4, 20);
        WriteImage(Path.Combine(root, "train", "Apple", "x", "deep.jpg"), 6, 3, 30);
        File.WriteAllText(Path.Combine(root, "train", "Apple", "notes.txt"), "not an image");
        WriteImage(Path.Combine(root, "val", "Apple", "v.png"), 2, 2, 40);
        Directory.CreateDirectory(Path.Combine(root, "val", "zebra"));

        var train = DatasetFactory.Open(root, "train");
        Assert.IsType<ImageFolderDataset>(train);
        Assert.Equal(["Apple", "zebra"], train.ClassNames); // ordinal: upper case first
        Assert.Equal(["Apple/x/deep.jpg", "zebra/a.PNG", "zebra/b.png"], Enumerable.Range(0, 3).Select(train.GetKey));
        Assert.Equal([0, 1, 1], Enumerable.Range(0, 3).Select(train.GetLabel));
        Assert.Equal(10, train.Load(2).GetPixel(0, 0).R);
        var val = DatasetFactory.Open(root, "val");
        Assert.Equal(1, val.Count);
        Assert.Equal(["Apple", "zebra"], val.ClassNames);

        string single = Path.Combine(dir, "single");
        WriteImage(Path.Combine(single, "cat", "1.png"), 3, 3, 1);
        WriteImage(Path.Combine(single, "dog", "1.png"), 3, 3, 2);
        var s = DatasetFactory.Open(single, "val");
        Assert.Equal(2, s.Count);
        Assert.Equal("dog/1.png", s.GetKey(1));

        File.WriteAllBytes(Path.Combine(single, "dog", "1.png"), [1, 2, 3]);
        var e = Assert.Throws<ImageDecodeException>(() => s.Load(1));
        Assert.Contains(Path.Combine(single, "dog", "1.png"), e.Message);
    }

    [Fact]
    public void FactoryErrorSaysWhatItLookedFor()
    {
        string empty = Path.Combine(dir, "empty");
        Directory.CreateDirectory(empty);
        var e = Assert.Throws<DatasetException>(() => DatasetFactory.Open(empty, "train"));
        Assert.Contains(empty, e.Message);
        Assert.Contains("train-images-idx3-ubyte", e.Message);
        Assert.Contains("data_batch_1", e.Message);
        Assert.Contains("ImageFolder", e.Message);
        Assert.Contains("no such folder", Assert.Throws<DatasetException>(() => DatasetFactory.Open(Path.Combine(dir, "nope"), "val")).Message);
        Assert.Throws<ArgumentException>(() => DatasetFactory.Open(empty, "test"));
    }

    private sealed class Labels(int[] labels, int classes) : IImageDataset
    {
        public int Count => labels.Length;
        public IReadOnlyList<string> ClassNames { get; } = Enumerable.Range(0, classes).Select(i => $"c{i}").ToArray();
        public int GetLabel(int index) => labels[index];
        public string GetKey(int index) => $"k{index}";
        public RgbImage Load(int index) => RgbImage.Black(1, 1);
        public string Source => "labels";
    }

    [Fact]
    public void BalancedSubsetIsPerClassAndDeterministic()
    {
        // 3 classes with 10, 10 and 2 samples, interleaved.
        int[] labels = [.. Enumerable.Range(0, 20).Select(i => i % 2), 2, 2];
        var ds = new Labels(labels, 3);
        var a = Subset.Balanced(ds, 7, seed: 5);
        // 7 / 3 = 2 each, class 0 one more; class 2 has only 2.
        Assert.Equal(7, a.Count);
        Assert.Equal(3, a.Indices.Count(i => labels[i] == 0));
        Assert.Equal(2, a.Indices.Count(i => labels[i] == 1));
        Assert.Equal(2, a.Indices.Count(i => labels[i] == 2));
        Assert.Equal(a.Indices.Order(), a.Indices);
        Assert.Equal(a.Indices, Subset.Balanced(ds, 7, seed: 5).Indices);
        Assert.NotEqual(a.Indices, Subset.Balanced(ds, 7, seed: 6).Indices);
        Assert.Equal(labels[a.Indices[4]], a.GetLabel(4));
        // Asking for more than there is gives everything.
        Assert.Equal(22, Subset.Balanced(ds, 1000, 0).Count);
    }

    [Fact]
    public void RealFashionMnist()
    {
        const string d = "/usr/share/datasets/fashion-mnist";
        if (!Directory.Exists(d)) Assert.Skip($"{d} is not installed (Debian package dataset-fashion-mnist)");
        var val = DatasetFactory.Open(d, "val");
        Assert.Equal(10_000, val.Count);
        Assert.Equal(IdxDataset.FashionMnistClasses, val.ClassNames);
        // The first test images are an ankle boot and a pullover (the well-known first labels 9, 2, 1, 1, 6).
        Assert.Equal([9, 2, 1, 1, 6], Enumerable.Range(0, 5).Select(val.GetLabel));
        var img = val.Load(0);
        Assert.Equal((28, 28), (img.Width, img.Height));
        Assert.Equal(0, img.GetPixel(0, 0).R); // black border
        Assert.Contains(img.Pixels, p => p > 200);
        // Test labels are balanced: 1,000 per class.
        var counts = new int[10];
        for (int i = 0; i < val.Count; i++) counts[val.GetLabel(i)]++;
        Assert.All(counts, c => Assert.Equal(1000, c));
    }
}
