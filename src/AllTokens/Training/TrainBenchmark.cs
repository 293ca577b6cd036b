using System.Diagnostics;
using System.Globalization;
using AllTokens.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Training;

/// <summary>Throughput figures of <see cref="TrainBenchmark"/>.</summary>
/// <param name="PeakRssBytes">VmHWM of this process (Linux), or 0 where /proc is missing.</param>
/// <param name="PageFaultsPerStep">Minor page faults of the whole process per timed train step (fresh memory the kernel
/// mapped and zero-filled; see <see cref="NativeEnvironment.ConfigureAllocator"/>), or -1 where /proc is missing.</param>
/// <param name="TrainWarmupSteps">Untimed train steps actually run (the asked warmup plus those spent waiting for the JIT).</param>
/// <param name="InferWarmupSteps">The same for inference.</param>
public sealed record BenchmarkResult(double TrainImagesPerSecond, double InferImagesPerSecond, double MedianTrainStepSeconds,
    double MedianInferStepSeconds, long PeakRssBytes, int Batch, int Resolution, int Steps, bool Bf16, double PageFaultsPerStep = -1,
    int TrainWarmupSteps = 0, int InferWarmupSteps = 0);

/// <summary>Paired bf16-vs-fp32 train steps of <see cref="TrainBenchmark.RunPairedBf16"/>.</summary>
/// <param name="MedianFp32StepSeconds">Median fp32 step.</param>
/// <param name="MedianBf16StepSeconds">Median bf16 step.</param>
/// <param name="MedianRatio">Median over the pairs of fp32 step / bf16 step (how many times faster bf16 trains).</param>
/// <param name="LowerQuartileRatio">25th percentile of the pairs' ratios.</param>
/// <param name="UpperQuartileRatio">75th percentile of the pairs' ratios.</param>
/// <param name="WarmupPairs">Untimed pairs run first.</param>
public sealed record PairedBf16Result(double MedianFp32StepSeconds, double MedianBf16StepSeconds, double MedianRatio,
    double LowerQuartileRatio, double UpperQuartileRatio, int Batch, int Resolution, int Pairs, int WarmupPairs, long PeakRssBytes);

/// <summary>Result of <see cref="TrainBenchmark.RunPairedTasks"/>: a task's train step against a baseline's on the same model.</summary>
/// <param name="MedianBaselineStepSeconds">Median baseline step.</param>
/// <param name="MedianTaskStepSeconds">Median step of the other task.</param>
/// <param name="MedianOverhead">Median over the pairs of task step / baseline step − 1 (0.03: 3 % longer).</param>
/// <param name="LowerQuartileOverhead">25th percentile of the pairs' overheads.</param>
/// <param name="UpperQuartileOverhead">75th percentile of the pairs' overheads.</param>
/// <param name="WarmupPairs">Untimed pairs run first.</param>
public sealed record PairedTaskResult(double MedianBaselineStepSeconds, double MedianTaskStepSeconds, double MedianOverhead,
    double LowerQuartileOverhead, double UpperQuartileOverhead, int Batch, int Resolution, int Pairs, int WarmupPairs, long PeakRssBytes);

/// <summary>
/// When warmup is over: after the asked number of untimed steps, and then only once a whole step has run without the
/// JIT compiling a method (at most <see cref="MaxExtraSteps"/> more steps or <see cref="MaxExtraSeconds"/> more
/// seconds). .NET compiles hot methods again, optimised, on a background thread during the first seconds; on 2 cores
/// that thread takes a core from libtorch's OpenMP team, and a t2t_vit_7 train step ran 650–2000 ms for its first ~12
/// steps against ~500 ms after (and from the second step on with DOTNET_TieredCompilation=0), so a fixed 2–3 step
/// warmup timed the JIT too.
/// </summary>
public sealed class JitSettledWarmup
{
    /// <summary>Extra untimed steps allowed while the JIT keeps compiling.</summary>
    public const int MaxExtraSteps = 40;

    /// <summary>Extra untimed seconds allowed while the JIT keeps compiling (large models, one thread).</summary>
    public const double MaxExtraSeconds = 30;

    private readonly int minSteps;
    private readonly bool waitForJit;
    private long compiled = System.Runtime.JitInfo.GetCompiledMethodCount();
    private bool lastQuiet;      // the last untimed step compiled nothing
    private Stopwatch? extraTime; // started when the asked warmup is over

