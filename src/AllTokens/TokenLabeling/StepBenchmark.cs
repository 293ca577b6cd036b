using System.Diagnostics;
using AllTokens.Data;
using AllTokens.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.TokenLabeling;

/// <summary>Median step times of a plain CE step and a token-labeling + MixToken step of the same model.</summary>
/// <param name="TargetsMs">Median time of building the batch's dense targets alone (included in TokenLabelMs); short
/// and so less disturbed by machine load than the step times.</param>
public sealed record StepBenchmarkResult(double PlainMs, double TokenLabelMs, double TargetsMs, int Steps)
{
    /// <summary>Every timed step, in order: (plain ms, token-label ms).</summary>
    public IReadOnlyList<(double Plain, double TokenLabel)> Raw { get; init; } = [];

    /// <summary>Token-labeling step time over plain step time, minus one.</summary>
    public double Overhead => TokenLabelMs / PlainMs - 1;
}

/// <summary>
/// Times what token labeling adds to a training step: forward + backward of the model (training mode) with
/// (a) soft-target CE on the class logits of smoothed one-hot targets, versus (b) the dense targets built from
/// stored top-k maps through random crops and flips (RoIAlign, softmax), a MixToken box, and the token-label loss.
/// The two kinds alternate (and swap order every step) so that machine load drifts hit both alike; medians are reported.
/// </summary>
public static class StepBenchmark
{
    /// <summary>Random top-k label maps (distinct classes per location) for batch indices 0..count−1.</summary>
    public static LabelMap[] SyntheticMaps(int count, int numClasses, int mapSize = 18, int topK = 5, ulong seed = 0)
    {
        int c = numClasses, hw = mapSize * mapSize;
        var rnd = new Training.Rng(seed);
        return Enumerable.Range(0, count).Select(_ =>
        {
            var v = new float[topK * hw];
            var ix = new int[topK * hw];
            for (int p = 0; p < hw; p++)
                for (int r = 0; r < topK; r++)
                {
                    v[r * hw + p] = (float)(8 - r - rnd.NextDouble());
                    ix[r * hw + p] = (rnd.NextInt(0, c / topK) * topK + r) % c; // distinct per location
                }
            return new LabelMap(topK, mapSize, mapSize, v, ix);
        }).ToArray();
    }

    public static StepBenchmarkResult Run(ImageClassifier model, int batchSize, int steps, int mapSize = 18, int topK = 5, int warmup = 2, ulong seed = 0)
    {
        int c = model.NumClasses, img = model.Options.ImgSize;
        var rnd = new Training.Rng(seed + 1);
        var maps = SyntheticMaps(batchSize, c, mapSize, topK, seed);
        var source = new StoredTargetSource(i => maps[i]);
        var targetOptions = new DenseTargetOptions(c, model.GridSize);
        var task = new TokenLabelTask(model, source, new TokenLabelTaskOptions(targetOptions, new TokenLabelLossOptions(DenseWeight: 1.0), Seed: seed));
        model.train();
        var plain = new List<double>();
        var token = new List<double>();
        var targets = new List<double>();
        for (int s = 0; s < warmup + steps; s++)
        {
            // Alternate which step kind goes first, so neither always follows the other.
            foreach (int kind in s % 2 == 0 ? new[] { 0, 1, 2 } : [1, 0, 2])
            {
                using var scope = torch.NewDisposeScope();
                var x = torch.randn(batchSize, 3, img, img);
                var labels = torch.randint(0, c, [batchSize]);
                var records = Enumerable.Range(0, batchSize).Select(_ =>
                {
                    int ch = 100 + rnd.NextInt(0, 276), cw = 100 + rnd.NextInt(0, 401); // a crop inside a 500×375 source
                    return new AugmentRecord(AugmentOrder.TokenLabel, 500, 375, rnd.NextInt(0, 2) == 1, [],
                        new CropBox(rnd.NextInt(0, 375 - ch + 1), rnd.NextInt(0, 500 - cw + 1), ch, cw), img, img);
                }).ToList();
                using var batch = new Batch { Images = x, Labels = labels, Indices = Enumerable.Range(0, batchSize).ToArray(), Augments = records };
                model.zero_grad();
                var sw = Stopwatch.StartNew();
                if (kind == 2)
                {
                    source.Targets(batch, targetOptions);
                    sw.Stop();
                    if (s >= warmup) targets.Add(sw.Elapsed.TotalMilliseconds);
                    continue;
                }
                Tensor loss;
                if (kind == 0)
                {
                    var target = DenseTargets.SmoothOneHot(labels, c, 0.1);
                    loss = TokenLabelLoss.SoftCrossEntropy(model.ForwardTrain(x).Logits, target);
                }
                else loss = task.Step(batch).Loss;
                loss.backward();
                sw.Stop();
                if (s >= warmup) (kind == 0 ? plain : token).Add(sw.Elapsed.TotalMilliseconds);
            }
        }
        return new StepBenchmarkResult(Median(plain), Median(token), Median(targets), steps) { Raw = plain.Zip(token).ToList() };
    }

    private static double Median(List<double> xs)
    {
        var s = xs.Order().ToList();
        return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
    }
}
