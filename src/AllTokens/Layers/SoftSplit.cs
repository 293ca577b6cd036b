using System.Runtime.Intrinsics;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Layers;

/// <summary>
/// The T2T soft split of the image (nn.Unfold followed by a transpose to tokens) written as strided windows, so the
/// tokens come out contiguous in one copy: the same values in the same order as
/// <c>Unfold(k, s, p)(image).transpose(1, 2)</c>, feature index c·k² + i·k + j. The unfold route writes the columns
/// [B, C·k², L], transposes them, and the LayerNorm after it copies them again (soft split 0 + LayerNorm forward and
/// backward, t2t_vit_7, b8: 11 vs 18 ms). Differentiable (pad, <c>Tensor.unfold</c> and reshape are), but autograd's
/// backward for it (unfold_backward) is slower than col2im, so the soft split of tokens, whose input needs a gradient,
/// has its own backward (<see cref="OfTokens"/>). The last soft split feeds a Linear directly (the T2T module's
/// <c>project</c>); <see cref="LinearOfTokens"/> runs the pair as one convolution (<c>ALLTOKENS_T2T_PROJECT=linear</c>:
/// nn.Unfold, then the linear).
/// </summary>
public static class SoftSplit
{
    /// <summary>Soft splits 0 and 1 as windows (<see cref="FromImage"/>, <see cref="OfTokens"/>); off
    /// (<c>ALLTOKENS_SOFT_SPLIT=unfold</c>): nn.Unfold, as the original.</summary>
    public static bool Strided { get; set; } = SpeedSwitch.On("ALLTOKENS_SOFT_SPLIT", "unfold");
    public static bool ProjectAsConvolution { get; set; } = SpeedSwitch.On("ALLTOKENS_T2T_PROJECT", "linear");

    private static void CheckWindow(int kernel, int stride, int padding)
    {
        if (kernel < 1 || stride < 1 || padding < 0) throw new ArgumentException($"soft split: kernel {kernel}, stride {stride}, padding {padding}");
    }

    /// <summary>Image [B, C, H, W] → tokens [B, L, C·k²], L = output rows × output columns.</summary>
    public static Tensor FromImage(Tensor image, int kernel, int stride, int padding)
    {
        CheckImage(image, kernel, stride, padding);
        if (ImageWindowsApply(image)) return ImageWindows(image, kernel, stride, padding);
        long b = image.shape[0], c = image.shape[1];
        var padded = padding == 0 ? image : nn.functional.pad(image, [padding, padding, padding, padding]);
        var windows = padded.unfold(2, kernel, stride).unfold(3, kernel, stride); // [B, C, oh, ow, k, k]
        long oh = windows.shape[2], ow = windows.shape[3];
        return windows.permute(0, 2, 3, 1, 4, 5).reshape(b, oh * ow, c * kernel * kernel);
    }

    /// <summary>
    /// The image's windows copied by our own loop (on libtorch's OpenMP team) where no gradient is needed — the model's
    /// input in training and inference: one pass writing each token's C·k² values in order, each window row of k pixels
    /// one block copy (zeros where it reaches into the padding). libtorch's route (pad, two unfolds, a permuted copy) took
    /// 2.9 ms in fp32 and 3.8 ms in bf16 for t2t_vit_7's first split at batch 8 (BENCHMARKS.md). The same values, bit for
    /// bit. <c>ALLTOKENS_SOFT_SPLIT=unfold</c> turns it off with the other strided splits.
    /// </summary>
    private static bool ImageWindowsApply(Tensor image) =>
        WindowCopy && image.device_type == DeviceType.CPU && image.is_contiguous()
        && image.dtype is ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16
        && !(image.requires_grad && torch.is_grad_enabled());

    /// <summary>The image windows' own copy loop (<see cref="ImageWindowsApply"/>); tests and comparisons.</summary>
    internal static bool WindowCopy { get; set; } = true;

    /// <summary>Its window rows as whole 16-byte moves where they fit (see WindowRows); comparisons.</summary>
    internal static bool WideRows { get; set; } = true;

