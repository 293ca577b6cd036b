using AllTokens.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.TokenLabeling;

/// <summary>How the class-token target is blended with the ground truth (LVVIT.md §6.6, <c>--ground-truth</c>).</summary>
public enum GroundTruthBlend
{
    /// <summary>The class token learns the annotator's crop label alone (the official default).</summary>
    None,

    /// <summary>
    /// y = r·annotator + (1−r)·GT with r = 0.5 when the argmaxes agree and r = 0.1 when they disagree: "rely more on
    /// the ground truth if the annotator is wrong", as the official code comment says.
    /// </summary>
    Corrected,

    /// <summary>
    /// The official weights: r = 0.5 when they agree, r = 0.9 when they disagree (tlt/utils, <c>get_label</c>), which
    /// trusts the annotator more exactly when it is wrong. Kept for parity with official runs.
    /// </summary>
    Official,
}

/// <summary>Settings of the dense target construction (LVVIT.md §6.4).</summary>
/// <param name="NumClasses">C.</param>
/// <param name="LabelSize">L: the token grid side (img/16); 1 is ReLabel mode (class token only).</param>
/// <param name="Smoothing">ε: on = 1−ε+ε/C, off = ε/C for both the ground truth and the softmaxed labels.</param>
/// <param name="OfficialBoxAxes">
/// Pass the crop box as the official code does, (top, left, bottom, right) into torchvision's (x1, y1, x2, y2),
/// which mirrors the crop across the diagonal of a standard-orientation map (LVVIT.md §6.5). Default false: the
/// geometrically right (left, top, right, bottom). The official form also normalises both axes by the map width.
/// </param>
/// <param name="MapRegion">Which part of the source image the label maps cover (stores record it; see <see cref="LabelMapRegion"/>).</param>
public sealed record DenseTargetOptions(int NumClasses, int LabelSize, double Smoothing = 0.1, bool OfficialBoxAxes = false,
    GroundTruthBlend GroundTruthBlend = GroundTruthBlend.None, LabelMapRegion MapRegion = LabelMapRegion.FullImage)
{
    public double OnValue => 1.0 - Smoothing + Smoothing / NumClasses;
    public double OffValue => Smoothing / NumClasses;

    public void Validate()
    {
        if (NumClasses < 1) throw new ArgumentException($"dense targets need at least 1 class, got {NumClasses}");
        if (LabelSize < 1) throw new ArgumentException($"label size must be >= 1, got {LabelSize}");
        if (Smoothing is < 0 or >= 1) throw new ArgumentException($"smoothing must be in [0, 1), got {Smoothing}");
    }
}

/// <summary>Soft targets of one batch.</summary>
/// <param name="Cls">[B, C] class-token target (annotator crop label, blended with GT if asked).</param>
/// <param name="Tokens">[B, L², C] patch-token targets, row-major; null in ReLabel mode (L = 1).</param>
/// <param name="GroundTruth">[B, C] smoothed one-hot of the dataset labels, or null when no labels were given.</param>
public sealed record TokenTargets(Tensor Cls, Tensor? Tokens, Tensor? GroundTruth)
{
    /// <summary>The official layout without the ground-truth column: [B, C, 1+L²], class token first.</summary>
    public Tensor Stacked() => Tokens is null ? Cls.unsqueeze(2) : torch.cat([Cls.unsqueeze(1), Tokens], 1).transpose(1, 2);
}

