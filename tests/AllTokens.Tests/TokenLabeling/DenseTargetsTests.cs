using AllTokens.Data;
using AllTokens.TokenLabeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.TokenLabeling;

public class DenseTargetsTests
{
    // ---- a synthetic label map whose class is its quadrant: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right ----

    private const int Side = 8, Img = 64, L = 4, Classes = 4;

    private static LabelMap QuadrantMap()
    {
        var v = new float[Side * Side];
        var ix = new int[Side * Side];
        for (int y = 0; y < Side; y++)
            for (int x = 0; x < Side; x++)
            {
                v[y * Side + x] = 6f;
                ix[y * Side + x] = (y >= Side / 2 ? 2 : 0) + (x >= Side / 2 ? 1 : 0);
            }
        return new LabelMap(1, Side, Side, v, ix);
    }

    private static int[,] TokenArgmax(AugmentRecord record, bool officialAxes = false)
    {
        using var _ = torch.NewDisposeScope();
        var t = DenseTargets.FromLabelMaps([QuadrantMap()], [record], new DenseTargetOptions(Classes, L, OfficialBoxAxes: officialAxes));
        var am = t.Tokens!.argmax(-1).data<long>().ToArray();
        var grid = new int[L, L];
        for (int i = 0; i < L * L; i++) grid[i / L, i % L] = (int)am[i];
        return grid;
    }

    private static int[,] Quadrants(int tl, int tr, int bl, int br)
    {
        var g = new int[L, L];
        for (int a = 0; a < L; a++)
            for (int b = 0; b < L; b++) g[a, b] = a < L / 2 ? (b < L / 2 ? tl : tr) : (b < L / 2 ? bl : br);
        return g;
    }

    private static AugmentRecord Record(AugmentOrder order, bool flip = false, CropBox? crop = null, params Affine2D[] warps) =>
        new(order, Img, Img, flip, warps, crop ?? new CropBox(0, 0, Img, Img), Img, Img);

    // 90° rotation of a square image as an output → input map: x_in = y, y_in = W − x. Output top-left reads input
    // bottom-left, top-right reads top-left, bottom-left reads bottom-right, bottom-right reads top-right.
    private static readonly Affine2D Rotate90 = new(0, 1, 0, -1, 0, Img);

    [Theory]
    [InlineData(AugmentOrder.TokenLabel)]
    [InlineData(AugmentOrder.Timm)]
    public void IdentityKeepsQuadrants(AugmentOrder order) =>
        Assert.Equal(Quadrants(0, 1, 2, 3), TokenArgmax(Record(order)));

    [Theory]
    [InlineData(AugmentOrder.TokenLabel)]
    [InlineData(AugmentOrder.Timm)]
    public void FlipSwapsLeftAndRight(AugmentOrder order) =>
        Assert.Equal(Quadrants(1, 0, 3, 2), TokenArgmax(Record(order, flip: true)));

    [Theory]
    [InlineData(AugmentOrder.TokenLabel)]
    [InlineData(AugmentOrder.Timm)]
    public void RotationMovesQuadrants(AugmentOrder order) =>
        Assert.Equal(Quadrants(2, 0, 3, 1), TokenArgmax(Record(order, warps: Rotate90)));

    [Fact]
    public void CropOfTheTopHalfStretchesTheTopQuadrants()
    {
        // Top half of the image resized to the full output: left tokens class 0, right tokens class 1, all rows.
        var crop = new CropBox(0, 0, Img / 2, Img);
        Assert.Equal(Quadrants(0, 1, 0, 1), TokenArgmax(Record(AugmentOrder.TokenLabel, crop: crop)));
        Assert.Equal(Quadrants(0, 1, 0, 1), TokenArgmax(Record(AugmentOrder.Timm, crop: crop)));
    }

    [Fact]
    public void CropOfTheBottomRightQuadrantIsAllClassThree()
    {
        var crop = new CropBox(Img / 2, Img / 2, Img / 2, Img / 2);
        Assert.Equal(Quadrants(3, 3, 3, 3), TokenArgmax(Record(AugmentOrder.TokenLabel, crop: crop)));
    }

