namespace AllTokens.Checkpoints;

/// <summary>Finding the tensors in whatever a checkpoint file holds.</summary>
public static class StateDicts
{
    private const string ModulePrefix = "module.";
    private const int MaxContainerDepth = 4;

    /// <summary>Keys under which training checkpoints keep EMA weights.</summary>
    private static readonly string[] EmaKeys = ["state_dict_ema", "model_ema"];

    /// <summary>Keys under which training checkpoints keep the model weights, in order of preference.</summary>
    private static readonly string[] ModelKeys = ["state_dict", "model", "model_state", "module", "net"];

    /// <summary>
    /// Extracts a state dict from an unpickled checkpoint (see <see cref="PthReader.ReadObject"/>): either a raw
    /// state dict (a dict of tensors; non-tensor entries are skipped) or a container dict holding one under
    /// <c>state_dict</c>, <c>model</c>, <c>model_state</c>, <c>module</c> or <c>net</c>; <c>state_dict_ema</c>
    /// (or <c>model_ema</c>) is used when <paramref name="preferEma"/> is set or when it is the only one.
    /// A leading <c>module.</c> (DataParallel) is stripped from every key.
    /// </summary>
    /// <exception cref="CheckpointFormatException">No state dict found; the message lists the top-level keys.</exception>
    public static IReadOnlyList<KeyValuePair<string, RawTensor>> ExtractStateDict(object? root, string pathForErrors, bool preferEma)
    {
        var found = TryExtract(root, preferEma, 0);
        if (found is not null) return StripModulePrefix(found, pathForErrors);
        throw new CheckpointFormatException(pathForErrors, NotFoundMessage(root));
    }

    /// <summary>
    /// Reads a state dict from a safetensors file, a zip <c>.pth</c> or a legacy <c>.pth</c>, recognised by content
    /// rather than by extension.
    /// </summary>
    public static IReadOnlyList<KeyValuePair<string, RawTensor>> ReadAny(string path, bool preferEma = false)
    {
        CheckpointKind kind;
        byte[] head;
        using (var fs = PthReader.OpenRead(path)) kind = CheckpointSniffer.Sniff(fs, out head);
        return kind switch
        {
            CheckpointKind.Safetensors => StripModulePrefix(Safetensors.Read(path).Tensors, path),
            CheckpointKind.Zip or CheckpointKind.LegacyPickle or CheckpointKind.Tar => PthReader.ReadStateDict(path, preferEma),
            _ => throw new CheckpointFormatException(path,
                $"not a checkpoint this library reads (safetensors, PyTorch zip or legacy .pth): {CheckpointSniffer.DescribeHead(head)}"),
        };
    }

    private static List<KeyValuePair<string, RawTensor>>? TryExtract(object? node, bool preferEma, int depth)
    {
        if (node is not PickleDict dict || depth > MaxContainerDepth) return null;

        var ema = EmaKeys.Select(k => dict.TryGetValue(k, out var v) ? v : null).FirstOrDefault(v => v is PickleDict);
        if (preferEma && TryExtract(ema, preferEma, depth + 1) is { } fromEma) return fromEma;
        foreach (var key in ModelKeys)
        {
            if (dict.TryGetValue(key, out var v) && TryExtract(v, preferEma, depth + 1) is { } fromModel) return fromModel;
        }
        if (TryExtract(ema, preferEma, depth + 1) is { } onlyEma) return onlyEma;

        var tensors = new List<KeyValuePair<string, RawTensor>>();
        foreach (var (k, v) in dict)
        {
            if (k is string name && v is RawTensor t) tensors.Add(new(name, t));
        }
        return tensors.Count > 0 ? tensors : null;
    }

    internal static IReadOnlyList<KeyValuePair<string, RawTensor>> StripModulePrefix(IReadOnlyList<KeyValuePair<string, RawTensor>> tensors, string pathForErrors)
    {
        if (!tensors.Any(p => p.Key.StartsWith(ModulePrefix, StringComparison.Ordinal))) return tensors;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var result = new List<KeyValuePair<string, RawTensor>>(tensors.Count);
        foreach (var (k, t) in tensors)
        {
            var name = k.StartsWith(ModulePrefix, StringComparison.Ordinal) ? k[ModulePrefix.Length..] : k;
            if (!seen.Add(name))
                throw new CheckpointFormatException(pathForErrors, $"after stripping the '{ModulePrefix}' prefix, key '{name}' occurs twice");
            result.Add(new(name, t));
        }
        return result;
    }

    private static string NotFoundMessage(object? root)
    {
        const string expected = "expected a dict of tensors, or a dict holding one under 'state_dict', 'state_dict_ema', 'model', 'model_state', 'module' or 'net'";
        switch (root)
        {
            case PickleDict d when d.Count == 0:
                return $"no state dict found: the checkpoint is an empty dict ({expected})";
            case PickleDict d:
                // Name what an attacker put where tensors belong (found by the hostile-input suite: a dict whose value is
                // an os.system call was reported only by its key).
                var inert = d.Where(kv => kv.Value is PickleObject { RootGlobal.IsAllowlisted: false } or PickleGlobal { IsAllowlisted: false })
                    .Select(kv => $"'{(kv.Value as PickleObject)?.RootGlobal!.FullName ?? ((PickleGlobal)kv.Value!).FullName}' under {PickleText.Describe(kv.Key)}")
                    .Take(3).ToList();
                var inertNote = inert.Count > 0
                    ? $"; {string.Join(", ", inert)} {(inert.Count == 1 ? "is not on the allowlist and was recorded as an inert placeholder" : "are not on the allowlist and were recorded as inert placeholders")}, never called"
                    : "";
                return $"no state dict found; top-level keys: {PickleText.JoinKeys(d.Keys)}{inertNote} ({expected})";
            case PickleObject o:
                var g = o.RootGlobal;
                var note = g is { IsAllowlisted: false }
                    ? $"; '{g.FullName}' is not on the allowlist and was recorded as an inert placeholder, never called"
                    : "";
                return $"no state dict found: the checkpoint holds a {PickleText.Describe(o)}{note} ({expected})";
            default:
                return $"no state dict found: the checkpoint holds {PickleText.Describe(root)} ({expected})";
        }
    }
}
