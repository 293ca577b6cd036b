using AllTokens.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>Labelled 8-bit images held in memory (1 or 3 channels, HWC), e.g. an IDX file or synthetic data.</summary>
public sealed class InMemoryDataset : IImageDataset
{
    private readonly byte[] pixels;
    private readonly int[] labels;
    private readonly string keyPrefix;

    public InMemoryDataset(byte[] pixels, int[] labels, int width, int height, int channels, IReadOnlyList<string> classNames, string source, string keyPrefix)
    {
        if (channels is not (1 or 3)) throw new ArgumentException($"{source}: images need 1 or 3 channels, got {channels}");
        if (pixels.LongLength != (long)labels.Length * width * height * channels)
            throw new InvalidDataException($"{source}: {labels.Length} labels need {(long)labels.Length * width * height * channels} pixel bytes, got {pixels.LongLength}");
        foreach (var l in labels)
            if (l < 0 || l >= classNames.Count) throw new InvalidDataException($"{source}: label {l} outside the {classNames.Count} classes");
        this.pixels = pixels;
        this.labels = labels;
        Width = width;
        Height = height;
        Channels = channels;
        ClassNames = classNames;
        Source = source;
        this.keyPrefix = keyPrefix;
    }

    public int Width { get; }
    public int Height { get; }
    public int Channels { get; }
    public int Count => labels.Length;
    public IReadOnlyList<string> ClassNames { get; }
    public string Source { get; }
    public int GetLabel(int index) => labels[index];
    public string GetKey(int index) => $"{keyPrefix}/{index:D6}";

    /// <summary>The raw bytes of sample <paramref name="index"/> (HWC).</summary>
    public ReadOnlySpan<byte> Raw(int index)
    {
        int n = Width * Height * Channels;
        return pixels.AsSpan(index * n, n);
    }

    public RgbImage Load(int index)
    {
        var src = Raw(index);
        var rgb = new byte[Width * Height * 3];
        if (Channels == 3) src.CopyTo(rgb);
        else for (int i = 0; i < src.Length; i++) rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = src[i];
        return new RgbImage(Width, Height, rgb);
    }
}

/// <summary>
/// A minimal <see cref="IBatchSource"/> over an <see cref="InMemoryDataset"/>: seeded per-epoch shuffle, optional
/// horizontal flip, bilinear resize to the model's input, grey → 3 channels, normalisation. Deterministic in
/// (seed, epoch, batch), so a resume at any batch sees the same data. Stands in until the real loader is wired.
/// </summary>
public sealed class InMemoryBatchSource : IBatchSource
{
    private readonly InMemoryDataset data;
    private readonly int[] indices;
    private readonly int batchSize, imgSize;
    private readonly bool shuffle, dropLast;
    private readonly double hflip;
    private readonly ulong seed;
    private readonly float[] mean, std;

