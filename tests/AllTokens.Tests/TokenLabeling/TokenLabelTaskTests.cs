using AllTokens.Data;
using AllTokens.Models;
using AllTokens.TokenLabeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.TokenLabeling;

public sealed class TokenLabelTaskTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-tl-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    internal static LvVit TinyLvVit(int classes = 5, int img = 64, int seed = 1)
    {
        torch.manual_seed(seed);
        return new LvVit("lvvit_tiny_test", new LvVitConfig(32, 2, 2, 2.0, 1.0, StemChannels: 8), new ModelOptions(NumClasses: classes, ImgSize: img));
    }

    // ---- official import ----

    private static string Fixture => Path.Combine(AppContext.BaseDirectory, "fixtures", "tokenlabel", "official");

    // The formula of tools/make_token_label_fixtures.py.
    private static (float V, int I) Expected(int seed, int r, int y, int x) =>
        (3.0f - r + 0.25f * y - 0.125f * x + 0.5f * seed, (seed * 7 + r * 13 + y * 4 + x) % 40);

    [Fact]
    public void ImportsOfficialPtFilesKeyedForImageFolder()
    {
        string store = Path.Combine(dir, "official.atl");
        var header = OfficialLabelImport.Import(Fixture, store, numClasses: 40, cancel: TestContext.Current.CancellationToken);
        Assert.Equal((3, 2, 4, LabelKeyStyle.OfficialStem, LabelMapRegion.FullImage), (header.K, header.Height, header.Width, header.KeyStyle, header.Region));
        using (var s = LabelStore.Open(store))
        {
        Assert.Equal(3, s.Count);
        // File order of the generator: seed 0 = n01440764_10026, 1 = n01440764_7, 2 = n02102040_15.
        (string Key, int Seed)[] cases = [("n01440764/n01440764_10026.JPEG", 0), ("n01440764/n01440764_7.JPEG", 1), ("n02102040/n02102040_15.JPEG", 2)];
        foreach (var (key, seed) in cases)
        {
            var m = s.Get(key);
            for (int r = 0; r < 3; r++)
                for (int y = 0; y < 2; y++)
                    for (int x = 0; x < 4; x++)
                    {
                        var (v, i) = Expected(seed, r, y, x);
                        Assert.Equal(v, m.Value(r, y, x));
                        Assert.Equal(i, m.Index(r, y, x));
                    }
        }
        }
        // Importing again skips everything and keeps the store.
        int skipped = -1;
        OfficialLabelImport.Import(Fixture, store, 40, progress: new SyncProgress<LabelProgress>(p => skipped = p.Skipped), cancel: TestContext.Current.CancellationToken);
        Assert.Equal(3, skipped);
    }

    [Fact]
    public void ImportRejectsIndicesBeyondTheClassCount()
    {
        var e = Assert.Throws<InvalidDataException>(() => OfficialLabelImport.Import(Fixture, Path.Combine(dir, "x.atl"), numClasses: 20, cancel: TestContext.Current.CancellationToken));
        Assert.Contains(".pt", e.Message);
        Assert.Contains("not an integer in [0, 20)", e.Message);
    }

    // ---- annotator ----

    [Fact]
    public void AnnotatorAppliesTheAuxHeadToEveryPatchToken()
    {
        using var _ = torch.NewDisposeScope();
        using var model = TinyLvVit();
        model.eval();
        var ann = new Annotator(model);
        Assert.Equal("aux_head", ann.ClassifierName);
        var x = torch.randn(2, 3, 64, 64);
        var dense = ann.DenseLogits(x);
        Assert.Equal([2L, 5, 4, 4], dense.shape);
        var tokens = model.ForwardTrain(x).TokenLogits!; // [B, N, C] from the aux head, row-major tokens
        Assert.True(torch.allclose(dense.flatten(2).transpose(1, 2), tokens, rtol: 1e-5, atol: 1e-6));
        var maps = ann.Annotate(x, 3);
        Assert.Equal((3, 4, 4), (maps[1].K, maps[1].Height, maps[1].Width));
        // Location (2, 1) of image 1: the top class is the argmax of the token's logits, values descend.
        var tok = tokens[1, 2 * 4 + 1];
        Assert.Equal(tok.argmax().item<long>(), maps[1].Index(0, 2, 1));
        Assert.True(maps[1].Value(0, 2, 1) >= maps[1].Value(1, 2, 1) && maps[1].Value(1, 2, 1) >= maps[1].Value(2, 2, 1));
    }

    [Fact]
    public void AnnotatorUsesTheHeadOfModelsWithoutAuxHead()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(2);
        using var model = new LvVit("noaux", new LvVitConfig(32, 1, 2, 2.0, 1.0, StemChannels: 8, AuxHead: false, MixToken: false),
            new ModelOptions(NumClasses: 3, ImgSize: 32));
        model.eval();
        var ann = new Annotator(model);
        Assert.Equal("head", ann.ClassifierName);
        Assert.Equal([1L, 3, 2, 2], ann.DenseLogits(torch.randn(1, 3, 32, 32)).shape);
    }

    // ---- the task ----

    private static Batch MakeBatch(int b, int img, int seed)
    {
        var g = new Generator((ulong)seed);
        return new Batch
        {
            Images = torch.randn([b, 3, img, img], generator: g),
            Labels = torch.randint(0, 5, [b], generator: g),
            Indices = Enumerable.Range(seed * b, b).ToArray(),
            Augments = Enumerable.Range(0, b).Select(i => new AugmentRecord(AugmentOrder.TokenLabel, 100, 80, i % 2 == 0,
                [], new CropBox(5 + i, 10, 60, 70), img, img)).ToList(),
        };
    }

    private static LabelMap StoredMap(int index)
    {
        var rnd = new Random(index);
        int k = 2, h = 5, w = 6;
        var ix = new int[k * h * w];
        for (int p = 0; p < h * w; p++)
        {
            ix[p] = rnd.Next(5);
            ix[h * w + p] = (ix[p] + 1 + rnd.Next(4)) % 5;
        }
        return new LabelMap(k, h, w, Enumerable.Range(0, k * h * w).Select(i => i < h * w ? 3f : 1f).ToArray(), ix);
    }

    [Fact]
    public void StepTrainsResumesAndDoesNotLeak()
    {
        using var model = TinyLvVit();
        model.train();
        var options = new TokenLabelTaskOptions(new DenseTargetOptions(5, model.GridSize), new TokenLabelLossOptions(DenseWeight: 1.0), Seed: 11);
        var task = new TokenLabelTask(model, new StoredTargetSource(StoredMap), options);
        var opt = torch.optim.AdamW(model.parameters(), lr: 3e-3);
        float first = 0, last = 0;
        long live = -1;
        for (int step = 0; step < 12; step++)
        {
            using var scope = torch.NewDisposeScope();
            using var batch = MakeBatch(4, 64, seed: 0); // the same batch: the loss must fall
            opt.zero_grad();
            var o = task.Step(batch);
            Assert.Equal([4L, 5], o.Logits.shape);
            o.Loss.backward();
            opt.step();
            float l = o.Loss.item<float>();
            Assert.True(float.IsFinite(l));
            if (step == 0) first = l;
            last = l;
            scope.Dispose();
            if (step == 2) live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
            if (step > 2) Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        Assert.True(last < first, $"loss {first} → {last}");
        opt.Dispose();

        // The MixToken generator resumes exactly.
        string state = task.SaveState();
        var boxes = new List<MixBox?>();
        for (int i = 0; i < 3; i++)
        {
            using var scope = torch.NewDisposeScope();
            using var batch = MakeBatch(2, 64, seed: i);
            task.Step(batch);
            boxes.Add(task.LastBox);
        }
        var again = new TokenLabelTask(model, new StoredTargetSource(StoredMap), options with { Seed = 999 });
        again.LoadState(state);
        for (int i = 0; i < 3; i++)
        {
            using var scope = torch.NewDisposeScope();
            using var batch = MakeBatch(2, 64, seed: i);
            again.Step(batch);
            Assert.Equal(boxes[i], again.LastBox);
        }
    }

    [Fact]
    public void ReLabelModeTrainsTheClassTokenOnThePooledCropLabel()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(2);
        using var model = new LvVit("noaux", new LvVitConfig(32, 1, 2, 2.0, 1.0, StemChannels: 8, AuxHead: false, MixToken: false),
            new ModelOptions(NumClasses: 5, ImgSize: 64));
        model.eval(); // deterministic: the loss is recomputed below
        var opts = new DenseTargetOptions(5, 1);
        var task = new TokenLabelTask(model, new StoredTargetSource(StoredMap),
            new TokenLabelTaskOptions(opts, new TokenLabelLossOptions(Mode: TokenLabelLossMode.ReLabel)));
        using var batch = MakeBatch(3, 64, 2);
        var loss = task.Step(batch).Loss.item<float>();
        Assert.Null(task.LastBox);
        var targets = DenseTargets.FromLabelMaps(batch.Indices.Select(StoredMap).ToList(), batch.Augments!, opts);
        var want = TokenLabelLoss.SoftCrossEntropy(model.ForwardTrain(batch.Images).Logits, targets.Cls).item<float>();
        Assert.Equal(want, loss, 5);
    }

    [Fact]
    public void TwoDModeTrainsEveryTokenOnTheGroundTruth()
    {
        using var _ = torch.NewDisposeScope();
        using var model = TinyLvVit();
        model.eval();
        var opts = new DenseTargetOptions(5, model.GridSize);
        var task = new TokenLabelTask(model, new GroundTruthTargetSource(),
            new TokenLabelTaskOptions(opts, new TokenLabelLossOptions(Mode: TokenLabelLossMode.TwoD), MixToken: false));
        using var batch = MakeBatch(2, 64, 3);
        var loss = task.Step(batch).Loss.item<float>();
        var o = model.ForwardTrain(batch.Images);
        var gt = DenseTargets.SmoothOneHot(batch.Labels, 5, 0.1);
        var want = TokenLabelLoss.SoftCrossEntropy(o.Logits, gt) + 0.5 * TokenLabelLoss.SoftCrossEntropy(o.TokenLogits!, gt.unsqueeze(1).expand(2, 16, 5));
        Assert.Equal(want.item<float>(), loss, 5);
    }

    [Fact]
    public void TaskRejectsAMismatchedLabelSize()
    {
        using var model = TinyLvVit();
        var e = Assert.Throws<ArgumentException>(() =>
            new TokenLabelTask(model, new StoredTargetSource(StoredMap), new TokenLabelTaskOptions(new DenseTargetOptions(5, 14), new TokenLabelLossOptions())));
        Assert.Contains("token grid side 4", e.Message);
    }

    [Fact]
    public void OnlineTeacherLabelsTheAugmentedBatch()
    {
        using var _ = torch.NewDisposeScope();
        using var teacher = TinyLvVit(seed: 5);
        using var student = TinyLvVit(seed: 6);
        var source = new TeacherTargetSource(teacher, topK: 0);
        using var batch = MakeBatch(2, 64, 1);
        var opts = new DenseTargetOptions(5, 4, Smoothing: 0);
        var t = source.Targets(batch, opts);
        // Full box on the teacher's own 4×4 grid, L = 4: every token target is softmax of the teacher's token logits.
        teacher.eval();
        using (torch.no_grad())
        {
            var tok = teacher.ForwardTrain(batch.Images).TokenLogits!.softmax(-1);
            Assert.True(torch.allclose(t.Tokens!, tok, rtol: 1e-4, atol: 1e-6));
        }
        var task = new TokenLabelTask(student, source, new TokenLabelTaskOptions(opts, new TokenLabelLossOptions()));
        student.train();
        var o = task.Step(batch);
        o.Loss.backward();
        Assert.True(float.IsFinite(o.Loss.item<float>()));
        Assert.All(teacher.parameters(), p => Assert.True(p.grad is null));
    }
}

internal sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
