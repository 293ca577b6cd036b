using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using System.Text;

namespace AllTokens.TokenLabeling;

/// <summary>How store keys relate to the dataset's keys (<c>IImageDataset.GetKey</c>).</summary>
public enum LabelKeyStyle
{
    /// <summary>Keys are the dataset's keys (<c>Coat/img_001.png</c>, <c>train/000123</c>).</summary>
    Full = 0,

    /// <summary>
    /// Keys are official token-label names, <c>&lt;class&gt;/&lt;stem&gt;</c> with the file name cut at its first
    /// '.'; a dataset key is converted the same way before the lookup.
    /// </summary>
    OfficialStem = 1,
}

/// <summary>Which part of each source image a label map covers.</summary>
public enum LabelMapRegion
{
    /// <summary>The whole image (how the official training code reads its label maps, LVVIT.md §6.2).</summary>
    FullImage = 0,

    /// <summary>
    /// The centre square of side min(W, H): what an annotator sees after eval preprocessing with crop_pct 1.0
    /// (resize the shorter side, centre crop), as <c>label</c> and the official <c>generate_label.py</c> make them.
    /// The official training ignores this (LVVIT.md §6.5: misaligned for non-square images); stores we write say it,
    /// so targets follow the image exactly.
    /// </summary>
    CentreSquare = 1,
}

/// <summary>What every record of a store shares.</summary>
/// <param name="NumClasses">C; class indices lie in [0, C).</param>
/// <param name="K">Top-k kept per location.</param>
/// <param name="Height">Label-map rows h.</param>
/// <param name="Width">Label-map columns w.</param>
/// <param name="Annotator">Who made the labels (model name, weights file), for humans.</param>
/// <param name="Resolution">Input resolution the annotator saw.</param>
/// <param name="Region">The part of each source image the maps cover.</param>
/// <param name="ImageChecksums">
/// Each record carries the <see cref="LabelStore.ImageChecksum"/> of the decoded image it was made from, so training can
/// tell labels of other images under the same keys (MNIST for Fashion-MNIST, a re-exported folder) from the right
/// ones. Stores made by <c>label</c> have them; imported official labels and stores of format version 1 do not.
/// </param>
public sealed record LabelStoreHeader(int NumClasses, int K, int Height, int Width, string Annotator, int Resolution,
    LabelKeyStyle KeyStyle = LabelKeyStyle.Full, LabelMapRegion Region = LabelMapRegion.FullImage, bool ImageChecksums = false)
{
    /// <summary>Class indices are int16 when C ≤ 32767, else int32 (exact, unlike the official fp16 indices).</summary>
    public int IndexBytes => NumClasses <= short.MaxValue ? 2 : 4;

    /// <summary>Locations × k.</summary>
    public int Elements => K * Height * Width;

    public void Validate(string path)
    {
        if (NumClasses < 1 || K < 1 || Height < 1 || Width < 1 || Resolution < 0)
            throw new LabelStoreException(path, null, $"invalid header: classes {NumClasses}, k {K}, {Height}×{Width}, resolution {Resolution}");
        if (K > NumClasses) throw new LabelStoreException(path, null, $"invalid header: k {K} exceeds the class count {NumClasses}");
        if ((long)K * Height * Width > 1 << 24) throw new LabelStoreException(path, null, $"invalid header: k·h·w = {(long)K * Height * Width} is too large");
        if (Encoding.UTF8.GetByteCount(Annotator) > LabelStore.MaxAnnotatorBytes)
            throw new LabelStoreException(path, null, $"annotator name longer than {LabelStore.MaxAnnotatorBytes} UTF-8 bytes");
    }

    /// <summary>The store key for a dataset key.</summary>
    public string StoreKey(string datasetKey) => KeyStyle == LabelKeyStyle.Full ? datasetKey : LabelStore.StemKey(datasetKey);
}

