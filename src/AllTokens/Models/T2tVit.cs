// T2T-ViT: "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet"
// Yuan et al., ICCV 2021, arXiv 2101.11986. Reference: github.com/yitu-opensource/T2T-ViT (models/t2t_vit*.py);
// exact notes in shared/reference/T2T_VIT.md §2–4.
using AllTokens.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Models;

/// <summary>What turns the image into tokens.</summary>
public enum T2tTokens
{
    /// <summary>Soft splits with Performer T2T layers (t2t_vit_7…24).</summary>
    Performer,
    /// <summary>Soft splits with token-transformer T2T layers (t2t_vit_t_*).</summary>
    Transformer,
    /// <summary>Paper ablation T2T-ViT_c: three bare convolutions 7/s4, 3/s2, 3/s2 (the official forward for this is missing).</summary>
    Convolution,
    /// <summary>Paper ablation "wo T2T": a single 16×16 stride-16 patch convolution.</summary>
    None,
}

public enum T2tBlockKind { Standard, SqueezeExcite, Ghost, Dense }

/// <summary>A T2T-ViT size (T2T_VIT.md §2.1).</summary>
public sealed record T2tVitConfig(long EmbedDim, int Depth, int NumHeads, double MlpRatio, T2tTokens Tokens = T2tTokens.Performer,
    T2tBlockKind BlockKind = T2tBlockKind.Standard, int TokenDim = 64, int GrowthRate = 64, int[]? DenseStages = null);

/// <summary>
/// Tokens-to-Token module (<c>tokens_to_token.*</c>): soft split k7/s4/p2 → T2T layer → re-structurize →
/// soft split k3/s2/p1 → T2T layer → re-structurize → soft split k3/s2/p1 → Linear(64·9, E). 224 px: 3136 → 784 → 196 tokens.
/// </summary>
public sealed class T2tModule : nn.Module<Tensor, Tensor>
{
    // Official names: soft_split0/1 are Unfolds, or the first two convolutions of the conv variant.
    private readonly nn.Module<Tensor, Tensor>? soft_split0;
    private readonly nn.Module<Tensor, Tensor>? soft_split1;
    private readonly nn.Module<Tensor, Tensor>? soft_split2;
    private readonly nn.Module<Tensor, Tensor>? attention1;
    private readonly nn.Module<Tensor, Tensor>? attention2;
    private readonly nn.Module<Tensor, Tensor> project;

    public T2tTokens Kind { get; }