    private unsafe struct WindowJob
    {
        public byte* Image, Out;
        public int Size, Channels, Height, Width, Kernel, Stride, Padding, OutHeight, OutWidth;
        public bool Normalize; // each token's row then normalised in place (LayerNorm without affine, eps below)
        public float Eps;
    }

    /// <summary>Whether <see cref="NormalizedFromImage"/> runs its own loop (else it is layer_norm after the split).</summary>
    internal static bool NormalizesWindows(Tensor image) =>
        NormalizeInLoop && ImageWindowsApply(image) && image.dtype == ScalarType.Float32;

    /// <summary>The fused normalisation of <see cref="NormalizedFromImage"/>; tests and comparisons.</summary>
    internal static bool NormalizeInLoop { get; set; } = true;

    /// <summary>
    /// <c>layer_norm(FromImage(image, k, s, p), [C·k²])</c> without affine, for an image that needs no gradient (the
    /// first T2T layer's LayerNorm folded into its linear in training, Layers/NormLinear): in fp32 each token's window
    /// row is normalised right after it is copied, while it is in cache — mean, then the mean square of the deviations —
    /// instead of libtorch's LayerNorm reading the [B, L, C·k²] windows back: t2t_vit_7's first split + LayerNorm,
    /// batch 8, 2.43–3.05 vs 3.88–4.68 ms (61 alternating reps, three runs). Within float rounding of libtorch's (its
    /// variance comes from Welford's update). bf16 keeps libtorch's LayerNorm after the split: the same loop with a bf16
    /// row ran ×0.87–1.14 against it, no steady gain.
    /// </summary>
    internal static Tensor NormalizedFromImage(Tensor image, int kernel, int stride, int padding, double eps)
    {
        if (!NormalizesWindows(image))
        {
            var x = FromImage(image, kernel, stride, padding);
            return nn.functional.layer_norm(x, [x.shape[2]], null, null, eps);
        }
        CheckImage(image, kernel, stride, padding);
        return ImageWindows(image, kernel, stride, padding, (float)eps);
    }

    private static void CheckImage(Tensor image, int kernel, int stride, int padding)
    {
        if (image.dim() != 4) throw new ArgumentException($"soft split needs a [B, C, H, W] image, got {image.dim()}-D");
        CheckWindow(kernel, stride, padding);
        if (image.shape[2] + 2 * padding < kernel || image.shape[3] + 2 * padding < kernel)
            throw new ArgumentException($"a {kernel}×{kernel} window does not fit a {image.shape[2]}×{image.shape[3]} image padded by {padding}");
    }

    private static unsafe Tensor ImageWindows(Tensor image, int kernel, int stride, int padding, float? normalizeEps = null)
    {
        int c = (int)image.shape[1], h = (int)image.shape[2], w = (int)image.shape[3];
        int oh = (h + 2 * padding - kernel) / stride + 1, ow = (w + 2 * padding - kernel) / stride + 1;
        long b = image.shape[0];
        var tokens = torch.empty([b, (long)oh * ow, (long)c * kernel * kernel], dtype: image.dtype);
        if (tokens.numel() == 0) return tokens;
        fixed (byte* src = image.bytes)
        fixed (byte* dst = tokens.bytes)
        {
            var job = new WindowJob
            {
                Image = src, Out = dst, Size = (int)image.element_size(), Channels = c, Height = h, Width = w,
                Kernel = kernel, Stride = stride, Padding = padding, OutHeight = oh, OutWidth = ow,
                Normalize = normalizeEps is not null, Eps = normalizeEps ?? 0,
            };
            OpenMpTeam.For(b * oh * ow, 64, &WindowRows, &job);
        }
        return tokens;
    }

