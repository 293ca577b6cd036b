namespace AllTokens.Data.Transforms;

/// <summary>Resampling filters, named as in Pillow (<c>Image.NEAREST</c>, <c>BILINEAR</c>, <c>BICUBIC</c>).</summary>
public enum Interpolation { Nearest, Bilinear, Bicubic }

/// <summary>The eval resize filters by the names models, weights and the command line use.</summary>
public static class EvalInterpolation
{
    /// <summary>"bicubic" or "bilinear" (timm's names for the eval resize); anything else is an ArgumentException.</summary>
    public static Interpolation Parse(string name) => name switch
    {
        "bicubic" => Interpolation.Bicubic,
        "bilinear" => Interpolation.Bilinear,
        _ => throw new ArgumentException($"an eval interpolation is bicubic or bilinear, got '{name}'", nameof(name)),
    };
}
