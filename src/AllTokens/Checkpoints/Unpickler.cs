using System.Buffers.Binary;
using System.Globalization;
using System.Numerics;
using System.Text;

namespace AllTokens.Checkpoints;

/// <summary>A problem inside pickle data; the unpickler adds the file, the stream name and the byte offset.</summary>
internal sealed class PickleDataException(string message) : Exception(message);

/// <summary>
/// A pickle virtual machine for protocols 2–5 that never executes anything: globals are names, calls are
/// recorded (or given built-in meaning by the <see cref="PickleHost"/> for an allowlist of harmless ones).
/// Every length field is checked against the bytes that remain before anything is allocated.
/// </summary>
internal sealed class Unpickler
{
    private const int MaxLineLength = 4096;
    private const int MaxIntegerBytes = 1024;

    private readonly Stream _in;
    private readonly long _end;
    private readonly string _path;
    private readonly string _what;
    private readonly PickleHost _host;
    private readonly List<object?> _stack = [];
    private readonly List<int> _marks = [];
    private readonly Dictionary<long, object?> _memo = [];
    private long _pos;
    private long _opOffset;
    private byte _op;

    /// <param name="input">Read from its current position; <paramref name="start"/> is that position (for messages).</param>
    /// <param name="end">Offset in <paramref name="input"/> past which nothing may be read.</param>
    /// <param name="what">Names the pickle in messages, e.g. "archive/data.pkl".</param>
    public Unpickler(Stream input, long start, long end, string path, string what, PickleHost host)
    {
        _in = input;
        _pos = start;
        _end = end;
        _path = path;
        _what = what;
        _host = host;
    }

    /// <summary>Offset just past the STOP of the last pickle loaded.</summary>
    public long Position => _pos;

    /// <summary>Loads one pickle (up to and including STOP).</summary>
    public object? Load()
    {
        _stack.Clear();
        _marks.Clear();
        _memo.Clear();
        try
        {
            return Run();
        }
        catch (PickleDataException e)
        {
            throw Fail(e.Message);
        }
        catch (OverflowException)
        {
            throw Fail("a size or index is out of range");
        }
        catch (EndOfStreamException)
        {
            throw Fail("the data ends unexpectedly (truncated file)");
        }
    }

    private CheckpointFormatException Fail(string problem)
    {
        var opcode = _pos > _opOffset ? $", opcode 0x{_op:x2} {OpcodeName(_op)}" : "";
        return new(_path, $"{_what}, byte {_opOffset}{opcode}: {problem}");
    }

