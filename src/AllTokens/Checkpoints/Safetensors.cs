using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace AllTokens.Checkpoints;

/// <summary>The contents of a safetensors file.</summary>
public sealed class SafetensorsFile
{
    /// <summary>Tensors in the order of their data in the file (which is the order <see cref="Safetensors.Write"/> was given).</summary>
    public required IReadOnlyList<KeyValuePair<string, RawTensor>> Tensors { get; init; }

    /// <summary>The <c>__metadata__</c> string map (empty when absent).</summary>
    public required IReadOnlyDictionary<string, string> Metadata { get; init; }
}

/// <summary>
/// The safetensors format: u64 little-endian header length N, N bytes of UTF-8 JSON (padded with spaces to a
/// multiple of 8) describing each tensor's dtype, shape and [begin, end) byte range relative to the data
/// section, then the data section, which the tensors must cover exactly without overlaps or holes.
/// </summary>
public static class Safetensors
{
    /// <summary>Headers above this size are rejected as implausible (as the reference implementation does).</summary>
    public const long MaxHeaderBytes = 100L << 20;

    private const string MetadataKey = "__metadata__";

    private static readonly Dictionary<TensorDType, string> DTypeNames = new()
    {
        [TensorDType.Float32] = "F32",
        [TensorDType.Float16] = "F16",
        [TensorDType.BFloat16] = "BF16",
        [TensorDType.Float64] = "F64",
        [TensorDType.Int64] = "I64",
        [TensorDType.Int32] = "I32",
        [TensorDType.Int16] = "I16",
        [TensorDType.Int8] = "I8",
        [TensorDType.UInt8] = "U8",
        [TensorDType.Bool] = "BOOL",
    };

    private static readonly Dictionary<string, TensorDType> DTypesByName = DTypeNames.ToDictionary(p => p.Value, p => p.Key, StringComparer.Ordinal);

    public static string DTypeName(TensorDType t) => DTypeNames[t];

    /// <summary>
    /// Writes <paramref name="tensors"/> (data in the given order) atomically: a temporary file in the same
    /// directory is written, flushed to disk, then moved over <paramref name="path"/>.
    /// </summary>
    /// <exception cref="ArgumentException">Duplicate or reserved names, or a tensor whose byte count does not match its shape.</exception>
    public static void Write(string path, IReadOnlyList<KeyValuePair<string, RawTensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = BuildHeader(path, tensors, metadata);
        AtomicFile.Write(path, fs =>
        {
            Span<byte> len = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
            fs.Write(len);
            fs.Write(header);
            foreach (var (_, t) in tensors) fs.Write(t.Data);
        }, bufferSize: 1 << 20);
    }

