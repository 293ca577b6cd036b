using AllTokens.Models;
using AllTokens.TokenLabeling;
using TorchSharp;

namespace AllTokens.Tests.TokenLabeling;

public class StepBenchmarkTests
{
    [Fact]
    public void SmallBenchmarkRunsBothKinds()
    {
        using var model = TokenLabelTaskTests.TinyLvVit(classes: 10, img: 32);
        var r = StepBenchmark.Run(model, batchSize: 2, steps: 1, mapSize: 3, topK: 2, warmup: 0);
        Assert.True(r.PlainMs > 0 && r.TokenLabelMs > 0 && r.TargetsMs > 0);
        Assert.Equal(1, r.Steps);
    }

    /// <summary>
    /// The bench figure (lvvit_t, 224 px, 1000 classes, 18×18 top-5 maps): run with
    /// ALLTOKENS_BENCH=1 (optionally ALLTOKENS_BENCH_MODEL, _BATCH, _STEPS); skipped otherwise (slow).
    /// </summary>
    [Fact]
    public void TokenLabelStepOverhead()
    {
        Assert.SkipUnless(Environment.GetEnvironmentVariable("ALLTOKENS_BENCH") == "1", "benchmark: set ALLTOKENS_BENCH=1 to run");
        string name = Environment.GetEnvironmentVariable("ALLTOKENS_BENCH_MODEL") ?? "lvvit_t";
        int batch = int.Parse(Environment.GetEnvironmentVariable("ALLTOKENS_BENCH_BATCH") ?? "16");
        int steps = int.Parse(Environment.GetEnvironmentVariable("ALLTOKENS_BENCH_STEPS") ?? "6");
        using var model = ModelRegistry.Create(name);
        var r = StepBenchmark.Run(model, batch, steps);
        string line = $"{name} batch {batch} at {model.Options.ImgSize}px, {steps} steps, {torch.get_num_threads()} threads: " +
                      $"plain CE {r.PlainMs:F1} ms, token labeling + MixToken {r.TokenLabelMs:F1} ms, overhead {100 * r.Overhead:F2} %; " +
                      $"dense targets alone {r.TargetsMs:F1} ms ({100 * r.TargetsMs / r.PlainMs:F2} % of the plain step)";
        line += "; steps (plain/token-label ms): " + string.Join(" ", r.Raw.Select(x => $"{x.Plain:F0}/{x.TokenLabel:F0}"));
        TestContext.Current.SendDiagnosticMessage(line);
        File.AppendAllText(Path.Combine(Path.GetTempPath(), "alltokens-bench.txt"), line + Environment.NewLine);
        Assert.True(r.Overhead <= 0.05, line);
    }
}
