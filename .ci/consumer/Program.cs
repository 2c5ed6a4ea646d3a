// Built by .ci/run against the packed AsyncPatterns .nupkg, the way a user consumes it.
using AsyncPatterns;

var handled = 0;
await using var queue = new WorkQueue<int>(
    (item, _) =>
    {
        Interlocked.Add(ref handled, item);
        return ValueTask.CompletedTask;
    },
    new WorkQueueOptions<int> { Capacity = 16, MaxConcurrency = 2, Name = "consumer" });

for (var i = 1; i <= 1000; i++)
{
    await queue.EnqueueAsync(i);
}

await queue.DrainAsync();
var stats = queue.GetStatistics();
if (handled != 500500 || stats.Handled != 1000)
{
    Console.WriteLine($"consumer FAILED: sum {handled}, handled {stats.Handled}");
    return 1;
}

Console.WriteLine($"consumer ok: {stats.Handled} items handled through the packaged WorkQueue");
return 0;
