using AllTokens.Training;

namespace AllTokens.Tests.Training;

public sealed class RecipeTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-recipe-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    internal static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "AllTokens.slnx"))) return d.FullName;
        throw new DirectoryNotFoundException("repository root (AllTokens.slnx) not found above " + AppContext.BaseDirectory);
    }

    private string Write(string text)
    {
        string path = Path.Combine(dir, $"r{Guid.NewGuid():N}.yaml");
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void EveryShippedRecipeParsesValidatesAndCitesItsSource()
    {
        var files = Directory.GetFiles(Path.Combine(RepoRoot(), "recipes"), "*.yaml");
        var names = files.Select(f => Path.GetFileNameWithoutExtension(f)).ToHashSet();
        foreach (var expected in new[] { "lvvit_t", "lvvit_s", "lvvit_m", "lvvit_l", "t2t_vit_7", "t2t_vit_10", "t2t_vit_12", "t2t_vit_14",
                     "t2t_vit_19", "t2t_vit_24", "t2t_vit_t_14", "t2t_vit_t_19", "t2t_vit_t_24", "t2t_vit_14_cifar10_transfer" })
            Assert.Contains(expected, names);
        Assert.Contains(names, n => n.StartsWith("fashion_mnist_", StringComparison.Ordinal));
        foreach (var f in files)
        {
            var c = TrainConfig.Load(f);
            c.Validate(f);
            Assert.False(string.IsNullOrEmpty(c.Model), f);
            string head = string.Join("\n", File.ReadLines(f).TakeWhile(l => l.StartsWith('#')));
            Assert.True(head.Contains("Source:", StringComparison.Ordinal) || head.Contains("Our own setting", StringComparison.Ordinal), $"{f} cites no source");
        }
    }

    [Fact]
    public void PublishedValuesLandInTheConfig()
    {
        string root = Path.Combine(RepoRoot(), "recipes");
        var l = TrainConfig.Load(Path.Combine(root, "lvvit_l.yaml"));
        Assert.Equal(1e-3, l.Lr);
        Assert.Equal(0.3, l.DropPath);
        Assert.Equal("rand-n3-m9-mstd0.5-inc1", l.Aa);
        Assert.Equal(1024, l.BatchSize * l.GradAccum);
        Assert.Equal(310, l.Schedule().TotalEpochs);
        Assert.Equal(0.99992, l.ModelEmaDecay);
        var t = TrainConfig.Load(Path.Combine(root, "t2t_vit_19.yaml"));
        Assert.Equal(0.065, t.WeightDecay);
        Assert.Equal((0.8, 1.0), (t.Mixup, t.Cutmix));
        var x = TrainConfig.Load(Path.Combine(root, "t2t_vit_14_cifar10_transfer.yaml"));
        Assert.Equal("sgd", x.Opt);
        Assert.Equal(0.01, x.TransferRatio);
        Assert.Equal(["cls_token", "norm"], x.Freeze);
        Assert.False(x.FilterBiasAndBn);
        Assert.Equal(2e-4, x.MinLr);
        Assert.Null(x.Aa);
        Assert.Equal([0.4914, 0.4822, 0.4465], x.Mean!);
    }

    [Fact]
    public void UnknownKeyNamesFileLineKeyAndSuggestion()
    {
        string path = Write("lr: 1e-3\nlr_min: 1e-5\n");
        var e = Assert.Throws<RecipeException>(() => TrainConfig.Load(path));
        Assert.Contains($"{path}:2", e.Message);
        Assert.Contains("unknown key 'lr_min'", e.Message);
        Assert.Contains("did you mean 'min_lr'", e.Message);
        var e2 = Assert.Throws<RecipeException>(() => new TrainConfig().Set("warmup-epoch", "3", "--set"));
        Assert.Contains("'warmup_epochs'", e2.Message);
    }

    [Fact]
    public void BadValuesAreNamed()
    {
        Assert.Contains("key 'epochs' expects an integer, got 'ten'", Assert.Throws<RecipeException>(() => TrainConfig.Load(Write("epochs: ten\n"))).Message);
        Assert.Contains("expects true or false", Assert.Throws<RecipeException>(() => TrainConfig.Load(Write("model_ema: maybe\n"))).Message);
        Assert.Contains("expects a list of numbers", Assert.Throws<RecipeException>(() => TrainConfig.Load(Write("scale: [0.08, big]\n"))).Message);
        Assert.Contains("single value", Assert.Throws<RecipeException>(() => TrainConfig.Load(Write("lr:\n  a: 1\n"))).Message);
        Assert.Contains("mapping", Assert.Throws<RecipeException>(() => TrainConfig.Load(Write("- lr\n- 3\n"))).Message);
        string bad = Write("lr: [1\n");
        Assert.Contains(bad, Assert.Throws<RecipeException>(() => TrainConfig.Load(bad)).Message);
        var c = TrainConfig.Load(Write("opt: adam\n"));
        Assert.Contains("'opt' must be adamw or sgd", Assert.Throws<RecipeException>(() => c.Validate("r.yaml")).Message);
    }

    [Fact]
    public void FlagsOverrideAndEffectiveConfigRoundTrips()
    {
        var c = TrainConfig.Load(Write("lr: 1e-3\nbatch_size: 32\nfreeze: [cls_token]\nclip_grad: 5\n"));
        c.Set("batch_size", "16", "--batch");
        c.Set("clip_grad", "null", "--set");
        c.Set("scale", "0.5,1", "--set");
        Assert.Equal(16, c.BatchSize);
        Assert.Null(c.ClipGrad);
        Assert.Equal([0.5, 1.0], c.Scale);
        Assert.Equal(1e-3, c.Lr);
        string saved = Write(c.ToYaml("effective config"));
        Assert.Equal(c.ToDictionary(), TrainConfig.Load(saved).ToDictionary());
        Assert.Equal(TrainConfig.Keys.Count, c.ToDictionary().Count);
        Assert.Contains(TrainConfig.Keys, k => k.Name == "model_ema_decay");
        Assert.Contains(TrainConfig.Keys, k => k.Name == "bf16");
    }
}
