using AllTokens.Data;
using AllTokens.Data.Transforms;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.TokenLabeling;

/// <summary>Settings of an annotation run.</summary>
/// <param name="TopK">Classes kept per location (official: 5).</param>
/// <param name="BatchSize">Images per forward pass.</param>
/// <param name="AnnotatorName">Recorded in the store header.</param>
/// <param name="FlushEvery">Batches between fsyncs of the partial store (what a crash can lose).</param>
public sealed record LabelRunOptions(int TopK = 5, int BatchSize = 32, string AnnotatorName = "", int FlushEvery = 8);

/// <summary>
/// Labels a whole dataset with an <see cref="Annotator"/> into a <see cref="LabelStore"/> (official
/// <c>generate_label.py</c>): eval preprocessing (the caller's <see cref="EvalTransform"/>; officially crop_pct 1.0:
/// resize the shorter side to R, centre crop R), dense logits, top-k per location. Resumable: keys already in the
/// store (finished or partial) are skipped.
/// </summary>
public static class LabelGeneration
{
    public static LabelStoreHeader Run(Annotator annotator, IImageDataset dataset, EvalTransform transform, string outPath, LabelRunOptions options,
        Device? device = null, IProgress<LabelProgress>? progress = null, CancellationToken cancel = default)
    {
        var model = annotator.Model;
        if (model.NumClasses != dataset.ClassNames.Count)
            throw new ArgumentException($"the annotator {model.GetName()} has {model.NumClasses} classes but {dataset.Source} has {dataset.ClassNames.Count}");
        if (options.TopK < 1 || options.TopK > model.NumClasses)
            throw new ArgumentException($"--topk must be in [1, {model.NumClasses}], got {options.TopK}");
        int g = model.GridSize;
        // At crop_pct 1.0 the annotator sees the centre square of side min(W, H); the header says so.
        if (transform.Options.CropPct != 1.0)
            throw new ArgumentException($"label maps are made at crop_pct 1.0 (the whole shorter side), got {transform.Options.CropPct}");
        var header = new LabelStoreHeader(model.NumClasses, options.TopK, g, g, options.AnnotatorName, transform.Size, Region: LabelMapRegion.CentreSquare,
            ImageChecksums: true);
        model.eval();
        using var writer = LabelStoreWriter.OpenOrCreate(outPath, header);
        bool checksums = writer.Header.ImageChecksums; // false when resuming a store of the older format
        var todo = Enumerable.Range(0, dataset.Count).Where(i => !writer.Contains(dataset.GetKey(i))).ToList();
        int skipped = dataset.Count - todo.Count, done = skipped, batches = 0;
        progress?.Report(new LabelProgress(done, dataset.Count, skipped));
        foreach (var chunk in todo.Chunk(Math.Max(1, options.BatchSize)))
        {
            cancel.ThrowIfCancellationRequested();
            int per = 3 * transform.Size * transform.Size;
            var pixels = new float[chunk.Length * per];
            var sums = new uint[chunk.Length];
            try
            {
                Parallel.For(0, chunk.Length, i =>
                {
                    var image = dataset.Load(chunk[i]);
                    if (checksums) sums[i] = LabelStore.ImageChecksum(image);
                    transform.Apply(image).CopyTo(pixels, i * per);
                });
            }
            catch (AggregateException e) when (e.InnerExceptions.OfType<ImageDecodeException>().FirstOrDefault() is { } bad)
            {
                // An image that cannot be labelled: say which and what to do; the records written so far stay resumable.
                string problem = bad.Message.StartsWith(bad.FileName + ": ", StringComparison.Ordinal) ? bad.Message[(bad.FileName.Length + 2)..] : bad.Message;
                throw new ImageDecodeException(bad.FileName, $"{problem}. `label` stopped here; the {writer.Count} images labelled so far are " +
                    $"kept in {writer.PartialPath}: remove or replace the file and run `label` again to resume", bad);
            }
            LabelMap[] maps;
            using (var scope = torch.NewDisposeScope())
            {
                var x = torch.tensor(pixels, [chunk.Length, 3L, transform.Size, transform.Size]);
                if (device is not null && device.type != DeviceType.CPU) x = x.to(device);
                maps = annotator.Annotate(x, options.TopK);
            }
            for (int i = 0; i < chunk.Length; i++) writer.Add(dataset.GetKey(chunk[i]), maps[i], checksums ? sums[i] : null);
            done += chunk.Length;
            if (++batches % Math.Max(1, options.FlushEvery) == 0) writer.Flush();
            progress?.Report(new LabelProgress(done, dataset.Count, skipped));
        }
        writer.Complete();
        return writer.Header;
    }
}
