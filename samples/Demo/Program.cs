using AsyncPatterns.Demo;

// AsyncPatterns demo: each section shows one pattern at work and proves its accounting.
//   dotnet run --project samples/Demo              ~10 s
//   dotnet run --project samples/Demo -- --quick   ~2 s (CI smoke run)
var settings = DemoSettings.Parse(args);
if (settings.Error is not null)
{
    Console.Error.WriteLine(settings.Error);
    Console.Error.WriteLine();
    Console.Error.WriteLine(DemoSettings.Usage);
    return 2;
}

if (settings.ShowHelp)
{
    Console.WriteLine(DemoSettings.Usage);
    return 0;
}

// Ctrl+C stops the producers early; the demo still drains and prints its accounting.
using var stop = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) =>
{
    e.Cancel = true;
    stop.Cancel();
};

IDemoSection[] sections = [new WorkQueueSection()];
var allGood = true;
foreach (var section in sections)
{
    Console.WriteLine($"== {section.Title} ==");
    allGood &= await section.RunAsync(settings.SectionDuration(sections.Length), stop.Token);
    Console.WriteLine();
}

Console.WriteLine(allGood ? "Demo finished: every section's accounting adds up." : "Demo FAILED: some accounting does not add up.");
return allGood ? 0 : 1;
