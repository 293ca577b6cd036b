using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Checkpoints;

/// <summary>State-dict access in PyTorch's order.</summary>
public static class ModuleState
{
    /// <summary>
    /// Parameters and persistent buffers in PyTorch's <c>state_dict()</c> order: for each module, its own
    /// parameters, then its own buffers, then its children in registration order. (TorchSharp's own
    /// <c>state_dict()</c> lists every parameter before any buffer, which would not match official key order.)
    /// The tensors are the module's own (no copies).
    /// </summary>
    public static List<KeyValuePair<string, Tensor>> Ordered(nn.Module module)
    {
        var result = new List<KeyValuePair<string, Tensor>>();
        Walk(module, "", result);
        return result;
    }

    private static void Walk(nn.Module m, string prefix, List<KeyValuePair<string, Tensor>> into)
    {
        foreach (var (name, p) in m.named_parameters(recurse: false)) into.Add(new(prefix + name, p));
        foreach (var (name, b) in m.named_buffers(recurse: false, include_nonpersistent: false)) into.Add(new(prefix + name, b));
        foreach (var (name, child) in m.named_children()) Walk(child, prefix + name + ".", into);
    }
}
