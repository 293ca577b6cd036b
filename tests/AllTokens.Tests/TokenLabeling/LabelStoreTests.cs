using AllTokens.TokenLabeling;

namespace AllTokens.Tests.TokenLabeling;

public sealed class LabelStoreTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-labels-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    private string StorePath => Path.Combine(dir, "labels.atl");

    private static readonly LabelStoreHeader Head = new(NumClasses: 10, K: 2, Height: 3, Width: 2, Annotator: "lvvit_t@test.safetensors", Resolution: 48,
        Region: LabelMapRegion.CentreSquare);

    // fp16-exact values (multiples of 1/8, small) so a round trip compares exactly.
    private static LabelMap Map(int seed, LabelStoreHeader? h = null)
    {
        h ??= Head;
        int n = h.Elements;
        return new LabelMap(h.K, h.Height, h.Width,
            Enumerable.Range(0, n).Select(i => (seed * 13 + i * 5) % 40 / 8f - 2f).ToArray(),
            Enumerable.Range(0, n).Select(i => (seed * 7 + i * 3) % h.NumClasses).ToArray());
    }

    private static void AssertSame(LabelMap a, LabelMap b)
    {
        Assert.Equal(a.Values, b.Values);
        Assert.Equal(a.Indices, b.Indices);
        Assert.Equal((a.K, a.Height, a.Width), (b.K, b.Height, b.Width));
    }

    private void Write(params string[] keys)
    {
        using var w = LabelStoreWriter.OpenOrCreate(StorePath, Head);
        for (int i = 0; i < keys.Length; i++) w.Add(keys[i], Map(i));
        w.Complete();
    }

    [Fact]
    public void RoundTripKeepsHeaderKeysAndValues()
    {
        Write("Coat/a.png", "Bag/b.png", "Coat/ü c.png");
        Assert.False(File.Exists(StorePath + ".partial"));
        using var s = LabelStore.Open(StorePath);
        Assert.Equal(Head, s.Header);
        Assert.Equal(["Coat/a.png", "Bag/b.png", "Coat/ü c.png"], s.Keys);
        AssertSame(Map(1), s.Get("Bag/b.png"));
        AssertSame(Map(2), s.Get("Coat/ü c.png"));
        s.VerifyAll();
        var e = Assert.Throws<KeyNotFoundException>(() => s.Get("Coat/zzz.png"));
        Assert.Contains(StorePath, e.Message);
    }

    [Fact]
    public void ManyClassesUseExactInt32Indices()
    {
        // Beyond 2,048 classes fp16 indices would be inexact; beyond 32,767 int16 would overflow.
        var h = new LabelStoreHeader(40_000, 1, 1, 2, "big", 224);
        Assert.Equal(4, h.IndexBytes);
        Assert.Equal(2, Head.IndexBytes);
        using (var w = LabelStoreWriter.OpenOrCreate(StorePath, h))
        {
            w.Add("x", new LabelMap(1, 1, 2, [1f, 2f], [39_999, 2_049]));
            w.Complete();
        }
        using var s = LabelStore.Open(StorePath);
        Assert.Equal([39_999, 2_049], s.Get("x").Indices);
    }

    [Fact]
    public void InterruptedWriteResumesAndKeepsCompleteRecords()
    {
        using (var w = LabelStoreWriter.OpenOrCreate(StorePath, Head))
        {
            w.Add("a", Map(0));
            w.Add("b", Map(1));
            w.Flush();
        } // no Complete: like a killed run
        Assert.False(File.Exists(StorePath));
        var e = Assert.Throws<LabelStoreException>(() => LabelStore.Open(StorePath));
        Assert.Contains("unfinished", e.Message);

        // A crash in the middle of the third record leaves a torn tail.
        var partial = StorePath + ".partial";
        long good = new FileInfo(partial).Length;
        using (var f = new FileStream(partial, FileMode.Append)) f.Write(new byte[] { 0x54, 0x4C, 0x52, 0x43, 1, 0, (byte)'c', 9, 9 });

        using (var w = LabelStoreWriter.OpenOrCreate(StorePath, Head))
        {
            Assert.Equal(2, w.Resumed);
            Assert.True(w.Contains("a"));
            Assert.True(w.Contains("b"));
            Assert.Equal(good, new FileInfo(partial).Length);
            w.Add("c", Map(2));
            w.Complete();
        }
        using (var s = LabelStore.Open(StorePath))
        {
            Assert.Equal(["a", "b", "c"], s.Keys);
            AssertSame(Map(0), s.Get("a"));
            AssertSame(Map(2), s.Get("c"));
        }

        // A finished store can be extended: it is reopened, its old index dropped and rebuilt.
        using (var w = LabelStoreWriter.OpenOrCreate(StorePath, Head))
        {
            Assert.Equal(3, w.Resumed);
            w.Add("d", Map(3));
            w.Complete();
        }
        using (var s = LabelStore.Open(StorePath))
        {
            Assert.Equal(["a", "b", "c", "d"], s.Keys);
            s.VerifyAll();
        }
    }

    [Fact]
    public void ResumeWithOtherSettingsIsRefused()
    {
        Write("a");
        var e = Assert.Throws<LabelStoreException>(() => LabelStoreWriter.OpenOrCreate(StorePath, Head with { K = 1 }));
        Assert.Contains("cannot resume", e.Message);
        Assert.True(File.Exists(StorePath)); // untouched
    }

    [Fact]
    public void DamagedRecordIsReportedWithFileAndKey()
    {
        Write("a", "b", "c");
        long offsetOfB = LabelStore.HeaderSize + LabelStore.RecordSize(Head, 1);
        Corrupt(offsetOfB + 12);
        using var st = LabelStore.Open(StorePath);
        AssertSame(Map(0), st.Get("a"));
        var e = Assert.Throws<LabelStoreException>(() => st.Get("b"));
        Assert.Equal(StorePath, e.FilePath);
        Assert.Equal("b", e.Record);
        Assert.Contains("checksum mismatch", e.Message);
        Assert.Throws<LabelStoreException>(st.VerifyAll);
    }

    [Fact]
    public void DamagedHeaderIndexOrFooterIsReported()
    {
        Write("a", "b");
        byte[] good = File.ReadAllBytes(StorePath);

        Corrupt(0);
        Assert.Contains("bad magic", Assert.Throws<LabelStoreException>(() => LabelStore.Open(StorePath)).Message);
        File.WriteAllBytes(StorePath, good);
        Corrupt(20);
        Assert.Contains("header checksum", Assert.Throws<LabelStoreException>(() => LabelStore.Open(StorePath)).Message);
        File.WriteAllBytes(StorePath, good);
        Corrupt(good.Length - LabelStore.FooterSize - 6); // inside the index
        Assert.Contains("index checksum", Assert.Throws<LabelStoreException>(() => LabelStore.Open(StorePath)).Message);

        File.WriteAllBytes(StorePath, good[..^10]);
        Assert.Contains("truncated", Assert.Throws<LabelStoreException>(() => LabelStore.Open(StorePath)).Message);
        File.WriteAllBytes(StorePath, good[..100]);
        Assert.Contains("truncated", Assert.Throws<LabelStoreException>(() => LabelStore.Open(StorePath)).Message);
        File.WriteAllBytes(StorePath, "not a label store at all, just text. ".PadRight(600, '.').Select(c => (byte)c).ToArray());
        Assert.Contains("not an AllTokens label store", Assert.Throws<LabelStoreException>(() => LabelStore.Open(StorePath)).Message);
    }

    [Fact]
    public void AStoreBeingWrittenIsNotOpenedTwice()
    {
        using var first = LabelStoreWriter.OpenOrCreate(StorePath, Head);
        first.Add("a", Map(0));
        var e = Assert.Throws<LabelStoreException>(() => LabelStoreWriter.OpenOrCreate(StorePath, Head));
        Assert.Equal(StorePath + ".partial", e.FilePath);
        Assert.Contains("another `label` run", e.Message);
        first.Complete();
        using var s = LabelStore.Open(StorePath);
        Assert.Equal(1, s.Count);
    }

    [Fact]
    public void DamageBeforeTheTailRefusesToResume()
    {
        using (var w = LabelStoreWriter.OpenOrCreate(StorePath, Head))
        {
            w.Add("a", Map(0));
            w.Add("b", Map(1));
        }
        var partial = StorePath + ".partial";
        var bytes = File.ReadAllBytes(partial);
        bytes[LabelStore.HeaderSize + 10] ^= 0xFF; // inside record "a", with "b" after it
        File.WriteAllBytes(partial, bytes);
        var e = Assert.Throws<LabelStoreException>(() => LabelStoreWriter.OpenOrCreate(StorePath, Head));
        Assert.Contains("cannot resume safely", e.Message);
        Assert.Equal("a", e.Record);
    }

    [Fact]
    public void StoreIsCheckedAgainstTheDataset()
    {
        Write("Coat/a.png", "Bag/b.png");
        using var s = LabelStore.Open(StorePath);
        s.CheckMatches(["Coat/a.png", "Bag/b.png"], 10, "test set");
        var e = Assert.Throws<LabelStoreException>(() => s.CheckMatches(["Coat/a.png"], 7, "test set"));
        Assert.Contains("10 classes, but test set has 7", e.Message);
        e = Assert.Throws<LabelStoreException>(() => s.CheckMatches(["train/000000", "train/000001"], 10, "fashion-mnist train"));
        Assert.Contains("another dataset", e.Message);
        e = Assert.Throws<LabelStoreException>(() => s.CheckMatches(["Coat/a.png", "Coat/new.png"], 10, "test set"));
        Assert.Contains("1 of 2 images", e.Message);
        Assert.Contains("Coat/new.png", e.Message);
    }

    [Fact]
    public void OfficialStemKeysFindImageFolderKeys()
    {
        Assert.Equal("n01440764/n01440764_10026", LabelStore.StemKey("n01440764/n01440764_10026.JPEG"));
        Assert.Equal("a.b/c", LabelStore.StemKey("a.b/c.d.e"));
        var h = Head with { KeyStyle = LabelKeyStyle.OfficialStem };
        using (var w = LabelStoreWriter.OpenOrCreate(StorePath, h))
        {
            w.Add("cls/img_1", Map(0));
            w.Complete();
        }
        using var s = LabelStore.Open(StorePath);
        Assert.True(s.Contains("cls/img_1.JPEG"));
        AssertSame(Map(0), s.Get("cls/img_1.x.png"));
    }

    private void Corrupt(long offset)
    {
        using var f = new FileStream(StorePath, FileMode.Open, FileAccess.ReadWrite);
        f.Position = offset;
        int b = f.ReadByte();
        f.Position = offset;
        f.WriteByte((byte)(b ^ 0x5A));
    }
}
