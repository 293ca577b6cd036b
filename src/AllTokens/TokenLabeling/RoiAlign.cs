using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.TokenLabeling;

/// <summary>A region of interest in map pixels, torchvision's (x1, y1, x2, y2) order (x = column, y = row).</summary>
public readonly record struct RoiBox(float X1, float Y1, float X2, float Y2);

/// <summary>
/// torchvision <c>roi_align</c> with <c>spatial_scale = 1</c>, <c>sampling_ratio = −1</c> (adaptive) and
/// <c>aligned = False</c>, written as what it is: a linear map of the feature map. For each box the output bins
/// are rows of a weight matrix W [outH·outW, H·W]; pooling a [H·W, C] map is then one matrix product.
/// <para>
/// Semantics (torchvision <c>roi_align_kernel.cpp</c>, LVVIT.md §6.4): roi size = max(x2−x1, 1) per axis; bin =
/// roi/out; samples per bin = ceil(roi/out) per axis; sample y = y1 + ph·bin_h + (iy+0.5)·bin_h/grid_h; bilinear
/// with the edge rule (outside [−1, H] → 0, ≤ 0 → 0, ≥ H−1 → H−1); a bin is the mean of its samples. The box
/// arithmetic runs in float32 like the reference kernel on float32 boxes, so grid sizes (ceil) agree bit for bit.
/// </para>
/// </summary>
public static class RoiAlign
{
    /// <summary>
    /// Adds <paramref name="scale"/> × the RoIAlign weights of <paramref name="box"/> into
    /// <paramref name="weights"/> (row-major [outH·outW, height·width]) starting at row <paramref name="rowOffset"/>.
    /// </summary>
    public static void AccumulateWeights(RoiBox box, int height, int width, int outH, int outW, Span<float> weights, int rowOffset = 0, float scale = 1f)
    {
        if (height < 1 || width < 1) throw new ArgumentOutOfRangeException(nameof(height), $"feature map must be at least 1×1, got {height}×{width}");
        if (outH < 1 || outW < 1) throw new ArgumentOutOfRangeException(nameof(outH), $"output must be at least 1×1, got {outH}×{outW}");
        int hw = height * width;
        if (weights.Length < (rowOffset + outH * outW) * hw)
            throw new ArgumentException($"weights span holds {weights.Length} values, needs {(rowOffset + outH * outW) * hw}", nameof(weights));

        float roiW = Math.Max(box.X2 - box.X1, 1f);
        float roiH = Math.Max(box.Y2 - box.Y1, 1f);
        float binH = roiH / outH;
        float binW = roiW / outW;
        int gridH = (int)MathF.Ceiling(roiH / outH);
        int gridW = (int)MathF.Ceiling(roiW / outW);
        float count = Math.Max(gridH * gridW, 1);

        for (int ph = 0; ph < outH; ph++)
        {
            for (int pw = 0; pw < outW; pw++)
            {
                var row = weights.Slice((rowOffset + ph * outW + pw) * hw, hw);
                for (int iy = 0; iy < gridH; iy++)
                {
                    float y = box.Y1 + ph * binH + (iy + 0.5f) * binH / gridH;
                    for (int ix = 0; ix < gridW; ix++)
                    {
                        float x = box.X1 + pw * binW + (ix + 0.5f) * binW / gridW;
                        AddBilinear(row, y, x, height, width, scale / count);
                    }
                }
            }
        }
    }

    /// <summary>The weights of one box as a new row-major [outH·outW, height·width] array.</summary>
    public static float[] Weights(RoiBox box, int height, int width, int outH, int outW)
    {
        var w = new float[outH * outW * height * width];
        AccumulateWeights(box, height, width, outH, outW, w);
        return w;
    }

    // torchvision's bilinear_interpolate, adding the four corner weights instead of reading the map.
    private static void AddBilinear(Span<float> row, float y, float x, int height, int width, float scale)
    {
        if (y < -1f || y > height || x < -1f || x > width) return;
        if (y <= 0) y = 0;
        if (x <= 0) x = 0;
        int yLow = (int)y, xLow = (int)x, yHigh, xHigh;
        if (yLow >= height - 1)
        {
            yHigh = yLow = height - 1;
            y = yLow;
        }
        else yHigh = yLow + 1;
        if (xLow >= width - 1)
        {
            xHigh = xLow = width - 1;
            x = xLow;
        }
        else xHigh = xLow + 1;
        float ly = y - yLow, lx = x - xLow, hy = 1f - ly, hx = 1f - lx;
        row[yLow * width + xLow] += scale * hy * hx;
        row[yLow * width + xHigh] += scale * hy * lx;
        row[yHigh * width + xLow] += scale * ly * hx;
        row[yHigh * width + xHigh] += scale * ly * lx;
    }

    /// <summary>
    /// RoIAlign of a batch, one box per sample: <paramref name="input"/> [B, C, H, W], <paramref name="boxes"/> of
    /// length B → [B, C, outH, outW]. Equivalent to torchvision <c>roi_align(input, boxes_with_batch_index, (outH, outW),
    /// 1.0, −1, False)</c> with box b taken from sample b.
    /// </summary>
    public static Tensor Apply(Tensor input, IReadOnlyList<RoiBox> boxes, int outH, int outW)
    {
        if (input.dim() != 4) throw new ArgumentException($"RoIAlign expects [B, C, H, W], got [{string.Join(", ", input.shape)}]", nameof(input));
        long b = input.shape[0], c = input.shape[1];
        int h = (int)input.shape[2], w = (int)input.shape[3];
        if (boxes.Count != b) throw new ArgumentException($"{boxes.Count} boxes for a batch of {b}", nameof(boxes));
        using var weights = BatchWeights(boxes, h, w, outH, outW, input.device); // [B, out, H·W]
        var flat = input.reshape(b, c, (long)h * w).to(weights.dtype); // [B, C, H·W]
        return torch.bmm(flat, weights.transpose(1, 2)).reshape(b, c, outH, outW).to(input.dtype);
    }

    /// <summary>The weights of one box per sample as a float32 tensor [B, outH·outW, H·W] on <paramref name="device"/>.</summary>
    public static Tensor BatchWeights(IReadOnlyList<RoiBox> boxes, int height, int width, int outH, int outW, Device? device = null)
    {
        int per = outH * outW * height * width;
        var all = new float[boxes.Count * per];
        for (int i = 0; i < boxes.Count; i++) AccumulateWeights(boxes[i], height, width, outH, outW, all.AsSpan(i * per, per));
        var t = torch.tensor(all, [boxes.Count, (long)outH * outW, (long)height * width]);
        return device is null || device.type == DeviceType.CPU ? t : t.to(device);
    }
}
