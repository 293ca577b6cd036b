namespace AllTokens.Checkpoints;

/// <summary>The bytes of one torch storage (the unit torch.save writes), possibly filled in later (legacy format).</summary>
internal sealed class StorageData(string key, long byteLength, int elementSize)
{
    public string Key { get; } = key;
    public long ByteLength { get; } = byteLength;
    /// <summary>Element size of the storage type it was first referenced with (legacy files count elements).</summary>
    public int ElementSize { get; } = elementSize;
    public byte[]? Bytes { get; private set; }
    /// <summary>True once a tensor took <see cref="Bytes"/> as its own data (it covered the whole storage).</summary>
    public bool Donated { get; set; }
    private List<Action<byte[]>>? _pending;

    public void Defer(Action<byte[]> copy) => (_pending ??= []).Add(copy);

    public void SetBytes(byte[] bytes)
    {
        if (bytes.LongLength != ByteLength) throw new InvalidOperationException("storage size mismatch");
        Bytes = bytes;
        if (_pending is null) return;
        foreach (var copy in _pending) copy(bytes);
        _pending = null;
    }
}

/// <summary>A storage as a tensor sees it: a typed window onto <see cref="StorageData"/>.</summary>
internal sealed record StorageRef(StorageData Data, TensorDType DType, long ByteOffset, long ByteLength)
{
    public override string ToString() => $"torch storage '{Data.Key}' ({DType}, {ByteLength} bytes)";
}

/// <summary>
/// The torch side of unpickling: persistent ids name storages (loaded through <c>openStorage</c>), and
/// <c>torch._utils._rebuild_tensor*</c> turn (storage, offset, size, stride) into contiguous <see cref="RawTensor"/>s,
/// honouring arbitrary strides and offsets. Sizes are validated before anything is allocated, and the bytes all
/// tensors allocate are capped relative to the storage bytes, so a small hostile file cannot demand huge memory.
/// </summary>
internal sealed class TorchPickleHost(Func<string, long, int, StorageData> openStorage) : PickleHost
{
    private const int MaxDims = 64;
    private const long AllocationSlack = 64L << 20;

    private readonly Dictionary<string, StorageData> _storages = [];
    private long _storageBytes;
    private long _tensorBytes;

    public IReadOnlyDictionary<string, StorageData> Storages => _storages;

    // ('storage', storage_type, key, location, numel[, view_metadata]); view_metadata (legacy, old torch) is
    // (view_key, element_offset, element_count).
    public override object? PersistentLoad(object? pid)
    {
        if (pid is not object?[] { Length: 5 or 6 } t || t[0] is not "storage")
            throw new PickleDataException($"persistent id {Describe(pid)} is not a torch storage reference");
        var dtype = StorageDType(t[1]);
        var key = t[2] switch
        {
            string s => s,
            long l => l.ToString(System.Globalization.CultureInfo.InvariantCulture),
            var other => throw new PickleDataException($"storage key {PickleText.Describe(other)} is not a string"),
        };
        if (t[4] is not long numel || numel < 0) throw new PickleDataException($"storage '{key}' has element count {PickleText.Describe(t[4])}");
        var es = RawTensor.ElementSize(dtype);
        var byteLength = checked(numel * es);

        if (!_storages.TryGetValue(key, out var data))
        {
            data = openStorage(key, byteLength, es);
            _storages[key] = data;
            _storageBytes += byteLength;
        }
        else if (data.ByteLength != byteLength)
        {
            throw new PickleDataException($"storage '{key}' is referenced with {byteLength} bytes here and {data.ByteLength} elsewhere");
        }

        if (t.Length == 6 && t[5] is not null)
        {
            if (t[5] is not object?[] { Length: 3 } view || view[1] is not long off || view[2] is not long count || off < 0 || count < 0)
                throw new PickleDataException($"storage '{key}' has malformed view metadata {PickleText.Describe(t[5])}");
            var byteOffset = checked(off * es);
            var viewBytes = checked(count * es);
            if (byteOffset + viewBytes > byteLength)
                throw new PickleDataException($"storage view of '{key}' ({count} elements at {off}) lies outside the storage of {numel} elements");
            return new StorageRef(data, dtype, byteOffset, viewBytes);
        }
        return new StorageRef(data, dtype, 0, byteLength);
    }

    private static string Describe(object? pid) =>
        pid is object?[] t ? $"({string.Join(", ", t.Take(6).Select(PickleText.Describe))})" : PickleText.Describe(pid);

    private static TensorDType StorageDType(object? type) => type switch
    {
        PickleGlobal { Module: "torch" or "torch.cuda" or "torch.storage" } g when StorageTypes.TryGetValue(g.Name, out var dt) => dt,
        TorchDType { DType: { } dt } => dt,
        _ => throw new PickleDataException($"storage type {PickleText.Describe(type)} is not supported"),
    };

    protected override object? RebuildTensor(PickleGlobal g, object?[] args)
    {
        switch (g.FullName)
        {
            case "torch._utils._rebuild_tensor" or "torch._utils._rebuild_tensor_v2":
                {
                    // (storage, storage_offset, size, stride[, requires_grad, backward_hooks[, metadata]])
                    if (args.Length < 4) throw new PickleDataException($"{g.Name} needs at least 4 arguments, got {args.Length}");
                    var storage = Storage(args[0], g.Name);
                    return Rebuild(storage, storage.DType, args[1], args[2], args[3]);
                }
            case "torch._utils._rebuild_tensor_v3":
                {
                    // (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
                    if (args.Length < 7) throw new PickleDataException($"{g.Name} needs at least 7 arguments, got {args.Length}");
                    var storage = Storage(args[0], g.Name);
                    if (args[6] is not TorchDType { DType: { } dtype })
                        throw new PickleDataException($"{g.Name}: dtype {PickleText.Describe(args[6])} is not supported");
                    return Rebuild(storage, dtype, args[1], args[2], args[3]);
                }
            default:
                return null;
        }
    }

