using System.Text;

namespace AllTokens.Checkpoints;

/// <summary>
/// Gives meaning to globals, calls and persistent ids for <see cref="Unpickler"/>. Only an allowlist of
/// side-effect-free constructs get built-in semantics (OrderedDict, set, bytes via _codecs.encode, torch tensor
/// rebuilds, torch dtypes); every other global stays an inert <see cref="PickleGlobal"/> and calling it yields an
/// inert <see cref="PickleObject"/>. No Python (or any other) code is ever run.
/// </summary>
internal class PickleHost
{
    private const int MaxRebuildNesting = 16;
    private int _nesting;

    /// <summary>Globals with an inert or built-in meaning. Anything else is marked as not allowlisted.</summary>
    private static readonly HashSet<string> Allowlist =
    [
        "collections.OrderedDict",
        "builtins.set", "builtins.frozenset", "builtins.slice", "builtins.object", "builtins.complex",
        "__builtin__.set", "__builtin__.frozenset", "__builtin__.slice", "__builtin__.object",
        "_codecs.encode",
        "copyreg._reconstructor", "copy_reg._reconstructor",
        "argparse.Namespace",
        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
        "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
        "torch.device", "torch.Size",
        "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type", "torch._tensor._rebuild_from_type_v2",
        "torch._utils._rebuild_qtensor", "torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_meta_tensor_no_storage",
        "torch._utils._rebuild_wrapper_subclass", "torch._utils._rebuild_device_tensor_from_numpy",
        "torch._utils._rebuild_nested_tensor", "torch.storage.UntypedStorage", "torch.storage._UntypedStorage",
    ];

    internal static readonly Dictionary<string, TensorDType> StorageTypes = new()
    {
        ["FloatStorage"] = TensorDType.Float32,
        ["HalfStorage"] = TensorDType.Float16,
        ["BFloat16Storage"] = TensorDType.BFloat16,
        ["DoubleStorage"] = TensorDType.Float64,
        ["LongStorage"] = TensorDType.Int64,
        ["IntStorage"] = TensorDType.Int32,
        ["ShortStorage"] = TensorDType.Int16,
        ["CharStorage"] = TensorDType.Int8,
        ["ByteStorage"] = TensorDType.UInt8,
        ["BoolStorage"] = TensorDType.Bool,
        ["UntypedStorage"] = TensorDType.UInt8,
        ["_UntypedStorage"] = TensorDType.UInt8,
    };

    private static readonly Dictionary<string, TensorDType?> TorchDTypes = new()
    {
        ["float32"] = TensorDType.Float32, ["float"] = TensorDType.Float32,
        ["float16"] = TensorDType.Float16, ["half"] = TensorDType.Float16,
        ["bfloat16"] = TensorDType.BFloat16,
        ["float64"] = TensorDType.Float64, ["double"] = TensorDType.Float64,
        ["int64"] = TensorDType.Int64, ["long"] = TensorDType.Int64,
        ["int32"] = TensorDType.Int32, ["int"] = TensorDType.Int32,
        ["int16"] = TensorDType.Int16, ["short"] = TensorDType.Int16,
        ["int8"] = TensorDType.Int8,
        ["uint8"] = TensorDType.UInt8,
        ["bool"] = TensorDType.Bool,
        ["complex32"] = null, ["complex64"] = null, ["complex128"] = null, ["cfloat"] = null, ["cdouble"] = null,
        ["chalf"] = null, ["uint16"] = null, ["uint32"] = null, ["uint64"] = null, ["qint8"] = null,
        ["quint8"] = null, ["qint32"] = null, ["quint4x2"] = null, ["quint2x4"] = null,
        ["float8_e4m3fn"] = null, ["float8_e5m2"] = null, ["float8_e4m3fnuz"] = null, ["float8_e5m2fnuz"] = null,
    };

    public virtual object? ResolveGlobal(string module, string name)
    {
        if (module == "torch" && TorchDTypes.TryGetValue(name, out var dt)) return new TorchDType(name, dt);
        var full = $"{module}.{name}";
        var known = Allowlist.Contains(full)
            || ((module is "torch" or "torch.cuda") && StorageTypes.ContainsKey(name));
        return new PickleGlobal(module, name, known);
    }

