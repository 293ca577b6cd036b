// LV-ViT: "All Tokens Matter: Token Labeling for Training Better Vision Transformers"
// Jiang et al., NeurIPS 2021, arXiv 2104.10858. Reference: github.com/zihangJiang/TokenLabeling
// (tlt/models/lvvit.py, tlt/models/layers.py); exact notes in shared/reference/LVVIT.md §2–5.
using AllTokens.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Models;

public enum StemKind { Conv4_2, Naive }

/// <summary>An LV-ViT size. Registered presets below (LVVIT.md §2.1).</summary>
public sealed record LvVitConfig(
    long EmbedDim, int Depth, int NumHeads, double MlpRatio, double SkipLam,
    StemKind Stem = StemKind.Conv4_2, int StemChannels = 64, bool AuxHead = true, bool MixToken = true, bool QkvBias = false)
{
    public static readonly LvVitConfig Tiny = new(240, 12, 4, 3.0, 1.0);
    public static readonly LvVitConfig Small = new(384, 16, 6, 3.0, 2.0);
    public static readonly LvVitConfig Medium = new(512, 20, 8, 3.0, 2.0);
    public static readonly LvVitConfig Large = new(768, 24, 12, 3.0, 3.0, StemChannels: 128);
    /// <summary><c>lvvit</c>: S without the auxiliary head and MixToken.</summary>
    public static readonly LvVitConfig SmallNoAux = Small with { AuxHead = false, MixToken = false };
    /// <summary><c>vit</c>: the naive 16×16 patch embedding, no residual scaling, no aux head.</summary>
    public static readonly LvVitConfig NaiveVit = new(384, 16, 6, 3.0, 1.0, StemKind.Naive, AuxHead: false, MixToken: false);
    /// <summary><c>lvvit_nano</c>: our small-data size (not in the paper) for Fashion-MNIST-scale runs on a CPU.</summary>
    public static readonly LvVitConfig Nano = new(128, 4, 4, 3.0, 1.0, StemChannels: 32);
    /// <summary><c>vit_nano</c>: the plain ViT of the same width and depth as <see cref="Nano"/>.</summary>
    public static readonly LvVitConfig NaiveNano = new(128, 4, 4, 3.0, 1.0, StemKind.Naive, AuxHead: false, MixToken: false);
}

/// <summary>
/// Four-layer conv stem (PatchEmbed4_2 / PatchEmbed4_2_128): conv7/s2 → BN → ReLU, two conv3 → BN → ReLU,
/// then an 8×8/s8 projection with bias. Output is the token grid [B, D, H/16, W/16].
/// </summary>
public sealed class PatchEmbed4_2 : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d conv1;
    private readonly BatchNorm2d bn1;
    private readonly Conv2d conv2;
    private readonly BatchNorm2d bn2;
    private readonly Conv2d conv3;
    private readonly BatchNorm2d bn3;
    private readonly ReLU relu;
    private readonly Conv2d proj;

    public PatchEmbed4_2(int inChans, int channels, long embedDim) : base(nameof(PatchEmbed4_2))
    {
        conv1 = nn.Conv2d(inChans, channels, 7, stride: 2, padding: 3, bias: false);
        bn1 = nn.BatchNorm2d(channels);
        conv2 = nn.Conv2d(channels, channels, 3, stride: 1, padding: 1, bias: false);
        bn2 = nn.BatchNorm2d(channels);
        conv3 = nn.Conv2d(channels, channels, 3, stride: 1, padding: 1, bias: false);
        bn3 = nn.BatchNorm2d(channels);
        relu = nn.ReLU(inplace: true); // on the BN output, which BN's backward does not need
        proj = nn.Conv2d(channels, embedDim, 8, stride: 8);
        RegisterComponents();
    }

    /// <summary>
    /// Run the stem channels-last (NHWC strides, same NCHW shape): oneDNN's convolutions and BatchNorm are faster that
    /// way on a CPU (the stem's forward + backward, lvvit_t batch 8 at 224 px on 2 cores: 382–390 vs 451–470 ms), and the
    /// projection's output is then already laid out as tokens [B, H·W, D]. Same maths, other float rounding;
    /// <c>ALLTOKENS_CHANNELS_LAST=0</c> turns it off for comparisons.
    /// </summary>
    public static bool ChannelsLast { get; set; } = SpeedSwitch.On("ALLTOKENS_CHANNELS_LAST", "0");

    public override Tensor forward(Tensor x) => Forward(x, ChannelsLast);

    internal Tensor Forward(Tensor x, bool channelsLast)
    {
        using var scope = torch.NewDisposeScope(); // frees what backward does not need on return (see Block)
        if (channelsLast) x = Layout.ToChannelsLast(x);
        // BatchNorms.Forward, not bn.call: TorchSharp's forward makes temporary scalars (see BatchNorms).
        x = relu.call(BatchNorms.Forward(bn1, conv1.call(x)));   // [B, c, H/2, W/2]
        x = relu.call(BatchNorms.Forward(bn2, conv2.call(x)));
        x = relu.call(BatchNorms.Forward(bn3, conv3.call(x)));
        return scope.MoveToOuter(PatchProjection.Forward(proj, x)); // [B, D, H/16, W/16]: the 8×8/s8 projection as a linear over patches
    }
}

