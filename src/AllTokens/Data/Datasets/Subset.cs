namespace AllTokens.Data.Datasets;

/// <summary>A dataset restricted to some of another's samples, in the order given.</summary>
public sealed class Subset : IImageDataset
{
    private readonly IImageDataset inner;
    private readonly int[] indices;

    public Subset(IImageDataset inner, IReadOnlyList<int> indices)
    {
        ArgumentNullException.ThrowIfNull(inner);
        ArgumentNullException.ThrowIfNull(indices);
        foreach (int i in indices)
            if ((uint)i >= (uint)inner.Count)
                throw new ArgumentOutOfRangeException(nameof(indices), $"{inner.Source}: index {i} outside 0..{inner.Count - 1}");
        this.inner = inner;
        this.indices = [.. indices];
    }

    /// <summary>Indices into the underlying dataset, in subset order.</summary>
    public IReadOnlyList<int> Indices => indices;
    public int Count => indices.Length;
    public IReadOnlyList<string> ClassNames => inner.ClassNames;
    public string Source => $"{inner.Source}, subset of {Count}";
    public int GetLabel(int index) => inner.GetLabel(indices[index]);
    public string GetKey(int index) => inner.GetKey(indices[index]);
    public RgbImage Load(int index) => inner.Load(indices[index]);

    /// <summary>
    /// A per-class balanced subset of about <paramref name="n"/> samples: each class gets ⌊n / C⌋ samples, the first
    /// n mod C classes one more; a class with fewer samples gives all it has (the shortfall is not moved elsewhere).
    /// Which samples is decided by a seeded shuffle per class; the result is sorted by the original index.
    /// </summary>
    public static Subset Balanced(IImageDataset dataset, int n, long seed)
    {
        ArgumentNullException.ThrowIfNull(dataset);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(n);
        int classes = dataset.ClassNames.Count;
        var byClass = new List<int>[classes];
        for (int c = 0; c < classes; c++) byClass[c] = [];
        for (int i = 0; i < dataset.Count; i++)
        {
            int label = dataset.GetLabel(i);
            if ((uint)label >= (uint)classes)
                throw new DatasetException($"{dataset.Source}: sample {dataset.GetKey(i)} has label {label}, outside the {classes} classes");
            byClass[label].Add(i);
        }
        var chosen = new List<int>(n);
        for (int c = 0; c < classes; c++)
        {
            int want = n / classes + (c < n % classes ? 1 : 0);
            int[] pool = [.. byClass[c]];
            new SeededRandom(SeededRandom.Derive(seed, c, pool.Length, 0x5B5E7)).Shuffle(pool);
            chosen.AddRange(pool.Take(want));
        }
        chosen.Sort();
        return new Subset(dataset, chosen);
    }
}