    private object? Run()
    {
        while (true)
        {
            _opOffset = _pos;
            _op = 0;
            if (_pos >= _end) throw new PickleDataException("the pickle ends without STOP (truncated file)");
            _op = ReadByte();
            switch (_op)
            {
                case 0x80: // PROTO
                    {
                        int proto = ReadByte();
                        if (proto > 5) throw new PickleDataException($"pickle protocol {proto} is not supported (2-5 are)");
                        break;
                    }
                case 0x95: // FRAME: a length hint only
                    {
                        var len = ReadU64();
                        if (len > (ulong)(_end - _pos)) throw new PickleDataException($"frame of {len} bytes is longer than the {_end - _pos} bytes left");
                        break;
                    }
                case (byte)'.': // STOP
                    {
                        var result = Pop();
                        if (_marks.Count != 0) throw new PickleDataException("STOP with an unclosed MARK");
                        return result;
                    }
                case (byte)'(': _marks.Add(_stack.Count); break; // MARK
                case (byte)'0': // POP (pops a MARK when nothing is above it, as CPython does)
                    if (_marks.Count > 0 && _stack.Count == _marks[^1]) _marks.RemoveAt(_marks.Count - 1);
                    else Pop();
                    break;
                case (byte)'1': PopMark(); break; // POP_MARK
                case (byte)'2': Push(Peek()); break; // DUP
                case (byte)'N': Push(null); break; // NONE
                case 0x88: Push(true); break; // NEWTRUE
                case 0x89: Push(false); break; // NEWFALSE
                case (byte)'J': Push((long)BinaryPrimitives.ReadInt32LittleEndian(ReadSpan(4))); break; // BININT
                case (byte)'K': Push((long)ReadByte()); break; // BININT1
                case (byte)'M': Push((long)BinaryPrimitives.ReadUInt16LittleEndian(ReadSpan(2))); break; // BININT2
                case 0x8a: Push(ReadLong(ReadByte())); break; // LONG1
                case 0x8b: Push(ReadLong(BinaryPrimitives.ReadInt32LittleEndian(ReadSpan(4)))); break; // LONG4
                case (byte)'G': Push(BinaryPrimitives.ReadDoubleBigEndian(ReadSpan(8))); break; // BINFLOAT
                case 0x8c: Push(DecodeUtf8(ReadBytes(ReadByte()))); break; // SHORT_BINUNICODE
                case (byte)'X': Push(DecodeUtf8(ReadBytes(ReadU32()))); break; // BINUNICODE
                case 0x8d: Push(DecodeUtf8(ReadBytes(ReadU64Length()))); break; // BINUNICODE8
                case (byte)'U': Push(DecodeByteString(ReadBytes(ReadByte()))); break; // SHORT_BINSTRING
                case (byte)'T': Push(DecodeByteString(ReadBytes(ReadI32Length()))); break; // BINSTRING
                case (byte)'C': Push(ReadBytes(ReadByte())); break; // SHORT_BINBYTES
                case (byte)'B': Push(ReadBytes(ReadU32())); break; // BINBYTES
                case 0x8e: Push(ReadBytes(ReadU64Length())); break; // BINBYTES8
                case (byte)')': Push(Array.Empty<object?>()); break; // EMPTY_TUPLE
                case (byte)'t': Push(PopMark().ToArray()); break; // TUPLE
                case 0x85: Push(new[] { Pop() }); break; // TUPLE1
                case 0x86: // TUPLE2
                    {
                        var b = Pop();
                        var a = Pop();
                        Push(new[] { a, b });
                        break;
                    }
                case 0x87: // TUPLE3
                    {
                        var c = Pop();
                        var b = Pop();
                        var a = Pop();
                        Push(new[] { a, b, c });
                        break;
                    }
                case (byte)']': Push(new List<object?>()); break; // EMPTY_LIST
                case (byte)'l': Push(PopMark()); break; // LIST
                case (byte)'a': // APPEND
                    {
                        var item = Pop();
                        Append(Peek(), [item]);
                        break;
                    }
                case (byte)'e': // APPENDS
                    {
                        var items = PopMark();
                        Append(Peek(), items);
                        break;
                    }
                case (byte)'}': Push(new PickleDict()); break; // EMPTY_DICT
                case (byte)'d': // DICT
                    {
                        var items = PopMark();
                        var d = new PickleDict();
                        SetItems(d, items);
                        Push(d);
                        break;
                    }
                case (byte)'s': // SETITEM
                    {
                        var value = Pop();
                        var key = Pop();
                        SetItems(Peek(), [key, value]);
                        break;
                    }
                case (byte)'u': // SETITEMS
                    {
                        var items = PopMark();
                        SetItems(Peek(), items);
                        break;
                    }
                case 0x8f: Push(new HashSet<object?>()); break; // EMPTY_SET
                case 0x90: // ADDITEMS
                    {
                        var items = PopMark();
                        if (Peek() is not HashSet<object?> set) throw new PickleDataException($"ADDITEMS target is {PickleText.Describe(Peek())}, not a set");
                        foreach (var i in items) set.Add(i);
                        break;
                    }
                case 0x91: Push(new HashSet<object?>(PopMark())); break; // FROZENSET
                case (byte)'c': // GLOBAL
                    {
                        var module = ReadLine();
                        var name = ReadLine();
                        Push(_host.ResolveGlobal(module, name));
                        break;
                    }
                case 0x93: // STACK_GLOBAL
                    {
                        var name = Pop();
                        var module = Pop();
                        if (module is not string m || name is not string n)
                            throw new PickleDataException($"STACK_GLOBAL needs two strings, got {PickleText.Describe(module)} and {PickleText.Describe(name)}");
                        Push(_host.ResolveGlobal(m, n));
                        break;
                    }
                case (byte)'R': // REDUCE
                    {
                        var args = Pop();
                        var callable = Pop();
                        if (args is not object?[] tuple) throw new PickleDataException($"REDUCE arguments are {PickleText.Describe(args)}, not a tuple");
                        Push(_host.Reduce(RequireCallable(callable), tuple));
                        break;
                    }
                case (byte)'b': // BUILD
                    {
                        var state = Pop();
                        _host.Build(Peek(), state);
                        break;
                    }
                case 0x81: // NEWOBJ
                    {
                        var args = Pop();
                        var cls = Pop();
                        if (args is not object?[] tuple) throw new PickleDataException($"NEWOBJ arguments are {PickleText.Describe(args)}, not a tuple");
                        Push(_host.NewObj(RequireCallable(cls), tuple, null));
                        break;
                    }
                case 0x92: // NEWOBJ_EX
                    {
                        var kwargs = Pop();
                        var args = Pop();
                        var cls = Pop();
                        if (args is not object?[] tuple) throw new PickleDataException($"NEWOBJ_EX arguments are {PickleText.Describe(args)}, not a tuple");
                        if (kwargs is not PickleDict kw) throw new PickleDataException($"NEWOBJ_EX keyword arguments are {PickleText.Describe(kwargs)}, not a dict");
                        Push(_host.NewObj(RequireCallable(cls), tuple, kw));
                        break;
                    }
                case (byte)'p': _memo[ParseDecimal(ReadLine())] = Peek(); break; // PUT
                case (byte)'q': _memo[ReadByte()] = Peek(); break; // BINPUT
                case (byte)'r': _memo[ReadU32()] = Peek(); break; // LONG_BINPUT
                case 0x94: _memo[_memo.Count] = Peek(); break; // MEMOIZE
                case (byte)'g': Push(MemoGet(ParseDecimal(ReadLine()))); break; // GET
                case (byte)'h': Push(MemoGet(ReadByte())); break; // BINGET
                case (byte)'j': Push(MemoGet(ReadU32())); break; // LONG_BINGET
                case (byte)'Q': Push(_host.PersistentLoad(Pop())); break; // BINPERSID
                case (byte)'P': Push(_host.PersistentLoad(ReadLine())); break; // PERSID
                default:
                    throw new PickleDataException("this opcode is not supported (checkpoints do not need it)");
            }
        }
    }