    public virtual object? Reduce(object callable, object?[] args)
    {
        if (callable is PickleGlobal g && g.IsAllowlisted)
        {
            switch (g.FullName)
            {
                case "collections.OrderedDict":
                    return NewDict(args);
                case "builtins.set" or "builtins.frozenset" or "__builtin__.set" or "__builtin__.frozenset":
                    return args.Length == 0 ? new HashSet<object?>() : new HashSet<object?>(Iterate(args[0], g.FullName));
                case "_codecs.encode":
                    if (Encode(args) is { } bytes) return bytes;
                    break;
                case "torch.Size":
                    return args.Length == 0 ? Array.Empty<object?>() : Iterate(args[0], g.FullName).ToArray();
                case "torch._utils._rebuild_parameter" or "torch._utils._rebuild_parameter_with_state":
                    if (args.Length == 0) throw new PickleDataException($"{g.FullName} without arguments");
                    return args[0]; // a Parameter is its data for our purposes
                case "torch._tensor._rebuild_from_type" or "torch._tensor._rebuild_from_type_v2":
                    // (func, type, args, state): a tensor subclass; rebuild the plain tensor with func(*args).
                    if (args.Length >= 3 && args[0] is PickleGlobal inner && args[2] is object?[] innerArgs)
                    {
                        if (++_nesting > MaxRebuildNesting) throw new PickleDataException("tensor rebuilds nested too deeply");
                        try
                        {
                            return Reduce(inner, innerArgs);
                        }
                        finally
                        {
                            _nesting--;
                        }
                    }
                    break;
                default:
                    if (RebuildTensor(g, args) is { } tensor) return tensor;
                    break;
            }
        }
        return new PickleObject(callable, args, null, isNewObj: false);
    }

    public virtual object? NewObj(object cls, object?[] args, PickleDict? kwargs)
    {
        if (cls is PickleGlobal { IsAllowlisted: true, FullName: "collections.OrderedDict" } && kwargs is null)
            return NewDict(args);
        return new PickleObject(cls, args, kwargs, isNewObj: true);
    }

    public virtual void Build(object? target, object? state)
    {
        switch (target)
        {
            case PickleObject o: o.State = state; break;
            case PickleDict d: d.State = state; break;
            case RawTensor: break; // Python attributes on a tensor: irrelevant to us
            default: throw new PickleDataException($"BUILD on {PickleText.Describe(target)}");
        }
    }

    public virtual object? PersistentLoad(object? pid) =>
        throw new PickleDataException($"persistent id {PickleText.Describe(pid)} where none is expected");

    /// <summary>Tensor rebuild functions; null when the global is not one this host builds.</summary>
    protected virtual object? RebuildTensor(PickleGlobal g, object?[] args) => null;

    private static PickleDict NewDict(object?[] args)
    {
        var d = new PickleDict();
        if (args.Length == 0) return d;
        foreach (var pair in Iterate(args[0], "OrderedDict"))
        {
            switch (pair)
            {
                case object?[] { Length: 2 } t: d.Set(t[0], t[1]); break;
                case List<object?> { Count: 2 } l: d.Set(l[0], l[1]); break;
                default: throw new PickleDataException($"OrderedDict item {PickleText.Describe(pair)} is not a pair");
            }
        }
        return d;
    }

    private static IEnumerable<object?> Iterate(object? v, string what) => v switch
    {
        object?[] t => t,
        List<object?> l => l,
        HashSet<object?> s => s,
        _ => throw new PickleDataException($"{what} argument {PickleText.Describe(v)} is not iterable"),
    };

    // _codecs.encode(text, encoding): how protocol 2 pickles Python 3 bytes.
    private static byte[]? Encode(object?[] args)
    {
        if (args.Length is < 1 or > 2 || args[0] is not string text) return null;
        var encoding = args.Length == 2 ? args[1] as string : "utf-8";
        switch (encoding?.ToLowerInvariant().Replace('_', '-'))
        {
            case "latin1" or "latin-1" or "iso-8859-1" or "l1":
                var bytes = new byte[text.Length];
                for (var i = 0; i < text.Length; i++)
                {
                    if (text[i] > 0xff) throw new PickleDataException("_codecs.encode: text is not Latin-1");
                    bytes[i] = (byte)text[i];
                }
                return bytes;
            case "utf-8" or "utf8":
                return Encoding.UTF8.GetBytes(text);
            case "ascii":
                if (text.Any(c => c > 0x7f)) throw new PickleDataException("_codecs.encode: text is not ASCII");
                return Encoding.ASCII.GetBytes(text);
            default:
                return null;
        }
    }
}
