using AllTokens.Checkpoints;
using AllTokens.Models;

namespace AllTokens.Tests.Checkpoints;

public class PreprocessMetadataTests
{
    [Fact]
    public void RoundTripsAndOverridesTheRegistryDefaults()
    {
        var pre = new Preprocessing([0.286f, 0.286f, 0.286f], [0.353f, 0.353f, 0.353f], 1.0, "bilinear");
        var meta = new WeightsMetadata("t2t_vit_nano", new ModelOptions(10, 32), ["a", "b"], pre);
        var back = WeightsMetadata.From(meta.ToDictionary(), "w.safetensors")!;
        Assert.Equal(pre.Mean, back.Preprocess!.Mean);
        Assert.Equal(pre.Std, back.Preprocess.Std);
        Assert.Equal(1.0, back.Preprocess.CropPct);
        Assert.Equal("bilinear", back.Preprocess.Interpolation);
        var applied = back.Preprocess.Apply(ModelRegistry.Get("t2t_vit_7").Defaults);
        Assert.Equal(224, applied.ImgSize); // the registry's size stays
        Assert.Equal(pre.Mean, applied.Mean);
        Assert.Equal(1.0, applied.CropPct);
        // Older files without the key still load, with no preprocessing.
        var old = new WeightsMetadata("t2t_vit_nano", new ModelOptions(10, 32), null).ToDictionary();
        Assert.Null(WeightsMetadata.From(old, "w.safetensors")!.Preprocess);
    }

    [Theory]
    [InlineData("{\"Mean\":[0.5,0.5],\"Std\":[0.5,0.5,0.5],\"CropPct\":1.0,\"Interpolation\":\"bicubic\"}")]
    [InlineData("{\"Mean\":[0.5,0.5,0.5],\"Std\":[0.5,0,0.5],\"CropPct\":1.0,\"Interpolation\":\"bicubic\"}")]
    [InlineData("{\"Mean\":[0.5,0.5,0.5],\"Std\":[0.5,0.5,0.5],\"CropPct\":1.5,\"Interpolation\":\"bicubic\"}")]
    [InlineData("{\"Mean\":[0.5,0.5,0.5],\"Std\":[0.5,0.5,0.5],\"CropPct\":0.9,\"Interpolation\":\"nearest\"}")]
    [InlineData("not json")]
    public void MalformedPreprocessingIsAFormatErrorNamingTheFile(string json)
    {
        var d = new WeightsMetadata("t2t_vit_nano", null, null).ToDictionary();
        d[WeightsMetadata.PreprocessKey] = json;
        var e = Assert.Throws<CheckpointFormatException>(() => WeightsMetadata.From(d, "bad.safetensors"));
        Assert.Contains("bad.safetensors", e.Message);
    }
}
