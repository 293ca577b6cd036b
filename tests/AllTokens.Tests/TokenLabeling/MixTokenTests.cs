using AllTokens.Models;
using AllTokens.TokenLabeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.TokenLabeling;

public class MixTokenTests
{
    [Fact]
    public void BoxForMatchesTheOfficialFormula()
    {
        // λ = 0.5, 14-grid: r = √0.5, cut = int(14·0.7071) = 9, cut//2 = 4; centre (5, 12):
        // rows [1, 9), columns [8, 16) clipped to [8, 14).
        Assert.Equal(new MixBox(1, 8, 9, 14), MixTokenSampler.BoxFor(0.5, 5, 12, 14, 14));
        // λ = 0.99: cut = int(14·0.1) = 1, cut//2 = 0 → empty.
        Assert.True(MixTokenSampler.BoxFor(0.99, 7, 7, 14, 14).IsEmpty);
        // λ = 0: cut = 14 → [c−7, c+7) clipped; at the centre the whole grid.
        Assert.Equal(new MixBox(0, 0, 14, 14), MixTokenSampler.BoxFor(0, 7, 7, 14, 14));
    }

    [Fact]
    public void StatisticsOnThe14GridMatchTheExactExpectations()
    {
        const int g = 14, n = 40_000;
        // Exact: u = 1 − λ ~ U(0,1), cut = int(14√u) = k with probability ((k+1)² − k²)/196; rows and columns
        // independent given cut, centres uniform → E[area] = Σ_k P(k) · (mean clipped length(k))².
        double expectedArea = 0, expectedEmpty = 0;
        for (int k = 0; k < g; k++)
        {
            double p = ((k + 1.0) * (k + 1) - k * k) / (g * g);
            double len = Enumerable.Range(0, g).Average(c => Math.Min(g, c + k / 2) - Math.Max(0, c - k / 2));
            expectedArea += p * len * len;
            if (k / 2 == 0) expectedEmpty += p;
        }
        Assert.Equal(4.0 / 196, expectedEmpty, 12); // ≈ 2 % of steps are unmixed

        var sampler = new MixTokenSampler(12345);
        double sum = 0, sumSq = 0;
        int empty = 0;
        for (int i = 0; i < n; i++)
        {
            var b = sampler.Sample(g, g);
            Assert.InRange(b.Top, 0, g);
            Assert.InRange(b.Bottom, b.Top, g);
            Assert.InRange(b.Right, b.Left, g);
            // Unclipped sides are even (2·(cut//2)).
            if (b.Top > 0 && b.Bottom < g) Assert.Equal(0, (b.Bottom - b.Top) % 2);
            if (b.Left > 0 && b.Right < g) Assert.Equal(0, (b.Right - b.Left) % 2);
            if (b.IsEmpty) empty++;
            sum += b.Area;
            sumSq += (double)b.Area * b.Area;
        }
        double mean = sum / n, se = Math.Sqrt((sumSq / n - mean * mean) / n);
        Assert.InRange(mean, expectedArea - 4 * se, expectedArea + 4 * se);
        double pEmpty = (double)empty / n, seEmpty = Math.Sqrt(expectedEmpty * (1 - expectedEmpty) / n);
        Assert.InRange(pEmpty, expectedEmpty - 4 * seEmpty, expectedEmpty + 4 * seEmpty);
    }

    [Fact]
    public void SavedStateReproducesTheDraws()
    {
        var a = new MixTokenSampler(9);
        for (int i = 0; i < 5; i++) a.Sample(14, 14);
        string state = a.SaveState();
        var next = Enumerable.Range(0, 10).Select(_ => a.Sample(14, 14)).ToList();
        var b = new MixTokenSampler(1);
        b.LoadState(state);
        Assert.Equal(next, Enumerable.Range(0, 10).Select(_ => b.Sample(14, 14)).ToList());
        Assert.Throws<FormatException>(() => b.LoadState("not a state"));
    }

    [Fact]
    public void UnmixedTokenOutputsReferToEachImagesOwnContent()
    {
        // With a non-overlapping 16×16 patch stem, swapping a token box equals swapping the 16-px pixel blocks.
        // So the mixed forward must equal a plain forward of pixel-mixed images, with the box region of the token
        // outputs swapped back to the partner (B−1−i): row i then predicts image i's own tokens.
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(3);
        var cfg = new LvVitConfig(32, 2, 2, 2.0, 1.0, StemKind.Naive, AuxHead: true, MixToken: true);
        using var model = new LvVit("mix_test", cfg, new ModelOptions(NumClasses: 5, ImgSize: 64));
        model.train();
        const int B = 3, g = 4;
        var x = torch.randn(B, 3, 64, 64);
        var box = new MixBox(1, 0, 3, 2);
        var mixed = model.ForwardTrain(x, box);

        var mask = torch.zeros(1, 1, 64, 64, ScalarType.Bool);
        mask[.., .., 16..48, 0..32] = torch.tensor(true);
        var xMixed = torch.where(mask, x.flip(0), x);
        var plain = model.ForwardTrain(xMixed, null);

        Assert.True(torch.allclose(mixed.Logits, plain.Logits, rtol: 1e-4, atol: 1e-5));
        var m = mixed.TokenLogits!.reshape(B, g, g, 5);
        var p = plain.TokenLogits!.reshape(B, g, g, 5);
        for (int i = 0; i < B; i++)
            for (int r = 0; r < g; r++)
                for (int c = 0; c < g; c++)
                {
                    bool inBox = r >= box.Top && r < box.Bottom && c >= box.Left && c < box.Right;
                    var want = inBox ? p[B - 1 - i, r, c] : p[i, r, c];
                    Assert.True(torch.allclose(m[i, r, c], want, rtol: 1e-4, atol: 1e-5), $"token ({r},{c}) of sample {i}");
                }
        Assert.Equal(0.75, box.Lambda(g, g), 12);
    }
}