    public T2tModule(T2tTokens kind, int inChans, long embedDim, int tokenDim) : base(nameof(T2tModule))
    {
        Kind = kind;
        switch (kind)
        {
            case T2tTokens.Performer:
            case T2tTokens.Transformer:
                soft_split0 = nn.Unfold((7, 7), stride: (4, 4), padding: (2, 2));
                soft_split1 = nn.Unfold((3, 3), stride: (2, 2), padding: (1, 1));
                soft_split2 = nn.Unfold((3, 3), stride: (2, 2), padding: (1, 1));
                long d0 = inChans * 7 * 7, d1 = tokenDim * 3 * 3;
                attention1 = kind == T2tTokens.Performer ? new TokenPerformer(d0, tokenDim) : new TokenTransformer(d0, tokenDim);
                attention2 = kind == T2tTokens.Performer ? new TokenPerformer(d1, tokenDim) : new TokenTransformer(d1, tokenDim);
                project = nn.Linear(tokenDim * 3 * 3, embedDim);
                break;
            case T2tTokens.Convolution:
                // The official layer names for this variant are soft_split0/1 and project (convolutions). Three bare
                // convolutions, no nonlinearity between them (T2T_VIT.md §2.3: 21.35M trainable, ≈4.59 GMACs).
                soft_split0 = nn.Conv2d(inChans, tokenDim, 7, stride: 4, padding: 2);
                soft_split1 = nn.Conv2d(tokenDim, tokenDim, 3, stride: 2, padding: 1);
                project = nn.Conv2d(tokenDim, embedDim, 3, stride: 2, padding: 1);
                break;
            default:
                project = nn.Conv2d(inChans, embedDim, 16, stride: 16);
                break;
        }
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => ForwardStages(x).Tokens;

    /// <summary>Tokens [B, N, E] plus the intermediate token sets (soft split 0, T2T layer 1, T2T layer 2) for inspection.</summary>
    public T2tStages ForwardStages(Tensor x)
    {
        switch (Kind)
        {
            case T2tTokens.Performer:
            case T2tTokens.Transformer:
            {
                using var scope = torch.NewDisposeScope();
                // The image's soft split as strided windows (Layers/SoftSplit: the same tokens, one copy fewer).
                Tensor? s0;
                Tensor a1;
                if (SoftSplit.Strided && attention1 is TokenPerformer first)
                    (s0, a1) = first.ForwardOnImage(x, 7, 4, 2); // in training the split comes normalised, s0 not written
                else
                {
                    s0 = SoftSplit.Strided ? SoftSplit.FromImage(x, 7, 4, 2) : soft_split0!.call(x).transpose(1, 2); // [B, (H/4)², 147]
                    a1 = attention1!.call(s0);                                                         // [B, (H/4)², 64]
                }
                // Soft split 1 straight from the tokens (Layers/SoftSplit: strided copies forward, a parallel backward).
                var s1 = SoftSplit.Strided ? SoftSplit.OfTokens(a1, 3, 2, 1) : soft_split1!.call(Restructure(a1)).transpose(1, 2);
                var a2 = attention2!.call(s1);                                                         // [B, (H/8)², 64]
                // soft split 2 + project as one convolution over the tokens (Layers/SoftSplit, no unfolded columns).
                var tokens = SoftSplit.ProjectAsConvolution && project is Linear lin
                    ? SoftSplit.LinearOfTokens(a2, lin, 3, 2, 1)
                    : Dense.Forward(project, soft_split2!.call(Restructure(a2)).transpose(1, 2));      // [B, (H/16)², E]
                if (s0 is not null) scope.MoveToOuter(s0);
                scope.MoveToOuter(a1, a2);
                return new T2tStages(scope.MoveToOuter(tokens), s0, a1, a2);
            }
            case T2tTokens.Convolution:
            {
                var c0 = soft_split0!.call(x);
                var c1 = soft_split1!.call(c0);
                var tokens = project.call(c1).flatten(2).transpose(1, 2);
                return new T2tStages(tokens, null, c0.flatten(2).transpose(1, 2), c1.flatten(2).transpose(1, 2));
            }
            default:
                return new T2tStages(project.call(x).flatten(2).transpose(1, 2), null, null, null);
        }
    }

    /// <summary>Tokens [B, N, C] back to an image [B, C, √N, √N] (row-major), as the original's reshape.</summary>
    private static Tensor Restructure(Tensor tokens)
    {
        long b = tokens.shape[0], n = tokens.shape[1], c = tokens.shape[2];
        long side = (long)Math.Sqrt(n);
        return tokens.transpose(1, 2).reshape(b, c, side, side);
    }
}

/// <summary>Intermediate outputs of the T2T module.</summary>
public sealed record T2tStages(Tensor Tokens, Tensor? SoftSplit0, Tensor? Attention1, Tensor? Attention2);

/// <summary>T2T-ViT and its CNN-design variants (SE, Ghost, Dense, ResNeXt, Wide) and the paper's ablations.</summary>
public sealed class T2tVit : ImageClassifier
{
    private readonly Parameter cls_token;
    private readonly Parameter pos_embed;
    private readonly T2tModule tokens_to_token;
    private readonly Dropout pos_drop;
    private readonly ModuleList<nn.Module<Tensor, Tensor>> blocks;
    private readonly LayerNorm norm;
    private readonly nn.Module<Tensor, Tensor> head;

    private readonly int grid;
    private readonly long outDim;

    public T2tVitConfig Config { get; }

    public T2tVit(string name, T2tVitConfig config, ModelOptions options) : base(name, options)
    {
        options.Validate(name);
        Config = config;
        grid = options.ImgSize / 16;
        long e = config.EmbedDim;
        tokens_to_token = new T2tModule(config.Tokens, options.InChans, e, config.TokenDim);
        cls_token = nn.Parameter(torch.zeros(1, 1, e));
        pos_embed = nn.Parameter(SinusoidTable(grid * grid + 1, e).unsqueeze(0), requires_grad: false);
        pos_drop = nn.Dropout(options.DropRate);
        (blocks, outDim) = BuildBlocks(config, options);
        norm = nn.LayerNorm(outDim, eps: 1e-5);
        head = options.NumClasses > 0 ? nn.Linear(outDim, options.NumClasses) : nn.Identity();
        RegisterComponents();
        InitWeights();
    }