    public InMemoryBatchSource(InMemoryDataset data, int batchSize, int imgSize, bool train, ulong seed, int[]? indices = null,
        double hflip = 0.5, float[]? mean = null, float[]? std = null)
    {
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), $"batch size must be ≥ 1, got {batchSize}");
        this.data = data;
        this.indices = indices ?? Enumerable.Range(0, data.Count).ToArray();
        this.batchSize = batchSize;
        this.imgSize = imgSize;
        shuffle = train;
        dropLast = train;
        this.hflip = train ? hflip : 0;
        this.seed = seed;
        this.mean = mean ?? [0.5f, 0.5f, 0.5f];
        this.std = std ?? [0.5f, 0.5f, 0.5f];
    }

    public IImageDataset Dataset => data;

    public int BatchesPerEpoch => dropLast ? indices.Length / batchSize : (indices.Length + batchSize - 1) / batchSize;

    /// <summary>Sample order of <paramref name="epoch"/>: Fisher–Yates with a generator seeded by (seed, epoch).</summary>
    public int[] Order(int epoch)
    {
        var order = (int[])indices.Clone();
        if (!shuffle) return order;
        var rng = new Rng(seed * 0x9E3779B97F4A7C15UL + (ulong)epoch + 1);
        for (int i = order.Length - 1; i > 0; i--)
        {
            int j = rng.NextInt(0, i + 1);
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }

    public IEnumerable<Batch> Epoch(int epoch, int startBatch = 0)
    {
        var order = Order(epoch);
        for (int b = startBatch; b < BatchesPerEpoch; b++)
        {
            var idx = order.Skip(b * batchSize).Take(batchSize).ToArray();
            yield return MakeBatch(idx, new Rng(seed ^ ((ulong)epoch << 32) ^ (ulong)(b + 1) * 0xD1B54A32D192ED03UL));
        }
    }

    private Batch MakeBatch(int[] idx, Rng rng)
    {
        int w = data.Width, h = data.Height, c = data.Channels;
        var buf = new float[idx.Length * c * h * w];
        for (int i = 0; i < idx.Length; i++)
        {
            var src = data.Raw(idx[i]);
            bool flip = hflip > 0 && rng.NextDouble() < hflip;
            int o = i * c * h * w;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                {
                    int sx = flip ? w - 1 - x : x;
                    for (int ch = 0; ch < c; ch++)
                        buf[o + ch * h * w + y * w + x] = src[(y * w + sx) * c + ch] / 255f;
                }
        }
        using var scope = torch.NewDisposeScope();
        var x0 = torch.tensor(buf, [idx.Length, c, h, w]);
        if (c == 1) x0 = x0.expand(-1, 3, -1, -1);
        if (h != imgSize || w != imgSize)
            x0 = nn.functional.interpolate(x0, [imgSize, imgSize], mode: InterpolationMode.Bilinear, align_corners: false);
        var m = torch.tensor(mean).view(1, 3, 1, 1);
        var s = torch.tensor(std).view(1, 3, 1, 1);
        var images = ((x0 - m) / s).contiguous().MoveToOuterDisposeScope();
        var labels = torch.tensor(idx.Select(i => (long)data.GetLabel(i)).ToArray()).MoveToOuterDisposeScope();
        return new Batch { Images = images, Labels = labels, Indices = idx };
    }
}

/// <summary>Class-balanced subsets (round-robin over classes in a seeded order).</summary>
public static class BalancedSubset
{
    /// <summary>Up to <paramref name="count"/> indices, as equal per class as the data allows.</summary>
    public static int[] Take(IImageDataset data, int count, ulong seed)
    {
        var rng = new Rng(seed);
        var perClass = Enumerable.Range(0, data.Count).GroupBy(data.GetLabel).OrderBy(g => g.Key).Select(g =>
        {
            var list = g.ToArray();
            for (int i = list.Length - 1; i > 0; i--)
            {
                int j = rng.NextInt(0, i + 1);
                (list[i], list[j]) = (list[j], list[i]);
            }
            return new Queue<int>(list);
        }).ToList();
        var result = new List<int>();
        while (result.Count < count && perClass.Any(q => q.Count > 0))
            foreach (var q in perClass)
                if (q.Count > 0 && result.Count < count) result.Add(q.Dequeue());
        result.Sort();
        return result.ToArray();
    }
}

/// <summary>Synthetic labelled images: a fixed random template per class plus per-image noise (learnable, seeded).</summary>
public static class SyntheticData
{
    public static InMemoryDataset Create(int count, int numClasses, int size, ulong seed, double noise = 0.4)
    {
        var rng = new Rng(seed);
        int n = size * size * 3;
        var templates = Enumerable.Range(0, numClasses).Select(_ => Enumerable.Range(0, n).Select(_ => rng.NextDouble()).ToArray()).ToArray();
        var pixels = new byte[(long)count * n];
        var labels = new int[count];
        for (int i = 0; i < count; i++)
        {
            labels[i] = i % numClasses;
            var t = templates[labels[i]];
            for (int j = 0; j < n; j++) pixels[(long)i * n + j] = (byte)Math.Clamp((int)(255 * ((1 - noise) * t[j] + noise * rng.NextDouble())), 0, 255);
        }
        return new InMemoryDataset(pixels, labels, size, size, 3, Enumerable.Range(0, numClasses).Select(c => $"class_{c}").ToList(), $"synthetic(seed {seed})", "synthetic");
    }
}
