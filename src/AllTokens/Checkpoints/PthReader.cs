using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using System.Numerics;

namespace AllTokens.Checkpoints;

/// <summary>
/// Reads PyTorch <c>torch.save</c> files — the zip format (torch ≥ 1.6) and the legacy pickle-sequence format —
/// without executing anything: the pickle is interpreted by our own <see cref="Unpickler"/>, which knows a small
/// allowlist of harmless constructs and records everything else as inert placeholders.
/// </summary>
public static class PthReader
{
    private static readonly BigInteger LegacyMagic = BigInteger.Parse("01950a86a20f9469cfc6c", NumberStyles.HexNumber, CultureInfo.InvariantCulture);
    private const long LegacyProtocolVersion = 1001;

    /// <summary>
    /// The unpickled object graph: <see cref="PickleDict"/> for dicts, <c>List&lt;object?&gt;</c> for lists,
    /// <c>object?[]</c> for tuples, <see cref="RawTensor"/> for tensors, string/long/double/bool/null/byte[] for
    /// scalars, and <see cref="PickleGlobal"/>/<see cref="PickleObject"/> placeholders for everything else.
    /// </summary>
    public static object? ReadObject(string path)
    {
        using var fs = OpenRead(path);
        var kind = CheckpointSniffer.Sniff(fs, out var head);
        fs.Position = 0;
        return kind switch
        {
            CheckpointKind.Zip => ReadZip(path, fs),
            CheckpointKind.LegacyPickle => ReadLegacy(path, fs),
            CheckpointKind.Tar => throw new CheckpointFormatException(path,
                "this is a pre-1.0 PyTorch tar checkpoint, which is not supported; re-save it with a modern torch: " +
                "torch.save(torch.load(f), g)"),
            CheckpointKind.Safetensors => throw new CheckpointFormatException(path,
                "this is a safetensors file, not a PyTorch pickle checkpoint; read it with Safetensors.Read or StateDicts.ReadAny"),
            _ => throw new CheckpointFormatException(path, $"not a PyTorch checkpoint: {CheckpointSniffer.DescribeHead(head)}"),
        };
    }

    /// <summary>Reads the file and extracts its state dict (see <see cref="StateDicts.ExtractStateDict"/>).</summary>
    public static IReadOnlyList<KeyValuePair<string, RawTensor>> ReadStateDict(string path, bool preferEma = false) =>
        StateDicts.ExtractStateDict(ReadObject(path), path, preferEma);

    internal static FileStream OpenRead(string path) =>
        new(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1 << 16);

    // ---- zip (torch >= 1.6): <prefix>/data.pkl, <prefix>/data/<key>, <prefix>/version, <prefix>/byteorder ----

    private static object? ReadZip(string path, FileStream fs)
    {
        ZipArchive zip;
        try
        {
            zip = new ZipArchive(fs, ZipArchiveMode.Read, leaveOpen: true);
        }
        catch (InvalidDataException e)
        {
            throw new CheckpointFormatException(path, $"the zip archive is truncated or corrupt ({e.Message})", e);
        }
        using (zip)
        {
            var entries = new Dictionary<string, ZipArchiveEntry>(StringComparer.Ordinal);
            try
            {
                foreach (var e in zip.Entries) entries.TryAdd(e.FullName, e);
            }
            catch (InvalidDataException e)
            {
                throw new CheckpointFormatException(path, $"the zip archive is truncated or corrupt ({e.Message})", e);
            }
            var pkls = entries.Keys.Where(n => n == "data.pkl" || (n.EndsWith("/data.pkl", StringComparison.Ordinal) && n.IndexOf('/') == n.Length - 9)).ToList();
            if (pkls.Count == 0)
                throw new CheckpointFormatException(path, "the zip archive has no <name>/data.pkl entry, so it is not a PyTorch checkpoint");
            if (pkls.Count > 1)
                throw new CheckpointFormatException(path, $"the zip archive holds several checkpoints ({string.Join(", ", pkls)})");
            var prefix = pkls[0][..^"data.pkl".Length];
            var fileLength = fs.Length;

            if (entries.TryGetValue(prefix + "byteorder", out var byteorderEntry))
            {
                var order = System.Text.Encoding.ASCII.GetString(ReadEntry(path, byteorderEntry, fileLength)).Trim();
                if (order != "little")
                    throw new CheckpointFormatException(path, $"the checkpoint's byte order is '{order}'; only little-endian checkpoints are supported");
            }

            var host = new TorchPickleHost((key, byteLength, elementSize) =>
            {
                var name = $"{prefix}data/{key}";
                if (!entries.TryGetValue(name, out var entry))
                    throw new PickleDataException($"storage entry '{name}' is missing from the zip archive");
                if (entry.Length != byteLength)
                    throw new PickleDataException($"storage entry '{name}' holds {entry.Length} bytes but the pickle expects {byteLength}");
                var data = new StorageData(key, byteLength, elementSize);
                data.SetBytes(ReadEntry(path, entry, fileLength));
                return data;
            });
            var pkl = ReadEntry(path, entries[pkls[0]], fileLength);
            using var ms = new MemoryStream(pkl, writable: false);
            return new Unpickler(ms, 0, pkl.Length, path, pkls[0], host).Load();
        }
    }