/// <summary>Single 16×16 stride-16 convolution (PatchEmbedNaive); asserts the input size like the original.</summary>
public sealed class PatchEmbedNaive : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d proj;
    private readonly int imgSize;

    public PatchEmbedNaive(int inChans, long embedDim, int imgSize) : base(nameof(PatchEmbedNaive))
    {
        this.imgSize = imgSize;
        proj = nn.Conv2d(inChans, embedDim, 16, stride: 16);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        if (x.shape[2] != imgSize || x.shape[3] != imgSize)
            throw new ArgumentException($"input {x.shape[2]}×{x.shape[3]} does not match the model's img_size {imgSize}");
        return proj.call(x);
    }
}

/// <summary>LV-ViT (and the plain <c>vit</c>/<c>lvvit</c> baselines of the same repo).</summary>
public sealed class LvVit : ImageClassifier
{
    // Field order = PyTorch registration order; the root's own parameters come first in the state dict.
    private readonly Parameter cls_token;
    private readonly Parameter pos_embed;
    private readonly nn.Module<Tensor, Tensor> patch_embed;
    private readonly Dropout pos_drop;
    private readonly ModuleList<Block> blocks;
    private readonly LayerNorm norm;
    private readonly nn.Module<Tensor, Tensor> head;
    private readonly nn.Module<Tensor, Tensor>? aux_head;

    private readonly int grid;

    public LvVitConfig Config { get; }

