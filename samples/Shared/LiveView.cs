using Spectre.Console;
using Spectre.Console.Rendering;

namespace AsyncPatterns.Samples;

/// <summary>
/// Shows progress while a sample runs: a live-updating Spectre.Console panel on an interactive terminal, plain
/// lines (one a second) when output is redirected, so logs and CI output stay readable.
/// </summary>
internal static class LiveView
{
    public static bool Interactive => !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive;

    /// <summary>Refreshes until <paramref name="until"/> completes, then shows the final state once more.</summary>
    public static async Task RunAsync(Task until, Func<IRenderable> live, Func<string> plain)
    {
        if (Interactive)
        {
            await AnsiConsole.Live(live()).AutoClear(false).StartAsync(async context =>
            {
                while (!until.IsCompleted)
                {
                    await Task.WhenAny(until, Task.Delay(200));
                    context.UpdateTarget(live());
                }
            });
            return;
        }

        while (!until.IsCompleted)
        {
            await Task.WhenAny(until, Task.Delay(1000));
            if (!until.IsCompleted)
            {
                Console.WriteLine(plain());
            }
        }
    }

    /// <summary>Prints a table: a Spectre table on a terminal, aligned text otherwise.</summary>
    public static void PrintTable(string title, string[] headers, IEnumerable<string[]> rows)
    {
        var all = rows.ToList();
        if (Interactive)
        {
            var table = new Table().Title(title).Border(TableBorder.Rounded);
            foreach (var h in headers)
            {
                table.AddColumn(new TableColumn(h).RightAligned());
            }

            foreach (var r in all)
            {
                table.AddRow(r.Select(Markup.Escape).ToArray());
            }

            AnsiConsole.Write(table);
            return;
        }

        var widths = headers.Select((h, i) => Math.Max(h.Length, all.Count == 0 ? 0 : all.Max(r => r[i].Length))).ToArray();
        Console.WriteLine(title);
        Console.WriteLine("  " + string.Join("  ", headers.Select((h, i) => h.PadLeft(widths[i]))));
        foreach (var r in all)
        {
            Console.WriteLine("  " + string.Join("  ", r.Select((c, i) => c.PadLeft(widths[i]))));
        }
    }

    /// <summary>The <paramref name="p"/>-th percentile (0–100) of <paramref name="sorted"/>, nearest rank.</summary>
    public static double Percentile(IReadOnlyList<double> sorted, double p)
    {
        if (sorted.Count == 0)
        {
            return double.NaN;
        }

        var rank = (int)Math.Ceiling(p / 100 * sorted.Count) - 1;
        return sorted[Math.Clamp(rank, 0, sorted.Count - 1)];
    }
}
