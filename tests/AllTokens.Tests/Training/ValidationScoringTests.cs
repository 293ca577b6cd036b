using AllTokens.Data;
using AllTokens.Models;
using AllTokens.Tests.Data;
using TorchSharp;
using static TorchSharp.torch;
using DataEvaluator = AllTokens.Data.Evaluation.Evaluator;
using TrainEvaluator = AllTokens.Training.Evaluator;

namespace AllTokens.Tests.Training;

/// <summary>The trainer's validation and `eval` score alike: same top-1, top-5 and loss for the same model and images.</summary>
public sealed class ValidationScoringTests
{
    private sealed class RandomImages(int count, int classes, int size, int batch) : IBatchSource
    {
        public IImageDataset Dataset { get; } = new FakeDataset(count, classes);
        public int BatchesPerEpoch => (count + batch - 1) / batch;

        public IEnumerable<Batch> Epoch(int epoch, int startBatch = 0)
        {
            var gen = new Generator(123);
            for (int b = startBatch; b < BatchesPerEpoch; b++)
            {
                int n = Math.Min(batch, count - b * batch);
                yield return new Batch
                {
                    Images = torch.randn([n, 3, size, size], generator: gen),
                    Labels = torch.tensor(Enumerable.Range(b * batch, n).Select(i => (long)(i * 7 % classes)).ToArray()),
                    Indices = Enumerable.Range(b * batch, n).ToArray(),
                };
            }
        }
    }

    private static ImageClassifier Model()
    {
        torch.manual_seed(11);
        var m = ModelRegistry.Create("t2t_vit_7", new ModelOptions(NumClasses: 4, ImgSize: 32));
        m.eval();
        return m;
    }

    [Fact]
    public void TrainerValidationEqualsEval()
    {
        using var scope = torch.NewDisposeScope();
        using var model = Model();
        var source = new RandomImages(13, 4, 32, 5);
        var t = TrainEvaluator.Run(model, source, cancel: TestContext.Current.CancellationToken);
        var e = DataEvaluator.Evaluate(model, source, cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(13, t.Count);
        Assert.Equal(100 * e.Top1, t.Top1, 12);
        Assert.Equal(100 * e.Top5, t.Top5, 12);
        Assert.Equal(e.MeanLoss, t.Loss, 12);
        Assert.True(t.Top5 > t.Top1 || t.Top5 == 100); // k = 4 of 4 classes: every label is in the top "5"
    }

    [Fact]
    public void TiedLogitsGoToTheLowerClassInBoth()
    {
        // A zeroed head: every logit 0, every class tied. Rank by index: only label 0 counts as a top-1 hit.
        using var scope = torch.NewDisposeScope();
        using var model = Model();
        using (no_grad())
            foreach (var (name, p) in model.named_parameters())
                if (name.StartsWith("head.", StringComparison.Ordinal)) p.zero_();
        var source = new RandomImages(12, 4, 32, 5);
        var t = TrainEvaluator.Run(model, source, cancel: TestContext.Current.CancellationToken);
        var e = DataEvaluator.Evaluate(model, source, cancellation: TestContext.Current.CancellationToken);
        double zeros = Enumerable.Range(0, 12).Count(i => i * 7 % 4 == 0);
        Assert.Equal(100 * zeros / 12, t.Top1, 12);
        Assert.Equal(100 * e.Top1, t.Top1, 12);
        Assert.Equal(Math.Log(4), t.Loss, 6);
    }
}
