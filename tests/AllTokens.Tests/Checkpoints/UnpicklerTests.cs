using System.Numerics;
using AllTokens.Checkpoints;

namespace AllTokens.Tests.Checkpoints;

public sealed class UnpicklerTests
{
    private const string FakePath = "/fake/model.pth";

    private static object? Load(byte[] pickle, PickleHost? host = null)
    {
        using var ms = new MemoryStream(pickle);
        return new Unpickler(ms, 0, pickle.Length, FakePath, "data.pkl", host ?? new PickleHost()).Load();
    }

    private static CheckpointFormatException Fails(byte[] pickle)
    {
        var e = Assert.Throws<CheckpointFormatException>(() => Load(pickle));
        Assert.StartsWith(FakePath + ": data.pkl, byte ", e.Message);
        return e;
    }

    private static byte[] P(params object[] parts)
    {
        var bytes = new List<byte>();
        foreach (var p in parts)
        {
            switch (p)
            {
                case byte b: bytes.Add(b); break;
                case int i: bytes.Add(checked((byte)i)); break;
                case char c: bytes.Add(checked((byte)c)); break;
                case string s: bytes.AddRange(System.Text.Encoding.UTF8.GetBytes(s)); break;
                case byte[] a: bytes.AddRange(a); break;
                default: throw new ArgumentException(p.GetType().Name);
            }
        }
        return [.. bytes];
    }

    [Fact]
    public void DecodesScalarsContainersAndMemo()
    {
        // {'a': [1, -2, 300, 1e100 as LONG1, 1.5, None, True], 'b': ('x', b'\x01'), 'c': <memo of the list>, 'd': frozenset({7})}
        var pickle = P(
            0x80, 4, 0x95, new byte[8], '}', 0x94, '(',
            0x8c, 1, "a", ']', 0x94, '(', 'K', 1, 'J', new byte[] { 0xfe, 0xff, 0xff, 0xff }, 'M', new byte[] { 0x2c, 0x01 },
            0x8a, 9, new byte[] { 0, 0, 0, 0, 0, 0, 0, 0, 1 }, 'G', new byte[] { 0x3f, 0xf8, 0, 0, 0, 0, 0, 0 }, 'N', 0x88, 'e',
            0x8c, 1, "b", 'X', new byte[] { 1, 0, 0, 0 }, "x", 'C', 1, 1, 0x86,
            0x8c, 1, "c", 'h', 1,
            0x8c, 1, "d", '(', 'K', 7, 0x91,
            'u', '.');
        var d = Assert.IsType<PickleDict>(Load(pickle));
        var list = Assert.IsType<List<object?>>(d["a"]);
        Assert.Equal(1L, list[0]);
        Assert.Equal(-2L, list[1]);
        Assert.Equal(300L, list[2]);
        Assert.Equal(BigInteger.One << 64, list[3]);
        Assert.Equal(1.5, list[4]);
        Assert.Null(list[5]);
        Assert.Equal(true, list[6]);
        var t = Assert.IsType<object?[]>(d["b"]);
        Assert.Equal("x", t[0]);
        Assert.Equal(new byte[] { 1 }, t[1]);
        Assert.Same(list, d["c"]);
        Assert.Contains(7L, Assert.IsType<HashSet<object?>>(d["d"]));
    }

    [Fact]
    public void UnknownGlobalsAreInertPlaceholders()
    {
        // subprocess.Popen(('rm', '-rf', '/'),) then BUILD, via STACK_GLOBAL and NEWOBJ_EX
        var pickle = P(0x80, 4,
            0x8c, 10, "subprocess", 0x8c, 5, "Popen", 0x93,
            0x8c, 2, "rm", 0x85, '}', 0x92, '}', 'b', '.');
        var o = Assert.IsType<PickleObject>(Load(pickle));
        Assert.Equal("subprocess.Popen", o.RootGlobal!.FullName);
        Assert.False(o.RootGlobal.IsAllowlisted);
        Assert.True(o.IsNewObj);
        Assert.Equal("rm", Assert.Single(o.Args));

        // builtins.getattr(os, 'system')('id'): calling a call result stays inert too.
        var chained = P(0x80, 2, 'c', "builtins\ngetattr\n", 'c', "os\nsystem\n", 0x8c, 4, "Name", 0x86, 'R',
            0x8c, 2, "id", 0x85, 'R', '.');
        var outer = Assert.IsType<PickleObject>(Load(chained));
        Assert.Equal("builtins.getattr", outer.RootGlobal!.FullName);
        Assert.IsType<PickleObject>(outer.Callable);
    }

    [Fact]
    public void UnsupportedOpcodeNamesTheOpcodeAndOffset()
    {
        var e = Fails(P(0x80, 2, 'I', "12\n", '.'));
        Assert.Contains("byte 2", e.Message);
        Assert.Contains("0x49", e.Message);
        Assert.Contains("INT", e.Message);
    }

