using System.Text.Json;
using AllTokens.Checkpoints;
using AllTokens.Data;
using AllTokens.Data.Transforms;
using AllTokens.Models;
using TorchSharp;
using static AllTokens.Tests.Cli.InProcessCli;

namespace AllTokens.Tests.Data;

public sealed class EvalVerbTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-eval-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    private string TinyFolder()
    {
        string root = Path.Combine(dir, "data");
        string[] classes = ["ant", "bee", "cow"];
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 3; i++)
                DatasetTests.WriteImage(Path.Combine(root, "val", classes[c], $"{i}.png"), 32, 32, (byte)(40 * c + 30 * i));
        DatasetTests.WriteImage(Path.Combine(root, "train", "ant", "t.png"), 32, 32, 9);
        return root;
    }

    [Fact]
    public void EvalEndToEndMatchesTheModelOnTheImages()
    {
        string root = TinyFolder();
        torch.manual_seed(5);
        using var model = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 3, ImgSize: 32));
        string weights = Path.Combine(dir, "tiny.safetensors");
        ModelWeights.Save(model, "lvvit_t", weights, ["ant", "bee", "cow"]);
        string outDir = Path.Combine(dir, "out");

        var (code, stdout, stderr) = Run("eval", "--weights", weights, "--data", root, "--batch", "4", "--workers", "2",
            "--crop-pct", "1.0", "--out", outDir, "--json");
        Assert.True(code == 0, stderr);
        var json = JsonDocument.Parse(stdout.Trim()).RootElement;
        Assert.Equal(9, json.GetProperty("samples").GetInt32());
        Assert.Equal("val", json.GetProperty("split").GetString());
        var perClass = json.GetProperty("per_class").EnumerateArray().ToList();
        Assert.Equal(["ant", "bee", "cow"], perClass.Select(p => p.GetProperty("name").GetString()));
        Assert.All(perClass, p => Assert.Equal(3, p.GetProperty("count").GetInt32()));

        // The same numbers by hand: the eval transform at crop 1.0 and the model's own forward.
        model.eval();
        var ds = AllTokens.Data.Datasets.DatasetFactory.Open(root, "val");
        var t = new EvalTransform(new EvalTransformOptions(ImgSize: 32, CropPct: 1.0));
        int correct = 0;
        double loss = 0;
        using (torch.no_grad())
            for (int i = 0; i < ds.Count; i++)
            {
                using var scope = torch.NewDisposeScope();
                float[] l = model.call(t.ToTensor(ds.Load(i)).unsqueeze(0))[0].data<float>().ToArray();
                int label = ds.GetLabel(i);
                if (Array.IndexOf(l, l.Max()) == label) correct++;
                loss += Math.Log(l.Sum(v => Math.Exp(v))) - l[label];
            }
        Assert.Equal(100.0 * correct / 9, json.GetProperty("top1").GetDouble(), 9);
        Assert.Equal(100.0, json.GetProperty("top5").GetDouble()); // k = 3 classes
        Assert.Equal(loss / 9, json.GetProperty("loss").GetDouble(), 4);
        Assert.Equal(9, json.GetProperty("confusion").EnumerateArray().SelectMany(r => r.EnumerateArray()).Sum(v => v.GetInt32()));

        Assert.True(File.Exists(Path.Combine(outDir, "eval.json")));
        Assert.Equal(9, JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "eval.json"))).RootElement.GetProperty("samples").GetInt32());
        var png = ImageDecoder.Decode(Path.Combine(outDir, "confusion.png"));
        Assert.True(png.Width > 100);
        // Not a terminal: plain progress lines, the last at 100 %.
        Assert.Contains("eval: 9/9 (100%)", stderr);
        Assert.DoesNotContain("\r", stderr);

        // The table form prints the per-class rows.
        (code, stdout, stderr) = Run("eval", "--weights", weights, "--data", root, "--workers", "0", "--crop-pct", "1.0", "--out", outDir, "--subset", "3");
        Assert.True(code == 0, stderr);
        Assert.Contains("samples  3", stdout);
        Assert.Contains("top-1", stdout);
        Assert.Matches(@"bee\s+1\s+\d\s+", stdout);
    }

    [Fact]
    public void EvalErrorsAreClear()
    {
        string root = TinyFolder();
        var (code, _, err) = Run("eval", "--model", "lvvit_t", "--data", Path.Combine(dir, "missing"));
        Assert.Equal(1, code);
        Assert.Contains("no such folder", err);
        (code, _, err) = Run("eval", "--model", "lvvit_t", "--num-classes", "5", "--img-size", "32", "--data", root);
        Assert.Equal(2, code);
        Assert.Contains("--num-classes 5 does not match the 3 classes", err);
        (code, _, err) = Run("eval", "--model", "lvvit_t", "--data", root, "--split", "test");
        Assert.Equal(2, code);
        Assert.Contains("--split must be one of train, val", err);
    }

    [Fact]
    public void BenchReportsImagesPerSecond()
    {
        string root = TinyFolder();
        var (code, stdout, stderr) = Run("bench", "--data", root, "--split", "val", "--res", "16", "--workers", "1", "--batch", "2", "--batches", "3", "--json");
        Assert.True(code == 0, stderr);
        var json = JsonDocument.Parse(stdout.Trim()).RootElement;
        Assert.Equal(6, json.GetProperty("images").GetInt32());
        Assert.Equal(3, json.GetProperty("batches").GetInt32());
        Assert.True(json.GetProperty("images_per_second").GetDouble() > 0);
        (code, _, stderr) = Run("bench", "--data", root, "--aa", "rand-q3");
        Assert.Equal(2, code);
        Assert.Contains("unknown RandAugment key 'q'", stderr);
    }
}
