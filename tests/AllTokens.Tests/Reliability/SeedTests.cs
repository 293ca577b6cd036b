using AllTokens.Checkpoints;
using AllTokens.Training;
using TorchSharp;

namespace AllTokens.Tests.Reliability;

public sealed class SeedTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-seed-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    private static float[][] InitialState(TrainConfig c, string runDir)
    {
        using var session = TrainSetup.Create(c, runDir, resume: false);
        return ModuleState.Ordered(session.Model).Select(kv => kv.Value.to(torch.ScalarType.Float32).data<float>().ToArray()).ToArray();
    }

    [Fact]
    public void SameSeedBuildsTheSameInitialModel()
    {
        // Found by the kill -9 test: the model was built before the run seeded torch, so two runs with one seed
        // started from different weights (and T2T's fixed Performer projections differed).
        var c = new TrainConfig { Model = "t2t_vit_nano", ImgSize = 32, Data = FaultFixtures.IdxFolder(dir, 16, 8), BatchSize = 8, Seed = 5 };
        torch.manual_seed(1);
        var a = InitialState(c, Path.Combine(dir, "a"));
        torch.manual_seed(2); // whatever ran before must not matter
        var b = InitialState(c, Path.Combine(dir, "b"));
        Assert.Equal(a.Length, b.Length);
        for (int i = 0; i < a.Length; i++) Assert.True(a[i].SequenceEqual(b[i]), $"tensor {i} differs");
        c.Seed = 6;
        var other = InitialState(c, Path.Combine(dir, "c"));
        Assert.Contains(Enumerable.Range(0, a.Length), i => !a[i].SequenceEqual(other[i]));
    }
}