    /// <summary>Tokens [from, to) of <see cref="ImageWindows"/>: token r is window (r mod L) of image r / L.</summary>
    private static unsafe void WindowRows(long from, long to, void* state)
    {
        var j = (WindowJob*)state;
        int size = j->Size, c = j->Channels, h = j->Height, w = j->Width, k = j->Kernel, s = j->Stride, p = j->Padding;
        long windows = (long)j->OutHeight * j->OutWidth, plane = (long)h * w, rowBytes = (long)k * size;
        // Window rows of at most 16 bytes (7 bf16 pixels: 14 bytes) go as one 16-byte move, running past the row into
        // the next row's place, which that row then overwrites: a token's rows are written in order, and its last row
        // is copied exactly (the next token may be another thread's). The source must have those bytes within its own
        // image row. t2t_vit_7's first split, bf16, batch 8: 1.01–1.80 vs 1.39–2.27 ms (101 alternating reps, three
        // runs). fp32's 28-byte rows as two moves were slower (×1.10–1.21), so they keep the block copy.
        long wideBytes = (rowBytes + 15) & ~15L;
        bool wide = WideRows && wideBytes == 16;
        long lastRow = (long)c * k - 1;
        for (long r = from; r < to; r++)
        {
            long bi = r / windows, wi = r % windows;
            int y0 = (int)(wi / j->OutWidth) * s - p, x0 = (int)(wi % j->OutWidth) * s - p;
            byte* token = j->Out + r * c * k * rowBytes, dst = token;
            byte* image = j->Image + bi * c * plane * size;
            bool inside = x0 >= 0 && x0 + k <= w;
            bool wideInside = wide && inside && (long)x0 * size + wideBytes <= (long)w * size;
            long rowIndex = 0;
            for (int ci = 0; ci < c; ci++)
                for (int i = 0; i < k; i++, dst += rowBytes, rowIndex++)
                {
                    int y = y0 + i;
                    if (y < 0 || y >= h)
                    {
                        new Span<byte>(dst, (int)rowBytes).Clear();
                        continue;
                    }
                    byte* row = image + (ci * plane + (long)y * w) * size;
                    if (wideInside && rowIndex != lastRow)
                    {
                        Vector128.Store(Vector128.Load(row + (long)x0 * size), dst);
                        continue;
                    }
                    if (inside)
                    {
                        Buffer.MemoryCopy(row + (long)x0 * size, dst, rowBytes, rowBytes);
                        continue;
                    }
                    for (int jx = 0; jx < k; jx++)
                    {
                        int x = x0 + jx;
                        var cell = new Span<byte>(dst + (long)jx * size, size);
                        if (x < 0 || x >= w) cell.Clear();
                        else new ReadOnlySpan<byte>(row + (long)x * size, size).CopyTo(cell);
                    }
                }
            if (j->Normalize) NormalizeFloat((float*)token, c * k * k, j->Eps); // fp32 only (NormalizesWindows)
        }
    }

    /// <summary>(x − mean)/√(var + eps) over one fp32 row, in place; var the mean square of the deviations.</summary>
    private static unsafe void NormalizeFloat(float* x, int n, float eps)
    {
        int i = 0;
        var acc = Vector512<float>.Zero;
        for (; i + 16 <= n; i += 16) acc += Vector512.Load(x + i);
        float sum = Vector512.Sum(acc);
        for (; i < n; i++) sum += x[i];
        float mean = sum / n;
        var vm = Vector512.Create(mean);
        acc = Vector512<float>.Zero;
        for (i = 0; i + 16 <= n; i += 16)
        {
            var d = Vector512.Load(x + i) - vm;
            acc = Vector512.FusedMultiplyAdd(d, d, acc);
        }
        float sq = Vector512.Sum(acc);
        for (; i < n; i++) sq += (x[i] - mean) * (x[i] - mean);
        float rstd = 1f / MathF.Sqrt(sq / n + eps);
        var vr = Vector512.Create(rstd);
        for (i = 0; i + 16 <= n; i += 16) ((Vector512.Load(x + i) - vm) * vr).Store(x + i);
        for (; i < n; i++) x[i] = (x[i] - mean) * rstd;
    }