    [Fact]
    public void OfficialBoxAxesMirrorANonSquareCropAcrossTheDiagonal()
    {
        // The official (top, left, bottom, right) box read as (x1, y1, x2, y2) turns "top half" into "left half".
        var crop = new CropBox(0, 0, Img / 2, Img);
        Assert.Equal(Quadrants(0, 0, 2, 2), TokenArgmax(Record(AugmentOrder.TokenLabel, crop: crop), officialAxes: true));
        // A square crop with top = left is the same either way.
        var square = new CropBox(Img / 2, Img / 2, Img / 2, Img / 2);
        Assert.Equal(TokenArgmax(Record(AugmentOrder.TokenLabel, crop: square)), TokenArgmax(Record(AugmentOrder.TokenLabel, crop: square), officialAxes: true));
    }

    [Fact]
    public void TimmOrderFlipsAndRotatesAfterTheCrop()
    {
        // Timm: crop the top half, resize, then flip the output: left tokens read the crop's right → class 1.
        var crop = new CropBox(0, 0, Img / 2, Img);
        Assert.Equal(Quadrants(1, 0, 1, 0), TokenArgmax(Record(AugmentOrder.Timm, flip: true, crop: crop)));
        // Then a 90° rotation of the cropped output: TL ← BL of the crop (0), TR ← TL (0), BL ← BR (1), BR ← TR (1).
        Assert.Equal(Quadrants(0, 0, 1, 1), TokenArgmax(Record(AugmentOrder.Timm, crop: crop, warps: Rotate90)));
    }

    [Fact]
    public void CentreSquareMapsAreAlignedOnNonSquareImages()
    {
        // A 96×64 image: the annotator (crop_pct 1.0) saw its centre 64×64 square, x ∈ [16, 80).
        var rec = new AugmentRecord(AugmentOrder.TokenLabel, 96, 64, false, [], new CropBox(0, 16, 64, 64), 64, 64);
        Assert.Equal(new RoiBox(-0.5f, -0.5f, 7.5f, 7.5f), DenseTargets.CropToMap(rec, 8, 8, region: LabelMapRegion.CentreSquare));
        // Read as covering the whole image (the official reading), the same crop lands at x ∈ [16/96, 80/96)·8 − 0.5.
        var full = DenseTargets.CropToMap(rec, 8, 8);
        Assert.Equal(16.0 / 96 * 8 - 0.5, full.X1, 5);
        Assert.Equal(80.0 / 96 * 8 - 0.5, full.X2, 5);
        Assert.Equal((-0.5f, 7.5f), (full.Y1, full.Y2));
        // A wider 160×64 image (square x ∈ [48, 112)), whole-image crop, flipped, L = 5 (32-px token columns).
        // Box x: (0 − 48)/64·8 − 0.5 = −6.5 … (160 − 48)/64·8 − 0.5 = 13.5; bins of 4 with 4 samples.
        // Column 0 samples x = −6…−3 (< −1: nothing → uniform); column 1 x = −2…1 reads the flipped map's first
        // columns = the square's right edge (classes 1/3); column 3 x = 6…9 its left edge (0/2); column 4 nothing.
        using var _ = torch.NewDisposeScope();
        var wide = new AugmentRecord(AugmentOrder.TokenLabel, 160, 64, true, [], new CropBox(0, 0, 64, 160), 64, 64);
        var t = DenseTargets.FromLabelMaps([QuadrantMap()], [wide],
            new DenseTargetOptions(Classes, 5, Smoothing: 0, MapRegion: LabelMapRegion.CentreSquare)).Tokens![0];
        Assert.All(t[0].data<float>().ToArray(), p => Assert.Equal(0.25f, p, 5));
        Assert.All(t[4].data<float>().ToArray(), p => Assert.Equal(0.25f, p, 5));
        Assert.Equal(1L, t[1].argmax().item<long>());
        Assert.Equal(0L, t[3].argmax().item<long>());
        Assert.Equal(3L, t[4 * 5 + 1].argmax().item<long>());
        Assert.Equal(2L, t[4 * 5 + 3].argmax().item<long>());
    }

