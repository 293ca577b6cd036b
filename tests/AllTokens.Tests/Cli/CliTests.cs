using System.Text.Json;
using AllTokens.Checkpoints;
using AllTokens.Data;
using AllTokens.Models;
using SkiaSharp;
using TorchSharp;
using static TorchSharp.torch;
using static AllTokens.Tests.Cli.InProcessCli;

namespace AllTokens.Tests.Cli;

public sealed class CliTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-cli-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    [Fact]
    public void AVerbsThreadCountAndDenormalFlushEndWithIt()
    {
        // A verb sets --threads for the process and flushes denormals on its thread (CliCommon.ApplyThreads); run in
        // process, the caller gets both back as they were. On a thread of its own, so its MXCSR history is this test's.
        Layers.DenormalsTests.OnOwnThread(() =>
        {
            int threads = torch.get_num_threads();
            try
            {
                torch.set_num_threads(2);
                AllTokens.Layers.Denormals.Flush(false);
                var (code, _, err) = Run("bench", "--model", "vit_nano", "--res", "32", "--batch", "2", "--steps", "1", "--warmup", "1",
                    "--fixed-warmup", "--num-classes", "10", "--threads", "1");
                Assert.True(code == 0, err);
                Assert.Equal(2, torch.get_num_threads());
                if (!AllTokens.Layers.Denormals.Enabled || !OperatingSystem.IsLinux()) return;
                Assert.False(AllTokens.Layers.Denormals.SetOnThisThread);
                Assert.Equal(5, Layers.DenormalsTests.NonZeroProducts(5));             // denormals kept on this thread
                Assert.Equal(1 << 20, Layers.DenormalsTests.NonZeroProducts(1 << 20)); // and on its team
            }
            finally
            {
                torch.set_num_threads(threads);
            }
        });
    }

    [Fact]
    public void ModelsJsonListsEveryModelWithExactParams()
    {
        var (code, output, _) = Run("models", "--json");
        Assert.Equal(0, code);
        var rows = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(ModelRegistry.All.Select(m => m.Name), rows.Select(r => r.GetProperty("name").GetString()));
        var lvvitS = rows.Single(r => r.GetProperty("name").GetString() == "lvvit_s");
        Assert.Equal(26_151_824L, lvvitS.GetProperty("params").GetInt64());
        Assert.Equal(224, lvvitS.GetProperty("img_size").GetInt32());
        Assert.Equal("lvvit", lvvitS.GetProperty("family").GetString());
        var t2t = rows.Single(r => r.GetProperty("name").GetString() == "t2t_vit_14");
        Assert.Equal(21_545_550L, t2t.GetProperty("params").GetInt64());
    }

    [Fact]
    public void HelpAndUsageErrors()
    {
        var (code, output, _) = Run("--help");
        Assert.Equal(0, code);
        Assert.Contains("predict", output);
        (code, output, _) = Run("predict", "--help");
        Assert.Equal(0, code);
        Assert.Contains("--crop-pct", output);
        var (c2, _, err) = Run("predict", "--modle", "lvvit_t", "x.jpg");
        Assert.Equal(2, c2);
        Assert.Contains("did you mean --model", err);
        (c2, _, err) = Run("predcit");
        Assert.Equal(2, c2);
        Assert.Contains("unknown command", err);
        (c2, _, err) = Run("predict", "--model", "lvvit_t", "--top", "zero", "x.jpg");
        Assert.Equal(2, c2);
        Assert.Contains("--top expects an integer", err);
        (c2, _, err) = Run("predict", "--model", "lvvit_t");
        Assert.Equal(2, c2);
        Assert.Contains("IMAGE", err);
    }

    [Fact]
    public void UnknownModelListsCloseNames()
    {
        var (code, _, err) = Run("predict", "--model", "lvvit-s", Path.Combine(dir, "a.png"));
        Assert.Equal(1, code);
        Assert.Contains("unknown model 'lvvit-s'", err);
        Assert.Contains("lvvit_s", err);
    }

    private string WritePng(int w, int h, Func<int, int, (byte, byte, byte)> pixel, string name)
    {
        using var bmp = new SKBitmap(new SKImageInfo(w, h, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                var (r, g, b) = pixel(x, y);
                bmp.SetPixel(x, y, new SKColor(r, g, b, 255));
            }
        string path = Path.Combine(dir, name);
        using var data = bmp.Encode(SKEncodedImageFormat.Png, 100);
        File.WriteAllBytes(path, data.ToArray());
        return path;
    }

    [Fact]
    public void PredictIsPixelExactAtCropOneAndMatchesTheModel()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(21);
        using var model = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 6, ImgSize: 32));
        string weights = Path.Combine(dir, "tiny.safetensors");
        ModelWeights.Save(model, "lvvit_t", weights, ["c0", "c1", "c2", "c3", "c4", "c5"]);
        string png = WritePng(32, 32, (x, y) => ((byte)(x * 7), (byte)(y * 5), (byte)((x * y) % 251)), "img.png");

        var (code, output, err) = Run("predict", "--weights", weights, "--crop-pct", "1.0", "--json", "--logits", "--top", "3", png);
        Assert.True(code == 0, err);
        var row = JsonDocument.Parse(output.Trim()).RootElement;
        Assert.Equal(png, row.GetProperty("path").GetString());
        float[] logits = row.GetProperty("logits").EnumerateArray().Select(e => e.GetSingle()).ToArray();

        // The same image by hand: (p/255 − mean)/std, CHW, no resampling at all.
        var img = ImageDecoder.Decode(png);
        float[] mean = PretrainedDefaults.ImageNetMean, std = PretrainedDefaults.ImageNetStd;
        var chw = new float[3 * 32 * 32];
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++)
                    chw[c * 1024 + y * 32 + x] = (img.Pixels[(y * 32 + x) * 3 + c] / 255f - mean[c]) / std[c];
        model.eval();
        using var g = torch.no_grad();
        float[] expected = model.call(torch.tensor(chw, [1, 3, 32, 32]))[0].data<float>().ToArray();
        Assert.Equal(expected, logits);

        var top = row.GetProperty("top").EnumerateArray().ToList();
        Assert.Equal(3, top.Count);
        int best = Array.IndexOf(expected, expected.Max());
        Assert.Equal(best, top[0].GetProperty("index").GetInt32());
        Assert.Equal($"c{best}", top[0].GetProperty("name").GetString());
        double p0 = top[0].GetProperty("prob").GetDouble();
        double sum = expected.Sum(v => Math.Exp(v - expected.Max()));
        Assert.Equal(1 / sum, p0, 6);
    }

    [Fact]
    public void BadImagesAndCheckpointsAreClearErrors()
    {
        using var scope = torch.NewDisposeScope();
        string good = WritePng(40, 30, (x, y) => (10, 20, 30), "good.png");
        string bad = Path.Combine(dir, "broken.jpg");
        File.WriteAllBytes(bad, [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]);
        var (code, output, err) = Run("predict", "--model", "lvvit_t", "--img-size", "32", "--num-classes", "4", good, bad);
        Assert.Equal(1, code);
        Assert.Contains("good.png", output); // the good one is still classified
        Assert.Contains("broken.jpg", err);

        string ckpt = Path.Combine(dir, "weights.pth");
        File.WriteAllBytes(ckpt, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        (code, _, err) = Run("predict", "--model", "lvvit_t", "--weights", ckpt, good);
        Assert.Equal(1, code);
        Assert.Contains("weights.pth", err);

        (code, _, err) = Run("predict", "--model", "lvvit_t", "--weights", Path.Combine(dir, "nope.pth"), good);
        Assert.Equal(1, code);
        Assert.Contains("nope.pth", err);
    }

    [Fact]
    public void WeightsForAnotherModelAreAMismatchError()
    {
        using var scope = torch.NewDisposeScope();
        using var model = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 4, ImgSize: 32));
        string weights = Path.Combine(dir, "t.safetensors");
        ModelWeights.Save(model, "lvvit_t", weights);
        string png = WritePng(32, 32, (x, y) => (1, 2, 3), "p.png");
        var (code, _, err) = Run("predict", "--model", "t2t_vit_7", "--weights", weights, "--img-size", "32", png);
        Assert.Equal(1, code);
        Assert.Contains("do not fit t2t_vit_7", err);
        Assert.Contains("--allow-mismatch", err);
    }

    [Fact]
    public void ConvertPthToSafetensorsKeepsEveryTensor()
    {
        string src = Path.Combine(AppContext.BaseDirectory, "fixtures", "lvvit", "tiny_lvvit.pth");
        string dst = Path.Combine(dir, "tiny.safetensors");
        var (code, _, err) = Run("convert", "--from", src, "--to", dst);
        Assert.True(code == 0, err);
        var a = StateDicts.ReadAny(src);
        var b = Safetensors.Read(dst).Tensors;
        Assert.Equal(a.Select(kv => kv.Key), b.Select(kv => kv.Key));
        for (int i = 0; i < a.Count; i++)
        {
            Assert.Equal(a[i].Value.Shape, b[i].Value.Shape);
            Assert.Equal(a[i].Value.Data, b[i].Value.Data);
        }
        (code, _, err) = Run("convert", "--from", src, "--to", dst);
        Assert.Equal(2, code);
        Assert.Contains("--force", err);
    }

    [Fact]
    public void AMissingCheckpointIsNamedAsAMissingFile()
    {
        string missing = Path.Combine(dir, "nowhere.pth");
        var (code, _, err) = Run("convert", "--from", missing, "--to", Path.Combine(dir, "x.safetensors"));
        Assert.Equal(1, code);
        Assert.Contains($"error: {missing}: file not found", err);
        Assert.False(File.Exists(Path.Combine(dir, "x.safetensors")));
        // Our own messages for a missing file keep their words.
        string weights = Path.Combine(dir, "nowhere.safetensors");
        (code, _, err) = Run("predict", "--model", "t2t_vit_7", "--weights", weights, missing);
        Assert.Equal(1, code);
        Assert.Contains($"error: {weights}: no such weights file", err);
    }

    [Fact]
    public void ConvertWithAModelRecordsItSoPredictNeedsNoModelFlag()
    {
        using var scope = torch.NewDisposeScope();
        using var model = ModelRegistry.Create("t2t_vit_7", new ModelOptions(NumClasses: 5, ImgSize: 32));
        string raw = Path.Combine(dir, "raw.safetensors");
        var tensors = ModuleState.Ordered(model).Select(kv => new KeyValuePair<string, RawTensor>("module." + kv.Key, RawTensor.FromTorch(kv.Value))).ToList();
        Safetensors.Write(raw, tensors);
        string dst = Path.Combine(dir, "t2t.safetensors");
        var (code, _, err) = Run("convert", "--from", raw, "--to", dst, "--model", "t2t_vit_7", "--img-size", "32");
        Assert.True(code == 0, err);
        var meta = WeightsMetadata.From(Safetensors.ReadMetadata(dst), dst)!;
        Assert.Equal("t2t_vit_7", meta.Model);
        Assert.Equal(5, meta.Options!.NumClasses);
        string png = WritePng(32, 32, (x, y) => ((byte)x, (byte)y, 0), "q.png");
        (code, var output, err) = Run("predict", "--weights", dst, "--crop-pct", "1", "--json", png);
        Assert.True(code == 0, err);
        Assert.Equal(5, JsonDocument.Parse(output.Trim()).RootElement.GetProperty("top").GetArrayLength());
    }
}