    /// <summary>
    /// Tokens [B, N, C] on a √N × √N grid (row-major) → <c>Unfold(k, s, p)(restructure(tokens)).transpose(1, 2)</c>
    /// [B, L, C·k²], contiguous: the T2T module's soft split 1 (<c>ALLTOKENS_SOFT_SPLIT=unfold</c>: nn.Unfold). Forward: the
    /// tokens viewed as a channels-last image, padded, and its windows copied out (one strided copy per kernel offset),
    /// where the unfold route copied three times (re-structurize, im2col, and the next LayerNorm's contiguous copy of the
    /// transposed columns).
    /// Backward (<see cref="TokenSplit"/>): one strided add per kernel offset into a padded gradient image, each a
    /// parallel elementwise op; libtorch's col2im runs on one thread (a profile of a bf16 t2t_vit_7 step put ~8 ms of
    /// serial col2im in it). Reduced-precision gradients are summed in fp32 (col2im sums in the tensor's dtype). The same
    /// values forward; gradients equal up to the order of the ≤ ⌈k/s⌉² terms summed per input.
    /// </summary>
    public static Tensor OfTokens(Tensor tokens, int kernel, int stride, int padding)
    {
        var geometry = TokenGrid.Of(tokens, kernel, stride, padding);
        return torch.is_grad_enabled() && tokens.requires_grad
            ? TokenSplit.apply(tokens, geometry)
            : TokenSplit.Windows(tokens, geometry);
    }

    /// <summary>The grid of a token soft split: batch, side, channels, kernel, stride, padding, output side.</summary>
    internal sealed record TokenGrid(long Batch, long Side, long Channels, int Kernel, int Stride, int Padding, long OutSide)
    {
        /// <summary>Rows (and columns) of the padded image one kernel offset's strided slice spans.</summary>
        public long Span => (OutSide - 1) * Stride + 1;

        public static TokenGrid Of(Tensor tokens, int kernel, int stride, int padding)
        {
            if (tokens.dim() != 3) throw new ArgumentException($"soft split of tokens needs [B, N, C], got {tokens.dim()}-D");
            CheckWindow(kernel, stride, padding);
            long b = tokens.shape[0], n = tokens.shape[1], c = tokens.shape[2];
            long side = (long)Math.Round(Math.Sqrt(n));
            if (side * side != n) throw new ArgumentException($"{n} tokens do not form a square grid");
            long outSide = (side + 2 * padding - kernel) / stride + 1;
            if (outSide < 1) throw new ArgumentException($"a {kernel}×{kernel} window does not fit a {side}×{side} grid padded by {padding}");
            return new TokenGrid(b, side, c, kernel, stride, padding, outSide);
        }
    }

    /// <summary>The token soft split as an autograd function: the windows forward, strided adds backward.</summary>
    internal sealed class TokenSplit : torch.autograd.SingleTensorFunction<TokenSplit>
    {
        public override string Name => "TokenSoftSplit";

