using AllTokens.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Tests.Layers;

public class LayerTests
{
    [Fact]
    public void TruncNormalHasTheRightSpreadAndStaysInBounds()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(0);
        var t = Init.TruncNormal_(torch.empty(200_000), std: 0.02);
        Assert.InRange(t.mean().item<float>(), -3e-4f, 3e-4f);
        Assert.InRange(t.std().item<float>(), 0.0195f, 0.0205f);
        // Truncation at ±1σ: every value inside, and the variance of a ±1σ truncated normal is σ²·(1 − 2φ(1)/(2Φ(1)−1)).
        var u = Init.TruncNormal_(torch.empty(200_000), std: 1.0, a: -1, b: 1);
        Assert.True(u.abs().max().item<float>() <= 1f);
        double phi1 = Math.Exp(-0.5) / Math.Sqrt(2 * Math.PI);
        double expectedStd = Math.Sqrt(1 - 2 * phi1 / (2 * Init.NormalCdf(1) - 1));
        Assert.InRange(u.std().item<float>(), expectedStd - 0.005, expectedStd + 0.005);
        Assert.True(u.unique().Item1.numel() > 1000); // not a constant fill (TorchSharp's own bug)
    }

    [Theory]
    [InlineData(0.0, 0.5)]
    [InlineData(1.0, 0.8413447460685429)]
    [InlineData(-2.0, 0.022750131948179195)]
    public void NormalCdfIsAccurate(double x, double expected) => Assert.Equal(expected, Init.NormalCdf(x), 6);

    [Fact]
    public void DropPathKeepsOrZeroesWholeSamplesAndRescales()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(0);
        var dp = new DropPath(0.5);
        var x = torch.ones(4000, 3, 5);
        dp.eval();
        Assert.True(dp.call(x).eq(x).all().item<bool>());
        dp.train();
        var y = dp.call(x);
        var perSample = y.reshape(4000, -1);
        // Each sample is all 0 or all 2 (= 1/keep).
        Assert.True((perSample.amin(1) == perSample.amax(1)).all().item<bool>());
        Assert.True(((perSample[.., 0] == 0) | (perSample[.., 0] == 2)).all().item<bool>());
        double kept = (perSample[.., 0] == 2).to(ScalarType.Float32).mean().item<float>();
        Assert.InRange(kept, 0.46, 0.54);
    }

    [Fact]
    public void BlockWithZeroBranchesIsTheIdentityAndSkipLamHalvesTheBranch()
    {
        using var _ = torch.NewDisposeScope();
        torch.manual_seed(5);
        var x = torch.randn(2, 7, 16);
        using var g = torch.no_grad();
        var block1 = new Block(16, 2, 3.0, skipLam: 1.0);
        var block2 = new Block(16, 2, 3.0, skipLam: 2.0);
        block2.load_state_dict(block1.state_dict());
        block1.eval(); block2.eval();

        // Manual pre-LN block with the branch divided by skip_lam (LVVIT.md §3.3).
        Tensor Manual(Block b, double lam)
        {
            var a = b.Attn;
            var h = b.Norm1.call(x);
            long bs = 2, n = 7, c = 16, heads = 2, hd = 8;
            var qkv = h.matmul(a.Qkv.weight!.t()).reshape(bs, n, 3, heads, hd).permute(2, 0, 3, 1, 4);
            var attn = (qkv[0] * Math.Pow(hd, -0.5)).matmul(qkv[1].transpose(-2, -1)).softmax(-1);
            var o = attn.matmul(qkv[2]).transpose(1, 2).reshape(bs, n, c);
            o = o.matmul(a.Proj.weight!.t()) + a.Proj.bias!;
            var y = x + o / lam;
            var m = b.Norm2.call(y);
            var f = nn.functional.gelu(m.matmul(b.Mlp.Fc1.weight!.t()) + b.Mlp.Fc1.bias!);
            f = f.matmul(b.Mlp.Fc2.weight!.t()) + b.Mlp.Fc2.bias!;
            return y + f / lam;
        }
        Assert.True(block1.call(x).allclose(Manual(block1, 1.0), rtol: 0, atol: 1e-5));
        Assert.True(block2.call(x).allclose(Manual(block2, 2.0), rtol: 0, atol: 1e-5));

        // Zero the branch outputs: the block is the identity whatever skip_lam is.
        block2.Attn.Proj.weight!.zero_(); block2.Attn.Proj.bias!.zero_();
        block2.Mlp.Fc2.weight!.zero_(); block2.Mlp.Fc2.bias!.zero_();
        Assert.True(block2.call(x).eq(x).all().item<bool>());
    }

    [Fact]
    public void AttentionScalesQBeforeTheProductAndHasNoQkvBias()
    {
        using var _ = torch.NewDisposeScope();
        var a = new Attention(24, 3);
        Assert.Null(a.Qkv.bias);
        Assert.Equal(Math.Pow(8, -0.5), a.Scale, 12);
        var b = new Attention(24, 3, qkvBias: true, qkScale: 0.5);
        Assert.NotNull(b.Qkv.bias);
        Assert.Equal(0.5, b.Scale);
    }

    [Fact]
    public void MlpUsesExactGelu()
    {
        using var _ = torch.NewDisposeScope();
        var mlp = new Mlp(1, 1);
        using var g = torch.no_grad();
        mlp.Fc1.weight!.fill_(1); mlp.Fc1.bias!.zero_();
        mlp.Fc2.weight!.fill_(1); mlp.Fc2.bias!.zero_();
        float y = mlp.call(torch.tensor(new float[] { 1f }).reshape(1, 1)).item<float>();
        // erf form: 0.5·(1 + erf(1/√2)) = 0.841345; the tanh approximation gives 0.841192.
        Assert.Equal(0.8413447f, y, 5);
    }
}
