using AllTokens.TokenLabeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.TokenLabeling;

public class RoiAlignTests
{
    // A 1-channel map [1, 1, h, w] from a function of (x, y) = (column, row).
    private static Tensor Map(int h, int w, Func<int, int, float> f)
    {
        var data = new float[h * w];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) data[y * w + x] = f(x, y);
        return torch.tensor(data, [1L, 1, h, w]);
    }

    private static float[] Pool(Tensor map, RoiBox box, int outH, int outW)
    {
        using var _ = torch.NewDisposeScope();
        return RoiAlign.Apply(map, [box], outH, outW).flatten().data<float>().ToArray();
    }

    [Fact]
    public void FullBoxOneBinIsTheMeanOfThePixelCentres()
    {
        using var _ = torch.NewDisposeScope();
        // Box (−0.5, −0.5, 1.5, 1.5) on 2×2: roi 2, grid ceil(2/1) = 2 per axis, samples at 0 and 1 = the pixel centres.
        var m = torch.tensor(new float[] { 1, 2, 3, 4 }, [1L, 1, 2, 2]);
        Assert.Equal([2.5f], Pool(m, new RoiBox(-0.5f, -0.5f, 1.5f, 1.5f), 1, 1));
    }

    [Fact]
    public void OneSamplePerBinReadsBinCentresBilinearly()
    {
        // v = 10y + x is reproduced exactly by bilinear interpolation. Box (0, 0, 2, 2) → 2×2 bins of size 1, grid 1:
        // samples at (x, y) = (0.5, 0.5), (1.5, 0.5), (0.5, 1.5), (1.5, 1.5).
        var m = Map(3, 3, (x, y) => 10 * y + x);
        Assert.Equal([5.5f, 6.5f, 15.5f, 16.5f], Pool(m, new RoiBox(0, 0, 2, 2), 2, 2));
    }

    [Fact]
    public void BilinearWeightsOnANonLinearMap()
    {
        // v = x²: box (0, 0, 2, 2) → 1 bin, grid 2×2, samples x ∈ {0.5, 1.5}: bilinear gives 0.5 and 2.5, mean 1.5.
        var m = Map(3, 3, (x, y) => x * x);
        Assert.Equal(1.5f, Pool(m, new RoiBox(0, 0, 2, 2), 1, 1)[0], 6);
    }

    [Fact]
    public void AdaptiveGridAndClampAtTheLastRowAndColumn()
    {
        // Box (0, 0, 3, 3) on 3×3, out 2×2: bin 1.5, grid ceil(1.5) = 2, offsets 0.375 and 1.125 inside each bin.
        // Bin (0,0): y, x ∈ {0.375, 1.125}: mean 0.75 each → 10·0.75 + 0.75 = 8.25.
        // Bin (1,1): y, x ∈ {1.875, 2.625}; 2.625 ≥ H−1 = 2 clamps to 2 → mean 1.9375 → 19.375 + 1.9375 = 21.3125.
        // Bin (0,1): y mean 0.75, x mean 1.9375 → 7.5 + 1.9375 = 9.4375. Bin (1,0): 19.375 + 0.75 = 20.125.
        var m = Map(3, 3, (x, y) => 10 * y + x);
        var got = Pool(m, new RoiBox(0, 0, 3, 3), 2, 2);
        Assert.Equal(8.25f, got[0], 5);
        Assert.Equal(9.4375f, got[1], 5);
        Assert.Equal(20.125f, got[2], 5);
        Assert.Equal(21.3125f, got[3], 5);
    }

    [Fact]
    public void RoiSmallerThanOnePixelIsWidenedToOne()
    {
        // (1, 1, 1.2, 1.2): roi = max(0.2, 1) = 1, one sample at (1.5, 1.5), not inside the tiny box.
        var m = Map(3, 3, (x, y) => 10 * y + x);
        Assert.Equal(16.5f, Pool(m, new RoiBox(1, 1, 1.2f, 1.2f), 1, 1)[0], 5);
    }

    [Fact]
    public void EdgeRulesClampNegativesAndZeroPointsBeyondTheMap()
    {
        var m = Map(3, 3, (x, y) => 10 * y + x + 1);
        // Sample (x, y) = (−0.4, −0.4): within [−1, 0] → clamped to (0, 0) → v(0,0) = 1.
        Assert.Equal(1f, Pool(m, new RoiBox(-0.9f, -0.9f, 0.1f, 0.1f), 1, 1)[0], 6);
        // Sample x = 2.1 ≥ W−1 → x = 2; y = 0.5 → 10·0.5 + 2 + 1 = 8.
        Assert.Equal(8f, Pool(m, new RoiBox(1.6f, 0, 2.6f, 1), 1, 1)[0], 5);
        // Sample x = 3.7 > W = 3 → contributes 0, and the bin still divides by its sample count.
        Assert.Equal(0f, Pool(m, new RoiBox(3.2f, 0, 4.2f, 1), 1, 1)[0]);
        // Box (2.5, 0, 4.5, 1), out 1×1: roi_w 2 → grid 2 samples x = 3.0 (→ clamped to 2: v = 6+... y 0.5) and 4.0 (> 3: 0).
        // x = 3.0 is not > W, so it clamps to x = 2: value 10·0.5 + 2 + 1 = 8; mean with 0 → 4.
        Assert.Equal(4f, Pool(m, new RoiBox(2.5f, 0, 4.5f, 1), 1, 1)[0], 5);
    }

    [Fact]
    public void ClassTokenBinOfAFullCropAveragesEveryPixel()
    {
        using var _ = torch.NewDisposeScope();
        // The official 1×1 cls bin on an 18×18 map: grid 18×18, one sample at every pixel centre.
        var m = torch.rand(1, 3, 18, 18, generator: new Generator(7));
        var got = RoiAlign.Apply(m, [new RoiBox(-0.5f, -0.5f, 17.5f, 17.5f)], 1, 1).flatten();
        var want = m.mean([2, 3]).flatten();
        Assert.True(torch.allclose(got, want, rtol: 1e-5, atol: 1e-6));
    }

    [Fact]
    public void BatchesUseOneBoxPerSampleAndKeepChannels()
    {
        using var _ = torch.NewDisposeScope();
        var a = Map(3, 3, (x, y) => 10 * y + x);
        var m = torch.cat([a, a * 2], 1); // [1, 2, 3, 3]
        m = torch.cat([m, m + 100], 0);   // [2, 2, 3, 3]
        var got = RoiAlign.Apply(m, [new RoiBox(0, 0, 2, 2), new RoiBox(1, 1, 1.2f, 1.2f)], 2, 2);
        Assert.Equal([2L, 2, 2, 2], got.shape);
        Assert.Equal([5.5f, 6.5f, 15.5f, 16.5f], got[0, 0].flatten().data<float>().ToArray());
        Assert.Equal([11f, 13f, 31f, 33f], got[0, 1].flatten().data<float>().ToArray());
        // Sample 1: roi 1 → bin 0.5, grid 1 → samples (1.25, 1.25), (1.75, 1.25), (1.25, 1.75), (1.75, 1.75), +100.
        Assert.Equal([113.75f, 114.25f, 118.75f, 119.25f], got[1, 0].flatten().data<float>().ToArray());
    }

    [Fact]
    public void WeightRowsSumToOneInsideTheMap()
    {
        // Inside the map every sample's four bilinear weights sum to 1, so each bin's weights do too.
        var w = RoiAlign.Weights(new RoiBox(-0.5f, -0.5f, 13.5f, 13.5f), 14, 14, 14, 14);
        for (int r = 0; r < 196; r++) Assert.Equal(1f, w.AsSpan(r * 196, 196).ToArray().Sum(), 5);
    }
}
