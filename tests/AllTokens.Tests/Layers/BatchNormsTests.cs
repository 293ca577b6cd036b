using AllTokens.Layers;
using AllTokens.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AllTokens.Tests.Layers;

/// <summary>Our BatchNorm forward (no temporary scalars) against TorchSharp's module and the formula.</summary>
public sealed class BatchNormsTests
{
    private static (BatchNorm2d A, BatchNorm2d B) Pair(double? momentum = 0.1)
    {
        var a = nn.BatchNorm2d(4);
        var b = nn.BatchNorm2d(4);
        a.momentum = b.momentum = momentum;
        using (no_grad())
        {
            a.weight!.copy_(torch.tensor(new[] { 0.5f, 1.5f, -1f, 2f }));
            a.bias!.copy_(torch.tensor(new[] { 0.1f, -0.2f, 0.3f, 0f }));
        }
        b.load_state_dict(a.state_dict());
        return (a, b);
    }

    [Fact]
    public void TrainingMatchesTheModuleExactly()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(3);
        var (a, b) = Pair();
        foreach (bool channelsLast in new[] { false, true })
        {
            var x = torch.randn(3, 4, 5, 6) * 2 + 1;
            if (channelsLast) x = Layout.ToChannelsLast(x);
            var xa = x.detach().requires_grad_(true);
            var xb = x.detach().requires_grad_(true);
            var ya = a.call(xa);
            var yb = BatchNorms.Forward(b, xb);
            Assert.True(ya.eq(yb).all().item<bool>());
            var g = torch.randn(ya.shape);
            ya.backward([g]);
            yb.backward([g]);
            Assert.True(xa.grad!.eq(xb.grad!).all().item<bool>());
            Assert.True(a.weight!.grad!.eq(b.weight!.grad!).all().item<bool>());
        }
        Assert.True(a.running_mean!.eq(b.running_mean!).all().item<bool>());
        Assert.True(a.running_var!.eq(b.running_var!).all().item<bool>());
        Assert.Equal(2, b.num_batches_tracked!.item<long>());
        Assert.Equal(a.num_batches_tracked!.item<long>(), b.num_batches_tracked!.item<long>());
        Assert.NotEqual(0f, b.running_mean!.abs().sum().item<float>()); // the statistics moved
    }

    [Fact]
    public void EvaluationUsesTheRunningStatistics()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(4);
        var (_, b) = Pair();
        using (no_grad())
        {
            b.running_mean!.copy_(torch.tensor(new[] { 1f, -1f, 0.5f, 0f }));
            b.running_var!.copy_(torch.tensor(new[] { 4f, 0.25f, 1f, 9f }));
        }
        b.eval();
        var x = torch.randn(2, 4, 3, 3);
        var y = BatchNorms.Forward(b, x);
        var rm = b.running_mean!.view(1, 4, 1, 1);
        var rv = b.running_var!.view(1, 4, 1, 1);
        var want = (x - rm) / (rv + 1e-5).sqrt() * b.weight!.view(1, 4, 1, 1) + b.bias!.view(1, 4, 1, 1);
        Assert.True(y.allclose(want, rtol: 1e-5, atol: 1e-6));
        Assert.Equal(0, b.num_batches_tracked!.item<long>());
        Assert.Equal(1f, b.running_mean![0].item<float>()); // untouched
    }

    [Fact]
    public void NoMomentumKeepsTheCumulativeAverage()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(5);
        var (_, b) = Pair(momentum: null);
        var x1 = torch.randn(2, 4, 3, 3) + 3;
        var x2 = torch.randn(2, 4, 3, 3) - 1;
        using (no_grad())
        {
            BatchNorms.Forward(b, x1);
            BatchNorms.Forward(b, x2);
        }
        // PyTorch's rule for momentum None: factor 1/n after n batches, i.e. the plain mean of the batch means.
        var want = (x1.mean([0, 2, 3]) + x2.mean([0, 2, 3])) / 2;
        Assert.True(b.running_mean!.allclose(want, rtol: 1e-5, atol: 1e-6));
        Assert.Equal(2, b.num_batches_tracked!.item<long>());
    }

    [Fact]
    public void TheLvVitStemBypassesTorchSharpsForward()
    {
        using var scope = torch.NewDisposeScope();
        using var model = ModelRegistry.Create("lvvit_nano", new ModelOptions(NumClasses: 3, ImgSize: 32));
        int calls = 0;
        var bns = model.modules().OfType<BatchNorm2d>().ToList();
        Assert.Equal(3, bns.Count);
        var handles = bns.Select(bn => bn.register_forward_hook((_, _, y) => { calls++; return y; })).ToList();
        model.train();
        _ = model.call(torch.randn(2, 3, 32, 32));
        Assert.Equal(0, calls);
        Assert.All(bns, bn => Assert.Equal(1, bn.num_batches_tracked!.item<long>()));
        foreach (var h in handles) h.remove();
    }
}