        /// <summary>The windows of the padded channels-last image, copied into [B, L, C·k²].</summary>
        public static Tensor Windows(Tensor tokens, TokenGrid g)
        {
            using var scope = torch.NewDisposeScope();
            var image = tokens.reshape(g.Batch, g.Side, g.Side, g.Channels);                          // [B, H, W, C]
            var padded = g.Padding == 0 ? image : nn.functional.pad(image, [0, 0, g.Padding, g.Padding, g.Padding, g.Padding]);
            // One copy per kernel offset (i, j), each a parallel elementwise copy with the channels as its inner loop. A
            // single copy from the 6-D window view (padded.unfold(1, k, s).unfold(2, k, s)) has the window's 3 columns as
            // its inner loop and took 4x as long (9 vs 2 ms in bf16 for t2t_vit_7's soft split 1 at batch 8).
            long span = g.Span;
            var result = torch.empty([g.Batch, g.OutSide, g.OutSide, g.Channels, g.Kernel, g.Kernel], dtype: tokens.dtype, device: tokens.device);
            for (int i = 0; i < g.Kernel; i++)
                for (int j = 0; j < g.Kernel; j++)
                {
                    using var target = result.select(5, j).select(4, i);                                       // [B, oh, ow, C]
                    using var source = padded.slice(1, i, i + span, g.Stride).slice(2, j, j + span, g.Stride); // [B, oh, ow, C]
                    target.copy_(source);
                }
            return scope.MoveToOuter(result.view(g.Batch, g.OutSide * g.OutSide, g.Channels * g.Kernel * g.Kernel));
        }

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            var tokens = (Tensor)vars[0];
            var g = (TokenGrid)vars[1];
            ctx.save_data("grid", g);
            ctx.save_data("dtype", tokens.dtype);
            return Windows(tokens, g);
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var g = (TokenGrid)ctx.get_data("grid");
            var dtype = (ScalarType)ctx.get_data("dtype");
            // A gather per token on the OpenMP team where AVX-512 is there (Layers/TokenSplitGradient); strided adds here otherwise.
            if (TokenSplitGradient.Applies(gradOutput, dtype, g.Channels)) return [TokenSplitGradient.Backward(gradOutput, g), null!];
            using var scope = torch.NewDisposeScope();
            var sumType = dtype is ScalarType.BFloat16 or ScalarType.Float16 ? ScalarType.Float32 : dtype;
            long paddedSide = g.Side + 2 * g.Padding, span = g.Span;
            var sum = torch.zeros([g.Batch, paddedSide, paddedSide, g.Channels], dtype: sumType, device: gradOutput.device);
            var windows = gradOutput.reshape(g.Batch, g.OutSide, g.OutSide, g.Channels, g.Kernel, g.Kernel);
            for (int i = 0; i < g.Kernel; i++)
                for (int j = 0; j < g.Kernel; j++)
                {
                    // Input pixel (i + s·oy, j + s·ox) of the padded image got window (oy, ox)'s offset (i, j).
                    using var target = sum.slice(1, i, i + span, g.Stride).slice(2, j, j + span, g.Stride); // [B, oh, ow, C]
                    using var source = windows.select(5, j).select(4, i);
                    target.add_(source, Held.One);
                }
            var inner = sum.slice(1, g.Padding, g.Padding + g.Side, 1).slice(2, g.Padding, g.Padding + g.Side, 1);
            var grad = inner.reshape(g.Batch, g.Side * g.Side, g.Channels).to(dtype); // a copy (strided slice), then the cast
            return [scope.MoveToOuter(grad.contiguous()), null!];
        }
    }

    /// <summary>
    /// Tokens [B, N, C] on a √N × √N grid (row-major) → <c>linear(Unfold(k, s, p)(restructure(tokens)).transpose(1, 2))</c>
    /// [B, L, out], computed as one convolution: the tokens viewed as a channels-last image (the re-structurization
    /// without a copy), the linear's weight [out, C·k²] viewed as a kernel [out, C, k, k] (the unfold's feature order
    /// c·k² + i·k + j is the kernel's memory order), and the channels-last output viewed back as tokens. No [B, L, C·k²]
    /// columns are written, forward or backward. t2t_vit_7's soft split 2 + project, batch 8 at 224 px, forward +
    /// backward, 2 Zen 4 cores: fp32 10.3 vs 14.2 ms, bf16 6.3 vs 10.8 ms (BENCHMARKS.md). Same maths, other float rounding.
    /// </summary>
    public static Tensor LinearOfTokens(Tensor tokens, Linear linear, int kernel, int stride, int padding)
    {
        var grid = TokenGrid.Of(tokens, kernel, stride, padding); // the same checks as OfTokens
        long b = grid.Batch, side = grid.Side, c = grid.Channels;
        if (linear.in_features != c * kernel * kernel)
            throw new ArgumentException($"the linear takes {linear.in_features} features, the soft split gives {c * kernel * kernel}");
        using var scope = torch.NewDisposeScope();
        var image = tokens.reshape(b, side, side, c).permute(0, 3, 1, 2);                      // [B, C, √N, √N], NHWC strides
        var weight = linear.weight!.view(linear.out_features, c, kernel, kernel);
        var y = nn.functional.conv2d(image, weight, linear.bias, strides: [stride, stride], padding: [padding, padding]);
        return scope.MoveToOuter(y.permute(0, 2, 3, 1).reshape(b, -1, linear.out_features)); // [B, L, out]
    }
}