    private static StorageRef Storage(object? v, string fn) =>
        v as StorageRef ?? throw new PickleDataException($"{fn}: first argument is {PickleText.Describe(v)}, not a storage");

    private RawTensor Rebuild(StorageRef storage, TensorDType dtype, object? offsetArg, object? sizeArg, object? strideArg)
    {
        if (offsetArg is not long offset || offset < 0) throw new PickleDataException($"tensor storage offset {PickleText.Describe(offsetArg)} is invalid");
        var size = Longs(sizeArg, "size");
        var stride = Longs(strideArg, "stride");
        if (size.Length != stride.Length) throw new PickleDataException($"tensor has {size.Length} sizes but {stride.Length} strides");
        if (size.Length > MaxDims) throw new PickleDataException($"tensor has {size.Length} dimensions");
        var es = RawTensor.ElementSize(dtype);
        if (storage.ByteLength % es != 0) throw new PickleDataException($"storage of {storage.ByteLength} bytes cannot hold {dtype} elements");
        var storageElements = storage.ByteLength / es;

        long numel = 1;
        long lastIndex = offset;
        for (var d = 0; d < size.Length; d++)
        {
            if (size[d] < 0 || stride[d] < 0) throw new PickleDataException($"tensor size/stride [{string.Join(",", size)}]/[{string.Join(",", stride)}] has negative entries");
            numel = checked(numel * size[d]);
        }
        if (numel > 0)
        {
            for (var d = 0; d < size.Length; d++) lastIndex = checked(lastIndex + (size[d] - 1) * stride[d]);
            if (lastIndex >= storageElements)
                throw new PickleDataException(
                    $"tensor of size [{string.Join(",", size)}], stride [{string.Join(",", stride)}], offset {offset} reaches element {lastIndex} " +
                    $"of storage '{storage.Data.Key}' which has {storageElements}");
        }
        var nbytes = checked(numel * es);
        if (nbytes > Array.MaxLength) throw new PickleDataException($"tensor of {nbytes} bytes is too large for one array");

        var contiguous = IsContiguous(size, stride);
        var data = storage.Data;
        if (contiguous && offset == 0 && storage.ByteOffset == 0 && nbytes == data.ByteLength && data.Bytes is { } whole && !data.Donated)
        {
            data.Donated = true; // the tensor is exactly the storage: share the array instead of copying it
            return new RawTensor(dtype, size, whole);
        }

        _tensorBytes += nbytes;
        if (_tensorBytes > 2 * _storageBytes + AllocationSlack)
            throw new PickleDataException($"tensors need {_tensorBytes} bytes in total, far more than the {_storageBytes} bytes of their storages");
        var dst = new byte[nbytes];
        var byteOffset = storage.ByteOffset;
        void Copy(byte[] src) => CopyStrided(src.AsSpan(checked((int)byteOffset)), dst, es, offset, size, stride, contiguous);
        if (numel > 0)
        {
            if (data.Bytes is { } bytes) Copy(bytes);
            else data.Defer(Copy);
        }
        return new RawTensor(dtype, size, dst);
    }

    private static long[] Longs(object? v, string what)
    {
        IEnumerable<object?> items = v switch
        {
            object?[] t => t,
            List<object?> l => l,
            _ => throw new PickleDataException($"tensor {what} {PickleText.Describe(v)} is not a tuple"),
        };
        return items.Select(x => x is long l ? l : throw new PickleDataException($"tensor {what} entry {PickleText.Describe(x)} is not an integer")).ToArray();
    }

    private static bool IsContiguous(long[] size, long[] stride)
    {
        long expected = 1;
        for (var d = size.Length - 1; d >= 0; d--)
        {
            if (size[d] == 0) return true;
            if (size[d] != 1 && stride[d] != expected) return false;
            expected *= size[d];
        }
        return true;
    }

    /// <summary>Gathers a strided view (element offset/size/stride) of <paramref name="src"/> into contiguous <paramref name="dst"/>.</summary>
    internal static void CopyStrided(ReadOnlySpan<byte> src, byte[] dst, int es, long offset, long[] size, long[] stride, bool contiguous)
    {
        if (dst.Length == 0) return;
        if (contiguous)
        {
            src.Slice(checked((int)(offset * es)), dst.Length).CopyTo(dst);
            return;
        }
        var nd = size.Length;
        var inner = size[nd - 1];
        var innerStride = stride[nd - 1];
        var index = new long[nd];
        var rows = dst.LongLength / es / inner;
        long baseElement = offset;
        var d0 = 0;
        var dstSpan = dst.AsSpan();
        for (long r = 0; r < rows; r++)
        {
            if (innerStride == 1)
            {
                src.Slice((int)(baseElement * es), (int)(inner * es)).CopyTo(dstSpan.Slice(d0));
                d0 += (int)(inner * es);
            }
            else
            {
                for (long j = 0; j < inner; j++)
                {
                    src.Slice((int)((baseElement + j * innerStride) * es), es).CopyTo(dstSpan.Slice(d0));
                    d0 += es;
                }
            }
            // Odometer over the outer dimensions.
            for (var d = nd - 2; d >= 0; d--)
            {
                index[d]++;
                baseElement += stride[d];
                if (index[d] < size[d]) break;
                baseElement -= stride[d] * size[d];
                index[d] = 0;
            }
        }
    }
}
