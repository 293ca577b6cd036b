using AllTokens.Models;

namespace AllTokens.TokenLabeling;

/// <summary>
/// MixToken boxes as the official code samples them (LV-ViT <c>rand_bbox</c>, LVVIT.md §5): λ ~ Beta(1, 1) = U(0, 1),
/// r = √(1−λ), cut = int(side·r), centre ~ randint[0, side), range = clip(centre ∓ cut//2, 0, side) per axis (rows
/// first, then columns); unclipped sides are even. One box per batch; the partner of sample i is B−1−i.
/// </summary>
public sealed class MixTokenSampler(ulong seed)
{
    private readonly Training.Rng rng = new(seed);

    /// <summary>Draws λ, then the row centre, then the column centre, and returns the clipped box on a gridH × gridW grid.</summary>
    public MixBox Sample(int gridH, int gridW)
    {
        if (gridH < 1 || gridW < 1) throw new ArgumentOutOfRangeException(nameof(gridH), $"grid must be at least 1×1, got {gridH}×{gridW}");
        double lambda = rng.NextDouble(); // Beta(1, 1) is U(0, 1)
        return BoxFor(lambda, rng.NextInt(0, gridH), rng.NextInt(0, gridW), gridH, gridW);
    }

    /// <summary>The box for given draws (pure): cut = int(side·√(1−λ)), [clip(c − cut//2), clip(c + cut//2)).</summary>
    public static MixBox BoxFor(double lambda, int centreRow, int centreCol, int gridH, int gridW)
    {
        double r = Math.Sqrt(1.0 - lambda);
        int cutH = (int)(gridH * r), cutW = (int)(gridW * r);
        int top = Math.Clamp(centreRow - cutH / 2, 0, gridH), bottom = Math.Clamp(centreRow + cutH / 2, 0, gridH);
        int left = Math.Clamp(centreCol - cutW / 2, 0, gridW), right = Math.Clamp(centreCol + cutW / 2, 0, gridW);
        return new MixBox(top, left, bottom, right);
    }

    public string SaveState() => rng.SaveState();

    public void LoadState(string state) => rng.LoadState(state);
}
