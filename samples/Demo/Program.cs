using AsyncPatterns.Demo;

// AsyncPatterns demo: each section shows one pattern at work and proves its accounting.
//   dotnet run --project samples/Demo              ~35 s
//   dotnet run --project samples/Demo -- --quick   ~8 s (CI smoke run)
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

// Each section with its own running time: about 35 s in all (about 8 s with --quick).
(IDemoSection Section, TimeSpan Normal, TimeSpan Quick)[] sections =
[
    (new WorkQueueSection(), TimeSpan.FromSeconds(8), TimeSpan.FromSeconds(2)),
    (new JobPipelineSection(), TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(2)),
    (new ApiGatewaySection(), TimeSpan.FromSeconds(15), TimeSpan.FromSeconds(4)),
];
var allGood = true;
foreach (var (section, normal, quick) in sections)
{
    if (stop.IsCancellationRequested)
    {
        break;
    }

    Console.WriteLine($"== {section.Title} ==");
    allGood &= await section.RunAsync(settings.Quick ? quick : normal, stop.Token);
    Console.WriteLine();
}

Console.WriteLine(allGood ? "Demo finished: every section's accounting adds up." : "Demo FAILED: some accounting does not add up.");
return allGood ? 0 : 1;
