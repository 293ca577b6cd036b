using System.Globalization;
using AllTokens.Checkpoints;
using AllTokens.Data;
using AllTokens.Visualization;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Cli;

public static class VisualizeVerb
{
    public static readonly Verb Verb = new(new VerbSpec("visualize", "draw a model's feature maps and attention maps for one image (PNG)",
        "--model M [--weights F] IMAGE [--layer L] [--channels K] [--out OUT.png]",
    [
        new OptionSpec("model", "M", "registered model name (optional when --weights is an AllTokens safetensors file)"),
        new OptionSpec("weights", "F", ".pth/.pth.tar/.safetensors weights; without it the model is randomly initialised"),
        new OptionSpec("layer", "L", "block whose tokens and attention are drawn; negative counts from the end", "-1"),
        new OptionSpec("channels", "K", "feature channels drawn per token set (highest spatial variance first)", "8"),
        new OptionSpec("out", "OUT.png", "where to write the picture (default: IMAGE's name with .viz.png)"),
        new OptionSpec("num-classes", "N", "classifier width (default: from the weights, else 1000)"),
        new OptionSpec("img-size", "R", "input resolution (default: the weights' or the model's)"),
        CliCommon.CropPctOption,
        CliCommon.InterpolationOption,
        new OptionSpec("ema", null, "use state_dict_ema from a training checkpoint"),
        CliCommon.DeviceOption,
        CliCommon.ThreadsOption,
    ], positional: "IMAGE", minPositional: 1, maxPositional: 1,
        details: "Rows: the input as the model sees it; for T2T-ViT the tokens of both T2T layers reshaped to their grids " +
                 "(the T2T paper's Fig. 2 view); the patch tokens after block L; the class token's attention to every patch " +
                 "(head mean and each head) overlaid on the input."), Run);

    private static int Run(ParsedArgs a, Console2 io)
    {
        CliCommon.ApplyThreads(a);
        var device = CliCommon.ResolveDevice(a);
        string imagePath = a.Positional[0];
        int layer = a.Int("layer", -100000, 100000)!.Value;
        int channels = a.Int("channels", 1, 256)!.Value;
        string outPath = a.String("out") ?? Path.ChangeExtension(imagePath, ".viz.png");
        var loaded = ModelWeights.Load(new ModelRequest(a.String("model"), a.String("weights"), a.Int("num-classes", 1, 1_000_000),
            a.Int("img-size", 16, 8192), PreferEma: a.Flag("ema")));
        using var model = loaded.Model;
        CliCommon.PrintReport(loaded.Report, io);
        if (loaded.Report is null) io.Err.WriteLine($"note: no --weights given; {loaded.Name} is randomly initialised");
        var transform = CliCommon.EvalTransformFor(a, CliCommon.PreprocessingFor(loaded, io), model.Options.ImgSize);
        var image = ImageDecoder.Decode(imagePath);
        var seen = transform.ResizeAndCrop(image);
        model.to(device);
        Inspection found;
        using (var scope = torch.NewDisposeScope())
        {
            var x = transform.ToTensor(image).unsqueeze(0).to(device);
            try
            {
                found = ModelInspector.Inspect(model, x, layer, channels);
            }
            catch (ArgumentOutOfRangeException e)
            {
                throw new UsageException($"--layer {layer}: {e.Message.Split(" (Parameter")[0]}");
            }
        }
        var names = loaded.Metadata?.ClassNames;
        int best = Array.IndexOf(found.Logits, found.Logits.Max());
        string predicted = names is not null && best < names.Count ? names[best] : $"class {best}";
        using var sheet = Render($"{loaded.Name}: {Path.GetFileName(imagePath)} → {predicted}", seen, found);
        sheet.SavePng(outPath);
        io.Out.WriteLine($"wrote {outPath} (block {found.Attention.Block}, {found.Features.Count} token sets, {found.Attention.PerHead.Length} heads; predicted {predicted})");
        return 0;
    }

    /// <summary>The standard sheet for one inspected image (also used by the demo report).</summary>
    public static PanelSheet Render(string title, RgbImage seen, Inspection found, int panelSide = 112)
    {
        var sheet = new PanelSheet(title);
        int scale = Math.Max(1, (int)Math.Round((double)panelSide / Math.Max(seen.Width, 1)));
        using var input = Drawing.FromRgb(seen, scale);
        sheet.AddRow("input", [new Panel($"{seen.Width}×{seen.Height}", input.Copy())]);
        foreach (var f in found.Features)
        {
            int cell = Math.Max(1, panelSide / f.Grid);
            sheet.AddRow($"{f.Name} ({f.Grid}×{f.Grid} tokens)", f.Maps.Select((m, i) =>
                new Panel($"ch {f.Channels[i]}", Drawing.Heatmap(m, f.Grid, f.Grid, cell))));
        }
        var att = found.Attention;
        var panels = new List<Panel> { new("mean", Drawing.Overlay(input, att.Mean, att.Grid, att.Grid)) };
        panels.AddRange(att.PerHead.Select((m, h) => new Panel(string.Create(CultureInfo.InvariantCulture, $"head {h}"),
            Drawing.Overlay(input, m, att.Grid, att.Grid))));
        sheet.AddRow($"class-token attention, block {att.Block}", panels);
        return sheet;
    }
}
