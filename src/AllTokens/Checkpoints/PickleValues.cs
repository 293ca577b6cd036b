using System.Collections;
using System.Numerics;
using System.Text;

namespace AllTokens.Checkpoints;

// The object graph PthReader.ReadObject returns. Python values map to:
//   None → null, bool → bool, int → long (or BigInteger when it does not fit), float → double,
//   str → string, bytes → byte[], tuple → object?[], list → List<object?>, set/frozenset → HashSet<object?>,
//   dict/OrderedDict → PickleDict (insertion order kept), tensor/Parameter → RawTensor,
//   torch.float32 and friends → TorchDType, any other global → PickleGlobal, a call/instantiation → PickleObject.
// Nothing in this graph was ever executed: PickleGlobal and PickleObject are descriptions, not live objects.

/// <summary>A Python dict (or OrderedDict) with its insertion order kept.</summary>
public sealed class PickleDict : IReadOnlyCollection<KeyValuePair<object?, object?>>
{
    private readonly List<KeyValuePair<object?, object?>> _items = [];
    // Index for keys with value semantics (str, int, float, bool, None); other keys (tuples, objects) are
    // appended without de-duplication, which is fine for anything a checkpoint holds.
    private readonly Dictionary<object, int> _index = [];
    private int _noneIndex = -1;

    public int Count => _items.Count;

    public IEnumerable<object?> Keys => _items.Select(p => p.Key);

    public IEnumerable<object?> Values => _items.Select(p => p.Value);

    /// <summary>The state a pickle BUILD gave the dict (an OrderedDict's instance attributes, e.g. <c>_metadata</c>).</summary>
    public object? State { get; internal set; }

    public bool TryGetValue(object? key, out object? value)
    {
        var i = IndexOf(key);
        value = i >= 0 ? _items[i].Value : null;
        return i >= 0;
    }

    public bool ContainsKey(object? key) => IndexOf(key) >= 0;

    public object? this[object? key] =>
        TryGetValue(key, out var v) ? v : throw new KeyNotFoundException($"key {PickleText.Describe(key)} is not in the dict");

    internal void Set(object? key, object? value)
    {
        var i = IndexOf(key);
        if (i >= 0)
        {
            _items[i] = new(_items[i].Key, value);
            return;
        }
        if (key is null) _noneIndex = _items.Count;
        else if (IsIndexable(key)) _index[key] = _items.Count;
        _items.Add(new(key, value));
    }

    private int IndexOf(object? key)
    {
        if (key is null) return _noneIndex;
        return IsIndexable(key) && _index.TryGetValue(key, out var i) ? i : -1;
    }

    private static bool IsIndexable(object key) => key is string or long or bool or double or BigInteger;

    public IEnumerator<KeyValuePair<object?, object?>> GetEnumerator() => _items.GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    public override string ToString() => $"dict with {Count} entries";
}

/// <summary>
/// A reference to a Python global (module attribute) such as <c>argparse.Namespace</c> or <c>os.system</c>.
/// It is only a name: nothing is imported or called.
/// </summary>
/// <param name="IsAllowlisted">True for the globals the reader knows (inert torch/numpy/stdlib values); false for
/// anything else, which a hostile pickle might use to run code under a real unpickler.</param>
public sealed record PickleGlobal(string Module, string Name, bool IsAllowlisted)
{
    public string FullName => $"{Module}.{Name}";

    public override string ToString() => FullName;
}

/// <summary>
/// What a pickle asked to construct (REDUCE: <c>callable(*args)</c>; NEWOBJ: <c>cls.__new__(cls, *args)</c>),
/// recorded instead of performed, plus whatever state and items the pickle then gave it.
/// </summary>
public sealed class PickleObject
{
    internal PickleObject(object callable, object?[] args, PickleDict? kwargs, bool isNewObj)
    {
        Callable = callable;
        Args = args;
        Kwargs = kwargs;
        IsNewObj = isNewObj;
    }

    /// <summary>A <see cref="PickleGlobal"/>, or another <see cref="PickleObject"/> when a call result is called.</summary>
    public object Callable { get; }

    public object?[] Args { get; }

    /// <summary>Keyword arguments (NEWOBJ_EX only).</summary>
    public PickleDict? Kwargs { get; }

    /// <summary>True when created by NEWOBJ/NEWOBJ_EX (an instance of a class) rather than REDUCE (a call).</summary>
    public bool IsNewObj { get; }

    /// <summary>The state from BUILD: for plain objects usually a <see cref="PickleDict"/> of attributes.</summary>
    public object? State { get; internal set; }

    /// <summary>Items APPENDed to the object (list subclasses).</summary>
    public List<object?> ListItems { get; } = [];

    /// <summary>Items SETITEMed into the object (dict subclasses).</summary>
    public PickleDict DictItems { get; } = new();

    /// <summary>The global at the root of the call chain.</summary>
    public PickleGlobal? RootGlobal
    {
        get
        {
            object c = Callable;
            for (var depth = 0; depth < 64; depth++)
            {
                if (c is PickleGlobal g) return g;
                if (c is not PickleObject o) return null;
                c = o.Callable;
            }
            return null;
        }
    }

    /// <summary>Attribute from the BUILD state, when the state is a dict with string keys.</summary>
    public object? GetAttribute(string name)
    {
        var dict = State switch
        {
            PickleDict d => d,
            object?[] { Length: 2 } t => t[0] as PickleDict,
            _ => null,
        };
        return dict is not null && dict.TryGetValue(name, out var v) ? v : null;
    }

    public override string ToString() => $"{PickleText.Describe(Callable)}({Args.Length} args)";
}

/// <summary>A torch dtype object such as <c>torch.float32</c>, as an inert value.</summary>
/// <param name="Name">The attribute name in module torch, e.g. "float32" or "half".</param>
/// <param name="DType">The matching checkpoint dtype, or null for dtypes we do not carry (complex, quantized…).</param>
public sealed record TorchDType(string Name, TensorDType? DType)
{
    public override string ToString() => $"torch.{Name}";
}

internal static class PickleText
{
    /// <summary>A short, non-recursive description of a pickle value for error messages.</summary>
    public static string Describe(object? v) => v switch
    {
        null => "None",
        string s => s.Length <= 60 ? $"'{s}'" : $"'{s[..57]}...'",
        bool b => b ? "True" : "False",
        long or double or BigInteger => Convert.ToString(v, System.Globalization.CultureInfo.InvariantCulture) ?? "?",
        byte[] bytes => $"bytes[{bytes.Length}]",
        object?[] t => $"tuple of {t.Length}",
        List<object?> l => $"list of {l.Count}",
        HashSet<object?> h => $"set of {h.Count}",
        PickleDict d => $"dict with {d.Count} entries",
        RawTensor t => $"tensor {t.DType}[{string.Join(",", t.Shape)}]",
        PickleGlobal g => g.FullName,
        PickleObject o => o.RootGlobal is { } g ? $"{g.FullName}(...) object" : "object",
        TorchDType d => d.ToString(),
        _ => v.GetType().Name,
    };

    public static string JoinKeys(IEnumerable<object?> keys, int max = 20)
    {
        var list = keys.Take(max + 1).Select(Describe).ToList();
        var sb = new StringBuilder(string.Join(", ", list.Take(max)));
        if (list.Count > max) sb.Append(", ...");
        return sb.ToString();
    }
}
