using System.Text.Json.Nodes;
using AllTokens.Cli;
using SkiaSharp;

namespace AllTokens.Tests.Cli;

/// <summary><c>demo --quick</c> end to end on the real Fashion-MNIST (skipped when the Debian package is missing; CI installs it).</summary>
public sealed class DemoTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-demo-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    [Fact]
    public void QuickDemoWritesASaneReportAndResumes()
    {
        if (!File.Exists(Path.Combine(DoctorVerb.FashionMnistDir, "train-images-idx3-ubyte.gz")))
            Assert.Skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
        string outDir = Path.Combine(dir, "demo");
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(["demo", "--quick", "--out", outDir, "--threads", "2"], o, e);
        Assert.True(code == 0, e.ToString());

        var results = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "results.json")))!.AsObject();
        var runs = results["runs"]!.AsArray().Select(r => r!.AsObject()).ToList();
        Assert.Equal(["annotator", "lvvit", "lvvit_tl", "t2t_vit", "vit"], runs.Select(r => r["name"]!.GetValue<string>()));
        foreach (var r in runs)
        {
            double top1 = r["test_top1"]!.GetValue<double>(), top5 = r["test_top5"]!.GetValue<double>();
            Assert.InRange(top1, 0, 100);
            Assert.InRange(top5, top1, 100);
            Assert.Equal(1_000, r["test_images"]!.GetValue<int>());
            Assert.True(r["params"]!.GetValue<long>() > 500_000);
            string runDir = Path.Combine(outDir, r["name"]!.GetValue<string>());
            var epochs = File.ReadLines(Path.Combine(runDir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject())
                .Where(m => m["kind"]?.GetValue<string>() == "epoch").ToList();
            Assert.Equal(r["epochs"]!.GetValue<int>(), epochs.Count);
            Assert.True(File.Exists(Path.Combine(runDir, "config.yaml")));
        }
        // Learning happened: the best model is well above the 10 % of chance after a couple of small epochs.
        Assert.True(runs.Max(r => r["test_top1"]!.GetValue<double>()) > 40, string.Join(", ", runs.Select(r => r["test_top1"])));

        string report = File.ReadAllText(Path.Combine(outDir, "report.md"));
        Assert.Contains("| LV-ViT nano + token labeling + MixToken |", report);
        Assert.Contains("T2T-ViT nano", report);
        foreach (var png in new[] { "curves_top1.png", "curves_loss.png", "token_labels.png", "features_t2t_vit.png", "features_vit.png", "features_lvvit_tl.png" })
        {
            Assert.Contains($"({png})", report);
            using var bmp = SKBitmap.Decode(Path.Combine(outDir, png));
            Assert.True(bmp is { Width: > 200, Height: > 100 }, png);
        }
        Assert.True(File.Exists(Path.Combine(outDir, "labels.tls")));

        // --resume on a finished demo keeps every stage and rewrites the same table.
        var o2 = new StringWriter();
        code = Program.Run(["demo", "--quick", "--out", outDir, "--resume", "--threads", "2"], o2, e = new StringWriter());
        Assert.True(code == 0, e.ToString());
        Assert.Contains("already trained", e.ToString());
        Assert.Equal(Table(o.ToString()), Table(o2.ToString()));

        // A non-empty folder without --resume is refused rather than overwritten.
        code = Program.Run(["demo", "--quick", "--out", outDir], new StringWriter(), e = new StringWriter());
        Assert.Equal(2, code);
        Assert.Contains("--resume", e.ToString());
    }

    private static string Table(string output) => string.Join('\n', output.Split('\n').Where(l => l.StartsWith('|')));
}
