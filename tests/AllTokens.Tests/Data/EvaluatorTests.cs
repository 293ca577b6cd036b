using AllTokens.Data;
using AllTokens.Data.Evaluation;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Data;

public sealed class EvaluatorTests
{
    [Fact]
    public void ScoresTopOneTopFiveLossAndConfusionByHand()
    {
        string[] names = ["a", "b", "c", "d", "e", "f"];
        float[][] logits =
        [
            [5, 1, 0, 0, 0, 0],      // label 0: rank 0
            [0, 1, 2, 3, 4, 5],      // label 0: rank 5 → wrong even at top-5, predicted f
            [0, 0, 9, 1, 0, 0],      // label 3: rank 1 → top-5 only, predicted c
            [1, 1, 1, 1, 1, 1],      // label 2: ties rank by index → rank 2, predicted a
        ];
        int[] labels = [0, 0, 3, 2];
        var r = Evaluator.Score(logits, labels, names);
        Assert.Equal(4, r.Count);
        Assert.Equal(0.25, r.Top1);
        Assert.Equal(0.75, r.Top5);
        double Ce(float[] l, int t) => Math.Log(l.Sum(v => Math.Exp(v))) - l[t];
        Assert.Equal(labels.Select((t, i) => Ce(logits[i], t)).Average(), r.MeanLoss, 10);
        Assert.Equal(Math.Log(6), Ce(logits[3], 2), 12);
        Assert.Equal([1L, 0, 0, 0, 0, 1], r.Confusion[0]);
        Assert.Equal([0L, 0, 1, 0, 0, 0], r.Confusion[3]);
        Assert.Equal([1L, 0, 0, 0, 0, 0], r.Confusion[2]);
        Assert.Equal([2L, 0, 1, 1, 0, 0], r.PerClassCount);
        Assert.Equal(0.5, r.PerClassAccuracy[0]);
        Assert.True(double.IsNaN(r.PerClassAccuracy[1]));
    }

    /// <summary>A model whose logits are the mean of each image channel: class c wins when channel c is brightest.</summary>
    private sealed class ChannelMeans() : nn.Module<Tensor, Tensor>("channel_means")
    {
        public override Tensor forward(Tensor x) => x.mean([2, 3]);
    }

    private sealed class ListSource(IImageDataset ds, List<(float[] Img, long Label)> items, int batch) : IBatchSource
    {
        public IImageDataset Dataset => ds;
        public int BatchesPerEpoch => (items.Count + batch - 1) / batch;

        public IEnumerable<Batch> Epoch(int epoch, int startBatch = 0)
        {
            for (int b = startBatch; b < BatchesPerEpoch; b++)
            {
                var chunk = items.Skip(b * batch).Take(batch).ToList();
                yield return new Batch
                {
                    Images = torch.tensor(chunk.SelectMany(c => c.Img).ToArray(), [chunk.Count, 3, 2, 2]),
                    Labels = torch.tensor(chunk.Select(c => c.Label).ToArray()),
                    Indices = Enumerable.Range(b * batch, chunk.Count).ToArray(),
                };
            }
        }
    }

    [Fact]
    public void EvaluatesAModelOverBatchesWithProgress()
    {
        var ds = new FakeDataset(5, 3);
        static float[] Img(float r, float g, float b) => [r, r, r, r, g, g, g, g, b, b, b, b];
        var items = new List<(float[], long)>
        {
            (Img(3, 1, 0), 0), (Img(0, 2, 1), 1), (Img(0, 1, 2), 1), (Img(1, 0, 0), 2), (Img(0, 0, 5), 2),
        };
        var seen = new List<EvalProgress>();
        using var model = new ChannelMeans();
        GC.Collect(); // earlier tests' garbage tensors are finalized now, not while this test counts
        GC.WaitForPendingFinalizers();
        GC.Collect();
        long live = torch.Tensor.TotalCount;
        var r = Evaluator.Evaluate(model, new ListSource(ds, items, 2), progress: new Sync(seen.Add), cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(live, torch.Tensor.TotalCount);
        Assert.Equal(5, r.Count);
        Assert.Equal(3.0 / 5, r.Top1); // samples 0, 1 and 4
        Assert.Equal(1.0, r.Top5); // k = min(5, 3) = 3 covers every class
        Assert.Equal(3, r.TopK);
        Assert.Equal([1L, 0, 0], r.Confusion[0]);
        Assert.Equal([0L, 1, 1], r.Confusion[1]);
        Assert.Equal([1L, 0, 1], r.Confusion[2]);
        Assert.Equal([(2, 5), (4, 5), (5, 5)], seen.Select(p => (p.Samples, p.Total)));
        Assert.Equal(3, seen[^1].TotalBatches);
    }

    private sealed class Sync(Action<EvalProgress> f) : IProgress<EvalProgress>
    {
        public void Report(EvalProgress value) => f(value);
    }

    [Fact]
    public void ConfusionPngIsADecodableImage()
    {
        var r = Evaluator.Score([[1f, 0f], [0f, 1f], [2f, 1f]], [0, 1, 1], ["Coat", "Ankle boot"]);
        string path = Path.Combine(Path.GetTempPath(), $"alltokens-cm-{Guid.NewGuid():N}.png");
        try
        {
            ConfusionMatrixPng.Write(r, path);
            var img = ImageDecoder.Decode(path);
            Assert.True(img.Width > 100 && img.Height > 100);
            Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(path)!, Path.GetFileName(path) + ".tmp-*"));
            // Some cells are shaded (not every pixel is white or black).
            Assert.Contains(Enumerable.Range(0, img.Width * img.Height), i => img.Pixels[i * 3] != img.Pixels[i * 3 + 2]);
        }
        finally
        {
            File.Delete(path);
        }
        // Many classes still render (no text in cells).
        var big = Evaluator.Score([new float[200]], [3], Enumerable.Range(0, 200).Select(i => $"n{i}").ToArray());
        Assert.True(ConfusionMatrixPng.Render(big).Length > 100);
    }
}
