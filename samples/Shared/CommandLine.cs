using System.Globalization;

namespace AsyncPatterns.Samples;

/// <summary>The few flags every sample takes: <c>--duration SECONDS</c>, <c>--quick</c> and <c>--help</c>.</summary>
internal sealed class CommandLine
{
    private readonly Dictionary<string, string?> _values = new(StringComparer.OrdinalIgnoreCase);

    private CommandLine()
    {
    }

    public bool Help => Has("--help") || Has("-h") || Has("-?");

    public bool Quick => Has("--quick");

    public bool Has(string flag) => _values.ContainsKey(flag);

    public double GetDouble(string flag, double fallback) =>
        _values.TryGetValue(flag, out var v) && double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d : fallback;

    public TimeSpan Duration(TimeSpan normal, TimeSpan quick) =>
        Has("--duration") ? TimeSpan.FromSeconds(GetDouble("--duration", normal.TotalSeconds)) : Quick ? quick : normal;

    /// <summary>Parses <paramref name="args"/>; unknown flags are an error the caller prints with the usage.</summary>
    public static CommandLine Parse(string[] args, IReadOnlyCollection<string> known, out string? error)
    {
        var line = new CommandLine();
        error = null;
        for (var i = 0; i < args.Length; i++)
        {
            var flag = args[i];
            if (!known.Contains(flag, StringComparer.OrdinalIgnoreCase) && flag is not ("--help" or "-h" or "-?"))
            {
                error = $"Unknown argument '{flag}'.";
                continue;
            }

            string? value = null;
            if (i + 1 < args.Length && !args[i + 1].StartsWith("--", StringComparison.Ordinal))
            {
                value = args[++i];
                if (!double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out var number) || number <= 0)
                {
                    error = $"'{flag}' needs a positive number; it was '{value}'.";
                }
            }

            line._values[flag] = value;
        }

        return line;
    }
}
