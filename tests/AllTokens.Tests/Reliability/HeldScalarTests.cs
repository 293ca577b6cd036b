using System.Reflection;
using System.Reflection.Emit;
using AllTokens.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace AllTokens.Tests.Reliability;

/// <summary>
/// TorchSharp 0.107 turns a .NET number into a temporary <see cref="Scalar"/> with a finalizer and no keep-alive, and
/// some of its overloads make one themselves (the alpha = 1 of <c>a + b</c>, <c>add(x)</c>, <c>add_(x)</c>); a garbage
/// collection from another thread can free it while libtorch still reads it (Layers/Held.cs). This scans the IL of
/// every method on the training and evaluation paths and fails on any such call, so a new one cannot slip in.
/// </summary>
public class HeldScalarTests
{
    // Where a step runs (the model, the training loop and its losses, token labeling, data-parallel averaging), where
    // loader threads run (data, transforms), and the CLI around them: the library and the CLI, whole.
    private static readonly string[] HotNamespaces = ["AllTokens"];

    // One-off setup before any loader thread runs: weight initialisation. (Constructors are skipped as well.)
    private static readonly string[] SetupTypes = ["AllTokens.Layers.Init"];

    private static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    /// <summary>Why a call makes a temporary Scalar, or null when it does not.</summary>
    private static string? Hazard(MethodBase callee)
    {
        var declaring = callee.DeclaringType;
        if (declaring == typeof(Scalar) && callee.Name == "op_Implicit")
            return "converts a number to a temporary Scalar (hold it: using Scalar s = x.ToScalar())";
        if (declaring != typeof(Tensor)) return null;
        var parameters = callee.GetParameters();
        int arity = parameters.Length;
        if (callee.Name.StartsWith("op_", StringComparison.Ordinal) && callee.Name is not ("op_Implicit" or "op_Explicit")
            && parameters.Any(p => p.ParameterType.IsPrimitive))
            return "an operator on a Tensor and a number makes a temporary Scalar inside TorchSharp (hold it: using Scalar s = x.ToScalar())";
        return callee.Name switch
        {
            "add" or "add_" when arity == 1 => "passes a temporary alpha = 1 (use Held.Add / Held.AddInPlace or pass Held.One)",
            "op_Addition" => "a + b passes a temporary alpha = 1 (use Held.Add)",
            "addcdiv" or "addcdiv_" or "addcmul" or "addcmul_" when arity == 2 => "passes a temporary value = 1 (pass a held one)",
            _ => null,
        };
    }