/// <summary>A damaged, incomplete or mismatched label store; names the file and, where it applies, the record.</summary>
public sealed class LabelStoreException(string path, string? record, string problem)
    : IOException($"{path}: " + (record is null ? "" : $"record '{record}': ") + problem)
{
    public string FilePath { get; } = path;
    public string? Record { get; } = record;
}

/// <summary>
/// A read-only, memory-mapped token-label store: one file per dataset holding a top-k label map per image.
/// <para>
/// Layout (little-endian): a 512-byte header (magic <c>ATKLABEL</c>, version, classes, k, h, w, resolution,
/// index width, key style, annotator, map region, flags, CRC-32 of the header); records (magic <c>TLRC</c>, key, the
/// source image's checksum when the flags say so, k·h·w fp16 values, k·h·w int16/int32 class indices, CRC-32 of the
/// record); an index (magic <c>TLIX</c>, count, key → offset,
/// CRC-32); a 24-byte footer (index offset, count, CRC-32, magic <c>ATKLEND1</c>). A store without a valid footer
/// is an interrupted write: <see cref="LabelStoreWriter"/> resumes it. Version 1 (before image checksums) had no flags
/// field and is read as a store without them.
/// </para>
/// </summary>
public sealed class LabelStore : IDisposable
{
    internal const int HeaderSize = 512, FooterSize = 24, MaxAnnotatorBytes = 400, Version = 2, RegionOffset = 444, FlagsOffset = 448;
    private const int FlagImageChecksums = 1;
    internal static readonly byte[] HeaderMagic = "ATKLABEL"u8.ToArray();
    internal static readonly byte[] FooterMagic = "ATKLEND1"u8.ToArray();
    internal const uint RecordMagic = 0x43524C54; // "TLRC"
    internal const uint IndexMagic = 0x58494C54;  // "TLIX"

    private readonly MemoryMappedFile mmf;
    private readonly MemoryMappedViewAccessor view;
    private readonly Dictionary<string, long> index;
    private readonly List<string> keys;

    public string Path { get; }
    public LabelStoreHeader Header { get; }
    public int Count => keys.Count;

    /// <summary>Keys in write order.</summary>
    public IReadOnlyList<string> Keys => keys;

    private LabelStore(string path, MemoryMappedFile mmf, MemoryMappedViewAccessor view, LabelStoreHeader header, Dictionary<string, long> index, List<string> keys)
    {
        Path = path;
        this.mmf = mmf;
        this.view = view;
        Header = header;
        this.index = index;
        this.keys = keys;
    }

