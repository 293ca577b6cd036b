using System.Buffers.Binary;
using System.Text;
using AllTokens.Checkpoints;

namespace AllTokens.Tests.Checkpoints;

public sealed class SafetensorsTests : IDisposable
{
    private readonly TestFiles _files = new();

    public void Dispose() => _files.Dispose();

    private static RawTensor Make(TensorDType dtype, long[] shape, int seed)
    {
        var n = shape.Aggregate(1L, (a, b) => a * b) * RawTensor.ElementSize(dtype);
        var data = new byte[n];
        new Random(seed).NextBytes(data);
        if (dtype == TensorDType.Bool) for (var i = 0; i < data.Length; i++) data[i] &= 1;
        return new RawTensor(dtype, shape, data);
    }

    private static List<KeyValuePair<string, RawTensor>> AllDTypes() =>
    [
        new("z.last.first", Make(TensorDType.Float32, [2, 3], 1)),
        new("f16", Make(TensorDType.Float16, [4], 2)),
        new("bf16", Make(TensorDType.BFloat16, [1, 2, 2], 3)),
        new("f64", Make(TensorDType.Float64, [3], 4)),
        new("scalar", Make(TensorDType.Int64, [], 5)),
        new("i32", Make(TensorDType.Int32, [2, 2], 6)),
        new("empty", Make(TensorDType.Float32, [0, 5], 7)),
        new("i16", Make(TensorDType.Int16, [5], 8)),
        new("i8", Make(TensorDType.Int8, [3], 9)),
        new("u8", Make(TensorDType.UInt8, [7], 10)),
        new("bool", Make(TensorDType.Bool, [3], 11)),
        new("a.first.last", Make(TensorDType.Float32, [1], 12)),
    ];

    [Fact]
    public void RoundTripKeepsDTypesShapesBytesOrderAndMetadata()
    {
        var path = _files.Temp("model.safetensors");
        var tensors = AllDTypes();
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode ✓" };
        Safetensors.Write(path, tensors, metadata);

        var header = BinaryPrimitives.ReadUInt64LittleEndian(File.ReadAllBytes(path));
        Assert.Equal(0UL, header % 8);

        var file = Safetensors.Read(path);
        Assert.Equal(tensors.Select(t => t.Key), file.Tensors.Select(t => t.Key));
        for (var i = 0; i < tensors.Count; i++)
        {
            Assert.Equal(tensors[i].Value.DType, file.Tensors[i].Value.DType);
            Assert.Equal(tensors[i].Value.Shape, file.Tensors[i].Value.Shape);
            Assert.Equal(tensors[i].Value.Data, file.Tensors[i].Value.Data);
        }
        Assert.Equal(metadata, file.Metadata);
        Assert.Equal(metadata, Safetensors.ReadMetadata(path));
        Assert.Empty(Directory.GetFiles(_files.Dir, "*.tmp"));
    }

    [Fact]
    public void WriteOverwritesAtomicallyAndMetadataIsOptional()
    {
        var path = _files.Temp("m.safetensors");
        File.WriteAllText(path, "old content");
        Safetensors.Write(path, [new("x", Make(TensorDType.Float32, [2], 1))]);
        var file = Safetensors.Read(path);
        Assert.Empty(file.Metadata);
        Assert.Equal("x", Assert.Single(file.Tensors).Key);
        Assert.Single(Directory.GetFiles(_files.Dir));
    }

    [Fact]
    public void EmptyFileOfTensorsRoundTrips()
    {
        var path = _files.Temp("none.safetensors");
        Safetensors.Write(path, [], new Dictionary<string, string> { ["k"] = "v" });
        var file = Safetensors.Read(path);
        Assert.Empty(file.Tensors);
        Assert.Equal("v", file.Metadata["k"]);
    }

    [Fact]
    public void WriteRejectsBadInput()
    {
        var path = _files.Temp("bad.safetensors");
        var good = Make(TensorDType.Float32, [2], 1);
        Assert.Throws<ArgumentException>(() => Safetensors.Write(path, [new("a", good), new("a", good)]));
        Assert.Throws<ArgumentException>(() => Safetensors.Write(path, [new("a", new RawTensor(TensorDType.Float32, [3], new byte[8]))]));
        Assert.Throws<ArgumentException>(() => Safetensors.Write(path, [new("__metadata__", good)]));
        Assert.False(File.Exists(path));
        Assert.Empty(Directory.GetFiles(_files.Dir));
    }