    private static byte[] ReadEntry(string path, ZipArchiveEntry entry, long fileLength)
    {
        if (entry.Length > Array.MaxLength)
            throw new CheckpointFormatException(path, $"zip entry '{entry.FullName}' is {entry.Length} bytes, too large to read");
        if (entry.CompressedLength > fileLength)
            throw new CheckpointFormatException(path, $"zip entry '{entry.FullName}' claims {entry.CompressedLength} bytes but the file has {fileLength} (truncated or corrupt)");
        try
        {
            using var s = entry.Open();
            if (entry.Length <= entry.CompressedLength)
            {
                // Stored (torch never compresses): the bytes are in the file, so allocating them is safe.
                var buf = new byte[entry.Length];
                s.ReadExactly(buf);
                return buf;
            }
            // Compressed: let the array grow only as data actually arrives, up to the declared size.
            using var ms = new MemoryStream();
            var chunk = new byte[1 << 16];
            int n;
            while ((n = s.Read(chunk)) > 0)
            {
                if (ms.Length + n > entry.Length)
                    throw new CheckpointFormatException(path, $"zip entry '{entry.FullName}' inflates past its declared {entry.Length} bytes");
                ms.Write(chunk, 0, n);
            }
            if (ms.Length != entry.Length)
                throw new CheckpointFormatException(path, $"zip entry '{entry.FullName}' has {ms.Length} bytes, declared {entry.Length} (truncated or corrupt)");
            return ms.ToArray();
        }
        catch (InvalidDataException e)
        {
            throw new CheckpointFormatException(path, $"zip entry '{entry.FullName}' is corrupt ({e.Message})", e);
        }
        catch (EndOfStreamException e)
        {
            throw new CheckpointFormatException(path, $"zip entry '{entry.FullName}' is truncated", e);
        }
    }

    // ---- legacy (_use_new_zipfile_serialization=False) ----
    // pickle(magic) pickle(1001) pickle(sys_info) pickle(object) pickle([storage keys]) then per key:
    // u64 element count + raw little-endian data.

    private static object? ReadLegacy(string path, FileStream fs)
    {
        var length = fs.Length;
        var plain = new PickleHost();
        long pos = 0;
        object? Next(string what, PickleHost host)
        {
            var u = new Unpickler(fs, pos, length, path, what, host);
            var v = u.Load();
            pos = u.Position;
            return v;
        }

        var magic = Next("legacy header (magic number)", plain);
        if (!(magic is BigInteger big && big == LegacyMagic))
            throw new CheckpointFormatException(path,
                "not a PyTorch checkpoint: it is a pickle but does not start with torch.save's magic number (a plain pickle file?)");
        var version = Next("legacy header (protocol version)", plain);
        if (version is not long v || v != LegacyProtocolVersion)
            throw new CheckpointFormatException(path, $"legacy checkpoint protocol version {PickleText.Describe(version)} is not supported (expected {LegacyProtocolVersion})");
        var sysInfo = Next("legacy header (sys_info)", plain);
        if (sysInfo is PickleDict info && info.TryGetValue("little_endian", out var le) && le is false)
            throw new CheckpointFormatException(path, "the checkpoint was saved on a big-endian machine, which is not supported");

