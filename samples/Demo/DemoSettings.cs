namespace AsyncPatterns.Demo;

/// <summary>The demo's command line.</summary>
internal sealed class DemoSettings
{
    public const string Usage = """
        Usage: dotnet run --project samples/Demo [-- options]

          (no options)   run every section, about 35 seconds in all
          --quick        run every section briefly, about 8 seconds (a smoke test)
          --help, -h     print this help

        Exit code: 0 when every section's final accounting adds up, 1 when it does not, 2 for bad arguments.
        """;

    public bool ShowHelp { get; private init; }

    public bool Quick { get; private init; }

    public string? Error { get; private init; }


    public static DemoSettings Parse(string[] args)
    {
        var help = false;
        var quick = false;
        foreach (var arg in args)
        {
            switch (arg)
            {
                case "--help" or "-h" or "-?":
                    help = true;
                    break;
                case "--quick":
                    quick = true;
                    break;
                default:
                    return new DemoSettings { Error = $"Unknown argument '{arg}'." };
            }
        }

        return new DemoSettings { ShowHelp = help, Quick = quick };
    }
}

/// <summary>One part of the demo: shows a pattern live, then proves its accounting.</summary>
internal interface IDemoSection
{
    string Title { get; }

    /// <summary>Runs for about <paramref name="duration"/> (less if <paramref name="stop"/> fires), then drains and reports.</summary>
    /// <returns><see langword="true"/> when the final accounting adds up.</returns>
    Task<bool> RunAsync(TimeSpan duration, CancellationToken stop);
}
