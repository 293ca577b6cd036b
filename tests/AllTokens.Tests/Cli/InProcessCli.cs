using AllTokens.Cli;

namespace AllTokens.Tests.Cli;

/// <summary>The CLI run in this process (Program.Run) with its output captured: the verbs' tests use it as a user would the command.</summary>
internal static class InProcessCli
{
    /// <summary>Exit code (0 ok, 1 failure, 2 usage error), stdout and stderr of <c>alltokens ARGS</c>.</summary>
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }
}