    // ---- stack ----

    private void Push(object? v) => _stack.Add(v);

    private int Fence => _marks.Count > 0 ? _marks[^1] : 0;

    private object? Pop()
    {
        if (_stack.Count <= Fence) throw new PickleDataException("stack underflow");
        var v = _stack[^1];
        _stack.RemoveAt(_stack.Count - 1);
        return v;
    }

    private object? Peek()
    {
        if (_stack.Count <= Fence) throw new PickleDataException("stack underflow");
        return _stack[^1];
    }

    private List<object?> PopMark()
    {
        if (_marks.Count == 0) throw new PickleDataException("no MARK to pop to");
        var at = _marks[^1];
        _marks.RemoveAt(_marks.Count - 1);
        var items = _stack.GetRange(at, _stack.Count - at);
        _stack.RemoveRange(at, _stack.Count - at);
        return items;
    }

    private object? MemoGet(long key) =>
        _memo.TryGetValue(key, out var v) ? v : throw new PickleDataException($"memo key {key} was never stored");

    private static object RequireCallable(object? c) => c is PickleGlobal or PickleObject
        ? c
        : throw new PickleDataException($"{PickleText.Describe(c)} is not callable");

    private static void Append(object? target, List<object?> items)
    {
        switch (target)
        {
            case List<object?> list: list.AddRange(items); break;
            case PickleObject o: o.ListItems.AddRange(items); break;
            default: throw new PickleDataException($"cannot append to {PickleText.Describe(target)}");
        }
    }

    private static void SetItems(object? target, List<object?> keyValues)
    {
        if (keyValues.Count % 2 != 0) throw new PickleDataException("odd number of items for a dict");
        var dict = target switch
        {
            PickleDict d => d,
            PickleObject o => o.DictItems,
            _ => throw new PickleDataException($"cannot set items on {PickleText.Describe(target)}"),
        };
        for (var i = 0; i < keyValues.Count; i += 2) dict.Set(keyValues[i], keyValues[i + 1]);
    }

    // ---- reading ----

    private byte ReadByte()
    {
        if (_pos >= _end) throw new PickleDataException("the data ends unexpectedly (truncated file)");
        var b = _in.ReadByte();
        if (b < 0) throw new PickleDataException("the data ends unexpectedly (truncated file)");
        _pos++;
        return (byte)b;
    }

    private byte[] ReadBytes(long n)
    {
        if (n < 0 || n > _end - _pos)
            throw new PickleDataException($"a length field asks for {n} bytes but only {_end - _pos} remain (truncated or corrupt file)");
        var buf = new byte[n];
        _in.ReadExactly(buf);
        _pos += n;
        return buf;
    }

    private ReadOnlySpan<byte> ReadSpan(int n) => ReadBytes(n);

    private uint ReadU32() => BinaryPrimitives.ReadUInt32LittleEndian(ReadSpan(4));

    private ulong ReadU64() => BinaryPrimitives.ReadUInt64LittleEndian(ReadSpan(8));

    private long ReadU64Length()
    {
        var n = ReadU64();
        return n > long.MaxValue ? -1 : (long)n;
    }

