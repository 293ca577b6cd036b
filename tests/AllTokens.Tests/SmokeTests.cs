using TorchSharp;
namespace AllTokens.Tests;
public class SmokeTests
{
    [Fact]
    public void TorchLoads() => Assert.Equal(2f, torch.ones(2).sum().item<float>());
}
