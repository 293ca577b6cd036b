using AllTokens.Cli;
using AllTokens.Models;
using AllTokens.Visualization;
using SkiaSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Visualization;

public sealed class VisualizationTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-viz-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    [Fact]
    public void ViridisHitsItsAnchorsAndInterpolates()
    {
        Assert.Equal(new SKColor(68, 1, 84), Drawing.Viridis(0));
        Assert.Equal(new SKColor(253, 231, 37), Drawing.Viridis(1));
        Assert.Equal(new SKColor(33, 144, 141), Drawing.Viridis(0.5));
        // Halfway between the first two anchors (68,1,84) and (71,44,122): (69.5, 22.5, 103) rounded half to even.
        Assert.Equal(new SKColor(70, 22, 103), Drawing.Viridis(1.0 / 16));
        Assert.Equal(Drawing.Viridis(0), Drawing.Viridis(-3));
        Assert.Equal(new SKColor(128, 128, 128), Drawing.Viridis(double.NaN));
    }

    [Fact]
    public void HeatmapNormalisesAndLaysOutRowMajor()
    {
        float[] v = [0, 1, 2, 4];   // 2×2: min → bottom colour, max → top colour
        using var bmp = Drawing.Heatmap(v, 2, 2, 3);
        Assert.Equal(6, bmp.Width);
        Assert.Equal(6, bmp.Height);
        Assert.Equal(Drawing.Viridis(0), bmp.GetPixel(0, 0));
        Assert.Equal(Drawing.Viridis(0.25), bmp.GetPixel(5, 0));   // row 0, column 1
        Assert.Equal(Drawing.Viridis(0.5), bmp.GetPixel(1, 4));    // row 1, column 0
        Assert.Equal(Drawing.Viridis(1), bmp.GetPixel(4, 5));
        Assert.Throws<ArgumentException>(() => Drawing.Heatmap(v, 3, 2, 1));
    }

    [Fact]
    public void InspectorGivesT2tStagesTokenMapsAndClsAttention()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(3);
        using var model = ModelRegistry.Create("t2t_vit_nano", new ModelOptions(NumClasses: 10, ImgSize: 64));
        var found = ModelInspector.Inspect(model, torch.randn(1, 3, 64, 64), block: -1, channels: 5);
        Assert.Equal(["T2T layer 1", "T2T layer 2", "block 3 tokens"], found.Features.Select(f => f.Name));
        Assert.Equal([16, 8, 4], found.Features.Select(f => f.Grid));
        Assert.All(found.Features, f =>
        {
            Assert.Equal(5, f.Maps.Length);
            Assert.All(f.Maps, m => Assert.Equal(f.Grid * f.Grid, m.Length));
            Assert.Equal(f.Channels.Length, f.Channels.Distinct().Count());
        });
        Assert.Equal(3, found.Attention.Block);
        Assert.Equal(4, found.Attention.PerHead.Length);
        foreach (var head in found.Attention.PerHead)
        {
            // Softmax row of the class token: the 16 patch weights plus its weight on itself sum to 1.
            double sum = head.Sum();
            Assert.InRange(sum, 0.0, 1.0 + 1e-5);
            Assert.All(head, w => Assert.True(w >= 0));
        }
        Assert.Equal(found.Attention.PerHead.Select(h => (double)h[7]).Average(), found.Attention.Mean[7], 5);
        Assert.Equal(10, found.Logits.Length);
    }

    [Fact]
    public void FeatureMapsPickTheHighestVarianceChannels()
    {
        using var _ = torch.NewDisposeScope();
        var tokens = torch.zeros(4, 3);
        tokens[.., 1] = torch.tensor(new float[] { 0, 10, 0, 10 });
        tokens[.., 2] = torch.tensor(new float[] { 0, 1, 0, 1 });
        var maps = ModelInspector.Maps("t", tokens, 2);
        Assert.Equal([1, 2], maps.Channels);
        Assert.Equal([0f, 10f, 0f, 10f], maps.Maps[0]);
        Assert.Throws<ArgumentException>(() => ModelInspector.Maps("t", torch.zeros(5, 2), 1));
    }

    [Fact]
    public void BadLayerIsAClearError()
    {
        using var _ = torch.NewDisposeScope();
        using var model = ModelRegistry.Create("vit_nano", new ModelOptions(NumClasses: 3, ImgSize: 64));
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => ModelInspector.Inspect(model, torch.randn(1, 3, 64, 64), block: 4));
        Assert.Contains("blocks 0..3", e.Message);
    }

    [Fact]
    public void VisualizeVerbWritesADecodablePicture()
    {
        string image = Path.Combine(dir, "in.png");
        using (var bmp = new SKBitmap(40, 30))
        {
            for (int y = 0; y < 30; y++) for (int x = 0; x < 40; x++) bmp.SetPixel(x, y, new SKColor((byte)(x * 6), (byte)(y * 8), 90));
            Drawing.SavePng(bmp, image);
        }
        string outPath = Path.Combine(dir, "viz.png");
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(["visualize", "--model", "lvvit_nano", "--num-classes", "4", "--layer", "1", "--out", outPath, image], o, e);
        Assert.True(code == 0, e.ToString());
        Assert.Contains("block 1", o.ToString());
        using var decoded = SKBitmap.Decode(outPath);
        Assert.NotNull(decoded);
        Assert.True(decoded.Width > 300 && decoded.Height > 200);

        code = Program.Run(["visualize", "--model", "lvvit_nano", "--layer", "9", "--out", outPath, image], o, e = new StringWriter());
        Assert.Equal(2, code);
        Assert.Contains("--layer 9", e.ToString());
        code = Program.Run(["visualize", "--model", "lvvit_nano", image, image], o, e = new StringWriter());
        Assert.Equal(2, code);
    }
}