/// <summary>
/// Dense token-label targets (LVVIT.md §6.4): scatter the top-k logits into C classes (others 0), RoIAlign the
/// crop to L×L and 1×1, softmax over classes, smooth p·on + off (each distribution then sums to 1 + ε/C, 1.0001
/// at ε 0.1 and C 1000, as officially; kept). Every geometric step (flip, RandAugment warps, crop) is linear in the
/// map, so one weight matrix M [1+L², h·w] per sample carries all of it and the targets are softmax(M · logits).
/// </summary>
public static class DenseTargets
{
    /// <summary>
    /// The geometric weights of one sample: rows = class token then L×L tokens (row-major), columns = label-map
    /// locations. Follows <paramref name="record"/> in either <see cref="AugmentOrder"/>:
    /// TokenLabel — flip and warp the map (nearest; outside → 0, like scipy <c>affine_transform</c> order 0 with a
    /// constant 0 fill for the values), then RoIAlign the crop with the −0.5 offset;
    /// Timm — RoIAlign the crop first, then flip and warp the L×L grid (nearest, outside → 0); the class token is
    /// the whole crop.
    /// </summary>
    public static float[] AlignmentWeights(AugmentRecord record, int mapH, int mapW, int labelSize, bool officialBoxAxes = false,
        LabelMapRegion region = LabelMapRegion.FullImage)
    {
        int hw = mapH * mapW, l = labelSize, rows = 1 + l * l;
        var roi = new float[rows * hw];
        var box = CropToMap(record, mapH, mapW, officialBoxAxes, region);
        var (fx, fy, fw, fh) = Frame(record, region);
        RoiAlign.AccumulateWeights(box, mapH, mapW, 1, 1, roi, 0);
        RoiAlign.AccumulateWeights(box, mapH, mapW, l, l, roi, 1);
        bool geometric = record.Flipped || record.Warps.Count > 0;
        if (!geometric) return roi;

        var result = new float[rows * hw];
        if (record.Order == AugmentOrder.TokenLabel)
        {
            // Map pixel i of the transformed map takes map pixel src[i] of the original (or nothing).
            var src = new int[hw];
            for (int r = 0; r < mapH; r++)
                for (int c = 0; c < mapW; c++)
                {
                    double x = fx + (c + 0.5) * fw / mapW, y = fy + (r + 0.5) * fh / mapH;
                    (x, y) = Unwarp(record, x, y, record.SourceWidth);
                    src[r * mapW + c] = Cell((x - fx) * mapW / fw, (y - fy) * mapH / fh, mapW, mapH);
                }
            // result = roi · P with P[i, src[i]] = 1.
            for (int row = 0; row < rows; row++)
            {
                var from = roi.AsSpan(row * hw, hw);
                var to = result.AsSpan(row * hw, hw);
                for (int i = 0; i < hw; i++)
                    if (from[i] != 0 && src[i] >= 0) to[src[i]] += from[i];
            }
        }
        else
        {
            roi.AsSpan(0, hw).CopyTo(result); // the class token sees the whole crop
            for (int a = 0; a < l; a++)
                for (int b = 0; b < l; b++)
                {
                    double x = (b + 0.5) * record.OutputWidth / l, y = (a + 0.5) * record.OutputHeight / l;
                    (x, y) = Unwarp(record, x, y, record.OutputWidth);
                    int cell = Cell(x * l / record.OutputWidth, y * l / record.OutputHeight, l, l);
                    if (cell >= 0) roi.AsSpan((1 + cell) * hw, hw).CopyTo(result.AsSpan((1 + a * l + b) * hw, hw));
                }
        }
        return result;
    }

    /// <summary>From final-image coordinates back to before the flip: warps in reverse (each maps output → input), then un-flip.</summary>
    private static (double X, double Y) Unwarp(AugmentRecord record, double x, double y, int frameWidth)
    {
        for (int i = record.Warps.Count - 1; i >= 0; i--) (x, y) = record.Warps[i].Apply(x, y);
        if (record.Flipped) x = frameWidth - x;
        return (x, y);
    }

    private static int Cell(double x, double y, int w, int h)
    {
        if (!(x >= 0 && x < w && y >= 0 && y < h)) return -1;
        return (int)Math.Floor(y) * w + (int)Math.Floor(x);
    }

    /// <summary>The source rectangle (x, y, width, height) the label map covers.</summary>
    private static (double X, double Y, double W, double H) Frame(AugmentRecord record, LabelMapRegion region)
    {
        if (region == LabelMapRegion.FullImage) return (0, 0, record.SourceWidth, record.SourceHeight);
        double side = Math.Min(record.SourceWidth, record.SourceHeight);
        return ((record.SourceWidth - side) / 2, (record.SourceHeight - side) / 2, side, side);
    }

