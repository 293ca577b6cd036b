using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using AllTokens.Data.Datasets;
using AllTokens.Data.Transforms;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Data;

/// <summary>Loader settings.</summary>
/// <param name="BatchSize">Samples per batch.</param>
/// <param name="Workers">Threads that decode, augment and collate; 0 does it all on the consuming thread.</param>
/// <param name="Shuffle">Per-epoch permutation drawn from (Seed, epoch).</param>
/// <param name="DropLast">Drop the last, short batch of an epoch.</param>
/// <param name="Seed">Seeds the shuffle and every sample's transform stream.</param>
/// <param name="Prefetch">Finished batches that may wait for the consumer (the queue bound), besides those in progress.</param>
/// <param name="StrictData">A corrupt or unreadable file is an error instead of being skipped.</param>
/// <param name="Rank">This process's rank in a data-parallel group (0 when alone).</param>
/// <param name="WorldSize">Processes sharing the epoch; each takes <see cref="BatchSize"/> samples of every global batch.</param>
public sealed record LoaderOptions(int BatchSize, int Workers = 0, bool Shuffle = true, bool DropLast = true, long Seed = 0,
    int Prefetch = 2, bool StrictData = false, int Rank = 0, int WorldSize = 1)
{
    /// <summary>Samples per global batch: <see cref="BatchSize"/> × <see cref="WorldSize"/>.</summary>
    public int GlobalBatchSize => BatchSize * WorldSize;
}

/// <summary>A sample that was left out of its batch because its file could not be read or decoded.</summary>
public sealed record SkippedSample(int Epoch, int Index, string Key, string Message);

/// <summary>
/// Batches from a dataset: decode + transform + collate on worker threads, a bounded queue of finished batches, batches
/// handed out in order. Batch b of epoch e holds positions [b·B, (b+1)·B) of the epoch's order (a permutation drawn from
/// (seed, e) when shuffling), and sample i's transform draws from its own stream (seed, e, i), so the batches are the same
/// for any worker count and an epoch can resume at any batch.
/// <para>Sharding (<see cref="LoaderOptions.WorldSize"/> N &gt; 1): the epoch's order is the same permutation on every
/// rank and global batch b holds positions [b·G, (b+1)·G), G = N × BatchSize. Rank r takes the strided part
/// b·G + r + k·N (k = 0, 1, …): the layout of torch's DistributedSampler (indices[rank::N]) batched consecutively.
/// Since a sample's transform stream depends on (seed, epoch, index) only, one process with batch G sees exactly the
/// union of the N ranks' batches, for any N. <see cref="BatchesPerEpoch"/> counts global batches; without drop_last
/// the last global batch may leave a rank nothing (that batch is then not handed out on that rank).</para>
/// <para>A sample whose file cannot be decoded is left out: its batch shrinks by one (a batch whose samples all fail is
/// left out entirely, except in a sharded drop_last loader, which hands it out empty so that every rank takes part in
/// every training step); <see cref="Skipped"/> is raised on the consuming thread and <see cref="SkippedCount"/> goes up.
/// With <see cref="LoaderOptions.StrictData"/> the decode error is thrown instead. A label outside the class range is
/// always an error naming the sample.</para>
/// <para>Batch tensors are made outside any worker dispose scope and belong to the consumer, which disposes each
/// <see cref="Batch"/>. Leaving an epoch's loop early stops and joins the workers and disposes the batches not taken.</para>
/// </summary>
public sealed class DataLoader : IBatchSource
{
    private long skipped;

    public IImageDataset Dataset { get; }
    public ISampleTransform Transform { get; }
    public LoaderOptions Options { get; }

    /// <summary>Raised on the consuming thread for each sample left out, before the batch it belonged to is handed out.</summary>
    public event Action<SkippedSample>? Skipped;

    /// <summary>Samples left out so far (all epochs).</summary>
    public long SkippedCount => Interlocked.Read(ref skipped);