    public LvVit(string name, LvVitConfig config, ModelOptions options) : base(name, options)
    {
        options.Validate(name);
        Config = config;
        grid = options.ImgSize / 16;
        long d = config.EmbedDim;
        patch_embed = config.Stem == StemKind.Naive
            ? new PatchEmbedNaive(options.InChans, d, options.ImgSize)
            : new PatchEmbed4_2(options.InChans, config.StemChannels, d);
        cls_token = nn.Parameter(torch.zeros(1, 1, d));
        pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, d));
        pos_drop = nn.Dropout(options.DropRate);
        var dpr = DropPathRates(options.DropPathRate, config.Depth);
        blocks = nn.ModuleList(Enumerable.Range(0, config.Depth)
            .Select(i => new Block(d, config.NumHeads, config.MlpRatio, config.QkvBias, drop: options.DropRate,
                dropPath: dpr[i], skipLam: config.SkipLam)).ToArray());
        norm = nn.LayerNorm(d, eps: 1e-5);
        head = options.NumClasses > 0 ? nn.Linear(d, options.NumClasses) : nn.Identity();
        aux_head = config.AuxHead ? (options.NumClasses > 0 ? nn.Linear(d, options.NumClasses) : nn.Identity()) : null;
        RegisterComponents();
        InitWeights();
    }

    public override long EmbedDim => Config.EmbedDim;
    public override int GridSize => grid;
    public override int Depth => Config.Depth;
    public override bool HasTokenHead => aux_head is not null;
    public override IReadOnlyList<string> ClassifierPrefixes() => aux_head is null ? ["head."] : ["head.", "aux_head."];

    /// <summary>linspace(0, rate, depth): block 0 gets 0, the last block the full rate (LVVIT.md §2.1).</summary>
    public static double[] DropPathRates(double rate, int depth) =>
        Enumerable.Range(0, depth).Select(i => depth == 1 ? 0.0 : rate * i / (depth - 1)).ToArray();

    private void InitWeights()
    {
        using var _ = torch.no_grad();
        Init.TruncNormal_(pos_embed, std: 0.02);
        Init.TruncNormal_(cls_token, std: 0.02);
        // timm's _init_weights over every Linear and LayerNorm; convolutions and BN keep PyTorch defaults.
        foreach (var m in modules())
        {
            if (m is Linear l) Init.LinearTruncNormal(l);
            else if (m is LayerNorm ln) Init.LayerNormDefault(ln);
        }
    }

    /// <summary>Stem, optional MixToken on the grid, flatten, class token, position embedding: [B, 1+N, D].</summary>
    private Tensor Embed(Tensor x, MixBox? box)
    {
        x = patch_embed.call(x); // [B, D, Hp, Wp]
        if (x.shape[2] != grid || x.shape[3] != grid)
            throw new ArgumentException($"{GetName()} was built for {Options.ImgSize}px ({grid}×{grid} tokens); the input gives {x.shape[2]}×{x.shape[3]} tokens");
        if (box is { IsEmpty: false } b)
        {
            // MixToken: image i takes the box region from image B−1−i (x.flip(0)), LVVIT.md §5.
            var mask = BoxMask(b, x.device).view(1, 1, grid, grid);
            x = torch.where(mask, x.flip(0), x);
        }
        x = x.flatten(2).transpose(1, 2); // [B, N, D]
        var cls = cls_token.expand(x.shape[0], -1, -1);
        x = Held.Add(torch.cat([cls, x], 1), pos_embed); // [B, 1+N, D]
        return pos_drop.call(x);
    }

    private Tensor BoxMask(MixBox b, Device device)
    {
        var mask = torch.zeros(grid, grid, ScalarType.Bool, device);
        mask[TensorIndex.Slice(b.Top, b.Bottom), TensorIndex.Slice(b.Left, b.Right)] = torch.tensor(true);
        return mask;
    }

    private Tensor Blocks(Tensor x)
    {
        foreach (var blk in blocks) x = blk.call(x);
        return norm.call(x);
    }

    public override Tensor ForwardFeatures(Tensor x) => Blocks(Embed(x, null));

    /// <summary>Eval prediction [B, C]: head(cls) + 0.5 · max over tokens of aux_head(token) when there is an aux head.</summary>
    public override Tensor forward(Tensor x)
    {
        var t = ForwardFeatures(x);
        var logits = head.call(t[.., 0]);
        if (aux_head is null) return logits;
        var aux = Dense.Forward(aux_head, t[.., 1..]); // [B, N, C]
        using var half = 0.5.ToScalar(); // held for the calls (see Held)
        return Held.Add(logits, aux.max(1).values.mul(half));
    }

    public override TrainOutput ForwardTrain(Tensor x, MixBox? box = null)
    {
        if (box is { IsEmpty: false } && !Config.MixToken)
            throw new NotSupportedException($"{GetName()} does not use MixToken");
        var t = Blocks(Embed(x, box));
        var logits = head.call(t[.., 0]);
        if (aux_head is null) return new TrainOutput(logits, null, null);
        var aux = Dense.Forward(aux_head, t[.., 1..]); // [B, N, C]
        if (box is { IsEmpty: false } b)
        {
            // Un-mix: swap the box region back so row i predicts image i's own tokens.
            long bsz = aux.shape[0], c = aux.shape[2];
            var grid4 = aux.reshape(bsz, grid, grid, c);
            var mask = BoxMask(b, aux.device).view(1, grid, grid, 1);
            aux = torch.where(mask, grid4.flip(0), grid4).reshape(bsz, grid * grid, c);
        }
        return new TrainOutput(logits, aux, box);
    }

    public override (Tensor Tokens, Tensor Attention) ForwardToBlock(Tensor x, int blockIndex)
    {
        if (blockIndex < 0 || blockIndex >= Config.Depth)
            throw new ArgumentOutOfRangeException(nameof(blockIndex), $"{GetName()} has blocks 0..{Config.Depth - 1}");
        x = Embed(x, null);
        Tensor? attn = null;
        for (int i = 0; i <= blockIndex; i++) x = blocks[i].Forward(x, out attn, captureAttention: i == blockIndex);
        return (x, attn!);
    }

    // ---- registry ----
    internal static IEnumerable<ModelInfo> Registrations()
    {
        yield return Entry("lvvit_t", LvVitConfig.Tiny, 0.9, "LV-ViT-T (Token Labeling)");
        yield return Entry("lvvit_s", LvVitConfig.Small, 0.9, "LV-ViT-S (Token Labeling)");
        yield return Entry("lvvit_m", LvVitConfig.Medium, 1.0, "LV-ViT-M (Token Labeling)");
        yield return Entry("lvvit_l", LvVitConfig.Large, 1.0, "LV-ViT-L (Token Labeling)");
        yield return Entry("lvvit", LvVitConfig.SmallNoAux, 0.9, "LV-ViT-S without the aux head (plain classifier)");
        yield return Entry("vit", LvVitConfig.NaiveVit, 0.9, "ViT-S-style baseline of the LV-ViT repo (16×16 patch conv)", family: "vit");
        // Small-data sizes of ours (not from the papers): 64 px input, 4×4 token grid, for Fashion-MNIST on a CPU.
        yield return Entry("lvvit_nano", LvVitConfig.Nano, 1.0, "LV-ViT nano (ours): E 128, depth 4, 32-channel stem, 64 px", imgSize: 64);
        yield return Entry("vit_nano", LvVitConfig.NaiveNano, 1.0, "plain ViT nano (ours): E 128, depth 4, 16×16 patches, 64 px", family: "vit", imgSize: 64);
    }

    private static ModelInfo Entry(string name, LvVitConfig cfg, double cropPct, string description, string family = "lvvit", int imgSize = 224) =>
        new(name, family, description, new PretrainedDefaults(imgSize, cropPct, imgSize == 224 ? "bicubic" : "bilinear"), o => new LvVit(name, cfg, o));
}
