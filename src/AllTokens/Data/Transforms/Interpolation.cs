namespace AllTokens.Data.Transforms;

/// <summary>Resampling filters, named as in Pillow (<c>Image.NEAREST</c>, <c>BILINEAR</c>, <c>BICUBIC</c>).</summary>
public enum Interpolation { Nearest, Bilinear, Bicubic }