    public DataLoader(IImageDataset dataset, ISampleTransform transform, LoaderOptions options)
    {
        ArgumentNullException.ThrowIfNull(dataset);
        ArgumentNullException.ThrowIfNull(transform);
        ArgumentNullException.ThrowIfNull(options);
        if (options.BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(options), $"BatchSize must be at least 1, got {options.BatchSize}");
        if (options.Workers < 0) throw new ArgumentOutOfRangeException(nameof(options), $"Workers must not be negative, got {options.Workers}");
        if (options.Prefetch < 0) throw new ArgumentOutOfRangeException(nameof(options), $"Prefetch must not be negative, got {options.Prefetch}");
        if (options.WorldSize < 1 || options.Rank < 0 || options.Rank >= options.WorldSize)
            throw new ArgumentOutOfRangeException(nameof(options), $"rank {options.Rank} of world size {options.WorldSize} is not a valid shard");
        if (dataset.Count == 0) throw new DatasetException($"{dataset.Source}: the dataset is empty");
        Dataset = dataset;
        Transform = transform;
        Options = options;
    }

    /// <summary>A training loader: <see cref="TrainTransform"/>, shuffled, drop_last.</summary>
    public static DataLoader ForTraining(IImageDataset dataset, TrainTransformOptions transform, int batchSize, int workers, long seed,
        bool strictData = false) =>
        new(dataset, new TrainTransform(transform), new LoaderOptions(batchSize, workers, Shuffle: true, DropLast: true, seed, StrictData: strictData));

    /// <summary>An evaluation loader: <see cref="EvalTransform"/>, dataset order, every sample.</summary>
    public static DataLoader ForEval(IImageDataset dataset, EvalTransformOptions transform, int batchSize, int workers, bool strictData = false) =>
        new(dataset, new EvalSampleTransform(new EvalTransform(transform)),
            new LoaderOptions(batchSize, workers, Shuffle: false, DropLast: false, StrictData: strictData));

    /// <summary>Global batches per epoch (of <see cref="LoaderOptions.GlobalBatchSize"/> samples; the last may be short without drop_last).</summary>
    public int BatchesPerEpoch => Options.DropLast
        ? Dataset.Count / Options.GlobalBatchSize
        : (Dataset.Count + Options.GlobalBatchSize - 1) / Options.GlobalBatchSize;

    /// <summary>
    /// Epoch-order positions of this rank's part of global batch <paramref name="b"/>: b·G + r + k·N for every k with
    /// r + k·N below the global batch's size (strided sharding).
    /// </summary>
    public int[] ShardPositions(int b)
    {
        int g = Options.GlobalBatchSize, n = Options.WorldSize, r = Options.Rank;
        int first = b * g, size = Math.Min(g, Dataset.Count - first);
        int count = size > r ? (size - r + n - 1) / n : 0;
        var positions = new int[count];
        for (int k = 0; k < count; k++) positions[k] = first + r + k * n;
        return positions;
    }

    /// <summary>The order of dataset indices in <paramref name="epoch"/>.</summary>
    public int[] EpochOrder(int epoch)
    {
        var order = Enumerable.Range(0, Dataset.Count).ToArray();
        if (Options.Shuffle) new SeededRandom(SeededRandom.Derive(Options.Seed, epoch, 0, 0x5EED)).Shuffle(order);
        return order;
    }

    public IEnumerable<Batch> Epoch(int epoch, int startBatch = 0)
    {
        if (startBatch < 0 || startBatch > BatchesPerEpoch)
            throw new ArgumentOutOfRangeException(nameof(startBatch), $"start batch {startBatch} is outside 0..{BatchesPerEpoch}");
        return Options.Workers == 0 ? Sequential(epoch, startBatch) : Parallel(epoch, startBatch);
    }

    private sealed record Built(Batch? Batch, List<SkippedSample> Skips);

    private IEnumerable<Batch> Sequential(int epoch, int startBatch)
    {
        int[] order = EpochOrder(epoch);
        for (int b = startBatch; b < BatchesPerEpoch; b++)
        {
            var built = Build(order, epoch, b);
            if (Deliver(built) is Batch batch) yield return batch;
        }
    }

    private Batch? Deliver(Built built)
    {
        foreach (var s in built.Skips)
        {
            Interlocked.Increment(ref skipped);
            Skipped?.Invoke(s);
        }
        return built.Batch;
    }

