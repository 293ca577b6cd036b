using System.Buffers.Binary;
using AllTokens.Data;
using AllTokens.Tests.Data;
using AllTokens.TokenLabeling;

namespace AllTokens.Tests.TokenLabeling;

/// <summary>Stores keep a checksum of each source image, so labels of other images under the same keys are caught.</summary>
public sealed class LabelStoreChecksumTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-labelsum-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    private string StorePath => Path.Combine(dir, "labels.atl");

    private static readonly LabelStoreHeader Head = new(NumClasses: 3, K: 1, Height: 1, Width: 2, Annotator: "test", Resolution: 16,
        Region: LabelMapRegion.CentreSquare, ImageChecksums: true);

    private static LabelMap Map(int seed) => new(1, 1, 2, [seed, seed + 0.5f], [seed % 3, (seed + 1) % 3]);

    /// <summary>The images of <paramref name="inner"/> under its keys, with <paramref name="swap"/> picking which image each key gets.</summary>
    private sealed class Relabelled(IImageDataset inner, Func<int, int> swap) : IImageDataset
    {
        public int Count => inner.Count;
        public IReadOnlyList<string> ClassNames => inner.ClassNames;
        public int GetLabel(int index) => inner.GetLabel(index);
        public string GetKey(int index) => inner.GetKey(index);
        public RgbImage Load(int index) => inner.Load(swap(index));
        public string Source => "relabelled " + inner.Source;
    }

    private void WriteFor(IImageDataset ds, LabelStoreHeader? header = null)
    {
        header ??= Head;
        using var w = LabelStoreWriter.OpenOrCreate(StorePath, header);
        for (int i = 0; i < ds.Count; i++)
            w.Add(ds.GetKey(i), Map(i), header.ImageChecksums ? LabelStore.ImageChecksum(ds.Load(i)) : null);
        w.Complete();
    }

    [Fact]
    public void ChecksumCoversSizeAndPixels()
    {
        // zlib.crc32(struct.pack('<ii', 2, 1) + bytes([10, 20, 30, 40, 50, 60])) and the same with (1, 2).
        byte[] px = [10, 20, 30, 40, 50, 60];
        Assert.Equal(0xaf6bdb72u, LabelStore.ImageChecksum(new RgbImage(2, 1, px)));
        Assert.Equal(0x383d45aau, LabelStore.ImageChecksum(new RgbImage(1, 2, px)));
    }

    [Fact]
    public void RecordsKeepTheirImageChecksum()
    {
        var ds = new FakeDataset(5, 3);
        WriteFor(ds);
        using var s = LabelStore.Open(StorePath);
        Assert.True(s.Header.ImageChecksums);
        for (int i = 0; i < ds.Count; i++)
        {
            Assert.Equal(LabelStore.ImageChecksum(ds.Load(i)), s.SourceChecksum(ds.GetKey(i)));
            Assert.Equal(Map(i).Values, s.Get(ds.GetKey(i)).Values);
            Assert.Equal(Map(i).Indices, s.Get(ds.GetKey(i)).Indices);
        }
        s.VerifyAll();
        // Four bytes more per record than a store without checksums; the file is header, records, index, footer.
        Assert.Equal(4, LabelStore.RecordSize(Head, 11) - LabelStore.RecordSize(Head with { ImageChecksums = false }, 11));
        Assert.Equal(LabelStore.HeaderSize + 5 * LabelStore.RecordSize(Head, "img_000.png".Length) + IndexAndFooter(s), new FileInfo(StorePath).Length);
        Assert.Equal(5, s.CheckImages(ds));
        Assert.Equal(2, s.CheckImages(ds, samples: 2));
    }

    private static long IndexAndFooter(LabelStore s) => 4 + 4 + s.Keys.Sum(k => 2 + k.Length + 8) + 4 + LabelStore.FooterSize;

    [Fact]
    public void WriterInsistsOnChecksumsExactlyWhenTheStoreKeepsThem()
    {
        using (var w = LabelStoreWriter.OpenOrCreate(StorePath, Head))
            Assert.Contains("give it", Assert.Throws<ArgumentException>(() => w.Add("a", Map(0))).Message);
        File.Delete(StorePath + ".partial");
        using var w2 = LabelStoreWriter.OpenOrCreate(StorePath, Head with { ImageChecksums = false });
        Assert.Contains("no image checksums", Assert.Throws<ArgumentException>(() => w2.Add("a", Map(0), 7u)).Message);
    }

    [Fact]
    public void LabelsOfOtherImagesUnderTheSameKeysAreRefused()
    {
        var ds = new FakeDataset(40, 3);
        WriteFor(ds);
        using var s = LabelStore.Open(StorePath);
        // Same keys, other pictures (MNIST where Fashion-MNIST was labelled): every sampled image differs.
        var other = new Relabelled(ds, i => i + 1000);
        s.CheckMatches(Enumerable.Range(0, other.Count).Select(other.GetKey).ToList(), 3, other.Source); // keys alone pass
        var e = Assert.Throws<LabelStoreException>(() => StoredTargetSource.FromStore(s, other));
        Assert.Equal(StorePath, e.FilePath);
        Assert.Contains("made from other images", e.Message);
        Assert.Contains("all 16 images of relabelled fake", e.Message);
        Assert.Contains("'img_000.png'", e.Message);

        // One image replaced (a re-exported folder): named, with what to do.
        var one = new Relabelled(ds, i => i == 20 ? 999 : i);
        e = Assert.Throws<LabelStoreException>(() => s.CheckImages(one));
        Assert.Contains("1 of 16 images", e.Message);
        Assert.Contains("'img_020.png'", e.Message);
        Assert.Contains("label them again", e.Message);

        // The right images pass, and so does a subset of them (the checks sample the training set's own keys).
        StoredTargetSource.FromStore(s, ds);
        var subset = new Relabelled(ds, i => i); // same images
        Assert.Equal(16, s.CheckImages(subset));
    }

    [Fact]
    public void AnImageThatNoLongerDecodesIsPassedOver()
    {
        var ds = new FakeDataset(8, 3);
        WriteFor(ds);
        using var s = LabelStore.Open(StorePath);
        // The loader skips an unreadable image (non-strict data), so its labels are never read: nothing to compare.
        var broken = new FakeDataset(8, 3, corrupt: [0, 4]);
        Assert.Equal(6, s.CheckImages(broken));
    }

    [Fact]
    public void StoresWithoutChecksumsAreNotChecked()
    {
        var ds = new FakeDataset(4, 3);
        WriteFor(ds, Head with { ImageChecksums = false });
        using var s = LabelStore.Open(StorePath);
        Assert.False(s.Header.ImageChecksums);
        Assert.Null(s.SourceChecksum("img_001.png"));
        Assert.Equal(0, s.CheckImages(new Relabelled(ds, i => i + 1000)));
    }

    [Fact]
    public void VersionOneStoresOpenAndResumeWithoutChecksums()
    {
        // A version-1 file is a store without checksums whose header has version 1 and no flags field.
        var ds = new FakeDataset(3, 3);
        var plain = Head with { ImageChecksums = false };
        using (var w = LabelStoreWriter.OpenOrCreate(StorePath, plain))
        {
            w.Add(ds.GetKey(0), Map(0));
            w.Add(ds.GetKey(1), Map(1));
        }
        string partial = StorePath + ".partial";
        var bytes = File.ReadAllBytes(partial);
        Assert.Equal(2, BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(8)));
        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(8), 1);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(LabelStore.HeaderSize - 4), Crc32.Compute(bytes.AsSpan(0, LabelStore.HeaderSize - 4)));
        File.WriteAllBytes(partial, bytes);

        // `label` asks for checksums; the old store is resumed in its own format.
        using (var w = LabelStoreWriter.OpenOrCreate(StorePath, Head))
        {
            Assert.False(w.Header.ImageChecksums);
            Assert.Equal(2, w.Resumed);
            w.Add(ds.GetKey(2), Map(2));
            w.Complete();
        }
        using var s = LabelStore.Open(StorePath);
        Assert.False(s.Header.ImageChecksums);
        Assert.Equal(1, BinaryPrimitives.ReadInt32LittleEndian(File.ReadAllBytes(StorePath).AsSpan(8)));
        for (int i = 0; i < 3; i++) Assert.Equal(Map(i).Values, s.Get(ds.GetKey(i)).Values);
        s.VerifyAll();
    }

    [Fact]
    public void UnknownVersionsAndFlagsAreRefused()
    {
        WriteFor(new FakeDataset(1, 3));
        byte[] good = File.ReadAllBytes(StorePath);
        void Patch(int offset, int value)
        {
            var b = (byte[])good.Clone();
            BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(offset), value);
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(LabelStore.HeaderSize - 4), Crc32.Compute(b.AsSpan(0, LabelStore.HeaderSize - 4)));
            File.WriteAllBytes(StorePath, b);
        }
        Patch(8, 3);
        Assert.Contains("unsupported store version 3", Assert.Throws<LabelStoreException>(() => LabelStore.Open(StorePath)).Message);
        Patch(LabelStore.FlagsOffset, 6);
        Assert.Contains("unknown header flags 0x6", Assert.Throws<LabelStoreException>(() => LabelStore.Open(StorePath)).Message);
        Patch(LabelStore.FlagsOffset, 1);
        using var s = LabelStore.Open(StorePath);
        Assert.True(s.Header.ImageChecksums);
    }
}