    /// <summary>The crop as an RoI box in label-map pixels, with the −0.5 that compensates <c>aligned=False</c>.</summary>
    public static RoiBox CropToMap(AugmentRecord record, int mapH, int mapW, bool officialBoxAxes = false, LabelMapRegion region = LabelMapRegion.FullImage)
    {
        var c = record.Crop;
        var (fx, fy, fw, fh) = Frame(record, region);
        double top = (c.Top - fy) / fh, left = (c.Left - fx) / fw;
        double bottom = (c.Top + c.Height - fy) / fh, right = (c.Left + c.Width - fx) / fw;
        if (officialBoxAxes)
        {
            // Official get_featuremaps: (top, left, bottom, right) · size(3) − 0.5 read as (x1, y1, x2, y2).
            double s = mapW;
            return new RoiBox((float)(top * s - 0.5), (float)(left * s - 0.5), (float)(bottom * s - 0.5), (float)(right * s - 0.5));
        }
        return new RoiBox((float)(left * mapW - 0.5), (float)(top * mapH - 0.5), (float)(right * mapW - 0.5), (float)(bottom * mapH - 0.5));
    }

    /// <summary>
    /// Scatters top-k maps into dense logits [B, h·w, C]: the k logits at their class slots, every other class 0
    /// (not −∞), as the official code does.
    /// </summary>
    public static Tensor ScatterTopK(IReadOnlyList<LabelMap> maps, int numClasses)
    {
        if (maps.Count == 0) throw new ArgumentException("no label maps");
        int k = maps[0].K, h = maps[0].Height, w = maps[0].Width, hw = h * w;
        var idx = new long[maps.Count * hw * k];
        var val = new float[maps.Count * hw * k];
        for (int b = 0; b < maps.Count; b++)
        {
            var m = maps[b];
            if (m.K != k || m.Height != h || m.Width != w)
                throw new ArgumentException($"label map {b} is k={m.K} {m.Height}×{m.Width}, the batch's first is k={k} {h}×{w}");
            for (int r = 0; r < k; r++)
                for (int p = 0; p < hw; p++)
                {
                    int cls = m.Indices[r * hw + p];
                    if ((uint)cls >= (uint)numClasses)
                        throw new ArgumentException($"label map {b}: class index {cls} outside [0, {numClasses})");
                    int o = (b * hw + p) * k + r;
                    idx[o] = cls;
                    val[o] = m.Values[r * hw + p];
                }
        }
        using var index = torch.tensor(idx, [maps.Count, hw, k]);
        using var values = torch.tensor(val, [maps.Count, hw, k]);
        return torch.zeros(maps.Count, hw, numClasses).scatter_(2, index, values);
    }

    /// <summary>
    /// Targets from dense logits [B, h·w, C] and weights [B, 1+L², h·w]: softmax(M·logits) over classes, then p·on + off.
    /// Ground truth (labels [B] int64) is optional; it is needed for <see cref="GroundTruthBlend"/> other than None.
    /// </summary>
    public static TokenTargets FromDenseLogits(Tensor denseLogits, Tensor weights, DenseTargetOptions options, Tensor? labels = null)
    {
        options.Validate();
        if (denseLogits.shape[2] != options.NumClasses)
            throw new ArgumentException($"dense logits have {denseLogits.shape[2]} classes, the targets {options.NumClasses}");
        return FromPooledLogits(torch.bmm(weights.to(denseLogits.device), denseLogits), options, labels); // [B, 1+L², C]
    }

    /// <summary>Targets from pooled logits [B, 1+L², C] (class token first): softmax over classes, p·on + off, GT blend.</summary>
    public static TokenTargets FromPooledLogits(Tensor pooled, DenseTargetOptions options, Tensor? labels = null)
    {
        using Scalar on = options.OnValue.ToScalar(), off = options.OffValue.ToScalar(); // held for the calls (see Layers.Held)
        var p = Layers.Held.AddInPlace(pooled.softmax(-1).mul_(on), off);
        var cls = p[.., 0];
        Tensor? tokens = options.LabelSize == 1 ? null : p[.., 1..];
        Tensor? gt = labels is null ? null : SmoothOneHot(labels.to(pooled.device), options.NumClasses, options.Smoothing);
        if (options.GroundTruthBlend != GroundTruthBlend.None)
        {
            if (gt is null) throw new ArgumentException("blending with the ground truth needs the batch's labels");
            cls = BlendWithGroundTruth(cls, gt, options.GroundTruthBlend);
        }
        return new TokenTargets(cls, tokens, gt);
    }