    private static byte[] BuildHeader(string path, IReadOnlyList<KeyValuePair<string, RawTensor>> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject(MetadataKey);
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            var names = new HashSet<string>(StringComparer.Ordinal);
            long offset = 0;
            foreach (var (name, t) in tensors)
            {
                if (name == MetadataKey) throw new ArgumentException($"{path}: '{MetadataKey}' cannot be a tensor name", nameof(tensors));
                if (!names.Add(name)) throw new ArgumentException($"{path}: tensor name '{name}' occurs twice", nameof(tensors));
                if (t.Shape.Any(d => d < 0)) throw new ArgumentException($"{path}: tensor '{name}' has a negative dimension", nameof(tensors));
                var expected = checked(t.NumElements * RawTensor.ElementSize(t.DType));
                if (t.Data.LongLength != expected)
                    throw new ArgumentException($"{path}: tensor '{name}' of shape [{string.Join(",", t.Shape)}] {t.DType} needs {expected} bytes, has {t.Data.LongLength}", nameof(tensors));
                w.WriteStartObject(name);
                w.WriteString("dtype", DTypeNames[t.DType]);
                w.WriteStartArray("shape");
                foreach (var d in t.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + expected);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += expected;
            }
            w.WriteEndObject();
        }
        var padded = (ms.Length + 7) / 8 * 8;
        while (ms.Length < padded) ms.WriteByte((byte)' ');
        return ms.ToArray();
    }

    /// <summary>Reads and validates the whole file.</summary>
    /// <exception cref="CheckpointFormatException">Truncated file, malformed header, bad dtype/shape/offsets.</exception>
    public static SafetensorsFile Read(string path)
    {
        using var fs = PthReader.OpenRead(path);
        var (entries, metadata, dataStart) = ReadHeader(path, fs);
        var tensors = new List<KeyValuePair<string, RawTensor>>(entries.Count);
        fs.Position = dataStart;
        foreach (var e in entries)
        {
            var bytes = new byte[e.End - e.Begin];
            try
            {
                fs.ReadExactly(bytes);
            }
            catch (EndOfStreamException ex)
            {
                throw new CheckpointFormatException(path, $"the file ends inside the data of tensor '{e.Name}' (truncated)", ex);
            }
            tensors.Add(new(e.Name, new RawTensor(e.DType, e.Shape, bytes)));
        }
        return new SafetensorsFile { Tensors = tensors, Metadata = metadata };
    }

    /// <summary>Reads only the header's <c>__metadata__</c> (the header is still fully validated).</summary>
    public static IReadOnlyDictionary<string, string> ReadMetadata(string path)
    {
        using var fs = PthReader.OpenRead(path);
        return ReadHeader(path, fs).Metadata;
    }

    private sealed record Entry(string Name, TensorDType DType, long[] Shape, long Begin, long End, int Order);

    private static (List<Entry> Entries, Dictionary<string, string> Metadata, long DataStart) ReadHeader(string path, FileStream fs)
    {
        var fileLength = fs.Length;
        if (fileLength < 8)
            throw new CheckpointFormatException(path, $"the file has {fileLength} bytes, too few for a safetensors header length (truncated?)");
        Span<byte> lenBytes = stackalloc byte[8];
        fs.ReadExactly(lenBytes);
        var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (headerLength > (ulong)(fileLength - 8))
            throw new CheckpointFormatException(path, $"the header claims {headerLength} bytes but only {fileLength - 8} follow (truncated or not a safetensors file)");
        if (headerLength > MaxHeaderBytes)
            throw new CheckpointFormatException(path, $"the header claims {headerLength} bytes, more than the {MaxHeaderBytes} allowed");
        if (headerLength < 2)
            throw new CheckpointFormatException(path, $"the header is only {headerLength} bytes long");
        var header = new byte[headerLength];
        fs.ReadExactly(header);
        var dataStart = 8 + (long)headerLength;
        var dataLength = fileLength - dataStart;

        if (!System.Text.Unicode.Utf8.IsValid(header))
            throw new CheckpointFormatException(path, "the header is not valid UTF-8");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw new CheckpointFormatException(path, $"the header is not valid JSON ({e.Message})", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new CheckpointFormatException(path, $"the header is a JSON {doc.RootElement.ValueKind}, not an object");
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var entries = new List<Entry>();
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (!names.Add(prop.Name)) throw new CheckpointFormatException(path, $"the header names '{prop.Name}' twice");
                if (prop.Name == MetadataKey)
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object)
                        throw new CheckpointFormatException(path, $"'{MetadataKey}' is a JSON {prop.Value.ValueKind}, not an object");
                    foreach (var m in prop.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String)
                            throw new CheckpointFormatException(path, $"metadata '{m.Name}' is a JSON {m.Value.ValueKind}, not a string");
                        metadata[m.Name] = m.Value.GetString()!;
                    }
                    continue;
                }
                entries.Add(ParseEntry(path, prop, entries.Count));
            }

            // Data ranges must tile [0, dataLength) exactly: no overlaps, no holes, no trailing bytes.
            var ordered = entries.OrderBy(e => e.Begin).ThenBy(e => e.End).ThenBy(e => e.Order).ToList();
            long expectedBegin = 0;
            Entry? previous = null;
            foreach (var e in ordered)
            {
                if (e.End > dataLength)
                    throw new CheckpointFormatException(path, $"tensor '{e.Name}' data [{e.Begin}, {e.End}) extends past the {dataLength} data bytes in the file (truncated?)");
                if (e.Begin < expectedBegin)
                    throw new CheckpointFormatException(path, $"tensor '{e.Name}' data [{e.Begin}, {e.End}) overlaps tensor '{previous!.Name}' [{previous.Begin}, {previous.End})");
                if (e.Begin > expectedBegin)
                    throw new CheckpointFormatException(path, $"tensor '{e.Name}' data starts at {e.Begin}, leaving a hole after byte {expectedBegin}");
                expectedBegin = e.End;
                previous = e;
            }
            if (expectedBegin != dataLength)
                throw new CheckpointFormatException(path, $"the tensors cover {expectedBegin} data bytes but the file has {dataLength}");
            return (ordered, metadata, dataStart);
        }
    }

    private static Entry ParseEntry(string path, JsonProperty prop, int order)
    {
        var name = prop.Name;
        var v = prop.Value;
        if (v.ValueKind != JsonValueKind.Object)
            throw new CheckpointFormatException(path, $"tensor '{name}' is described by a JSON {v.ValueKind}, not an object");
        if (!v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw new CheckpointFormatException(path, $"tensor '{name}' has no dtype string");
        var dtypeName = dt.GetString()!;
        if (!DTypesByName.TryGetValue(dtypeName, out var dtype))
            throw new CheckpointFormatException(path, $"tensor '{name}' has unsupported dtype '{dtypeName}' (supported: {string.Join(", ", DTypeNames.Values)})");
        var shape = Integers(path, name, v, "shape", null);
        var offsets = Integers(path, name, v, "data_offsets", 2);
        var (begin, end) = (offsets[0], offsets[1]);
        if (end < begin)
            throw new CheckpointFormatException(path, $"tensor '{name}' has data_offsets [{begin}, {end}] that run backwards");
        long size;
        try
        {
            size = checked(shape.Aggregate(1L, (a, b) => a * b) * RawTensor.ElementSize(dtype));
        }
        catch (OverflowException)
        {
            throw new CheckpointFormatException(path, $"tensor '{name}' has shape [{string.Join(",", shape)}] whose size overflows");
        }
        if (end - begin != size)
            throw new CheckpointFormatException(path, $"tensor '{name}' of shape [{string.Join(",", shape)}] {dtypeName} needs {size} bytes but data_offsets [{begin}, {end}] span {end - begin}");
        if (size > Array.MaxLength)
            throw new CheckpointFormatException(path, $"tensor '{name}' of {size} bytes is too large to load into one array");
        return new Entry(name, dtype, shape, begin, end, order);
    }

    private static long[] Integers(string path, string name, JsonElement v, string field, int? count)
    {
        if (!v.TryGetProperty(field, out var arr) || arr.ValueKind != JsonValueKind.Array)
            throw new CheckpointFormatException(path, $"tensor '{name}' has no '{field}' array");
        var result = new List<long>();
        foreach (var x in arr.EnumerateArray())
        {
            if (x.ValueKind != JsonValueKind.Number || !x.TryGetInt64(out var n) || n < 0)
                throw new CheckpointFormatException(path, $"tensor '{name}' has a '{field}' entry {x.GetRawText()} that is not a non-negative integer");
            result.Add(n);
        }
        if (count is { } c && result.Count != c)
            throw new CheckpointFormatException(path, $"tensor '{name}' has {result.Count} '{field}' entries, expected {c}");
        if (result.Count > 64)
            throw new CheckpointFormatException(path, $"tensor '{name}' has {result.Count} dimensions");
        return [.. result];
    }
}
