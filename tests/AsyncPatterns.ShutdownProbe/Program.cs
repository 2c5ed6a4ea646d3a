// A small service for the graceful-shutdown tests: a producer feeds a WorkQueue continuously under HandleSignals, and
// the process ends by itself after a signal, printing a report that accounts for every accepted item.
//
//   dotnet AsyncPatterns.ShutdownProbe.dll normal   fast handler; SIGTERM → drain everything, exit 0
//   dotnet AsyncPatterns.ShutdownProbe.dll slow     slow handler and a full queue; the drain takes minutes unless a
//                                                   second SIGTERM aborts it
//
// Lines on stdout: READY (work is flowing), STOPPING (StoppingToken fired), REPORT key=value ... at the end.
using System.Globalization;
using AsyncPatterns;

var slow = args.Length > 0 && args[0] == "slow";

var shutdown = new GracefulShutdown(new GracefulShutdownOptions
{
    Name = "probe",
    HandleSignals = true,
    DrainTimeout = slow ? TimeSpan.FromMinutes(5) : TimeSpan.FromSeconds(20),
});
shutdown.StoppingToken.Register(() => Console.WriteLine("STOPPING"));

var queue = new WorkQueue<long>(
    async (_, ct) =>
    {
        if (slow)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(50), ct);
        }
        else
        {
            await Task.Yield();
        }
    },
    new WorkQueueOptions<long>
    {
        Name = "probe-queue",
        Capacity = slow ? 2000 : 256,
        MaxConcurrency = slow ? 1 : 2,
    });
shutdown.Register(queue);

var ready = slow ? 1000 : 2000; // slow: queued items; normal: handled items
var readyPrinted = 0;
long confirmed = 0; // EnqueueAsync calls that returned: the producer's own view of what was accepted
_ = shutdown.Run(async stopping =>
{
    long next = 0;
    while (!stopping.IsCancellationRequested)
    {
        try
        {
            await queue.EnqueueAsync(next++, stopping);
            confirmed++;
        }
        catch (OperationCanceledException)
        {
            return; // stopping: this item was not accepted
        }
        catch (InvalidOperationException)
        {
            return; // the queue closed
        }

        if ((slow ? queue.Count : queue.GetStatistics().Handled) >= ready && Interlocked.Exchange(ref readyPrinted, 1) == 0)
        {
            Console.WriteLine("READY");
        }
    }
});

// A hard limit, so a test that fails to signal never leaves this process behind.
var limit = Task.Delay(TimeSpan.FromMinutes(2));
if (await Task.WhenAny(shutdown.Completion, limit) == limit)
{
    Console.WriteLine("LIMIT no signal arrived");
    return 3;
}

var report = await shutdown.Completion;
await shutdown.DisposeAsync();

// After a drain cut short, handlers that were cancelled may still be finishing: wait until the counts are final.
await queue.Completion.WaitAsync(TimeSpan.FromSeconds(30));
var stats = queue.GetStatistics();
Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
    $"REPORT reason={report.Reason} timedOut={report.TimedOut} elapsedMs={report.Elapsed.TotalMilliseconds:0} " +
    $"accepted={stats.Accepted} handled={stats.Handled} failed={stats.Failed} dropped={stats.Dropped} confirmed={Volatile.Read(ref confirmed)} " +
    $"tasksCompleted={report.TasksCompleted} tasksCancelled={report.TasksCancelled} tasksFaulted={report.TasksFaulted} " +
    $"tasksAbandoned={report.TasksAbandoned} errors={report.Errors.Count}"));
return 0;