    /// <summary>Opens a complete store; checks header, footer and index checksums (records are checked when read).</summary>
    public static LabelStore Open(string path)
    {
        if (!File.Exists(path))
        {
            if (File.Exists(path + LabelStoreWriter.PartialSuffix))
                throw new LabelStoreException(path, null, $"no such label store, but an unfinished one is at {path}{LabelStoreWriter.PartialSuffix}: run `label` again to finish it");
            throw new FileNotFoundException($"{path}: no such label store", path);
        }
        var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long length = fs.Length;
        if (length < HeaderSize + FooterSize)
        {
            fs.Dispose();
            throw new LabelStoreException(path, null, $"truncated: {length} bytes, a store has at least {HeaderSize + FooterSize}");
        }
        var mmf = MemoryMappedFile.CreateFromFile(fs, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
        MemoryMappedViewAccessor? view = null;
        try
        {
            view = mmf.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
            var header = ReadHeader(path, Read(view, 0, HeaderSize));
            var footer = Read(view, length - FooterSize, FooterSize);
            if (!footer.AsSpan(16, 8).SequenceEqual(FooterMagic))
                throw new LabelStoreException(path, null, "no end marker: the file is truncated or its write was interrupted (run `label` again to resume it)");
            if (BinaryPrimitives.ReadUInt32LittleEndian(footer.AsSpan(12)) != Crc32.Compute(footer.AsSpan(0, 12)))
                throw new LabelStoreException(path, null, "footer checksum mismatch");
            long indexOffset = BinaryPrimitives.ReadInt64LittleEndian(footer);
            int count = BinaryPrimitives.ReadInt32LittleEndian(footer.AsSpan(8));
            if (indexOffset < HeaderSize || indexOffset > length - FooterSize - 12 || count < 0)
                throw new LabelStoreException(path, null, $"footer points the index at {indexOffset} of {length} bytes");
            var indexBytes = Read(view, indexOffset, (int)(length - FooterSize - indexOffset));
            var (idx, keys) = ReadIndex(path, indexBytes, count, header, indexOffset);
            return new LabelStore(path, mmf, view, header, idx, keys);
        }
        catch
        {
            view?.Dispose();
            mmf.Dispose();
            throw;
        }
    }

    private static byte[] Read(MemoryMappedViewAccessor view, long offset, int count)
    {
        var buf = new byte[count];
        view.ReadArray(offset, buf, 0, count);
        return buf;
    }

    internal static byte[] WriteHeader(LabelStoreHeader h)
    {
        var b = new byte[HeaderSize];
        HeaderMagic.CopyTo(b, 0);
        var s = b.AsSpan();
        BinaryPrimitives.WriteInt32LittleEndian(s[8..], Version);
        BinaryPrimitives.WriteInt32LittleEndian(s[12..], h.NumClasses);
        BinaryPrimitives.WriteInt32LittleEndian(s[16..], h.K);
        BinaryPrimitives.WriteInt32LittleEndian(s[20..], h.Height);
        BinaryPrimitives.WriteInt32LittleEndian(s[24..], h.Width);
        BinaryPrimitives.WriteInt32LittleEndian(s[28..], h.Resolution);
        BinaryPrimitives.WriteInt32LittleEndian(s[32..], h.IndexBytes);
        BinaryPrimitives.WriteInt32LittleEndian(s[36..], (int)h.KeyStyle);
        int n = Encoding.UTF8.GetBytes(h.Annotator, s[42..(42 + MaxAnnotatorBytes)]);
        BinaryPrimitives.WriteUInt16LittleEndian(s[40..], (ushort)n);
        BinaryPrimitives.WriteInt32LittleEndian(s[RegionOffset..], (int)h.Region);
        BinaryPrimitives.WriteInt32LittleEndian(s[FlagsOffset..], h.ImageChecksums ? FlagImageChecksums : 0);
        BinaryPrimitives.WriteUInt32LittleEndian(s[(HeaderSize - 4)..], Crc32.Compute(s[..(HeaderSize - 4)]));
        return b;
    }

    internal static LabelStoreHeader ReadHeader(string path, ReadOnlySpan<byte> s)
    {
        if (s.Length < HeaderSize) throw new LabelStoreException(path, null, $"truncated header: {s.Length} of {HeaderSize} bytes");
        if (!s[..8].SequenceEqual(HeaderMagic))
            throw new LabelStoreException(path, null, $"not an AllTokens label store (bad magic {Convert.ToHexString(s[..8])})");
        if (BinaryPrimitives.ReadUInt32LittleEndian(s[(HeaderSize - 4)..]) != Crc32.Compute(s[..(HeaderSize - 4)]))
            throw new LabelStoreException(path, null, "header checksum mismatch");
        int version = BinaryPrimitives.ReadInt32LittleEndian(s[8..]);
        if (version is < 1 or > Version) throw new LabelStoreException(path, null, $"unsupported store version {version} (this build reads 1 to {Version})");
        int n = BinaryPrimitives.ReadUInt16LittleEndian(s[40..]);
        if (n > MaxAnnotatorBytes) throw new LabelStoreException(path, null, "invalid annotator length");
        var style = (LabelKeyStyle)BinaryPrimitives.ReadInt32LittleEndian(s[36..]);
        if (!Enum.IsDefined(style)) throw new LabelStoreException(path, null, $"unknown key style {(int)style}");
        var region = (LabelMapRegion)BinaryPrimitives.ReadInt32LittleEndian(s[RegionOffset..]);
        if (!Enum.IsDefined(region)) throw new LabelStoreException(path, null, $"unknown map region {(int)region}");
        int flags = version >= 2 ? BinaryPrimitives.ReadInt32LittleEndian(s[FlagsOffset..]) : 0;
        if ((flags & ~FlagImageChecksums) != 0) throw new LabelStoreException(path, null, $"unknown header flags 0x{flags:X}");
        var h = new LabelStoreHeader(BinaryPrimitives.ReadInt32LittleEndian(s[12..]), BinaryPrimitives.ReadInt32LittleEndian(s[16..]),
            BinaryPrimitives.ReadInt32LittleEndian(s[20..]), BinaryPrimitives.ReadInt32LittleEndian(s[24..]),
            Encoding.UTF8.GetString(s.Slice(42, n)), BinaryPrimitives.ReadInt32LittleEndian(s[28..]), style, region,
            (flags & FlagImageChecksums) != 0);
        h.Validate(path);
        if (BinaryPrimitives.ReadInt32LittleEndian(s[32..]) != h.IndexBytes)
            throw new LabelStoreException(path, null, $"index width {BinaryPrimitives.ReadInt32LittleEndian(s[32..])} does not fit {h.NumClasses} classes");
        return h;
    }

    private static (Dictionary<string, long>, List<string>) ReadIndex(string path, byte[] b, int count, LabelStoreHeader header, long indexOffset)
    {
        if (b.Length < 12 || BinaryPrimitives.ReadUInt32LittleEndian(b) != IndexMagic)
            throw new LabelStoreException(path, null, $"no index at offset {indexOffset}");
        if (BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(b.Length - 4)) != Crc32.Compute(b.AsSpan(4, b.Length - 8)))
            throw new LabelStoreException(path, null, "index checksum mismatch");
        if (BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(4)) != count)
            throw new LabelStoreException(path, null, "index and footer disagree on the record count");
        var idx = new Dictionary<string, long>(count, StringComparer.Ordinal);
        var keys = new List<string>(count);
        int p = 8;
        for (int i = 0; i < count; i++)
        {
            if (p + 2 > b.Length - 4) throw new LabelStoreException(path, null, $"index truncated at entry {i} of {count}");
            int n = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(p));
            if (p + 2 + n + 8 > b.Length - 4) throw new LabelStoreException(path, null, $"index truncated at entry {i} of {count}");
            string key = Encoding.UTF8.GetString(b, p + 2, n);
            long off = BinaryPrimitives.ReadInt64LittleEndian(b.AsSpan(p + 2 + n));
            if (off < HeaderSize || off + RecordSize(header, Encoding.UTF8.GetByteCount(key)) > indexOffset)
                throw new LabelStoreException(path, key, $"index points at offset {off}, outside the records");
            if (!idx.TryAdd(key, off)) throw new LabelStoreException(path, key, "key occurs twice in the index");
            keys.Add(key);
            p += 2 + n + 8;
        }
        return (idx, keys);
    }

    /// <summary>Bytes of one record: magic, key length, key, image checksum (when the header says so), values, indices, CRC.</summary>
    internal static long RecordSize(LabelStoreHeader h, int keyBytes) => 4 + 2 + keyBytes + (h.ImageChecksums ? 4 : 0) + (long)h.Elements * (2 + h.IndexBytes) + 4;

    /// <summary>
    /// The checksum a record keeps of its source image: CRC-32 of the width and height (int32, little-endian) followed
    /// by the decoded RGB bytes, so the same pixels give the same value whatever file format held them.
    /// </summary>
    public static uint ImageChecksum(Data.RgbImage image)
    {
        Span<byte> size = stackalloc byte[8];
        BinaryPrimitives.WriteInt32LittleEndian(size, image.Width);
        BinaryPrimitives.WriteInt32LittleEndian(size[4..], image.Height);
        return Crc32.Append(Crc32.Compute(size), image.Pixels);
    }

    /// <summary>The official stem key of a dataset key: directory kept, file name cut at its first '.'.</summary>
    public static string StemKey(string datasetKey)
    {
        int slash = datasetKey.LastIndexOf('/');
        int dot = datasetKey.IndexOf('.', slash + 1);
        return dot < 0 ? datasetKey : datasetKey[..dot];
    }

    /// <summary>True when the store holds the image with dataset key <paramref name="datasetKey"/>.</summary>
    public bool Contains(string datasetKey) => index.ContainsKey(Header.StoreKey(datasetKey));

    /// <summary>The label map of <paramref name="datasetKey"/>; checks the record's checksum.</summary>
    /// <exception cref="KeyNotFoundException">No such key (the message names the store).</exception>
    /// <exception cref="LabelStoreException">The record is damaged.</exception>
    public LabelMap Get(string datasetKey)
    {
        string key = Header.StoreKey(datasetKey);
        if (!index.TryGetValue(key, out long off))
            throw new KeyNotFoundException($"{Path}: no labels for '{datasetKey}'" + (key == datasetKey ? "" : $" (store key '{key}')"));
        return ReadRecord(key, off).Map;
    }

    /// <summary>
    /// The checksum of the image <paramref name="datasetKey"/>'s labels were made from (<see cref="ImageChecksum"/>),
    /// or null when the store keeps none (<see cref="LabelStoreHeader.ImageChecksums"/>).
    /// </summary>
    public uint? SourceChecksum(string datasetKey)
    {
        string key = Header.StoreKey(datasetKey);
        if (!index.TryGetValue(key, out long off))
            throw new KeyNotFoundException($"{Path}: no labels for '{datasetKey}'" + (key == datasetKey ? "" : $" (store key '{key}')"));
        return ReadRecord(key, off).ImageChecksum;
    }

    private (LabelMap Map, uint? ImageChecksum) ReadRecord(string key, long off)
    {
        int keyBytes = Encoding.UTF8.GetByteCount(key);
        long size = RecordSize(Header, keyBytes);
        var buf = Read(view, off, (int)size);
        var s = buf.AsSpan();
        if (BinaryPrimitives.ReadUInt32LittleEndian(s) != RecordMagic)
            throw new LabelStoreException(Path, key, $"no record at offset {off} (bad record magic)");
        if (BinaryPrimitives.ReadUInt16LittleEndian(s[4..]) != keyBytes || !s.Slice(6, keyBytes).SequenceEqual(Encoding.UTF8.GetBytes(key)))
            throw new LabelStoreException(Path, key, $"the record at offset {off} holds another key");
        if (BinaryPrimitives.ReadUInt32LittleEndian(s[(int)(size - 4)..]) != Crc32.Compute(s[4..(int)(size - 4)]))
            throw new LabelStoreException(Path, key, $"checksum mismatch (record at offset {off})");
        int p = 6 + keyBytes;
        uint? image = null;
        if (Header.ImageChecksums)
        {
            image = BinaryPrimitives.ReadUInt32LittleEndian(s[p..]);
            p += 4;
        }
        return (DecodePayload(Header, s[p..(int)(size - 4)], Path, key), image);
    }

    internal static LabelMap DecodePayload(LabelStoreHeader h, ReadOnlySpan<byte> payload, string path, string key)
    {
        int n = h.Elements;
        var values = new float[n];
        var halves = MemoryMarshal.Cast<byte, Half>(payload[..(2 * n)]);
        for (int i = 0; i < n; i++) values[i] = (float)halves[i];
        var indices = new int[n];
        var ib = payload[(2 * n)..];
        for (int i = 0; i < n; i++)
        {
            int c = h.IndexBytes == 2 ? BinaryPrimitives.ReadInt16LittleEndian(ib[(2 * i)..]) : BinaryPrimitives.ReadInt32LittleEndian(ib[(4 * i)..]);
            if ((uint)c >= (uint)h.NumClasses) throw new LabelStoreException(path, key, $"class index {c} outside [0, {h.NumClasses})");
            indices[i] = c;
        }
        return new LabelMap(h.K, h.Height, h.Width, values, indices);
    }

    /// <summary>Reads every record and checks its checksum; throws at the first damaged one.</summary>
    public void VerifyAll()
    {
        foreach (var k in keys) _ = ReadRecord(k, index[k]);
    }

    /// <summary>
    /// Checks that the store fits a dataset: the class count, and a label for every key. Keys of another dataset
    /// (none or few found) and missing keys are reported with examples.
    /// </summary>
    public void CheckMatches(IReadOnlyList<string> datasetKeys, int numClasses, string datasetSource)
    {
        if (numClasses != Header.NumClasses)
            throw new LabelStoreException(Path, null, $"labels for {Header.NumClasses} classes, but {datasetSource} has {numClasses}");
        var missing = datasetKeys.Where(k => !Contains(k)).ToList();
        if (missing.Count == 0) return;
        string examples = string.Join(", ", missing.Take(3).Select(k => $"'{k}'"));
        if (missing.Count == datasetKeys.Count)
            throw new LabelStoreException(Path, null, $"none of the {datasetKeys.Count} images of {datasetSource} is in the store " +
                $"(e.g. {examples}; the store has e.g. '{keys.FirstOrDefault()}'): labels of another dataset or split?");
        throw new LabelStoreException(Path, null, $"{missing.Count} of {datasetKeys.Count} images of {datasetSource} have no labels, e.g. {examples}");
    }

    /// <summary>
    /// Checks that the labels were made from <paramref name="dataset"/>'s images, not from other images under the same
    /// keys: decodes up to <paramref name="samples"/> images spread evenly over the dataset and compares each with the
    /// checksum its record keeps. Nothing to check (returns 0) when the store keeps no checksums; otherwise returns how
    /// many images were compared (an image that no longer decodes is passed over: the loader skips it as well). Every
    /// key must be in the store (<see cref="CheckMatches"/> first).
    /// </summary>
    /// <exception cref="LabelStoreException">A sampled image differs from the one its labels were made from.</exception>
    public int CheckImages(Data.IImageDataset dataset, int samples = 16)
    {
        if (!Header.ImageChecksums || dataset.Count == 0 || samples < 1) return 0;
        int n = Math.Min(samples, dataset.Count);
        var picked = Enumerable.Range(0, n).Select(j => (int)((long)j * dataset.Count / n)).ToArray();
        var differ = new List<string>();
        int compared = 0;
        foreach (int i in picked)
        {
            string key = dataset.GetKey(i);
            Data.RgbImage image;
            try
            {
                image = dataset.Load(i);
            }
            catch (Data.ImageDecodeException)
            {
                continue; // unreadable now: the loader skips it too, so its labels are never used
            }
            compared++;
            if (SourceChecksum(key) != ImageChecksum(image)) differ.Add(key);
        }
        if (differ.Count == 0) return compared;
        string examples = string.Join(", ", differ.Take(3).Select(k => $"'{k}'"));
        if (differ.Count == compared)
            throw new LabelStoreException(Path, null, $"the labels were made from other images: all {compared} images of {dataset.Source} checked " +
                $"(e.g. {examples}) differ from the ones labelled under the same keys; labels of another dataset? Run `label` on this one");
        throw new LabelStoreException(Path, null, $"{differ.Count} of {compared} images of {dataset.Source} checked differ from the ones their labels " +
            $"were made from (e.g. {examples}): the images changed since `label` ran; label them again into a new store");
    }

    public void Dispose()
    {
        view.Dispose();
        mmf.Dispose();
    }
}