    private static (ModuleList<nn.Module<Tensor, Tensor>>, long) BuildBlocks(T2tVitConfig c, ModelOptions o)
    {
        var list = new List<nn.Module<Tensor, Tensor>>();
        long e = c.EmbedDim;
        if (c.BlockKind == T2tBlockKind.Dense)
        {
            // t2t_vit_dense.py quirk kept: drop-path rates are spaced over the constructor's default depth (12) and
            // indexed by stage, not by block.
            var dpr = LvVit.DropPathRates(o.DropPathRate, 12);
            var stages = c.DenseStages ?? [3, 6, 6, 4];
            long start = e, dim = e;
            for (int s = 0; s < stages.Length; s++)
            {
                for (int j = 0; j < stages[s]; j++)
                {
                    dim = start + j * c.GrowthRate;
                    list.Add(new DenseBlock(c.GrowthRate, dim, c.NumHeads, c.MlpRatio, o.DropRate, 0, dpr[s]));
                }
                if (s != stages.Length - 1)
                {
                    long w = dim + c.GrowthRate;
                    list.Add(new Transition(w, w / 2));
                    start = w / 2;
                }
            }
            return (nn.ModuleList(list.ToArray()), dim + c.GrowthRate);
        }
        var rates = LvVit.DropPathRates(o.DropPathRate, c.Depth);
        for (int i = 0; i < c.Depth; i++)
        {
            // timm 0.3.4 blocks scale q·kᵀ after the product.
            list.Add(c.BlockKind switch
            {
                T2tBlockKind.SqueezeExcite => new Block(e, new Attention(e, c.NumHeads, false, null, 0, o.DropRate, scaleQueryFirst: false, squeezeExcite: true),
                    new Mlp(e, (long)(e * c.MlpRatio), drop: o.DropRate), rates[i]),
                T2tBlockKind.Ghost => new Block(e, new GhostAttention(e, c.NumHeads, 0, o.DropRate),
                    new GhostMlp(e, (long)(e * c.MlpRatio), o.DropRate), rates[i]),
                _ => new Block(e, c.NumHeads, c.MlpRatio, drop: o.DropRate, dropPath: rates[i], scaleQueryFirst: false),
            });
        }
        return (nn.ModuleList(list.ToArray()), e);
    }

    /// <summary>
    /// The fixed sinusoid table [n, d]: PE[p, j] = sin(p / 10000^(2⌊j/2⌋/d)) for even j, cos for odd j, computed in
    /// float64 and cast to float32 (models/transformer_block.py get_sinusoid_encoding).
    /// </summary>
    public static Tensor SinusoidTable(long n, long d)
    {
        var values = new float[n * d];
        for (long p = 0; p < n; p++)
            for (long j = 0; j < d; j++)
            {
                double angle = p / Math.Pow(10000, 2.0 * (j / 2) / d);
                values[p * d + j] = (float)(j % 2 == 0 ? Math.Sin(angle) : Math.Cos(angle));
            }
        return torch.tensor(values, [n, d], device: torch.CPU).to(torch.get_default_device());
    }

    private void InitWeights()
    {
        using var _ = torch.no_grad();
        Init.TruncNormal_(cls_token, std: 0.02);
        foreach (var m in modules())
        {
            if (m is Linear l) Init.LinearTruncNormal(l);
            else if (m is LayerNorm ln) Init.LayerNormDefault(ln);
        }
    }

    public override long EmbedDim => outDim;
    public override int GridSize => grid;
    public override int Depth => Config.BlockKind == T2tBlockKind.Dense ? blocks.Count : Config.Depth;
    public override IReadOnlySet<string> NoWeightDecay() => new HashSet<string> { "cls_token" };
    /// <summary>The sinusoid table is fixed; a checkpoint's table is taken as stored when it fits and resampled only for another grid.</summary>
    public override bool PosEmbedResizable => true;

    public T2tModule TokensToToken => tokens_to_token;

    private Tensor Embed(Tensor x)
    {
        var t = tokens_to_token.call(x); // [B, N, E]
        if (t.shape[1] != grid * grid)
            throw new ArgumentException($"{GetName()} was built for {Options.ImgSize}px ({grid}×{grid} tokens); the input gives {t.shape[1]} tokens");
        var cls = cls_token.expand(t.shape[0], -1, -1);
        return pos_drop.call(Held.Add(torch.cat([cls, t], 1), pos_embed)); // [B, 1+N, E]
    }