    [Fact]
    public void MemoKeyErrorIsAFormatError() =>
        Assert.Contains("memo key 5", Fails(P(0x80, 2, 'h', 5, '.')).Message);

    [Fact]
    public void HugeLengthFieldsDoNotAllocate()
    {
        Assert.Contains("only 1 remain", Fails(P(0x80, 4, 0x8e, new byte[] { 0, 0, 0, 0, 0, 0, 0, 0x7f }, '.')).Message);
        Assert.Contains("remain", Fails(P(0x80, 4, 'X', new byte[] { 0xff, 0xff, 0xff, 0xff }, '.')).Message);
        Assert.Contains("too large", Fails(P(0x80, 2, 0x8b, new byte[] { 0, 0, 0, 0x10 }, '.')).Message);
    }

    [Fact]
    public void StructuralErrorsAreFormatErrors()
    {
        Assert.Contains("underflow", Fails(P(0x80, 2, '.')).Message);
        Assert.Contains("underflow", Fails(P(0x80, 2, 'K', 1, '(', 0x85, '.')).Message); // TUPLE1 may not reach under a MARK
        Assert.Contains("without STOP", Fails(P(0x80, 2, 'K', 1)).Message);
        Assert.Contains("protocol 9", Fails(P(0x80, 9, 'N', '.')).Message);
        Assert.Contains("not callable", Fails(P(0x80, 2, 'K', 1, ')', 'R', '.')).Message);
        Assert.Contains("cannot append", Fails(P(0x80, 2, 'K', 1, 'K', 2, 'a', '.')).Message);
        Assert.Contains("UTF-8", Fails(P(0x80, 2, 0x8c, 1, 0xff, '.')).Message);
    }

    [Fact]
    public void TensorRebuildRejectsViewsOutsideTheStorage()
    {
        // _rebuild_tensor_v2(storage of 4 floats, offset 2, size (3,), stride (1,)) reaches element 4.
        var host = new TorchPickleHost((key, bytes, es) =>
        {
            var d = new StorageData(key, bytes, es);
            d.SetBytes(new byte[bytes]);
            return d;
        });
        var pickle = P(0x80, 2, 'c', "torch._utils\n_rebuild_tensor_v2\n", '(',
            '(', 0x8c, 7, "storage", 'c', "torch\nFloatStorage\n", 0x8c, 1, "0", 0x8c, 3, "cpu", 'K', 4, 't', 'Q',
            'K', 2, 'K', 3, 0x85, 'K', 1, 0x85, 0x89, 'N', 't', 'R', '.');
        using var ms = new MemoryStream(pickle);
        var e = Assert.Throws<CheckpointFormatException>(() => new Unpickler(ms, 0, pickle.Length, FakePath, "data.pkl", host).Load());
        Assert.Contains("reaches element 4", e.Message);
    }

    [Fact]
    public void StridedCopyGathersViews()
    {
        // 3x4 storage 0..11 (bytes), view size (2,2) stride (1,4) offset 1 → [[1,5],[2,6]]
        var src = Enumerable.Range(0, 12).Select(i => (byte)i).ToArray();
        var dst = new byte[4];
        TorchPickleHost.CopyStrided(src, dst, 1, 1, [2, 2], [1, 4], contiguous: false);
        Assert.Equal([1, 5, 2, 6], dst);
    }

    [Fact]
    public void RebuildTensorV3ReinterpretsAnUntypedStorage()
    {
        // torch 2.x style: UntypedStorage of 6 bytes, _rebuild_tensor_v3(..., offset 1, size (2,), stride (1,), dtype torch.float16)
        var storageBytes = new byte[] { 0, 0, 0x00, 0x3c, 0x00, 0xc0 }; // [_, 1.0, -2.0] as float16
        var host = new TorchPickleHost((key, bytes, es) =>
        {
            var d = new StorageData(key, bytes, es);
            d.SetBytes(storageBytes);
            return d;
        });
        var pickle = P(0x80, 2, 'c', "torch._utils\n_rebuild_tensor_v3\n", '(',
            '(', 0x8c, 7, "storage", 'c', "torch.storage\nUntypedStorage\n", 0x8c, 1, "0", 0x8c, 3, "cpu", 'K', 6, 't', 'Q',
            'K', 1, 'K', 2, 0x85, 'K', 1, 0x85, 0x89, 'N', 'c', "torch\nfloat16\n", 't', 'R', '.');
        using var ms = new MemoryStream(pickle);
        var t = Assert.IsType<RawTensor>(new Unpickler(ms, 0, pickle.Length, FakePath, "data.pkl", host).Load());
        Assert.Equal(TensorDType.Float16, t.DType);
        Assert.Equal([2L], t.Shape);
        Assert.Equal([1.0, -2.0], TestFiles.Values(t).Cast<double>());
    }
}
