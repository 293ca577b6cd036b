using AllTokens.Layers;
using System.Globalization;
using System.Text.Json;
using AllTokens.Distributed;
using AllTokens.Visualization;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Cli;

/// <summary>Checks the machine: libtorch, threads, devices, Open MPI (and, under mpirun, the collectives), fonts, data.</summary>
public static class DoctorVerb
{
    public const string FashionMnistDir = "/usr/share/datasets/fashion-mnist";

    public static readonly Verb Verb = new(new VerbSpec("doctor", "check this machine: libtorch, devices, Open MPI collectives, fonts, datasets",
        "[--mpi] [--json]",
    [
        new OptionSpec("mpi", null, "require MPI and test all-reduce and broadcast across the ranks (run under mpirun)"),
        new OptionSpec("json", null, "one JSON object per rank"),
    ], details: "Under mpirun every rank prints its line; a failing check exits 1."), Run);

    private static int Run(ParsedArgs a, Console2 io)
    {
        var report = new Dictionary<string, object?>();
        bool ok = true;
        using (var scope = torch.NewDisposeScope())
        {
            var x = torch.tensor(new float[] { 0, 1, 2, 3, 4, 5 }).reshape(2, 3);
            report["libtorch"] = x.sum().item<float>() == 15f ? "ok" : "wrong result";
        }
        report["threads"] = torch.get_num_threads();
        // NativeEnvironment.ConfigureAllocator ran at start (Program.Main); in-process callers of Run see the host's setting.
        report["malloc"] = NativeEnvironment.AllocatorConfigured ? "heap kept between steps" : "glibc defaults";
        report["kernel_threads"] = OpenMpTeam.RuntimePath is { } omp ? $"libtorch's OpenMP team ({Path.GetFileName(omp)})" : "Parallel.For";
        report["cpu"] = CpuModel.Describe();
        report["bf16_linears"] = Dense.Bf16Path;
        report["cuda"] = torch.cuda.is_available();
        report["fonts"] = Drawing.Typeface is null ? "none (pictures without text; install fonts-dejavu-core)" : Drawing.Typeface.FamilyName;
        report["fashion_mnist"] = File.Exists(Path.Combine(FashionMnistDir, "train-images-idx3-ubyte.gz"))
            ? FashionMnistDir : "missing (sudo apt-get install dataset-fashion-mnist)";
        bool wantMpi = a.Flag("mpi") || Mpi.LaunchedByMpirun;
        if (wantMpi)
        {
            using var group = ProcessGroups.Create("mpi");
            report["rank"] = group.Rank;
            report["size"] = group.Size;
            ok &= CheckCollectives(group, report);
        }
        else
        {
            report["mpi"] = TryLoadMpi();
        }
        if (a.Flag("json")) io.Out.WriteLine(JsonSerializer.Serialize(report));
        else
            io.Out.WriteLine(string.Join("  ", report.Select(kv => string.Create(CultureInfo.InvariantCulture, $"{kv.Key}={kv.Value}"))));
        return ok ? 0 : 1;
    }

    private static bool CheckCollectives(IProcessGroup group, Dictionary<string, object?> report)
    {
        using var scope = torch.NewDisposeScope();
        int n = group.Size, r = group.Rank;
        // All-reduce: each rank contributes (rank + 1) · [1, 2, 3]; the sum is n(n+1)/2 · [1, 2, 3].
        var t = torch.tensor(new float[] { r + 1, 2 * (r + 1), 3 * (r + 1) });
        group.AllReduceSum(t);
        float expected = n * (n + 1) / 2f;
        bool reduceOk = t.data<float>().ToArray().SequenceEqual([expected, 2 * expected, 3 * expected]);
        // Broadcast: rank 0's values everywhere.
        var b = r == 0 ? torch.tensor(new float[] { 7, 8 }) : torch.zeros(2);
        group.Broadcast(b);
        bool bcastOk = b.data<float>().ToArray().SequenceEqual([7f, 8f]);
        group.Barrier();
        report["allreduce"] = reduceOk ? "ok" : "WRONG";
        report["broadcast"] = bcastOk ? "ok" : "WRONG";
        return reduceOk && bcastOk;
    }

    private static string TryLoadMpi()
    {
        foreach (var name in new[] { "libmpi.so.40", "libmpi.so" })
            if (System.Runtime.InteropServices.NativeLibrary.TryLoad(name, out var h))
            {
                System.Runtime.InteropServices.NativeLibrary.Free(h);
                return $"available ({name}); launch with mpirun -np N ./alltokens train ...";
            }
        return "not installed (sudo apt-get install openmpi-bin libopenmpi-dev)";
    }
}