    private static IEnumerable<(MethodBase Caller, MethodBase Callee)> Calls(MethodBase method)
    {
        byte[]? il;
        try
        {
            il = method.GetMethodBody()?.GetILAsByteArray();
        }
        catch (InvalidOperationException)
        {
            yield break;
        }
        if (il is null) yield break;
        int i = 0;
        while (i < il.Length)
        {
            short value = il[i] == 0xFE ? (short)(0xFE00 | il[i + 1]) : il[i];
            i += il[i] == 0xFE ? 2 : 1;
            var op = OpCodesByValue[value];
            if (op.OperandType == OperandType.InlineMethod)
            {
                int token = BitConverter.ToInt32(il, i);
                MethodBase? callee = null;
                try
                {
                    callee = method.Module.ResolveMethod(token,
                        method.DeclaringType?.IsGenericType == true ? method.DeclaringType.GetGenericArguments() : null,
                        method.IsGenericMethod ? method.GetGenericArguments() : null);
                }
                catch (ArgumentException)
                {
                }
                if (callee is not null) yield return (method, callee);
            }
            i += op.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, i),
                _ => 4,
            };
        }
    }

    private const BindingFlags AllDeclared = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;

    private static List<Type> ScannedTypes() => typeof(Held).Assembly.GetTypes().Concat(typeof(AllTokens.Cli.Program).Assembly.GetTypes())
        .Where(t => t.Namespace is { } ns && HotNamespaces.Any(h => ns == h || ns.StartsWith(h + ".", StringComparison.Ordinal)))
        .Where(t => !SetupTypes.Any(s => t.FullName!.StartsWith(s, StringComparison.Ordinal)))
        .ToList();

    [Fact]
    public void TrainingPathsPassNoTemporaryScalars()
    {
        var types = ScannedTypes();
        Assert.Contains(typeof(TokenPerformer), types); // the scan covers the model code
        var found = new List<string>();
        int scanned = 0;
        foreach (var type in types)
            foreach (var method in type.GetMethods(AllDeclared).Cast<MethodBase>())
            {
                scanned++;
                foreach (var (caller, callee) in Calls(method))
                    if (Hazard(callee) is { } why)
                        found.Add($"{caller.DeclaringType!.FullName}.{caller.Name} calls {callee.DeclaringType!.Name}.{callee.Name}: {why}");
            }
        Assert.True(scanned > 200, $"only {scanned} methods scanned");
        Assert.True(found.Count == 0, string.Join("\n", found.Distinct()));
    }

    /// <summary>Scalar-making calls inside TorchSharp itself (a number made into a Scalar there).</summary>
    private static string? InnerHazard(MethodBase callee) =>
        Hazard(callee) ?? (callee.Name == "ToScalar" && callee.DeclaringType?.Assembly == typeof(Tensor).Assembly
            ? "makes a Scalar from a number" : null);

    /// <summary>TorchSharp methods reachable from <paramref name="root"/> within TorchSharp (depth-limited) that make a temporary Scalar.</summary>
    private static List<string> InnerHazards(MethodBase root, int depth = 8)
    {
        var found = new List<string>();
        var seen = new HashSet<MethodBase>();
        void Visit(MethodBase m, int d, string path)
        {
            if (!seen.Add(m) || d > depth) return;
            foreach (var (caller, callee) in Calls(m))
            {
                if (InnerHazard(callee) is { } why) found.Add($"{path} → {callee.DeclaringType!.Name}.{callee.Name}: {why}");
                else if (callee.DeclaringType?.Assembly == typeof(Tensor).Assembly) Visit(callee, d + 1, $"{path} → {callee.DeclaringType!.Name}.{callee.Name}");
            }
        }
        Visit(root, 0, $"{root.DeclaringType!.Name}.{root.Name}");
        return found;
    }

    // TorchSharp modules whose forward makes temporaries and that our code never calls (it runs its own forward,
    // checked by a test of its own): BatchNorm2d (Layers/BatchNorms, BatchNormsTests.TheLvVitStemBypassesTorchSharpsForward).
    private static readonly Type[] Bypassed = [typeof(TorchSharp.Modules.BatchNorm2d)];

    [Fact]
    public void TorchSharpModulesOnTheTrainingPathsMakeNoTemporaryScalars()
    {
        // Every TorchSharp module type our models hold: its forward (and what it calls inside TorchSharp) runs each step.
        const BindingFlags fields = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.DeclaredOnly;
        var moduleTypes = ScannedTypes()
            .SelectMany(t => t.GetFields(fields).Select(f => f.FieldType))
            .SelectMany(ft => ft.IsGenericType ? ft.GetGenericArguments().Append(ft) : [ft])
            .Where(ft => ft.Assembly == typeof(Tensor).Assembly && typeof(nn.Module).IsAssignableFrom(ft) && !ft.IsAbstract && !ft.IsGenericType)
            .Append(typeof(TorchSharp.Modules.Unfold)) // T2T's soft splits, held as plain modules
            .Distinct()
            .ToList();
        Assert.Contains(typeof(TorchSharp.Modules.LayerNorm), moduleTypes);
        Assert.Contains(typeof(TorchSharp.Modules.BatchNorm2d), moduleTypes);
        var found = new List<string>();
        foreach (var type in moduleTypes.Except(Bypassed))
            foreach (var forward in type.GetMethods(BindingFlags.Public | BindingFlags.Instance).Where(m => m.Name == "forward"))
                found.AddRange(InnerHazards(forward));
        Assert.True(found.Count == 0, string.Join("\n", found.Distinct()));
        // The bypassed ones really do make temporaries (else the bypass is no longer needed).
        Assert.NotEmpty(InnerHazards(typeof(TorchSharp.Modules.BatchNorm2d).GetMethod("forward")!));
    }

    // TorchSharp calls that make a Scalar only from .NET numbers among their arguments, where ours pass held Scalars:
    // the fused AdamW's TorchScript invoke (Training/Optimizers.cs) boxes number arguments, and we give it none.
    private static readonly string[] HeldArgumentsOnly = ["CompilationUnit.invoke"];

    [Fact]
    public void TorchSharpCallsOnTheTrainingPathsMakeNoTemporaryScalarsInside()
    {
        // What the hot code calls in TorchSharp, and what that calls inside TorchSharp: a number turned into a Scalar
        // there is the same hazard as one in our code (BatchNorm's forward was one; Tensor.ToDouble() is another).
        var types = ScannedTypes();
        var found = new List<string>();
        var callees = new HashSet<MethodBase>();
        int checkedCalls = 0;
        foreach (var type in types)
            foreach (var method in type.GetMethods(AllDeclared).Cast<MethodBase>())
                foreach (var (caller, callee) in Calls(method))
                {
                    if (callee.DeclaringType?.Assembly != typeof(Tensor).Assembly || !callees.Add(callee)) continue;
                    if (HeldArgumentsOnly.Contains($"{callee.DeclaringType.Name}.{callee.Name}")) continue;
                    checkedCalls++;
                    found.AddRange(InnerHazards(callee).Select(h => $"{caller.DeclaringType!.FullName}.{caller.Name}: {h}"));
                }
        Assert.True(checkedCalls > 100, $"only {checkedCalls} TorchSharp methods checked");
        Assert.True(found.Count == 0, string.Join("\n", found.Distinct()));
        // The detector sees the one this replaced.
        Assert.NotEmpty(InnerHazards(typeof(TensorExtensionMethods).GetMethod(nameof(TensorExtensionMethods.ToDouble), [typeof(Tensor)])!));
    }

    [Fact]
    public void TheScanSeesEachKindOfTemporary()
    {
        // The detector itself: each pattern it must catch, compiled into this test assembly.
        var method = typeof(HeldScalarTests).GetMethod(nameof(Offender), BindingFlags.NonPublic | BindingFlags.Static)!;
        var hazards = Calls(method).Select(c => Hazard(c.Callee)).OfType<string>().ToList();
        Assert.Contains(hazards, h => h.StartsWith("converts a number", StringComparison.Ordinal));
        Assert.Contains(hazards, h => h.StartsWith("an operator on a Tensor and a number", StringComparison.Ordinal));
        Assert.Contains(hazards, h => h.StartsWith("a + b", StringComparison.Ordinal));
        Assert.Contains(hazards, h => h.StartsWith("passes a temporary alpha", StringComparison.Ordinal));
        Assert.Contains(hazards, h => h.StartsWith("passes a temporary value", StringComparison.Ordinal));
        var held = typeof(HeldScalarTests).GetMethod(nameof(Clean), BindingFlags.NonPublic | BindingFlags.Static)!;
        Assert.Empty(Calls(held).Select(c => Hazard(c.Callee)).OfType<string>());
    }

    private static Tensor Offender(Tensor a, Tensor b)
    {
        var c = a * 0.5;
        var d = a + b;
        var e = c.add_(d).mul(2.0);
        return e.addcdiv(a, b);
    }

    private static Tensor Clean(Tensor a, Tensor b)
    {
        using Scalar half = 0.5.ToScalar();
        var c = a * half;
        var d = Held.Add(a, b);
        return c.add_(d, Held.One).addcdiv(a, b, half);
    }
}
