using System.Text.Json;
using AllTokens.Data;
using AllTokens.Data.Transforms;

namespace AllTokens.Tests.Data;

/// <summary>Each RandAugment / ColorJitter op against Pillow 9.4 outputs (fixtures/augment/ops.json, tools/make_augment_fixtures.py).</summary>
public sealed class AugmentOpsTests
{
    private static readonly Lazy<JsonElement> Doc = new(() =>
        JsonDocument.Parse(File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "fixtures", "augment", "ops.json"))).RootElement);

    private static RgbImage Image(string name)
    {
        var e = Doc.Value.GetProperty("images").GetProperty(name);
        return new RgbImage(e.GetProperty("w").GetInt32(), e.GetProperty("h").GetInt32(), Convert.FromHexString(e.GetProperty("hex").GetString()!));
    }

    private static readonly (byte, byte, byte) Fill = (124, 116, 104);

    public static TheoryData<string> Ops() =>
    [
        "autocontrast", "equalize", "invert", "posterize", "solarize", "solarize_add", "color", "contrast", "brightness", "sharpness",
        "rotate", "shear_x", "shear_y", "translate_x_rel", "translate_y_rel",
    ];

    private static RgbImage Run(string op, RgbImage img, JsonElement args)
    {
        double D(string k) => args.GetProperty(k).GetDouble();
        int I(string k) => args.GetProperty(k).GetInt32();
        Interpolation R() => args.GetProperty("resample").GetString() == "bilinear" ? Interpolation.Bilinear : Interpolation.Bicubic;
        return op switch
        {
            "autocontrast" => PilOps.AutoContrast(img),
            "equalize" => PilOps.Equalize(img),
            "invert" => PilOps.Invert(img),
            "posterize" => PilOps.Posterize(img, I("bits")),
            "solarize" => PilOps.Solarize(img, I("thresh")),
            "solarize_add" => PilOps.SolarizeAdd(img, I("add")),
            "color" => PilOps.Color(img, D("factor")),
            "contrast" => PilOps.Contrast(img, D("factor")),
            "brightness" => PilOps.Brightness(img, D("factor")),
            "sharpness" => PilOps.Sharpness(img, D("factor")),
            "rotate" => PilAffine.Rotate(img, D("degrees"), R(), Fill, out _),
            "shear_x" => PilAffine.Transform(img, new Affine2D(1, D("factor"), 0, 0, 1, 0), R(), Fill),
            "shear_y" => PilAffine.Transform(img, new Affine2D(1, 0, 0, D("factor"), 1, 0), R(), Fill),
            "translate_x_rel" => PilAffine.Transform(img, new Affine2D(1, 0, D("pct") * img.Width, 0, 1, 0), R(), Fill),
            "translate_y_rel" => PilAffine.Transform(img, new Affine2D(1, 0, 0, 0, 1, D("pct") * img.Height), R(), Fill),
            _ => throw new ArgumentException(op),
        };
    }

    [Theory]
    [MemberData(nameof(Ops))]
    public void MatchesPillowExactly(string op)
    {
        int n = 0;
        var failures = new List<string>();
        foreach (var c in Doc.Value.GetProperty("cases").EnumerateArray().Where(c => c.GetProperty("op").GetString() == op))
        {
            var img = Image(c.GetProperty("image").GetString()!);
            byte[] expected = Convert.FromHexString(c.GetProperty("hex").GetString()!);
            byte[] actual = Run(op, img, c.GetProperty("args")).Pixels;
            int diff = expected.Zip(actual).Count(p => p.First != p.Second);
            int maxDiff = expected.Zip(actual).Max(p => Math.Abs(p.First - p.Second));
            if (diff > 0) failures.Add($"{c.GetProperty("image").GetString()} {c.GetProperty("args")}: {diff} bytes differ (max {maxDiff})");
            n++;
        }
        Assert.True(n > 0, $"no fixture cases for {op}");
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }
}
