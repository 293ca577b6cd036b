using AllTokens.Models;
using AllTokens.Checkpoints;
using TorchSharp;
foreach (var m in ModelRegistry.All)
{
    var model = m.Create();
    var sd = ModuleState.Ordered(model);
    Console.WriteLine($"{m.Name} keys={sd.Count} params={ModelRegistry.CountParameters(m.Name)}");
}
