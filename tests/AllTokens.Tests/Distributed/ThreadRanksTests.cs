using AllTokens.Data;
using AllTokens.Data.Transforms;
using AllTokens.Distributed;
using AllTokens.Models;
using AllTokens.Tests.Training;
using AllTokens.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Distributed;

/// <summary>
/// N ranks as threads of one process: each collective exchanges every rank's contribution through shared slots and
/// sums them in rank order. A rank left waiting for more than the timeout fails the test (a hang) instead of blocking.
/// </summary>
internal sealed class ThreadRanks(int size, TimeSpan timeout)
{
    private readonly Barrier barrier = new(size);
    private readonly object?[] slots = new object?[size];

    public IProcessGroup Rank(int rank) => new Member(this, rank);

    private T[] Exchange<T>(int rank, T value)
    {
        slots[rank] = value;
        Wait();
        var all = slots.Select(s => (T)s!).ToArray();
        Wait(); // nobody overwrites a slot before every rank has read it
        return all;
    }

    private void Wait()
    {
        if (!barrier.SignalAndWait(timeout)) throw new TimeoutException($"a rank waited {timeout.TotalSeconds} s in a collective: the ranks disagree");
    }

    private sealed class Member(ThreadRanks g, int rank) : IProcessGroup
    {
        public int Rank => rank;
        public int Size => g.slots.Length;

        public void AllReduceSum(Tensor tensor)
        {
            var all = g.Exchange(rank, tensor.data<float>().ToArray());
            var sum = new float[all[0].Length];
            foreach (var a in all) for (int i = 0; i < sum.Length; i++) sum[i] += a[i];
            using var src = torch.tensor(sum).reshape(tensor.shape);
            using (torch.no_grad()) tensor.copy_(src);
        }

        public void AllReduceSum(Span<double> values)
        {
            var all = g.Exchange(rank, values.ToArray());
            values.Clear();
            foreach (var a in all) for (int i = 0; i < values.Length; i++) values[i] += a[i];
        }

        public void Broadcast(Tensor tensor, int root = 0)
        {
            var all = g.Exchange(rank, tensor.bytes.ToArray());
            if (rank != root) all[root].CopyTo(tensor.bytes);
        }

        public void Barrier() => g.Exchange(rank, 0);
        public void Abort(int code) => throw new InvalidOperationException($"rank {rank} aborted with {code}");
        public void Dispose() { }
    }
}

