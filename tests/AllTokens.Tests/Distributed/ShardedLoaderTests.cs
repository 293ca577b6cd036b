using AllTokens.Data;
using AllTokens.Data.Transforms;
using AllTokens.Tests.Data;
using TorchSharp;

namespace AllTokens.Tests.Distributed;

public sealed class ShardedLoaderTests
{
    private static readonly TrainTransformOptions Train = new() { ImgSize = 16, ReProb = 0.5 };

    private static DataLoader Loader(IImageDataset ds, int batch, int rank, int world, bool train = true, int workers = 0) => train
        ? new DataLoader(ds, new TrainTransform(Train), new LoaderOptions(batch, workers, Seed: 42, Rank: rank, WorldSize: world))
        : new DataLoader(ds, new EvalSampleTransform(new EvalTransform(new EvalTransformOptions(16))),
            new LoaderOptions(batch, workers, Shuffle: false, DropLast: false, Rank: rank, WorldSize: world));

    private static List<(int[] Indices, float[] Images)> Collect(IEnumerable<Batch> batches)
    {
        var list = new List<(int[], float[])>();
        foreach (var b in batches)
            using (b)
            {
                Assert.Equal([b.Size, 3, 16, 16], b.Images.shape);
                list.Add((b.Indices, b.Size == 0 ? [] : b.Images.data<float>().ToArray())); // TorchSharp cannot read an empty tensor
            }
        return list;
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void OneProcessWithTheGlobalBatchSeesTheUnionOfTheRanks(int world)
    {
        var ds = new FakeDataset(37, 4);
        const int batch = 4;
        int per = 3 * 16 * 16;
        var single = Collect(Loader(ds, batch * world, 0, 1).Epoch(1));
        var ranks = Enumerable.Range(0, world).Select(r => Collect(Loader(ds, batch, r, world, workers: r % 2).Epoch(1))).ToList();
        Assert.Equal(37 / (batch * world), single.Count);
        Assert.All(ranks, r => Assert.Equal(single.Count, r.Count));
        for (int b = 0; b < single.Count; b++)
            for (int j = 0; j < batch * world; j++)
            {
                // Strided: row j of the global batch is row j / N of rank j % N.
                var (indices, images) = ranks[j % world][b];
                Assert.Equal(single[b].Indices[j], indices[j / world]);
                Assert.Equal(single[b].Images.AsSpan(j * per, per).ToArray(), images.AsSpan(j / world * per, per).ToArray());
            }
    }

    [Fact]
    public void ShardPositionsAreStridedWithinEachGlobalBatch()
    {
        var ds = new FakeDataset(37, 4);
        var train = Loader(ds, 2, 2, 3); // G = 6
        Assert.Equal(6, train.BatchesPerEpoch); // 37 / 6, drop_last
        Assert.Equal([8, 11], train.ShardPositions(1));
        Assert.Equal(train.EpochOrder(0)[8], Collect(train.Epoch(0, 1)).First().Indices[0]);
        // Validation: every sample exactly once over the ranks; the short last global batch (position 36) is rank 0's.
        var val = Enumerable.Range(0, 3).Select(r => Loader(ds, 4, r, 3, train: false)).ToList();
        Assert.Equal(4, val[0].BatchesPerEpoch); // ceil(37 / 12)
        Assert.Equal([36], val[0].ShardPositions(3));
        Assert.Empty(val[1].ShardPositions(3));
        var seen = val.SelectMany(l => Collect(l.Epoch(0)).SelectMany(b => b.Indices)).Order().ToList();
        Assert.Equal(Enumerable.Range(0, 37), seen);
        Assert.Equal([4, 3, 3], val.Select(l => Collect(l.Epoch(0)).Count)); // ranks 1 and 2 have no 4th batch
    }

    [Fact]
    public void AShardedTrainingBatchWhoseSamplesAllFailIsHandedOutEmpty()
    {
        var ds = new FakeDataset(12, 2, corrupt: Enumerable.Range(0, 12).ToArray());
        var sharded = Collect(Loader(ds, 2, 1, 2).Epoch(0));
        Assert.Equal(3, sharded.Count); // every step still happens on this rank
        Assert.All(sharded, b => Assert.Empty(b.Indices));
        Assert.Empty(Collect(Loader(ds, 2, 0, 1).Epoch(0))); // a single process leaves such batches out
    }

    [Fact]
    public void AnInvalidShardIsRefused()
    {
        var ds = new FakeDataset(8, 2);
        Assert.Throws<ArgumentOutOfRangeException>(() => Loader(ds, 2, 2, 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => Loader(ds, 2, 0, 0));
    }
}
