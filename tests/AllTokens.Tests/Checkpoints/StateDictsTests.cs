using AllTokens.Checkpoints;

namespace AllTokens.Tests.Checkpoints;

public sealed class StateDictsTests
{
    private static RawTensor T(byte v) => new(TensorDType.UInt8, [1], [v]);

    private static PickleDict Dict(params (object? Key, object? Value)[] items)
    {
        var d = new PickleDict();
        foreach (var (k, v) in items) d.Set(k, v);
        return d;
    }

    [Fact]
    public void RawStateDictSkipsNonTensorEntries()
    {
        var sd = StateDicts.ExtractStateDict(Dict(("a", T(1)), ("_metadata", Dict()), ("b", T(2))), "x.pth", false);
        Assert.Equal(["a", "b"], sd.Select(p => p.Key));
    }

    [Fact]
    public void ContainerKeysArePreferredInOrder()
    {
        var root = Dict(("epoch", 1L), ("net", Dict(("n", T(1)))), ("model", Dict(("module.m", T(2)))));
        Assert.Equal("m", Assert.Single(StateDicts.ExtractStateDict(root, "x.pth", false)).Key);
    }

    [Fact]
    public void ModulePrefixCollisionIsAnError()
    {
        var e = Assert.Throws<CheckpointFormatException>(() =>
            StateDicts.ExtractStateDict(Dict(("module.a", T(1)), ("a", T(2))), "x.pth", false));
        Assert.StartsWith("x.pth: ", e.Message);
        Assert.Contains("twice", e.Message);
    }

    [Fact]
    public void MissingStateDictListsTopLevelKeys()
    {
        var e = Assert.Throws<CheckpointFormatException>(() =>
            StateDicts.ExtractStateDict(Dict(("epoch", 3L), ("optimizer", Dict()), ("args", null)), "ckpt.pth", true));
        Assert.StartsWith("ckpt.pth: no state dict found", e.Message);
        Assert.Contains("'epoch', 'optimizer', 'args'", e.Message);
    }

    [Fact]
    public void NonDictRootIsAnError()
    {
        var e = Assert.Throws<CheckpointFormatException>(() => StateDicts.ExtractStateDict(new List<object?>(), "l.pth", false));
        Assert.Contains("list of 0", e.Message);
    }
}