    [Fact]
    public void OutOfImageTokensGetUniformLogits()
    {
        // A translation by half the width (x_in = x + 32): the right half of the output reads outside → value 0 →
        // all-zero logits → uniform. Left half reads the input's right half (classes 1 and 3).
        using var _ = torch.NewDisposeScope();
        var shift = new Affine2D(1, 0, Img / 2, 0, 1, 0);
        var t = DenseTargets.FromLabelMaps([QuadrantMap()], [Record(AugmentOrder.TokenLabel, warps: shift)],
            new DenseTargetOptions(Classes, L, Smoothing: 0));
        var tok = t.Tokens![0];
        Assert.Equal(1L, tok[0].argmax().item<long>());
        Assert.Equal(3L, tok[L * (L - 1)].argmax().item<long>());
        var right = tok[L - 1].data<float>().ToArray(); // row 0, last column
        Assert.All(right, p => Assert.Equal(0.25f, p, 5));
    }

    // ---- exact values ----

    [Fact]
    public void TargetsEqualAHandComputation()
    {
        using var _ = torch.NewDisposeScope();
        // 2×2 map, k = 2, C = 3; identity record, L = 2: the box (−0.5, −0.5, 1.5, 1.5) gives 1 sample per token at
        // the pixel centres (tokens = locations), and the 1×1 cls bin averages the four locations' logits.
        float[] v = [2, 1, 0, 3, /* rank 1 */ 0.5f, 0.25f, -1, 1];
        int[] ix = [0, 1, 2, 0, /* rank 1 */ 1, 2, 0, 2];
        var map = new LabelMap(2, 2, 2, v, ix);
        double eps = 0.1, on = 1 - eps + eps / 3, off = eps / 3;
        var t = DenseTargets.FromLabelMaps([map], [AugmentRecord.None(32, 32)], new DenseTargetOptions(3, 2, eps), torch.tensor(new long[] { 2 }));

        double[] Logits(int loc)
        {
            var z = new double[3];
            z[ix[loc]] = v[loc];
            z[ix[4 + loc]] = v[4 + loc];
            return z;
        }
        double[] Soft(double[] z)
        {
            double m = z.Max(), s = z.Sum(a => Math.Exp(a - m));
            return z.Select(a => Math.Exp(a - m) / s * on + off).ToArray();
        }
        var tokens = t.Tokens![0];
        for (int loc = 0; loc < 4; loc++)
        {
            var want = Soft(Logits(loc));
            var got = tokens[loc].data<float>().ToArray();
            for (int c = 0; c < 3; c++) Assert.Equal(want[c], got[c], 5);
        }
        var mean = new double[3];
        for (int loc = 0; loc < 4; loc++)
            for (int c = 0; c < 3; c++) mean[c] += Logits(loc)[c] / 4;
        var cls = Soft(mean);
        var gotCls = t.Cls[0].data<float>().ToArray();
        for (int c = 0; c < 3; c++) Assert.Equal(cls[c], gotCls[c], 5);
        Assert.Equal([off, off, on], t.GroundTruth![0].data<float>().ToArray().Select(x => (double)x), new ToleranceComparer(1e-6));
    }

    [Fact]
    public void SmoothedDistributionsSumToOnePlusEpsilonOverC()
    {
        using var _ = torch.NewDisposeScope();
        // The official smoothing p·on + off sums to 1 + ε/C: 1.0001 at ε = 0.1, C = 1000 (kept on purpose).
        var rnd = new Random(3);
        var maps = Enumerable.Range(0, 2).Select(_ => new LabelMap(5, 3, 3,
            Enumerable.Range(0, 45).Select(_ => (float)rnd.NextDouble() * 4).ToArray(),
            Enumerable.Range(0, 45).Select(i => (i % 5) * 100 + i / 5).ToArray())).ToList();
        var t = DenseTargets.FromLabelMaps(maps, [AugmentRecord.None(10, 10), AugmentRecord.None(10, 10)], new DenseTargetOptions(1000, 14));
        Assert.Equal([2L, 196, 1000], t.Tokens!.shape);
        Assert.Equal([2L, 1000, 197], t.Stacked().shape);
        var sums = t.Stacked().sum(1).flatten().data<float>().ToArray();
        Assert.All(sums, s => Assert.Equal(1.0001f, s, 5));
    }