    private long ReadI32Length() => BinaryPrimitives.ReadInt32LittleEndian(ReadSpan(4));

    private string ReadLine()
    {
        var bytes = new List<byte>();
        while (true)
        {
            var b = ReadByte();
            if (b == (byte)'\n') break;
            if (bytes.Count >= MaxLineLength) throw new PickleDataException($"text line longer than {MaxLineLength} bytes");
            bytes.Add(b);
        }
        if (bytes.Count > 0 && bytes[^1] == (byte)'\r') bytes.RemoveAt(bytes.Count - 1);
        return DecodeUtf8([.. bytes]);
    }

    private static long ParseDecimal(string s) =>
        long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var v)
            ? v
            : throw new PickleDataException($"'{s}' is not a decimal memo index");

    private object ReadLong(long n)
    {
        if (n < 0) throw new PickleDataException($"negative integer length {n}");
        if (n > MaxIntegerBytes) throw new PickleDataException($"integer of {n} bytes is too large");
        var bytes = ReadBytes(n);
        if (n == 0) return 0L;
        var big = new BigInteger(bytes, isUnsigned: false, isBigEndian: false);
        return big >= long.MinValue && big <= long.MaxValue ? (long)big : big;
    }

    private static readonly UTF8Encoding StrictUtf8 = new(false, true);

    private static string DecodeUtf8(byte[] bytes)
    {
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw new PickleDataException("text is not valid UTF-8");
        }
    }

    // Python 2 'str': usually ASCII names; fall back to Latin-1 as torch.load(encoding='latin1') would.
    private static string DecodeByteString(byte[] bytes)
    {
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            return Encoding.Latin1.GetString(bytes);
        }
    }

    private static string OpcodeName(byte op) => op switch
    {
        0x80 => "PROTO", 0x95 => "FRAME", (byte)'.' => "STOP", (byte)'(' => "MARK", (byte)'0' => "POP",
        (byte)'1' => "POP_MARK", (byte)'2' => "DUP", (byte)'N' => "NONE", 0x88 => "NEWTRUE", 0x89 => "NEWFALSE",
        (byte)'J' => "BININT", (byte)'K' => "BININT1", (byte)'M' => "BININT2", 0x8a => "LONG1", 0x8b => "LONG4",
        (byte)'G' => "BINFLOAT", 0x8c => "SHORT_BINUNICODE", (byte)'X' => "BINUNICODE", 0x8d => "BINUNICODE8",
        (byte)'U' => "SHORT_BINSTRING", (byte)'T' => "BINSTRING", (byte)'C' => "SHORT_BINBYTES", (byte)'B' => "BINBYTES",
        0x8e => "BINBYTES8", (byte)')' => "EMPTY_TUPLE", (byte)'t' => "TUPLE", 0x85 => "TUPLE1", 0x86 => "TUPLE2",
        0x87 => "TUPLE3", (byte)']' => "EMPTY_LIST", (byte)'a' => "APPEND", (byte)'e' => "APPENDS", (byte)'l' => "LIST",
        (byte)'}' => "EMPTY_DICT", (byte)'d' => "DICT", (byte)'s' => "SETITEM", (byte)'u' => "SETITEMS",
        0x8f => "EMPTY_SET", 0x90 => "ADDITEMS", 0x91 => "FROZENSET", (byte)'c' => "GLOBAL", 0x93 => "STACK_GLOBAL",
        (byte)'R' => "REDUCE", (byte)'b' => "BUILD", 0x81 => "NEWOBJ", 0x92 => "NEWOBJ_EX", (byte)'p' => "PUT",
        (byte)'q' => "BINPUT", (byte)'r' => "LONG_BINPUT", 0x94 => "MEMOIZE", (byte)'g' => "GET", (byte)'h' => "BINGET",
        (byte)'j' => "LONG_BINGET", (byte)'Q' => "BINPERSID", (byte)'P' => "PERSID",
        // Known to pickle but not supported here:
        (byte)'I' => "INT (unsupported)", (byte)'L' => "LONG (unsupported)", (byte)'F' => "FLOAT (unsupported)",
        (byte)'S' => "STRING (unsupported)", (byte)'V' => "UNICODE (unsupported)", (byte)'i' => "INST (unsupported)",
        (byte)'o' => "OBJ (unsupported)", 0x82 => "EXT1 (unsupported)", 0x83 => "EXT2 (unsupported)",
        0x84 => "EXT4 (unsupported)", 0x96 => "BYTEARRAY8 (unsupported)", 0x97 => "NEXT_BUFFER (unsupported)",
        0x98 => "READONLY_BUFFER (unsupported)",
        _ => "unknown",
    };
}
