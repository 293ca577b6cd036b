using System.Text.Json;
using AllTokens.Data;
using AllTokens.TokenLabeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.TokenLabeling;

/// <summary>Against torchvision 0.14.1's roi_align (fixture by tools/make_roi_align_fixture.py; never regenerated to pass).</summary>
public class TorchvisionParityTests
{
    private static readonly JsonElement Fixture = JsonDocument.Parse(File.ReadAllText(
        Path.Combine(AppContext.BaseDirectory, "fixtures", "tokenlabel", "roi_align.json"))).RootElement;

    private static float[] Floats(JsonElement e) => e.EnumerateArray().Select(x => x.GetSingle()).ToArray();

    [Fact]
    public void RoiAlignMatchesTorchvisionOnEveryBoxAndOutputSize()
    {
        using var _ = torch.NewDisposeScope();
        var roi = Fixture.GetProperty("roi");
        int c = roi.GetProperty("C").GetInt32(), h = roi.GetProperty("H").GetInt32(), w = roi.GetProperty("W").GetInt32();
        var map = torch.tensor(Floats(roi.GetProperty("map")), [1L, c, h, w]);
        int n = 0;
        foreach (var cs in roi.GetProperty("cases").EnumerateArray())
        {
            var b = Floats(cs.GetProperty("box"));
            var o = cs.GetProperty("out").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            var want = Floats(cs.GetProperty("values"));
            var got = RoiAlign.Apply(map, [new RoiBox(b[0], b[1], b[2], b[3])], o[0], o[1]).flatten().data<float>().ToArray();
            Assert.Equal(want.Length, got.Length);
            for (int i = 0; i < want.Length; i++)
                Assert.True(Math.Abs(want[i] - got[i]) <= 1e-5 + 1e-5 * Math.Abs(want[i]),
                    $"box ({string.Join(", ", b)}) out {o[0]}×{o[1]} element {i}: torchvision {want[i]}, ours {got[i]}");
            n++;
        }
        Assert.Equal(32, n);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void DenseTargetsMatchTheOfficialConstruction(bool officialAxes)
    {
        using var _ = torch.NewDisposeScope();
        var t = Fixture.GetProperty("targets");
        int b = t.GetProperty("B").GetInt32(), c = t.GetProperty("C").GetInt32(), k = t.GetProperty("K").GetInt32();
        int s = t.GetProperty("S").GetInt32(), l = t.GetProperty("L").GetInt32();
        var values = Floats(t.GetProperty("values"));
        var indices = t.GetProperty("indices").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        int per = k * s * s;
        var maps = Enumerable.Range(0, b).Select(i => new LabelMap(k, s, s, values[(i * per)..((i + 1) * per)], indices[(i * per)..((i + 1) * per)])).ToList();
        var records = t.GetProperty("records").EnumerateArray().Select(r =>
        {
            var a = r.EnumerateArray().ToArray();
            return new AugmentRecord(AugmentOrder.TokenLabel, a[0].GetInt32(), a[1].GetInt32(), a[2].GetBoolean(), [],
                new CropBox(a[3].GetDouble(), a[4].GetDouble(), a[5].GetDouble(), a[6].GetDouble()), 64, 64);
        }).ToList();
        var opts = new DenseTargetOptions(c, l, t.GetProperty("smoothing").GetDouble(), OfficialBoxAxes: officialAxes);
        var got = DenseTargets.FromLabelMaps(maps, records, opts).Stacked().flatten().data<float>().ToArray(); // [B, C, 1+L²]
        var want = Floats(t.GetProperty(officialAxes ? "official" : "geometric"));
        Assert.Equal(want.Length, got.Length);
        for (int i = 0; i < want.Length; i++)
            Assert.True(Math.Abs(want[i] - got[i]) <= 2e-6, $"element {i}: reference {want[i]}, ours {got[i]}");
    }
}