    public JitSettledWarmup(int minSteps, bool waitForJit)
    {
        if (minSteps < 0) throw new ArgumentOutOfRangeException(nameof(minSteps), "warmup must be ≥ 0");
        this.minSteps = minSteps;
        this.waitForJit = waitForJit;
    }

    /// <summary>Untimed steps run so far.</summary>
    public int Steps { get; private set; }

    /// <summary>Whether the next step is timed (at once when no warmup was asked).</summary>
    public bool Done => Steps >= minSteps
        && (minSteps == 0 || !waitForJit || lastQuiet || Steps >= minSteps + MaxExtraSteps || extraTime!.Elapsed.TotalSeconds >= MaxExtraSeconds);

    /// <summary>Call after each untimed step.</summary>
    public void StepRan()
    {
        Steps++;
        long now = System.Runtime.JitInfo.GetCompiledMethodCount();
        lastQuiet = now == compiled;
        compiled = now;
        if (Steps == minSteps) extraTime = Stopwatch.StartNew();
    }
}

/// <summary>
/// Synthetic-data throughput: a train step is forward + loss + backward + AdamW step through the given task; inference
/// is the eval forward without gradients. Warmup steps are not timed.
/// </summary>
public static class TrainBenchmark
{
    /// <summary>fp32 copies of <paramref name="parameters"/>, outside any dispose scope: the masters a bf16 step updates.</summary>
    internal static List<Tensor> Fp32Masters(IEnumerable<Tensor> parameters) => parameters.Select(p =>
    {
        var m = p.detach().to(ScalarType.Float32, copy: true);
        m.DetachFromDisposeScope();
        return m;
    }).ToList();

    /// <param name="waitForJit">Keep warming up past <paramref name="warmup"/> until a step compiles no new method
    /// (see <see cref="JitSettledWarmup"/>); false: exactly <paramref name="warmup"/> untimed steps.</param>
    public static BenchmarkResult Run(ITrainTask task, int batch, int resolution, int steps, int warmup, bool bf16 = false, Device? device = null,
        bool waitForJit = true)
    {
        CheckCounts(batch, steps, warmup);
        var model = task.Model;
        var dev = device ?? torch.CPU;
        var gen = new Rng(0);
        var trainTimes = new List<double>();
        var inferTimes = new List<double>();
        long faultsAtWarmupEnd = -1, faultsAtTrainEnd = -1;
        int trainWarmupSteps = 0, inferWarmupSteps = 0;
        using (var stepper = new Stepper(task, bf16, dev))
        {
            try
            {
                var trainWarmup = new JitSettledWarmup(warmup, waitForJit);
                while (trainTimes.Count < steps)
                {
                    bool timed = trainWarmup.Done;
                    if (timed && trainTimes.Count == 0) faultsAtWarmupEnd = MinorFaults();
                    double t = stepper.Step(batch, resolution, gen);
                    if (timed) trainTimes.Add(t);
                    else trainWarmup.StepRan();
                }
                trainWarmupSteps = trainWarmup.Steps;
                faultsAtTrainEnd = MinorFaults();
                NativeEnvironment.ReleaseFreeHeap(); // as the trainer does before validation (Evaluator.Run)
                model.eval();
                var inferWarmup = new JitSettledWarmup(warmup, waitForJit);
                using (torch.no_grad())
                    while (inferTimes.Count < steps)
                    {
                        bool timed = inferWarmup.Done;
                        using var scope = torch.NewDisposeScope();
                        var b = SyntheticBatch(batch, resolution, stepper.Classes, gen, stepper.DType, dev);
                        var sw = Stopwatch.StartNew();
                        var y = model.call(b.Images);
                        _ = y.sum().to(ScalarType.Float32).item<float>();
                        if (timed) inferTimes.Add(sw.Elapsed.TotalSeconds);
                        else inferWarmup.StepRan();
                    }
                inferWarmupSteps = inferWarmup.Steps;
            }
            finally
            {
                model.train();
            }
        }
        double trainMed = Median(trainTimes), inferMed = Median(inferTimes);
        double faults = faultsAtWarmupEnd >= 0 && faultsAtTrainEnd >= 0 ? (faultsAtTrainEnd - faultsAtWarmupEnd) / (double)steps : -1;
        return new BenchmarkResult(batch / trainMed, batch / inferMed, trainMed, inferMed, PeakRss(), batch, resolution, steps, bf16, faults,
            trainWarmupSteps, inferWarmupSteps);
    }