    /// <summary>Writes a raw safetensors file from a header string and a data section.</summary>
    private string Raw(string name, string header, byte[] data, ulong? declaredLength = null)
    {
        var path = _files.Temp(name);
        var h = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + h.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, declaredLength ?? (ulong)h.Length);
        h.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + h.Length);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static void AssertFails(string path, string fragment)
    {
        var e = Assert.Throws<CheckpointFormatException>(() => Safetensors.Read(path));
        Assert.StartsWith(path + ": ", e.Message);
        Assert.Contains(fragment, e.Message);
        Assert.Equal(path, e.FilePath);
    }

    [Fact]
    public void TruncatedFilesAreClearErrors()
    {
        var path = _files.Temp("full.safetensors");
        Safetensors.Write(path, AllDTypes());
        var bytes = File.ReadAllBytes(path);

        var cutData = _files.Temp("cut_data.safetensors");
        File.WriteAllBytes(cutData, bytes[..^3]);
        AssertFails(cutData, "truncated");

        var cutHeader = _files.Temp("cut_header.safetensors");
        File.WriteAllBytes(cutHeader, bytes[..40]);
        AssertFails(cutHeader, "truncated");

        var cutLength = _files.Temp("cut_length.safetensors");
        File.WriteAllBytes(cutLength, bytes[..5]);
        AssertFails(cutLength, "truncated");
    }

    [Fact]
    public void HeaderLengthBeyondFileIsAnError() =>
        AssertFails(Raw("huge.safetensors", "{}", [], declaredLength: ulong.MaxValue), "header claims");

    [Fact]
    public void BadJsonIsAnError() =>
        AssertFails(Raw("json.safetensors", "{\"a\": {\"dtype\": \"F32\", ", []), "not valid JSON");

    [Fact]
    public void NonObjectHeaderIsAnError() =>
        AssertFails(Raw("array.safetensors", "[1, 2]  ", []), "not an object");

    [Fact]
    public void OverlappingOffsetsAreAnError() =>
        AssertFails(Raw("overlap.safetensors",
            """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""",
            new byte[12]), "overlaps");

    [Fact]
    public void HolesAreAnError() =>
        AssertFails(Raw("hole.safetensors",
            """{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}""",
            new byte[12]), "hole");

    [Fact]
    public void OffsetsOutOfRangeAreAnError() =>
        AssertFails(Raw("range.safetensors", """{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", new byte[8]), "extends past");

    [Fact]
    public void SizeMismatchIsAnError() =>
        AssertFails(Raw("size.safetensors", """{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}""", new byte[8]), "needs 12 bytes");

    [Fact]
    public void UnknownDTypeIsAnError() =>
        AssertFails(Raw("dtype.safetensors", """{"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}""", new byte[1]), "unsupported dtype 'F8_E4M3'");

    [Fact]
    public void NegativeOrFractionalShapeIsAnError() =>
        AssertFails(Raw("shape.safetensors", """{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}""", new byte[1]), "non-negative integer");

    [Fact]
    public void NonStringMetadataIsAnError() =>
        AssertFails(Raw("meta.safetensors", """{"__metadata__":{"epoch":3}}""", []), "not a string");

    [Fact]
    public void DuplicateNamesAreAnError() =>
        AssertFails(Raw("dup.safetensors",
            """{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}""",
            new byte[2]), "twice");

    [Fact]
    public void ReadMetadataValidatesTheHeaderToo() =>
        Assert.Throws<CheckpointFormatException>(() => Safetensors.ReadMetadata(Raw("m.safetensors", "{\"a\":", [])));

    [Fact]
    public void ReadsFilesPaddedWithSpacesAndUnorderedHeaders()
    {
        // Data order differs from header order: tensors come back in data order.
        var path = Raw("order.safetensors",
            """{"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"a":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}      """,
            [5, 6]);
        var file = Safetensors.Read(path);
        Assert.Equal(["a", "b"], file.Tensors.Select(t => t.Key));
        Assert.Empty(file.Tensors[0].Value.Shape);
        Assert.Equal([5], file.Tensors[0].Value.Data);
        Assert.Equal([6], file.Tensors[1].Value.Data);
    }
}
