using System.Buffers.Binary;
using System.Text;

namespace AllTokens.TokenLabeling;

/// <summary>
/// Writes a <see cref="LabelStore"/>, resumably. Records go to <c>PATH.partial</c>, which is its own journal:
/// each record carries a checksum, so after a crash the complete records are found by a scan, a torn tail is cut
/// off and writing continues. <see cref="Complete"/> appends the index and footer, syncs, and renames the file to
/// PATH in one atomic step; a reader never sees a half-written store. Opening a finished store again (to add
/// images) moves it back to <c>.partial</c> (an atomic rename) and drops its index.
/// </summary>
public sealed class LabelStoreWriter : IDisposable
{
    public const string PartialSuffix = ".partial";

    private readonly FileStream fs;
    private readonly Dictionary<string, long> offsets = new(StringComparer.Ordinal);
    private readonly List<string> order = [];
    private bool completed;

    public string Path { get; }
    public string PartialPath => Path + PartialSuffix;
    public LabelStoreHeader Header { get; }

    /// <summary>Records already present when the writer opened (kept from an earlier, interrupted or finished run).</summary>
    public int Resumed { get; }

    /// <summary>Records in the store now.</summary>
    public int Count => order.Count;

    private LabelStoreWriter(string path, FileStream fs, LabelStoreHeader header)
    {
        Path = path;
        this.fs = fs;
        Header = header;
        long end = Scan();
        Resumed = order.Count;
        fs.SetLength(end);
        fs.Position = end;
        fs.Flush(flushToDisk: true);
    }