    [Theory]
    [InlineData(GroundTruthBlend.Corrected, 0.1)]
    [InlineData(GroundTruthBlend.Official, 0.9)]
    public void GroundTruthBlendWeights(GroundTruthBlend blend, double disagreeRatio)
    {
        using var _ = torch.NewDisposeScope();
        var annot = torch.tensor(new float[] { 0.7f, 0.2f, 0.1f, 0.6f, 0.3f, 0.1f }, [2L, 3]);
        var gt = torch.tensor(new float[] { 1, 0, 0, 0, 0, 1 }, [2L, 3]); // sample 0 agrees, sample 1 does not
        var y = DenseTargets.BlendWithGroundTruth(annot, gt, blend).data<float>().ToArray();
        Assert.Equal(0.5 * 0.7 + 0.5, y[0], 5);
        Assert.Equal(disagreeRatio * 0.6, y[3], 5);
        Assert.Equal(disagreeRatio * 0.1 + (1 - disagreeRatio), y[5], 5);
    }

    [Fact]
    public void ReLabelModeHasOnlyTheClassToken()
    {
        using var _ = torch.NewDisposeScope();
        var t = DenseTargets.FromLabelMaps([QuadrantMap()], [Record(AugmentOrder.TokenLabel, crop: new CropBox(0, 0, Img / 2, Img / 2))],
            new DenseTargetOptions(Classes, 1));
        Assert.Null(t.Tokens);
        Assert.Equal(0L, t.Cls.argmax(-1).item<long>());
    }

    [Fact]
    public void SparseConstructionEqualsTheDenseProduct()
    {
        using var _ = torch.NewDisposeScope();
        var rnd = new Random(5);
        int c = 30, k = 4, s = 7, l = 3;
        var maps = Enumerable.Range(0, 3).Select(_ => new LabelMap(k, s, s,
            Enumerable.Range(0, k * s * s).Select(_ => (float)(rnd.NextDouble() * 5 - 1)).ToArray(),
            Enumerable.Range(0, k * s * s).Select(i => (i / (s * s)) * 7 + rnd.Next(7)).ToArray())).ToList();
        var shear = new Affine2D(1, 0.3, -5, 0, 1, 0);
        var records = new List<AugmentRecord>
        {
            new(AugmentOrder.TokenLabel, 70, 50, true, [shear], new CropBox(4, 9, 30, 41), 48, 48),
            new(AugmentOrder.Timm, 60, 60, true, [Rotate90Of(48)], new CropBox(10, 0, 50, 33), 48, 48),
            AugmentRecord.None(20, 30),
        };
        var opts = new DenseTargetOptions(c, l);
        var sparse = DenseTargets.FromLabelMaps(maps, records, opts).Stacked();
        var weights = torch.tensor(records.SelectMany(r => DenseTargets.AlignmentWeights(r, s, s, l)).ToArray(), [3L, 1 + l * l, s * s]);
        var dense = DenseTargets.FromDenseLogits(DenseTargets.ScatterTopK(maps, c), weights, opts).Stacked();
        Assert.True(torch.allclose(sparse, dense, rtol: 1e-5, atol: 1e-7));
    }

    private static Affine2D Rotate90Of(int side) => new(0, 1, 0, -1, 0, side);

    [Fact]
    public void BadIndicesAndShapesAreRejected()
    {
        var bad = new LabelMap(1, 1, 1, [1f], [7]);
        var e = Assert.Throws<ArgumentException>(() => DenseTargets.ScatterTopK([bad], 4));
        Assert.Contains("class index 7", e.Message);
        var other = new LabelMap(1, 2, 1, [1f, 1f], [0, 0]);
        Assert.Throws<ArgumentException>(() => DenseTargets.ScatterTopK([bad, other], 8));
    }
}

internal sealed class ToleranceComparer(double tol) : IEqualityComparer<double>
{
    public bool Equals(double a, double b) => Math.Abs(a - b) <= tol;
    public int GetHashCode(double obj) => 0;
}
