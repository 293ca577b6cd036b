using AllTokens.Checkpoints;

namespace AllTokens.Cli;

public static class ConvertVerb
{
    public static readonly Verb Verb = new(new VerbSpec("convert", "convert a PyTorch checkpoint to safetensors",
        "--from X.pth --to Y.safetensors [--model M] [--num-classes N] [--img-size R] [--ema]",
    [
        new OptionSpec("from", "X", "source checkpoint (.pth, .pth.tar, .pt, .safetensors)"),
        new OptionSpec("to", "Y", "destination .safetensors file (written atomically)"),
        new OptionSpec("model", "M", "validate against this model and record it in the file, so --model can be omitted later"),
        new OptionSpec("num-classes", "N", "with --model: classifier width (default: from the checkpoint)"),
        new OptionSpec("img-size", "R", "with --model: resolution (default: the model's)"),
        new OptionSpec("ema", null, "take state_dict_ema from a training checkpoint"),
        new OptionSpec("allow-mismatch", null, "with --model: keep going when keys do not fit"),
        new OptionSpec("force", null, "overwrite an existing destination"),
    ]), Run);

    private static int Run(ParsedArgs a, Console2 io)
    {
        string from = a.Required("from"), to = a.Required("to");
        if (Path.GetFullPath(from) == Path.GetFullPath(to)) throw new UsageException("--from and --to name the same file");
        if (File.Exists(to) && !a.Flag("force")) throw new UsageException($"{to} exists; pass --force to overwrite it");
        string? model = a.String("model");
        if (model is null)
        {
            var sd = StateDicts.ReadAny(from, a.Flag("ema"));
            Safetensors.Write(to, sd, new Dictionary<string, string> { [WeightsMetadata.FormatKey] = WeightsMetadata.FormatValue });
            io.Err.WriteLine($"wrote {to}: {sd.Count} tensors, keys as in {from} (no model recorded; pass --model to validate and record one)");
            return 0;
        }
        var loaded = ModelWeights.Load(new ModelRequest(model, from, a.Int("num-classes", 1, 1_000_000), a.Int("img-size", 16, 8192),
            AllowMismatch: a.Flag("allow-mismatch"), PreferEma: a.Flag("ema")));
        using var m = loaded.Model;
        CliCommon.PrintReport(loaded.Report, io);
        ModelWeights.Save(m, loaded.Name, to, loaded.Metadata?.ClassNames, loaded.Metadata?.Preprocess);
        io.Err.WriteLine($"wrote {to}: {loaded.Name} ({m.Options.NumClasses} classes, {m.Options.ImgSize} px)");
        return 0;
    }
}