    /// <summary>
    /// Opens PATH for writing: resumes <c>PATH.partial</c> or a finished PATH when either exists (their header must
    /// equal <paramref name="header"/>), else starts a new store. A store that keeps no image checksums (an older
    /// format) is resumed as it is, without them: <see cref="Header"/> says which.
    /// </summary>
    public static LabelStoreWriter OpenOrCreate(string path, LabelStoreHeader header)
    {
        header.Validate(path);
        string partial = path + PartialSuffix;
        if (!File.Exists(partial) && File.Exists(path))
        {
            using (var done = LabelStore.Open(path)) header = SameHeader(path, done.Header, header);
            File.Move(path, partial);
        }
        if (File.Exists(partial))
        {
            FileStream fs;
            try
            {
                fs = new FileStream(partial, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException e) when (e is not FileNotFoundException and not DirectoryNotFoundException && File.Exists(partial))
            {
                throw new LabelStoreException(partial, null, $"cannot open it for writing ({e.Message}); is another `label` run writing this " +
                    "store? Let it finish, or use another --out");
            }
            try
            {
                var head = new byte[LabelStore.HeaderSize];
                if (fs.Length < LabelStore.HeaderSize || fs.ReadAtLeast(head, head.Length, throwOnEndOfStream: false) < head.Length)
                {
                    // Interrupted before the header reached the disk: nothing to keep.
                    fs.SetLength(0);
                    WriteNewHeader(fs, header);
                }
                else header = SameHeader(partial, LabelStore.ReadHeader(partial, head), header);
                return new LabelStoreWriter(path, fs, header);
            }
            catch
            {
                fs.Dispose();
                throw;
            }
        }
        string? dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        var f = new FileStream(partial, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
        try
        {
            WriteNewHeader(f, header);
            return new LabelStoreWriter(path, f, header);
        }
        catch
        {
            f.Dispose();
            throw;
        }
    }

    private static void WriteNewHeader(FileStream fs, LabelStoreHeader header)
    {
        fs.Position = 0;
        fs.Write(LabelStore.WriteHeader(header));
        fs.Flush(flushToDisk: true);
    }

    /// <summary>The header to go on with: the store's own, when it matches what this run asks for but for image checksums.</summary>
    private static LabelStoreHeader SameHeader(string path, LabelStoreHeader found, LabelStoreHeader wanted)
    {
        if (found != wanted with { ImageChecksums = found.ImageChecksums })
            throw new LabelStoreException(path, null, $"cannot resume: the store was written with {Describe(found)}, this run asks for {Describe(wanted)}; " +
                "use another --out or delete the old store");
        return found;
    }

    private static string Describe(LabelStoreHeader h) =>
        $"{h.NumClasses} classes, top-{h.K}, {h.Height}×{h.Width}, annotator '{h.Annotator}' at {h.Resolution}px, {h.KeyStyle} keys";

    /// <summary>Finds the complete records; returns where the next one goes. Damage before the tail is an error.</summary>
    private long Scan()
    {
        long length = fs.Length, pos = LabelStore.HeaderSize;
        var small = new byte[6];
        while (pos < length)
        {
            fs.Position = pos;
            int got = fs.ReadAtLeast(small, 6, throwOnEndOfStream: false);
            if (got < 6) break; // torn tail
            uint magic = BinaryPrimitives.ReadUInt32LittleEndian(small);
            if (magic == LabelStore.IndexMagic) break; // the index of a finished store: rebuilt on Complete
            if (magic != LabelStore.RecordMagic)
            {
                if (TailIsZero(pos)) break; // space the file system allocated but the crash never filled
                throw new LabelStoreException(PartialPath, null, $"damaged at offset {pos} (no record there) with data after it; cannot resume safely");
            }
            int keyBytes = BinaryPrimitives.ReadUInt16LittleEndian(small.AsSpan(4));
            long size = LabelStore.RecordSize(Header, keyBytes);
            if (pos + size > length) break; // torn tail
            var rec = new byte[size];
            fs.Position = pos;
            fs.ReadExactly(rec);
            string key = Encoding.UTF8.GetString(rec, 6, keyBytes);
            if (BinaryPrimitives.ReadUInt32LittleEndian(rec.AsSpan((int)size - 4)) != Crc32.Compute(rec.AsSpan(4, (int)size - 8)))
            {
                if (pos + size == length || TailIsZero(pos + size)) break; // the last record was torn
                throw new LabelStoreException(PartialPath, key, $"checksum mismatch at offset {pos} with records after it; cannot resume safely");
            }
            if (!offsets.TryAdd(key, pos)) throw new LabelStoreException(PartialPath, key, "key occurs twice");
            order.Add(key);
            pos += size;
        }
        return pos;
    }

    private bool TailIsZero(long from)
    {
        fs.Position = from;
        var buf = new byte[1 << 16];
        int n;
        while ((n = fs.Read(buf)) > 0)
            if (buf.AsSpan(0, n).ContainsAnyExcept((byte)0)) return false;
        return true;
    }

    /// <summary>True when a dataset key already has a record (resume skips it).</summary>
    public bool Contains(string datasetKey) => offsets.ContainsKey(Header.StoreKey(datasetKey));

    /// <summary>
    /// Appends the label map of <paramref name="datasetKey"/> (not yet durable: see <see cref="Flush"/>), with the
    /// <see cref="LabelStore.ImageChecksum"/> of the image it was made from when the store keeps them (and only then).
    /// </summary>
    public void Add(string datasetKey, LabelMap map, uint? imageChecksum = null)
    {
        if (completed) throw new InvalidOperationException($"{Path}: the store is complete; open a new writer to add records");
        string key = Header.StoreKey(datasetKey);
        if (Header.ImageChecksums != imageChecksum.HasValue)
            throw new ArgumentException($"{Path}: '{key}': " + (Header.ImageChecksums ? "this store keeps the checksum of each source image; give it" : "this store keeps no image checksums"));
        if (map.K != Header.K || map.Height != Header.Height || map.Width != Header.Width)
            throw new ArgumentException($"{Path}: '{key}' is k={map.K} {map.Height}×{map.Width}, the store k={Header.K} {Header.Height}×{Header.Width}");
        byte[] kb = Encoding.UTF8.GetBytes(key);
        if (kb.Length == 0 || kb.Length > ushort.MaxValue) throw new ArgumentException($"{Path}: key '{key}' is empty or longer than {ushort.MaxValue} bytes");
        if (offsets.ContainsKey(key)) throw new ArgumentException($"{Path}: '{key}' is already in the store");
        int n = Header.Elements;
        var rec = new byte[LabelStore.RecordSize(Header, kb.Length)];
        var s = rec.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(s, LabelStore.RecordMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(s[4..], (ushort)kb.Length);
        kb.CopyTo(s[6..]);
        int p = 6 + kb.Length;
        if (imageChecksum is { } crc)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(s[p..], crc);
            p += 4;
        }
        for (int i = 0; i < n; i++, p += 2) BinaryPrimitives.WriteHalfLittleEndian(s[p..], (Half)map.Values[i]);
        for (int i = 0; i < n; i++)
        {
            int c = map.Indices[i];
            if ((uint)c >= (uint)Header.NumClasses) throw new ArgumentException($"{Path}: '{key}' has class index {c} outside [0, {Header.NumClasses})");
            if (Header.IndexBytes == 2) BinaryPrimitives.WriteInt16LittleEndian(s[p..], (short)c);
            else BinaryPrimitives.WriteInt32LittleEndian(s[p..], c);
            p += Header.IndexBytes;
        }
        BinaryPrimitives.WriteUInt32LittleEndian(s[p..], Crc32.Compute(s[4..p]));
        long pos = fs.Position;
        try
        {
            fs.Write(rec);
        }
        catch (Exception e) when (WriteFailure.Reason(e) is { } reason)
        {
            throw WriteFailed(reason, e);
        }
        offsets[key] = pos;
        order.Add(key);
    }

    /// <summary>Makes every record added so far durable (fsync).</summary>
    public void Flush()
    {
        try
        {
            fs.Flush(flushToDisk: true);
        }
        catch (Exception e) when (WriteFailure.Reason(e) is { } reason)
        {
            throw WriteFailed(reason, e);
        }
    }

    /// <summary>
    /// A failed write (disk full, file-size limit) named by file, saying what is kept. .NET reports EFBIG without a file
    /// name (found by the disk-full fault test: "Specified file length was too large for the file system").
    /// </summary>
    private IOException WriteFailed(string reason, Exception e) =>
        new($"{PartialPath}: could not write the label store ({reason}); the complete records written so far stay in it " +
            "and running `label` again with the same arguments resumes from them", e);

    /// <summary>Writes index and footer, syncs, and renames the file to <see cref="Path"/>.</summary>
    public void Complete()
    {
        if (completed) return;
        long indexOffset = fs.Position;
        using var ms = new MemoryStream();
        var w = new BinaryWriter(ms);
        w.Write(LabelStore.IndexMagic);
        w.Write(order.Count);
        foreach (var k in order)
        {
            var kb = Encoding.UTF8.GetBytes(k);
            w.Write((ushort)kb.Length);
            w.Write(kb);
            w.Write(offsets[k]);
        }
        w.Flush();
        var idx = ms.ToArray();
        var withCrc = new byte[idx.Length + 4];
        idx.CopyTo(withCrc, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(withCrc.AsSpan(idx.Length), Crc32.Compute(idx.AsSpan(4)));
        try
        {
            fs.Write(withCrc);
        }
        catch (Exception e) when (WriteFailure.Reason(e) is { } reason)
        {
            throw WriteFailed(reason, e);
        }
        var footer = new byte[LabelStore.FooterSize];
        BinaryPrimitives.WriteInt64LittleEndian(footer, indexOffset);
        BinaryPrimitives.WriteInt32LittleEndian(footer.AsSpan(8), order.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(footer.AsSpan(12), Crc32.Compute(footer.AsSpan(0, 12)));
        LabelStore.FooterMagic.CopyTo(footer, 16);
        try
        {
            fs.Write(footer);
            fs.Flush(flushToDisk: true);
        }
        catch (Exception e) when (WriteFailure.Reason(e) is { } reason)
        {
            throw WriteFailed(reason, e);
        }
        fs.Dispose();
        File.Move(PartialPath, Path, overwrite: true);
        completed = true;
    }

    /// <summary>Syncs what was written; an unfinished store stays at <see cref="PartialPath"/> for a later resume.</summary>
    public void Dispose()
    {
        if (completed) return;
        try
        {
            fs.Flush(flushToDisk: true);
        }
        catch (Exception e) when (WriteFailure.Reason(e) is not null)
        {
            // A full disk: the error that got us here was already thrown by Add/Flush/Complete; a torn last record is
            // cut off by the next resume. Throwing again from Dispose would replace that error.
        }
        finally
        {
            try
            {
                fs.Dispose(); // flushes what is still buffered: may fail the same way
            }
            catch (Exception e) when (WriteFailure.Reason(e) is not null)
            {
            }
        }
    }
}