    /// <summary>
    /// bf16 against fp32 train steps of the same model in one process: two copies (<paramref name="fp32Task"/>,
    /// <paramref name="bf16Task"/>, same weights), one step of each in turn, the order swapped every pair, so that the
    /// machine's speed drifting over seconds to minutes (large on shared VMs) hits both alike. The ratio is taken pair by
    /// pair (fp32 step time / bf16 step time). Warmup counts pairs, as <see cref="Run"/> counts steps.
    /// </summary>
    public static PairedBf16Result RunPairedBf16(ITrainTask fp32Task, ITrainTask bf16Task, int batch, int resolution, int steps, int warmup,
        Device? device = null, bool waitForJit = true)
    {
        CheckCounts(batch, steps, warmup);
        if (ReferenceEquals(fp32Task.Model, bf16Task.Model)) throw new ArgumentException("the fp32 and bf16 tasks need their own copies of the model");
        var dev = device ?? torch.CPU;
        using var fp32 = new Stepper(fp32Task, false, dev);
        using var bf16 = new Stepper(bf16Task, true, dev);
        var (fp32Times, bf16Times, warmupPairs) = Alternate(fp32, bf16, batch, resolution, steps, warmup, waitForJit);
        var ratios = fp32Times.Zip(bf16Times, (f, b) => f / b).Order().ToList();
        return new PairedBf16Result(Median(fp32Times), Median(bf16Times), Median(ratios), Quantile(ratios, 0.25), Quantile(ratios, 0.75),
            batch, resolution, steps, warmupPairs, PeakRss());
    }

    /// <summary>
    /// Two tasks' fp32 train steps on the same model in one process, one step of each in turn, the order swapped every
    /// pair, as <see cref="RunPairedBf16"/> does for two precisions: what a task (token labeling + MixToken, say) costs
    /// over a baseline (plain cross-entropy), pair by pair, so that the machine's drift hits both alike. Each task keeps
    /// its own AdamW state; both step the model's weights.
    /// </summary>
    public static PairedTaskResult RunPairedTasks(ITrainTask baseline, ITrainTask task, int batch, int resolution, int steps, int warmup,
        Device? device = null, bool waitForJit = true)
    {
        CheckCounts(batch, steps, warmup);
        if (!ReferenceEquals(baseline.Model, task.Model)) throw new ArgumentException("the two tasks must train the same model");
        var dev = device ?? torch.CPU;
        using var first = new Stepper(baseline, false, dev);
        using var second = new Stepper(task, false, dev);
        var (baseTimes, taskTimes, warmupPairs) = Alternate(first, second, batch, resolution, steps, warmup, waitForJit);
        var overheads = baseTimes.Zip(taskTimes, (b, t) => t / b - 1).Order().ToList();
        return new PairedTaskResult(Median(baseTimes), Median(taskTimes), Median(overheads), Quantile(overheads, 0.25), Quantile(overheads, 0.75),
            batch, resolution, steps, warmupPairs, PeakRss());
    }

    private static void CheckCounts(int batch, int steps, int warmup)
    {
        if (batch < 1 || steps < 1 || warmup < 0) throw new ArgumentOutOfRangeException(nameof(steps), "batch and steps must be ≥ 1, warmup ≥ 0");
    }

    /// <summary>Steps of <paramref name="a"/> and <paramref name="b"/> in turn, the order swapped every pair, until <paramref name="steps"/> pairs are timed.</summary>
    private static (List<double> A, List<double> B, int WarmupPairs) Alternate(Stepper a, Stepper b, int batch, int resolution, int steps, int warmup,
        bool waitForJit)
    {
        var gen = new Rng(0);
        var aTimes = new List<double>();
        var bTimes = new List<double>();
        var warm = new JitSettledWarmup(warmup, waitForJit);
        for (int pair = 0; aTimes.Count < steps; pair++)
        {
            bool timed = warm.Done;
            double ta, tb;
            if (pair % 2 == 0)
            {
                ta = a.Step(batch, resolution, gen);
                tb = b.Step(batch, resolution, gen);
            }
            else
            {
                tb = b.Step(batch, resolution, gen);
                ta = a.Step(batch, resolution, gen);
            }
            if (!timed)
            {
                warm.StepRan();
                continue;
            }
            aTimes.Add(ta);
            bTimes.Add(tb);
        }
        return (aTimes, bTimes, warm.Steps);
    }

    /// <summary>
    /// One model's train step as bench times it: forward + loss + backward + AdamW; in bf16 the model computes in bf16
    /// and the optimizer steps fp32 masters, writing them back rounded (<see cref="OptimParam.Shadow"/>), as the trainer does.
    /// </summary>
    private sealed class Stepper : IDisposable
    {
        private readonly ITrainTask task;
        private readonly List<Tensor> masters;
        private readonly List<TorchSharp.Modules.Parameter> live;
        private readonly OptimGroup group;
        private readonly AdamW opt;
        private readonly Device device;