    public override Tensor ForwardFeatures(Tensor x)
    {
        x = Embed(x);
        foreach (var blk in blocks) x = blk.call(x);
        return norm.call(x);
    }

    public override Tensor forward(Tensor x) => head.call(ForwardFeatures(x)[.., 0]);

    public override (Tensor Tokens, Tensor Attention) ForwardToBlock(Tensor x, int blockIndex)
    {
        if (blockIndex < 0 || blockIndex >= blocks.Count)
            throw new ArgumentOutOfRangeException(nameof(blockIndex), $"{GetName()} has blocks 0..{blocks.Count - 1}");
        x = Embed(x);
        Tensor? attn = null;
        for (int i = 0; i <= blockIndex; i++)
        {
            if (blocks[i] is Block b) x = b.Forward(x, out attn, captureAttention: i == blockIndex);
            else x = blocks[i].call(x);
        }
        return (x, attn ?? throw new NotSupportedException($"block {blockIndex} of {GetName()} exposes no attention map"));
    }

    // ---- registry ----
    internal static IEnumerable<ModelInfo> Registrations()
    {
        yield return Entry("t2t_vit_7", new(256, 7, 4, 2.0), "T2T-ViT-7");
        yield return Entry("t2t_vit_10", new(256, 10, 4, 2.0), "T2T-ViT-10");
        yield return Entry("t2t_vit_12", new(256, 12, 4, 2.0), "T2T-ViT-12");
        yield return Entry("t2t_vit_14", new(384, 14, 6, 3.0), "T2T-ViT-14 (img_size 384 for the 384 variant)");
        yield return Entry("t2t_vit_19", new(448, 19, 7, 3.0), "T2T-ViT-19");
        yield return Entry("t2t_vit_24", new(512, 24, 8, 3.0), "T2T-ViT-24");
        yield return Entry("t2t_vit_t_14", new(384, 14, 6, 3.0, T2tTokens.Transformer), "T2T-ViT_t-14 (transformer T2T layers)");
        yield return Entry("t2t_vit_t_19", new(448, 19, 7, 3.0, T2tTokens.Transformer), "T2T-ViT_t-19");
        yield return Entry("t2t_vit_t_24", new(512, 24, 8, 3.0, T2tTokens.Transformer), "T2T-ViT_t-24");
        yield return Entry("t2t_vit_14_resnext", new(384, 14, 32, 3.0), "T2T-ViT-ResNeXt: 32 heads of 12 dims");
        yield return Entry("t2t_vit_14_wide", new(768, 4, 12, 3.0), "T2T-ViT-Wide: E 768, depth 4");
        yield return Entry("t2t_vit_14_se", new(384, 14, 6, 3.0, BlockKind: T2tBlockKind.SqueezeExcite), "T2T-ViT-SE: squeeze-excite after attention");
        yield return Entry("t2t_vit_16_ghost", new(384, 16, 6, 3.0, BlockKind: T2tBlockKind.Ghost), "T2T-ViT-Ghost (depth 16 as registered officially)");
        yield return Entry("t2t_vit_dense", new(128, 19, 8, 2.0, BlockKind: T2tBlockKind.Dense), "T2T-ViT-Dense: growth 64, stages 3-6-6-4, width 128→584");
        yield return Entry("t2t_vit_14_wot2t", new(384, 14, 6, 3.0, T2tTokens.None), "ablation: T2T-ViT-14 without T2T (16×16 patch conv)");
        yield return Entry("t2t_vit_c_14", new(384, 14, 6, 3.0, T2tTokens.Convolution), "ablation: T2T module replaced by convs 7/3/3, stride 4/2/2");
        yield return Entry("t2t_vit_d768_4", new(768, 4, 12, 3.0), "ablation: shallow-wide E 768, depth 4 (= t2t_vit_14_wide)");
        // Small-data size of ours (not from the paper), the T2T counterpart of lvvit_nano/vit_nano: 64 px, 4×4 tokens.
        yield return Entry("t2t_vit_nano", new(128, 4, 4, 3.0, TokenDim: 32), "T2T-ViT nano (ours): E 128, depth 4, token_dim 32, 64 px",
            new PretrainedDefaults(64, 1.0, "bilinear"));
    }

    private static ModelInfo Entry(string name, T2tVitConfig cfg, string description, PretrainedDefaults? defaults = null) =>
        new(name, "t2t_vit", description, defaults ?? new PretrainedDefaults(224, 0.9, "bicubic"), o => new T2tVit(name, cfg, o));
}