    /// <summary>
    /// The whole construction for stored labels: maps (one per sample), the per-sample augment records, labels [B].
    /// Same result as <see cref="ScatterTopK"/> then <see cref="FromDenseLogits"/>, computed sparsely: M has few
    /// non-zeros per row and each location only k logits, so the pooled logits are summed directly on the CPU
    /// (B·(1+L²)·nnz·k operations instead of a dense B·(1+L²)·h·w·C product).
    /// </summary>
    public static TokenTargets FromLabelMaps(IReadOnlyList<LabelMap> maps, IReadOnlyList<AugmentRecord> records, DenseTargetOptions options,
        Tensor? labels = null, Device? device = null)
    {
        options.Validate();
        if (maps.Count == 0) throw new ArgumentException("no label maps");
        if (records.Count != maps.Count) throw new ArgumentException($"{maps.Count} label maps but {records.Count} augment records");
        int k = maps[0].K, h = maps[0].Height, w = maps[0].Width, l = options.LabelSize, rows = 1 + l * l, hw = h * w, c = options.NumClasses;
        for (int b = 0; b < maps.Count; b++)
        {
            var m = maps[b];
            if (m.K != k || m.Height != h || m.Width != w)
                throw new ArgumentException($"label map {b} is k={m.K} {m.Height}×{m.Width}, the batch's first is k={k} {h}×{w}");
            foreach (int cls in m.Indices)
                if ((uint)cls >= (uint)c) throw new ArgumentException($"label map {b}: class index {cls} outside [0, {c})");
        }
        // Summed straight into the tensor's memory: a managed [B, 1+L², C] array (6.3 MB for lvvit_t's batch of 8) and
        // torch.tensor's copy of it took ~30 ms of a token-label step on 2 Zen 5 cores, the sums themselves ~5.
        var logits = torch.zeros(maps.Count, rows, c);
        nint address = PooledAddress(logits);
        Parallel.For(0, maps.Count, b =>
        {
            var weights = AlignmentWeights(records[b], h, w, l, options.OfficialBoxAxes, options.MapRegion); // [rows, hw]
            var m = maps[b];
            var dst = PooledRows(address, (long)b * rows * c, rows * c);
            for (int r = 0; r < rows; r++)
            {
                var row = dst.Slice(r * c, c);
                for (int j = 0; j < hw; j++)
                {
                    float wt = weights[r * hw + j];
                    if (wt == 0) continue;
                    for (int t = 0; t < k; t++) row[m.Indices[t * hw + j]] += wt * m.Values[t * hw + j];
                }
            }
        });
        if (device is not null && device.type != DeviceType.CPU) logits = logits.to(device);
        return FromPooledLogits(logits, options, labels);
    }

    private static unsafe nint PooledAddress(Tensor contiguous) => (nint)Layers.TensorMemory.Address(contiguous);

    private static unsafe Span<float> PooledRows(nint address, long offset, int length) => new((float*)address + offset, length);

    /// <summary>on = 1−ε+ε/C at the label, off = ε/C elsewhere: [B, C].</summary>
    public static Tensor SmoothOneHot(Tensor labels, int numClasses, double smoothing)
    {
        double off = smoothing / numClasses, on = 1.0 - smoothing + off;
        using Scalar offValue = off.ToScalar(), onValue = on.ToScalar(); // held for the calls (see Layers.Held)
        return torch.full(labels.shape[0], numClasses, offValue, device: labels.device)
            .scatter_(1, labels.to(ScalarType.Int64).unsqueeze(1), torch.full(labels.shape[0], 1, onValue, device: labels.device));
    }

    /// <summary>y = r·annotator + (1−r)·GT, r = 0.5 when argmaxes agree, else 0.1 (Corrected) or 0.9 (Official).</summary>
    public static Tensor BlendWithGroundTruth(Tensor cls, Tensor groundTruth, GroundTruthBlend blend)
    {
        double disagree = blend == GroundTruthBlend.Official ? 0.9 : 0.1;
        var agree = cls.argmax(1).eq(groundTruth.argmax(1)).unsqueeze(1);
        var ratio = torch.where(agree, torch.tensor(0.5, device: cls.device), torch.tensor(disagree, device: cls.device)).to(cls.dtype);
        var rest = Layers.Held.AddInPlace(ratio.neg(), Layers.Held.One); // 1 − r in r's dtype, as (1 - ratio) computed it
        return Layers.Held.Add(ratio.mul(cls), rest.mul(groundTruth));
    }
}