/// <summary>The trainer's data-parallel logic with ranks as threads (no Open MPI needed): agreement on failures, BatchNorm.</summary>
public sealed class ThreadRanksTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-ranks-").FullName;
    private readonly int threads = torch.get_num_threads();

    public ThreadRanksTests() => torch.set_num_threads(1);

    public void Dispose()
    {
        torch.set_num_threads(threads);
        Directory.Delete(dir, true);
    }

    private sealed class FailingTask(ITrainTask inner, int failAt) : ITrainTask
    {
        private int calls;
        public ImageClassifier Model => inner.Model;
        public TaskOutput Step(Batch batch) => ++calls == failAt ? throw new InvalidDataException("teacher store is corrupt") : inner.Step(batch);
        public string SaveState() => inner.SaveState();
        public void LoadState(string state) => inner.LoadState(state);
    }

    /// <summary>Trains <paramref name="world"/> ranks on threads; returns each rank's outcome and final state dict.</summary>
    private (Exception? Error, Dictionary<string, float[]> State)[] Train(string model, int world, Func<int, ITrainTask, ITrainTask>? wrap = null)
    {
        var c = TrainerTests.TinyConfig();
        c.Model = model;
        c.Epochs = 1;
        c.DropPath = 0;
        c.BatchSize = 4;
        c.ModelEma = true;
        var ranks = new ThreadRanks(world, TimeSpan.FromSeconds(30));
        var data = SyntheticData.Create(32, 4, 16, 5);
        var val = SyntheticData.Create(10, 4, 16, 6);
        var eval = new EvalTransformOptions(32, 1.0, Interpolation.Bilinear);
        torch.manual_seed(11);
        var models = Enumerable.Range(0, world).Select(_ => TrainerTests.Tiny(c).Model).ToList();
        using (torch.no_grad()) // other starting weights on the other ranks: the broadcast from rank 0 must align them
            foreach (var m in models.Skip(1))
                foreach (var p in m.parameters()) p.add_(torch.randn_like(p), alpha: 0.1);
        var results = new (Exception?, Dictionary<string, float[]>)[world];
        var workers = Enumerable.Range(0, world).Select(r => new Thread(() =>
        {
            using var scope = torch.NewDisposeScope();
            torch.set_num_threads(1);
            var group = ranks.Rank(r);
            var m = models[r];
            ITrainTask task = new ClassificationTask(m, c.Smoothing, c.MixupOptions(), (ulong)c.Seed);
            if (wrap is not null) task = wrap(r, task);
            var train = new DataLoader(data, new EvalSampleTransform(new EvalTransform(eval)), new LoaderOptions(4, Seed: 3, Rank: r, WorldSize: world));
            var valLoader = new DataLoader(val, new EvalSampleTransform(new EvalTransform(eval)),
                new LoaderOptions(4, Shuffle: false, DropLast: false, Rank: r, WorldSize: world));
            Exception? error = null;
            using (var trainer = new Trainer(c, task, train, valLoader, new RunInfo(dir, model, data.ClassNames), group: group))
            {
                try
                {
                    trainer.Run();
                }
                catch (Exception e)
                {
                    error = e;
                }
            }
            results[r] = (error, m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.to(ScalarType.Float32).data<float>().ToArray()));
        })).ToList();
        workers.ForEach(t => t.Start());
        workers.ForEach(t => Assert.True(t.Join(TimeSpan.FromSeconds(120)), "a rank hung"));
        models.ForEach(m => m.Dispose());
        return results;
    }

    [Fact]
    public void NonFiniteLossOnOneRankStopsEveryRank()
    {
        var results = Train("tiny_t2t", 2, (r, t) => r == 1 ? new PoisonedTask(t, 3) : t);
        Assert.All(results, x =>
        {
            var e = Assert.IsType<NonFiniteLossException>(x.Error);
            Assert.Contains("loss is not finite on rank 1 at epoch 0, batch 2 (optimizer step 3)", e.Message);
        });
        Assert.Equal(results[0].State.Keys, results[1].State.Keys);
        foreach (var (k, v) in results[0].State) Assert.Equal(v, results[1].State[k]); // both stopped before the bad step
    }

    [Fact]
    public void AFailureOnOneRankIsReportedThereAndStopsTheOthers()
    {
        var results = Train("tiny_t2t", 2, (r, t) => r == 0 ? new FailingTask(t, 2) : t);
        var own = Assert.IsType<InvalidDataException>(results[0].Error);
        Assert.True(Collective.IsAgreed(own)); // every rank stopped with it: the job may finalize instead of aborting
        var peer = Assert.IsType<PeerFailureException>(results[1].Error);
        Assert.Contains("rank 0 failed during training (epoch 0, batch 1)", peer.Message);
    }

    [Fact]
    public void RanksEndIdenticalWithBatchNormStatisticsAveraged()
    {
        // tiny_lvvit has a BatchNorm stem: per-rank statistics while training, averaged before evaluation/checkpoint.
        var results = Train("tiny_lvvit", 2);
        Assert.All(results, x => Assert.Null(x.Error));
        var (a, b) = (results[0].State, results[1].State);
        Assert.Contains(a.Keys, k => k.EndsWith("running_mean", StringComparison.Ordinal));
        foreach (var (k, v) in a) Assert.Equal(v, b[k]);
        Assert.True(File.Exists(Path.Combine(dir, "last.safetensors")));
    }
}