    private IEnumerable<Batch> Parallel(int epoch, int startBatch)
    {
        int[] order = EpochOrder(epoch);
        int end = BatchesPerEpoch;
        int workers = Options.Workers;
        // A batch may be started only while fewer than `window` batches are ahead of the consumer: the workers' batches in
        // progress plus at most Prefetch finished ones.
        int window = workers + Options.Prefetch;
        var done = new Dictionary<int, Built>();
        var gate = new object();
        int next = startBatch, consumed = startBatch;
        bool stop = false;
        ExceptionDispatchInfo? failure = null;
        int failedBatch = int.MaxValue;

        void Work()
        {
            while (true)
            {
                int b;
                lock (gate)
                {
                    while (!stop && next < end && next - consumed >= window) Monitor.Wait(gate);
                    if (stop || next >= end) return;
                    b = next++;
                }
                Built built;
                try
                {
                    built = Build(order, epoch, b);
                }
                catch (Exception e)
                {
                    lock (gate)
                    {
                        if (b < failedBatch)
                        {
                            failedBatch = b;
                            failure = ExceptionDispatchInfo.Capture(e);
                        }
                        Monitor.PulseAll(gate);
                    }
                    return;
                }
                lock (gate)
                {
                    if (stop)
                    {
                        built.Batch?.Dispose();
                        return;
                    }
                    done[b] = built;
                    Monitor.PulseAll(gate);
                }
            }
        }

        var threads = new Thread[workers];
        for (int i = 0; i < workers; i++)
        {
            threads[i] = new Thread(Work) { IsBackground = true, Name = $"alltokens-loader-{i}" };
            threads[i].Start();
        }
        try
        {
            for (int b = startBatch; b < end; b++)
            {
                Built built;
                lock (gate)
                {
                    while (!done.ContainsKey(b) && !(failure is not null && failedBatch <= b)) Monitor.Wait(gate);
                    if (!done.Remove(b, out built!))
                        failure!.Throw();
                    consumed = b + 1;
                    Monitor.PulseAll(gate);
                }
                if (Deliver(built) is Batch batch) yield return batch;
            }
        }
        finally
        {
            lock (gate)
            {
                stop = true;
                Monitor.PulseAll(gate);
            }
            foreach (var t in threads) t.Join();
            foreach (var left in done.Values) left.Batch?.Dispose();
            done.Clear();
        }
    }

    /// <summary>Decodes, transforms and collates batch <paramref name="b"/> of the epoch; the tensors belong to no dispose scope.</summary>
    private Built Build(int[] order, int epoch, int b)
    {
        int size = Transform.Size;
        int[] positions = ShardPositions(b);
        int count = positions.Length;
        if (count == 0) return new Built(null, []); // a short last global batch that leaves this rank nothing
        int per = 3 * size * size;
        int classes = Dataset.ClassNames.Count;
        var skips = new List<SkippedSample>();
        var indices = new List<int>(count);
        var labels = new List<long>(count);
        List<AugmentRecord>? records = null;
        using var scope = torch.NewDisposeScope();
        Tensor images = torch.empty([count, 3, size, size], ScalarType.Float32);
        Span<float> data = MemoryMarshal.Cast<byte, float>(images.bytes);
        for (int k = 0; k < count; k++)
        {
            int index = order[positions[k]];
            int label = Dataset.GetLabel(index);
            if ((uint)label >= (uint)classes)
                throw new DatasetException($"{Dataset.Source}: sample {Dataset.GetKey(index)} has label {label}, outside the {classes} classes (0..{classes - 1})");
            RgbImage image;
            try
            {
                image = Dataset.Load(index);
            }
            catch (ImageDecodeException e) when (!Options.StrictData)
            {
                skips.Add(new SkippedSample(epoch, index, Dataset.GetKey(index), e.Message));
                continue;
            }
            var rng = SeededRandom.ForSample(Options.Seed, epoch, index);
            AugmentRecord? record = Transform.ApplyInto(image, rng, data.Slice(indices.Count * per, per));
            if (record is not null) (records ??= []).Add(record);
            indices.Add(index);
            labels.Add(label);
        }
        // Every sample failed: the batch is left out, but a sharded training rank hands it out empty so that it still
        // joins the step's collectives (the ranks must agree on the number of steps).
        if (indices.Count == 0 && !(Options.WorldSize > 1 && Options.DropLast)) return new Built(null, skips);
        if (indices.Count < count) images = images.narrow(0, 0, indices.Count).clone();
        Tensor labelTensor = torch.tensor(labels.ToArray(), ScalarType.Int64);
        var batch = new Batch
        {
            Images = images.DetachFromDisposeScope(),
            Labels = labelTensor.DetachFromDisposeScope(),
            Indices = [.. indices],
            Augments = records,
        };
        return new Built(batch, skips);
    }
}
