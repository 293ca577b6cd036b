using System.Globalization;
using System.Text.Json;
using AllTokens.Models;

namespace AllTokens.Cli;

public static class ModelsVerb
{
    public static readonly Verb Verb = new(new VerbSpec("models", "list the registered models", "[--json] [--family F]",
    [
        new OptionSpec("json", null, "print JSON Lines, one object per model"),
        new OptionSpec("family", "F", "only models of this family (lvvit, t2t_vit, vit)"),
    ]), Run);

    private static int Run(ParsedArgs a, Console2 io)
    {
        string? family = a.String("family");
        var models = ModelRegistry.All.Where(m => family is null || m.Family == family).ToList();
        if (models.Count == 0)
            throw new UsageException($"no models in family '{family}'; families: {string.Join(", ", ModelRegistry.All.Select(m => m.Family).Distinct())}");
        if (a.Flag("json"))
        {
            foreach (var m in models)
            {
                io.Out.WriteLine(JsonSerializer.Serialize(new
                {
                    name = m.Name,
                    family = m.Family,
                    @params = ModelRegistry.CountParameters(m.Name, new ModelOptions(1000, m.Defaults.ImgSize)),
                    img_size = m.Defaults.ImgSize,
                    crop_pct = m.Defaults.CropPct,
                    interpolation = m.Defaults.Interpolation,
                    description = m.Description,
                }));
            }
            return 0;
        }
        int w = models.Max(m => m.Name.Length) + 2;
        io.Out.WriteLine($"{"name".PadRight(w)}{"family",-9}{"params",12}  {"img",4}  {"crop",5}  description");
        foreach (var m in models)
        {
            long p = ModelRegistry.CountParameters(m.Name, new ModelOptions(1000, m.Defaults.ImgSize));
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{m.Name.PadRight(w)}{m.Family,-9}{p,12:N0}  {m.Defaults.ImgSize,4}  {m.Defaults.CropPct,5:0.###}  {m.Description}"));
        }
        io.Out.WriteLine();
        io.Out.WriteLine("params: all parameters incl. frozen tensors, at 224 px and 1000 classes.");
        return 0;
    }
}
