using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Checkpoints;

/// <summary>Element types that checkpoints carry. Names follow safetensors' dtype strings where they exist.</summary>
public enum TensorDType { Float32, Float16, BFloat16, Float64, Int64, Int32, Int16, Int8, UInt8, Bool }

/// <summary>
/// A tensor as bytes: C-contiguous (row-major), little-endian, independent of TorchSharp. This is the
/// currency between file formats (.pth, safetensors) and the models.
/// </summary>
public sealed record RawTensor(TensorDType DType, long[] Shape, byte[] Data)
{
    public long NumElements => Shape.Aggregate(1L, (a, b) => a * b);

    public static int ElementSize(TensorDType t) => t switch
    {
        TensorDType.Float64 or TensorDType.Int64 => 8,
        TensorDType.Float32 or TensorDType.Int32 => 4,
        TensorDType.Float16 or TensorDType.BFloat16 or TensorDType.Int16 => 2,
        _ => 1,
    };

    public static ScalarType ToScalarType(TensorDType t) => t switch
    {
        TensorDType.Float32 => ScalarType.Float32,
        TensorDType.Float16 => ScalarType.Float16,
        TensorDType.BFloat16 => ScalarType.BFloat16,
        TensorDType.Float64 => ScalarType.Float64,
        TensorDType.Int64 => ScalarType.Int64,
        TensorDType.Int32 => ScalarType.Int32,
        TensorDType.Int16 => ScalarType.Int16,
        TensorDType.Int8 => ScalarType.Int8,
        TensorDType.UInt8 => ScalarType.Byte,
        TensorDType.Bool => ScalarType.Bool,
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    public static TensorDType FromScalarType(ScalarType t) => t switch
    {
        ScalarType.Float32 => TensorDType.Float32,
        ScalarType.Float16 => TensorDType.Float16,
        ScalarType.BFloat16 => TensorDType.BFloat16,
        ScalarType.Float64 => TensorDType.Float64,
        ScalarType.Int64 => TensorDType.Int64,
        ScalarType.Int32 => TensorDType.Int32,
        ScalarType.Int16 => TensorDType.Int16,
        ScalarType.Int8 => TensorDType.Int8,
        ScalarType.Byte => TensorDType.UInt8,
        ScalarType.Bool => TensorDType.Bool,
        _ => throw new NotSupportedException($"tensor type {t} has no checkpoint dtype"),
    };

    /// <summary>A new CPU tensor holding a copy of the bytes.</summary>
    public Tensor ToTorch()
    {
        if (Data.LongLength != NumElements * ElementSize(DType))
            throw new InvalidDataException($"tensor of shape [{string.Join(",", Shape)}] {DType} needs {NumElements * ElementSize(DType)} bytes, has {Data.LongLength}");
        var t = torch.empty(Shape, ToScalarType(DType));
        Data.AsSpan().CopyTo(t.bytes);
        return t;
    }

    /// <summary>Copies a tensor (any device, any layout) into contiguous CPU bytes.</summary>
    public static RawTensor FromTorch(Tensor t)
    {
        using var scope = torch.NewDisposeScope();
        var c = t.detach().cpu().contiguous();
        return new RawTensor(FromScalarType(c.dtype), c.shape.ToArray(), c.bytes.ToArray());
    }
}
