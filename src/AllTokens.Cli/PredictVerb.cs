using System.Globalization;
using System.Text.Json;
using AllTokens.Checkpoints;
using AllTokens.Data;
using AllTokens.Data.Transforms;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Cli;

public static class PredictVerb
{
    public static readonly Verb Verb = new(new VerbSpec("predict", "classify images with a model (timm eval preprocessing)",
        "--model M [--weights F] [--num-classes N] [--img-size R] [--crop-pct P] [--interpolation bicubic|bilinear] [--top K] [--json] [--logits] IMAGE...",
    [
        new OptionSpec("model", "M", "registered model name (optional when --weights is an AllTokens safetensors file)"),
        new OptionSpec("weights", "F", ".pth/.pth.tar/.safetensors weights; without it the model is randomly initialised"),
        new OptionSpec("num-classes", "N", "classifier width (default: from the weights, else 1000)"),
        new OptionSpec("img-size", "R", "input resolution (default: the weights' or the model's)"),
        CliCommon.CropPctOption,
        CliCommon.InterpolationOption,
        new OptionSpec("top", "K", "how many classes to show", "5"),
        new OptionSpec("json", null, "JSON Lines, one object per image"),
        new OptionSpec("logits", null, "include the raw logits (with --json)"),
        new OptionSpec("batch", "B", "images per forward pass", "16"),
        new OptionSpec("ema", null, "use state_dict_ema from a training checkpoint"),
        new OptionSpec("allow-mismatch", null, "load what fits when the weights do not match the model"),
        CliCommon.DeviceOption,
        CliCommon.ThreadsOption,
    ], positional: "IMAGE...", minPositional: 1,
        details: "Eval output of LV-ViT models is head(cls) + 0.5·max over tokens of aux_head(token), as the official validate.py scores."), Run);

    private static int Run(ParsedArgs a, Console2 io)
    {
        CliCommon.ApplyThreads(a);
        var device = CliCommon.ResolveDevice(a);
        int top = a.Int("top", 1, 100000)!.Value;
        int batch = a.Int("batch", 1, 4096)!.Value;
        bool json = a.Flag("json"), withLogits = a.Flag("logits");
        var loaded = ModelWeights.Load(new ModelRequest(a.String("model"), a.String("weights"), a.Int("num-classes", 1, 1_000_000),
            a.Int("img-size", 16, 8192), AllowMismatch: a.Flag("allow-mismatch"), PreferEma: a.Flag("ema")));
        using var model = loaded.Model;
        CliCommon.PrintReport(loaded.Report, io);
        if (loaded.Report is null) io.Err.WriteLine($"note: no --weights given; {loaded.Name} is randomly initialised");
        var transform = CliCommon.EvalTransformFor(a, CliCommon.PreprocessingFor(loaded, io), model.Options.ImgSize);
        model.to(device);
        model.eval();
        var names = loaded.Metadata?.ClassNames;
        int failures = 0;
        foreach (var chunk in a.Positional.Chunk(batch))
        {
            var good = new List<(string Path, float[] Chw)>();
            foreach (var path in chunk)
            {
                try
                {
                    good.Add((path, transform.Apply(ImageDecoder.Decode(path))));
                }
                catch (Exception e) when (e is ImageDecodeException or IOException or UnauthorizedAccessException)
                {
                    io.Err.WriteLine($"alltokens predict: error: {e.Message}");
                    failures++;
                }
            }
            if (good.Count == 0) continue;
            float[][] logits = Forward(model, good.Select(g => g.Chw).ToList(), transform.Size, device);
            for (int i = 0; i < good.Count; i++) Print(io, good[i].Path, logits[i], top, json, withLogits, names);
        }
        return failures == 0 ? 0 : 1;
    }

    private static float[][] Forward(Models.ImageClassifier model, List<float[]> images, int size, Device device)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var flat = new float[images.Count * 3L * size * size];
        for (int i = 0; i < images.Count; i++) images[i].CopyTo(flat, (long)i * images[i].Length);
        var x = torch.tensor(flat, [images.Count, 3, size, size]).to(device);
        var y = model.call(x).to(ScalarType.Float32).cpu();
        return Enumerable.Range(0, images.Count).Select(i => y[i].data<float>().ToArray()).ToArray();
    }

    private static void Print(Console2 io, string path, float[] logits, int top, bool json, bool withLogits, IReadOnlyList<string>? names)
    {
        // Softmax in double for stable probabilities.
        double max = logits.Max();
        double[] e = logits.Select(l => Math.Exp(l - max)).ToArray();
        double sum = e.Sum();
        var best = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).Take(top).ToList();
        string? Name(int i) => names is not null && i < names.Count ? names[i] : null;
        if (json)
        {
            var obj = new Dictionary<string, object?>
            {
                ["path"] = path,
                ["top"] = best.Select(i => Name(i) is { } n
                    ? (object)new { index = i, prob = e[i] / sum, name = n }
                    : new { index = i, prob = e[i] / sum }).ToList(),
            };
            if (withLogits) obj["logits"] = logits;
            io.Out.WriteLine(JsonSerializer.Serialize(obj));
            return;
        }
        io.Out.WriteLine(path);
        foreach (var i in best)
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {i,6}  {e[i] / sum,8:P2}  {Name(i) ?? ""}").TrimEnd());
    }
}
