using AllTokens.Checkpoints;
using AllTokens.Data;
using AllTokens.Data.Transforms;
using AllTokens.Models;
using AllTokens.TokenLabeling;
using SkiaSharp;
using TorchSharp;
using static TorchSharp.torch;
using static AllTokens.Tests.Cli.InProcessCli;

namespace AllTokens.Tests.TokenLabeling;

public sealed class LabelVerbTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-label-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    // Two classes × three 40×32 PNGs (non-square: the shorter side is resized, then centre-cropped).
    private string MakeFolder()
    {
        string root = Path.Combine(dir, "data");
        for (int c = 0; c < 2; c++)
        {
            Directory.CreateDirectory(Path.Combine(root, $"class{c}"));
            for (int i = 0; i < 3; i++)
            {
                using var bmp = new SKBitmap(new SKImageInfo(40, 32, SKColorType.Rgba8888, SKAlphaType.Unpremul));
                for (int y = 0; y < 32; y++)
                    for (int x = 0; x < 40; x++)
                        bmp.SetPixel(x, y, new SKColor((byte)(x * 6 + c * 90), (byte)(y * 7 + i * 40), (byte)((x * y + 31 * i) % 256), 255));
                using var data = bmp.Encode(SKEncodedImageFormat.Png, 100);
                File.WriteAllBytes(Path.Combine(root, $"class{c}", $"img{i}.png"), data.ToArray());
            }
        }
        return root;
    }

    private string TinyWeights()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(4);
        using var model = ModelRegistry.Create("lvvit_t", new ModelOptions(NumClasses: 2, ImgSize: 32));
        string path = Path.Combine(dir, "annotator.safetensors");
        ModelWeights.Save(model, "lvvit_t", path);
        return path;
    }

    [Fact]
    public void LabelsAFolderResumesAndInspects()
    {
        string data = MakeFolder(), weights = TinyWeights(), store = Path.Combine(dir, "labels.atl");

        // An interrupted run: cancel after the first batch of 2 images.
        using (var scope = torch.NewDisposeScope())
        {
            var loaded = ModelWeights.Load(new ModelRequest(Weights: weights));
            using var model = loaded.Model;
            var ds = LabelDatasets.Open(data);
            var tf = new EvalTransform(new EvalTransformOptions(32, CropPct: 1.0));
            using var cts = new CancellationTokenSource();
            var progress = new SyncProgress<LabelProgress>(p => { if (p.Done >= 2) cts.Cancel(); });
            Assert.ThrowsAny<OperationCanceledException>(() =>
                LabelGeneration.Run(new Annotator(model), ds, tf, store, new LabelRunOptions(2, 2, "lvvit_t@annotator.safetensors"), progress: progress, cancel: cts.Token));
        }
        Assert.False(File.Exists(store));
        Assert.True(File.Exists(store + ".partial"));

        var (code, output, err) = Run("label", "--weights", weights, "--data", data, "--out", store, "--topk", "2", "--batch", "4", "--img-size", "32");
        Assert.True(code == 0, err);
        Assert.Contains("2 already labelled", err); // the run resumed
        Assert.Contains("6 images", output);

        // Every stored map equals the annotator run directly on the eval-preprocessed image (crop_pct 1.0).
        using (var scope = torch.NewDisposeScope())
        using (var s = LabelStore.Open(store))
        {
            Assert.Equal(6, s.Count);
            Assert.Equal((2, 2, 2, 2, 32), (s.Header.NumClasses, s.Header.K, s.Header.Height, s.Header.Width, s.Header.Resolution));
            Assert.Contains("lvvit_t", s.Header.Annotator);
            Assert.Equal(LabelMapRegion.CentreSquare, s.Header.Region); // 40×32 images, crop_pct 1.0: the centre 32×32
            var loaded = ModelWeights.Load(new ModelRequest(Weights: weights));
            using var model = loaded.Model;
            var ds = LabelDatasets.Open(data);
            var tf = new EvalTransform(new EvalTransformOptions(32, CropPct: 1.0));
            var ann = new Annotator(model);
            model.eval();
            for (int i = 0; i < ds.Count; i++)
            {
                var want = ann.Annotate(tf.ToTensor(ds.Load(i)).unsqueeze(0), 2)[0];
                var got = s.Get(ds.GetKey(i));
                for (int p = 0; p < 4; p++)
                {
                    Assert.Equal(want.Indices[p], got.Indices[p]);
                    Assert.Equal(want.Values[p], got.Values[p], 2e-3f);
                }
            }
            Assert.Equal("class1/img2.png", ds.GetKey(5));
            // Each record keeps the checksum of the image it was made from (the interrupted run's records too).
            Assert.True(s.Header.ImageChecksums);
            for (int i = 0; i < ds.Count; i++) Assert.Equal(LabelStore.ImageChecksum(ds.Load(i)), s.SourceChecksum(ds.GetKey(i)));
            Assert.Equal(6, s.CheckImages(ds));
        }

        // Again: nothing to do.
        (code, _, err) = Run("label", "--weights", weights, "--data", data, "--out", store, "--topk", "2", "--img-size", "32");
        Assert.True(code == 0, err);
        Assert.Contains("6 already labelled", err);

        (code, output, err) = Run("label", "inspect", store);
        Assert.True(code == 0, err);
        Assert.Contains("images      6", output);
        Assert.Contains("classes     2", output);
        Assert.Contains("map         2×2", output);
        Assert.Contains("mean top-1 probability", output);
        Assert.Contains("checksums   of every source image", output);

        (code, _, err) = Run("label", "inspect", store, "--image", "class0/img7.png");
        Assert.Equal(1, code);
        Assert.Contains("no labels for 'class0/img7.png' among its 6 images", err);
        Assert.Contains("nearest: 'class0/img", err);
        Assert.DoesNotContain("   at ", err);

        string png = Path.Combine(dir, "map.png");
        (code, output, err) = Run("label", "inspect", store, "--image", "class0/img1.png", "--png", png);
        Assert.True(code == 0, err);
        Assert.Contains("class0/img1.png", output);
        using var bmp = SKBitmap.Decode(png);
        Assert.True(bmp.Width >= 48 && bmp.Height > 48);
        using (var s = LabelStore.Open(store))
        {
            var m = s.Get("class0/img1.png");
            Assert.Equal(LabelInspection.ClassColor(m.Index(0, 1, 1)), bmp.GetPixel(24 + 12, 24 + 12).WithAlpha(255));
        }

        // Another run with other settings is refused instead of mixing labels.
        (code, _, err) = Run("label", "--weights", weights, "--data", data, "--out", store, "--topk", "1", "--img-size", "32");
        Assert.Equal(1, code);
        Assert.Contains("cannot resume", err);
    }

    [Fact]
    public void AnUnreadableImageStopsLabellingWithAClearErrorAndTheRunResumes()
    {
        string data = MakeFolder(), store = Path.Combine(dir, "labels.atl");
        string bad = Path.Combine(data, "class1", "img9.png");
        File.WriteAllBytes(bad, File.ReadAllBytes(Path.Combine(data, "class1", "img0.png"))[..60]); // a truncated PNG
        var (code, _, err) = Run("label", "--annotator", "lvvit_t", "--num-classes", "2", "--data", data, "--out", store, "--topk", "2",
            "--batch", "2", "--img-size", "32");
        Assert.Equal(1, code);
        Assert.Contains(bad, err);
        Assert.Contains("run `label` again to resume", err);
        Assert.Contains("6 images labelled so far", err); // class1/img9.png sorts last: three batches of 2 before it
        Assert.DoesNotContain("   at ", err); // no stack trace
        Assert.True(File.Exists(store + ".partial"));

        File.Delete(bad);
        // Without --topk: the default top-5 becomes top-2 for two classes, the same store settings, so it resumes.
        (code, _, err) = Run("label", "--annotator", "lvvit_t", "--num-classes", "2", "--data", data, "--out", store,
            "--batch", "2", "--img-size", "32");
        Assert.True(code == 0, err);
        Assert.Contains("6 already labelled", err);
        using var s = LabelStore.Open(store);
        Assert.Equal(6, s.Count);
        Assert.Equal(2, s.Header.K);
    }

    [Fact]
    public void ImportAndInspectOfficialData()
    {
        string fixture = Path.Combine(AppContext.BaseDirectory, "fixtures", "tokenlabel", "official");
        string store = Path.Combine(dir, "official.atl");
        var (code, output, err) = Run("label", "import", fixture, "--out", store, "--classes", "40");
        Assert.True(code == 0, err);
        Assert.Contains("3 images, 40 classes, top-3, 2×4", output);
        (code, output, err) = Run("label", "inspect", store, "--image", "n02102040/n02102040_15.JPEG");
        Assert.True(code == 0, err);
        // Seed 2 of the fixture formula: rank-0 class at (y, x) = (14 + 4y + x) % 40.
        Assert.Contains("  " + string.Join(" ", new[] { 14, 15, 16, 17 }.Select(c => c.ToString().PadLeft(4))), output);
        (code, output, _) = Run("label", "inspect", store);
        Assert.Equal(0, code);
        Assert.Contains("official <class>/<stem>", output);
        Assert.Contains("checksums   none", output);
    }

    [Fact]
    public void UsageAndDamageErrors()
    {
        var (code, _, err) = Run("label", "--data", dir, "--out", Path.Combine(dir, "o.atl"));
        Assert.Equal(2, code);
        Assert.Contains("--annotator", err);
        (code, _, err) = Run("label", "import", "x");
        Assert.Equal(2, code);
        Assert.Contains("--out", err);
        (code, _, err) = Run("label", "frobnicate", "x");
        Assert.Equal(2, code);
        Assert.Contains("unknown sub-command", err);
        (code, _, err) = Run("label", "inspect", "a", "--png", "x.png");
        Assert.Equal(2, code);
        Assert.Contains("--image", err);

        string bad = Path.Combine(dir, "bad.atl");
        File.WriteAllBytes(bad, new byte[700]);
        (code, _, err) = Run("label", "inspect", bad);
        Assert.Equal(1, code);
        Assert.Contains("bad.atl", err);
        Assert.Contains("not an AllTokens label store", err);
    }
}
