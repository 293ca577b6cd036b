using System.Text;

namespace AllTokens.Cli;

public static class Verbs
{
    public static IReadOnlyList<Verb> All { get; } =
    [
        ModelsVerb.Verb,
        PredictVerb.Verb,
        ConvertVerb.Verb,
        LabelVerb.Verb,
        TrainVerb.Verb,
        EvalVerb.Verb,
        BenchVerb.Verb,
        VisualizeVerb.Verb,
        DoctorVerb.Verb,
        DemoVerb.Verb,
    ];

    public static string Overview()
    {
        var sb = new StringBuilder();
        sb.AppendLine("alltokens — LV-ViT with Token Labeling and Tokens-to-Token ViT in .NET");
        sb.AppendLine();
        sb.AppendLine("usage: alltokens <command> [options]     (alltokens <command> --help for its options)");
        sb.AppendLine();
        sb.AppendLine("commands:");
        int w = All.Max(v => v.Spec.Name.Length) + 2;
        foreach (var v in All) sb.AppendLine($"  {v.Spec.Name.PadRight(w)}{v.Spec.Summary}");
        sb.AppendLine();
        sb.AppendLine("environment: ALLTOKENS_DEBUG=1 prints stack traces with errors.");
        return sb.ToString();
    }
}
