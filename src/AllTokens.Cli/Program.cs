using AllTokens.Checkpoints;
using AllTokens.Data;
using AllTokens.Models;

namespace AllTokens.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        NativeEnvironment.ConfigureOpenMp();
        NativeEnvironment.ConfigureAllocator();
        return Run(args, Console.Out, Console.Error);
    }

    /// <summary>Entry point that tests can call: exit code 0 ok, 1 failure, 2 usage error.</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var verbs = Verbs.All;
        if (args.Length == 0 || args[0] is "help" or "--help" or "-h")
        {
            if (args.Length > 1 && verbs.FirstOrDefault(v => v.Spec.Name == args[1]) is { } hv) { stdout.Write(hv.Spec.Help()); return 0; }
            stdout.Write(Verbs.Overview());
            return args.Length == 0 ? 2 : 0;
        }
        if (args[0] is "--version" or "version")
        {
            stdout.WriteLine($"alltokens {typeof(Program).Assembly.GetName().Version?.ToString(3)} (TorchSharp {typeof(TorchSharp.torch).Assembly.GetName().Version?.ToString(3)})");
            return 0;
        }
        var verb = verbs.FirstOrDefault(v => v.Spec.Name == args[0]);
        if (verb is null)
        {
            var close = verbs.Select(v => v.Spec.Name).Where(n => n.StartsWith(args[0][..Math.Min(2, args[0].Length)], StringComparison.Ordinal)).ToList();
            stderr.WriteLine($"alltokens: unknown command '{args[0]}'" + (close.Count > 0 ? $"; did you mean {string.Join(" or ", close)}?" : "") + " (alltokens --help lists them)");
            return 2;
        }
        ParsedArgs parsed;
        try
        {
            parsed = verb.Spec.Parse(args.Skip(1).ToList());
        }
        catch (HelpRequested)
        {
            stdout.Write(verb.Spec.Help());
            return 0;
        }
        catch (UsageException e)
        {
            stderr.WriteLine($"alltokens {verb.Spec.Name}: {e.Message}");
            stderr.WriteLine($"usage: alltokens {verb.Spec.Name} {verb.Spec.Usage}   (--help for details)");
            return 2;
        }
        try
        {
            return verb.Run(parsed, new Console2(stdout, stderr));
        }
        catch (UsageException e)
        {
            stderr.WriteLine($"alltokens {verb.Spec.Name}: {e.Message}");
            return 2;
        }
        catch (Exception e) when (IsUserFacing(e))
        {
            stderr.WriteLine($"alltokens {verb.Spec.Name}: error: {Describe(e)}");
            if (Environment.GetEnvironmentVariable("ALLTOKENS_DEBUG") == "1") stderr.WriteLine(e);
            return 1;
        }
        finally
        {
            CliCommon.RestoreThreads(); // --threads and the denormal flush, as they were before the verb
        }
    }

    /// <summary>
    /// The message for the user. .NET's own "Could not find file '…'." reads as our other errors do, "path: file not found";
    /// our own FileNotFoundExceptions already say what is missing ("no such checkpoint", …) and keep their words.
    /// </summary>
    private static string Describe(Exception e) =>
        e is FileNotFoundException { FileName: { Length: > 0 } file } && e.Message.StartsWith("Could not find file", StringComparison.Ordinal)
            ? $"{file}: file not found"
            : e.Message;

    private static bool IsUserFacing(Exception e) => e is UnknownModelException or CheckpointFormatException or CheckpointMismatchException
        or ImageDecodeException or FileNotFoundException or DirectoryNotFoundException or IOException or UnauthorizedAccessException
        or ArgumentException or InvalidDataException or NotSupportedException or InvalidOperationException
        or KeyNotFoundException; // ours name the file and the key (label stores)
}

/// <summary>The two output streams a verb writes to.</summary>
public sealed record Console2(TextWriter Out, TextWriter Err);

/// <summary>A verb's spec and its implementation.</summary>
public sealed record Verb(VerbSpec Spec, Func<ParsedArgs, Console2, int> Run);