        var host = new TorchPickleHost((key, byteLength, elementSize) =>
        {
            if (byteLength > length)
                throw new PickleDataException($"storage '{key}' claims {byteLength} bytes but the whole file has {length} (corrupt file)");
            if (byteLength > Array.MaxLength)
                throw new PickleDataException($"storage '{key}' of {byteLength} bytes is too large to read");
            return new StorageData(key, byteLength, elementSize);
        });
        var root = Next("object pickle", host);
        var keys = Next("storage key list", plain);
        if (keys is not List<object?> keyList)
            throw new CheckpointFormatException(path, $"legacy checkpoint: the storage key list is {PickleText.Describe(keys)}, not a list");

        fs.Position = pos;
        Span<byte> countBytes = stackalloc byte[8];
        foreach (var k in keyList)
        {
            if (k is not string key)
                throw new CheckpointFormatException(path, $"legacy checkpoint: storage key {PickleText.Describe(k)} is not a string");
            if (!host.Storages.TryGetValue(key, out var data))
                throw new CheckpointFormatException(path, $"legacy checkpoint: storage '{key}' has data but no tensor refers to it");
            if (data.Bytes is not null)
                throw new CheckpointFormatException(path, $"legacy checkpoint: storage '{key}' appears twice in the key list");
            if (length - pos < 8)
                throw new CheckpointFormatException(path, $"legacy checkpoint is truncated: storage '{key}' at byte {pos} has no size field");
            fs.ReadExactly(countBytes);
            var count = BinaryPrimitives.ReadInt64LittleEndian(countBytes);
            pos += 8;
            if (count < 0 || count > length || count * data.ElementSize != data.ByteLength)
                throw new CheckpointFormatException(path, $"legacy checkpoint: storage '{key}' at byte {pos - 8} records {count} elements, the pickle expects {data.ByteLength / data.ElementSize}");
            if (length - pos < data.ByteLength)
                throw new CheckpointFormatException(path, $"legacy checkpoint is truncated: storage '{key}' needs {data.ByteLength} bytes at byte {pos}, only {length - pos} remain");
            var bytes = new byte[data.ByteLength];
            fs.ReadExactly(bytes);
            pos += bytes.Length;
            data.SetBytes(bytes);
        }
        var missing = host.Storages.Values.Where(d => d.Bytes is null).Select(d => d.Key).ToList();
        if (missing.Count > 0)
            throw new CheckpointFormatException(path, $"legacy checkpoint: no data for storage(s) {string.Join(", ", missing.Take(10).Select(m => $"'{m}'"))} (truncated or corrupt file)");
        return root;
    }
}

internal enum CheckpointKind { Unknown, Empty, Safetensors, Zip, LegacyPickle, Tar }

/// <summary>Recognises checkpoint formats by their first bytes.</summary>
internal static class CheckpointSniffer
{
    public static CheckpointKind Sniff(Stream s, out byte[] head)
    {
        s.Position = 0;
        var buf = new byte[512];
        var n = s.ReadAtLeast(buf, buf.Length, throwOnEndOfStream: false);
        head = buf[..n];
        if (n == 0) return CheckpointKind.Empty;
        if (n >= 4 && head[0] == (byte)'P' && head[1] == (byte)'K' && ((head[2] == 3 && head[3] == 4) || (head[2] == 5 && head[3] == 6)))
            return CheckpointKind.Zip;
        if (n >= 9)
        {
            var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(head);
            if (head[8] == (byte)'{' && headerLength >= 2 && headerLength <= (ulong)(s.Length - 8))
                return CheckpointKind.Safetensors;
        }
        if (n >= 2 && head[0] == 0x80 && head[1] is >= 2 and <= 5) return CheckpointKind.LegacyPickle;
        if (n >= 262 && head.AsSpan(257, 5).SequenceEqual("ustar"u8)) return CheckpointKind.Tar;
        return CheckpointKind.Unknown;
    }

    public static string DescribeHead(byte[] head) => head.Length == 0
        ? "the file is empty"
        : $"unrecognized content (first bytes: {Convert.ToHexString(head.AsSpan(0, Math.Min(16, head.Length))).ToLowerInvariant()})";
}