        public Stepper(ITrainTask task, bool bf16, Device device)
        {
            this.task = task;
            this.device = device;
            var model = task.Model;
            DType = bf16 ? ScalarType.BFloat16 : ScalarType.Float32;
            model.to(device);
            var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).ToList();
            masters = bf16 ? Fp32Masters(trainable.Select(p => (Tensor)p.parameter)) : [];
            if (bf16) model.to(DType); // masters are taken before the cast, so they keep full fp32 precision
            live = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.parameter).ToList();
            group = new OptimGroup("all", trainable.Select((p, i) => bf16 ? new OptimParam(p.name, masters[i]) { Shadow = live[i] } : new OptimParam(p.name, live[i])).ToList(), 0.05, 1.0) { Lr = 1e-4 };
            opt = new AdamW([group]);
            Classes = Math.Max(1, model.NumClasses);
            model.train();
        }

        public ScalarType DType { get; }
        public int Classes { get; }

        /// <summary>One train step on a fresh synthetic batch; returns its seconds (the batch's drawing not counted).</summary>
        public double Step(int batch, int resolution, Rng gen)
        {
            using var scope = torch.NewDisposeScope();
            var b = SyntheticBatch(batch, resolution, Classes, gen, DType, device);
            var sw = Stopwatch.StartNew();
            var output = task.Step(b);
            output.Loss.backward();
            for (int i = 0; i < group.Params.Count; i++) group.Params[i].Grad = live[i].grad; // bf16 ones too (the trainer's way)
            opt.Step();
            task.Model.zero_grad();
            _ = output.Loss.item<float>();
            return sw.Elapsed.TotalSeconds;
        }

        public void Dispose()
        {
            opt.Dispose();
            foreach (var p in group.Params) p.Grad = null;
            foreach (var m in masters) m.Dispose();
        }
    }

    private static Batch SyntheticBatch(int batch, int res, int classes, Rng gen, ScalarType dtype, Device dev)
    {
        var labels = Enumerable.Range(0, batch).Select(_ => (long)gen.NextInt(0, classes)).ToArray();
        return new Batch
        {
            // Drawn in fp32 and cast: libtorch's bf16 normal sampler is scalar (~30 ms for a 224-px batch of 8, 6 % of a
            // bf16 bench run's time outside the timed steps), its fp32 one vectorised.
            Images = torch.randn([batch, 3, res, res], dtype: ScalarType.Float32, device: dev).to(dtype),
            Labels = torch.tensor(labels, device: dev),
            Indices = Enumerable.Range(0, batch).ToArray(),
        };
    }

    /// <summary>The q-quantile of a sorted non-empty list, linear between neighbours.</summary>
    internal static double Quantile(List<double> sorted, double q)
    {
        double pos = q * (sorted.Count - 1);
        int lo = (int)Math.Floor(pos), hi = (int)Math.Ceiling(pos);
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
    }

    /// <summary>The median of a non-empty list (mean of the middle two for an even count).</summary>
    internal static double Median(List<double> v)
    {
        var s = v.Order().ToList();
        return s.Count % 2 == 1 ? s[s.Count / 2] : 0.5 * (s[s.Count / 2 - 1] + s[s.Count / 2]);
    }

    /// <summary>Minor page faults of this process so far (field 10 of /proc/self/stat), or -1 where it is missing.</summary>
    public static long MinorFaults()
    {
        const string file = "/proc/self/stat";
        if (!File.Exists(file)) return -1;
        var stat = File.ReadAllText(file);
        int close = stat.LastIndexOf(')'); // the command name may contain spaces and parentheses
        var fields = stat[(close + 2)..].Split(' '); // fields[0] is field 3 (state)
        return fields.Length > 7 && long.TryParse(fields[7], NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) ? v : -1;
    }

    /// <summary>Peak resident set size from /proc/self/status (VmHWM), in bytes; 0 when unavailable.</summary>
    public static long PeakRss()
    {
        const string file = "/proc/self/status";
        if (!File.Exists(file)) return 0;
        foreach (var line in File.ReadLines(file))
        {
            if (!line.StartsWith("VmHWM:", StringComparison.Ordinal)) continue;
            var parts = line[6..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length >= 1 && long.TryParse(parts[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out long kb)) return kb * 1024;
        }
        return 0;
    }
}
