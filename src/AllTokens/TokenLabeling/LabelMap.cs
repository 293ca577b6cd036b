namespace AllTokens.TokenLabeling;

/// <summary>
/// The top-k annotator logits of one image: at every location (row, col) of an h × w map, the k largest class
/// logits in descending order and their class indices. Layout [k, h, w] row-major, like the official files.
/// </summary>
public sealed class LabelMap
{
    public LabelMap(int k, int height, int width, float[] values, int[] indices)
    {
        if (k < 1 || height < 1 || width < 1) throw new ArgumentException($"label map needs k, h, w >= 1, got k={k} {height}×{width}");
        long n = (long)k * height * width;
        if (values.Length != n || indices.Length != n)
            throw new ArgumentException($"label map k={k} {height}×{width} needs {n} values and indices, got {values.Length} and {indices.Length}");
        K = k;
        Height = height;
        Width = width;
        Values = values;
        Indices = indices;
    }

    public int K { get; }
    public int Height { get; }
    public int Width { get; }

    /// <summary>[k, h, w] logits (from fp16 on disk).</summary>
    public float[] Values { get; }

    /// <summary>[k, h, w] class indices.</summary>
    public int[] Indices { get; }

    /// <summary>Value of rank <paramref name="rank"/> at (row, col).</summary>
    public float Value(int rank, int row, int col) => Values[(rank * Height + row) * Width + col];

    /// <summary>Class of rank <paramref name="rank"/> at (row, col).</summary>
    public int Index(int rank, int row, int col) => Indices[(rank * Height + row) * Width + col];
}
