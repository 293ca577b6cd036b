using System.Buffers.Binary;
using System.Text.Json;
using AllTokens.Checkpoints;

namespace AllTokens.Tests.Checkpoints;

/// <summary>Fixture paths, a scratch directory, and exact decoding of tensor bytes for comparisons.</summary>
internal sealed class TestFiles : IDisposable
{
    public string Dir { get; } = Directory.CreateTempSubdirectory("alltokens-ckpt-").FullName;

    public static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", "pth", name);

    public string Temp(string name) => Path.Combine(Dir, name);

    public string CopyFixture(string name)
    {
        var dst = Temp(name);
        File.Copy(Fixture(name), dst, overwrite: true);
        return dst;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Expected tensors from fixtures/pth/expected.json (written by tools/make_pth_fixtures.py).</summary>
    public static List<ExpectedTensor> Expected(string section)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Fixture("expected.json")));
        var result = new List<ExpectedTensor>();
        foreach (var e in doc.RootElement.GetProperty(section).EnumerateArray())
        {
            var dtype = e.GetProperty("dtype").GetString()!;
            var shape = e.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray();
            var values = e.GetProperty("values").EnumerateArray()
                .Select(x => IsFloat(dtype) ? (object)x.GetDouble() : x.GetInt64()).ToArray();
            result.Add(new ExpectedTensor(e.GetProperty("name").GetString()!, dtype, shape, values));
        }
        return result;
    }

    private static bool IsFloat(string dtype) => dtype is "F32" or "F16" or "BF16" or "F64";

    /// <summary>Values as double (float dtypes) or long (integer and bool dtypes), exactly.</summary>
    public static object[] Values(RawTensor t)
    {
        var es = RawTensor.ElementSize(t.DType);
        var n = t.Data.Length / es;
        var result = new object[n];
        for (var i = 0; i < n; i++)
        {
            var s = t.Data.AsSpan(i * es, es);
            result[i] = t.DType switch
            {
                TensorDType.Float32 => (object)(double)BinaryPrimitives.ReadSingleLittleEndian(s),
                TensorDType.Float16 => (object)(double)BinaryPrimitives.ReadHalfLittleEndian(s),
                TensorDType.BFloat16 => (object)(double)BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(s) << 16),
                TensorDType.Float64 => (object)BinaryPrimitives.ReadDoubleLittleEndian(s),
                TensorDType.Int64 => (object)BinaryPrimitives.ReadInt64LittleEndian(s),
                TensorDType.Int32 => (object)(long)BinaryPrimitives.ReadInt32LittleEndian(s),
                TensorDType.Int16 => (object)(long)BinaryPrimitives.ReadInt16LittleEndian(s),
                TensorDType.Int8 => (object)(long)(sbyte)s[0],
                TensorDType.UInt8 or TensorDType.Bool => (object)(long)s[0],
                _ => throw new ArgumentOutOfRangeException(nameof(t)),
            };
        }
        return result;
    }

    public static void AssertMatches(IReadOnlyList<ExpectedTensor> expected, IReadOnlyList<KeyValuePair<string, RawTensor>> actual)
    {
        Assert.Equal(expected.Select(e => e.Name), actual.Select(a => a.Key));
        for (var i = 0; i < expected.Count; i++)
        {
            var (e, t) = (expected[i], actual[i].Value);
            Assert.True(e.DType == Safetensors.DTypeName(t.DType), $"{e.Name}: dtype {t.DType}, expected {e.DType}");
            Assert.True(e.Shape.SequenceEqual(t.Shape), $"{e.Name}: shape [{string.Join(",", t.Shape)}], expected [{string.Join(",", e.Shape)}]");
            Assert.Equal(t.NumElements * RawTensor.ElementSize(t.DType), t.Data.LongLength);
            Assert.True(e.Values.SequenceEqual(Values(t)), $"{e.Name}: values [{string.Join(",", Values(t))}], expected [{string.Join(",", e.Values)}]");
        }
    }
}

internal sealed record ExpectedTensor(string Name, string DType, long[] Shape, object[] Values);
