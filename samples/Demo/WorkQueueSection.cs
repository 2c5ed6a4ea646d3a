using System.Diagnostics;
using System.Globalization;

namespace AsyncPatterns.Demo;

/// <summary>
/// Producers push jobs faster than the workers can handle them. The bounded <see cref="WorkQueue{T}"/> holds them
/// back (backpressure): its depth stays at capacity and the producers wait instead of piling up memory. Then the
/// producers stop, the queue drains, and the accounting proves that every accepted job was handled or failed.
/// </summary>
internal sealed class WorkQueueSection : IDemoSection
{
    private const int Producers = 6;
    private const int Workers = 4;
    private const int Capacity = 200;
    private const int JobsPerBatch = 4;
    private static readonly TimeSpan WorkTime = TimeSpan.FromMilliseconds(2);
    private static readonly TimeSpan ReportEvery = TimeSpan.FromMilliseconds(250);

    private long _offered;
    private long _acceptedByProducers;
    private long _gaveUpWaiting;
    private long _handledByWorkers;
    private long _errorsReported;
    private long _dropsReported;

    public string Title => $"Backpressured work queue: {Producers} producers, {Workers} workers, capacity {Capacity}";

    public async Task<bool> RunAsync(TimeSpan duration, CancellationToken stop)
    {
        Console.WriteLine($"Each worker needs ~{WorkTime.TotalMilliseconds:0} ms per job; each producer makes {JobsPerBatch} jobs every ~1 ms, so the queue");
        Console.WriteLine("fills up and EnqueueAsync makes the producers wait (backpressure). About 1% of jobs fail on purpose.");
        Console.WriteLine();

        var queue = new WorkQueue<Job>(HandleAsync, new WorkQueueOptions<Job>
        {
            Name = "jobs",
            Capacity = Capacity,
            MaxConcurrency = Workers,
            OnError = (_, _) => Interlocked.Increment(ref _errorsReported),
            OnDropped = _ => Interlocked.Increment(ref _dropsReported),
        });
        await using (queue)
        {
            using var producing = CancellationTokenSource.CreateLinkedTokenSource(stop);
            producing.CancelAfter(duration);
            var clock = Stopwatch.StartNew();
            var producers = Enumerable.Range(1, Producers).Select(p => Task.Run(() => ProduceAsync(queue, p, producing.Token))).ToArray();

            await ReportLiveAsync(queue, clock, producing.Token);
            await Task.WhenAll(producers);

            var waiting = queue.Count;
            Console.WriteLine();
            Console.WriteLine($"Producers stopped after {clock.Elapsed.TotalSeconds:0.0} s; draining the {waiting} jobs still waiting...");
            var drainStarted = clock.Elapsed;
            await queue.DrainAsync();
            Console.WriteLine($"Drained in {(clock.Elapsed - drainStarted).TotalSeconds:0.00} s.");
            return PrintAccounting(queue.GetStatistics());
        }
    }

    private async ValueTask HandleAsync(Job job, CancellationToken cancellationToken)
    {
        await Task.Delay(WorkTime, cancellationToken);
        if (job.Sequence % 97 == 0)
        {
            throw new InvalidOperationException($"Job {job} failed (on purpose).");
        }

        Interlocked.Increment(ref _handledByWorkers);
    }

    private async Task ProduceAsync(WorkQueue<Job> queue, int producer, CancellationToken cancellationToken)
    {
        var sequence = 0L;
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(1, cancellationToken); // making a batch of jobs takes a moment
            }
            catch (OperationCanceledException)
            {
                return;
            }

            for (var i = 0; i < JobsPerBatch; i++)
            {
                Interlocked.Increment(ref _offered);
                try
                {
                    // Waits while the queue is full: this is the backpressure.
                    await queue.EnqueueAsync(new Job(producer, ++sequence), cancellationToken);
                    Interlocked.Increment(ref _acceptedByProducers);
                }
                catch (OperationCanceledException)
                {
                    // Stopped while waiting for room: the job was never accepted, so the queue owes nothing for it.
                    Interlocked.Increment(ref _gaveUpWaiting);
                    return;
                }
            }
        }
    }

    private static async Task ReportLiveAsync(WorkQueue<Job> queue, Stopwatch clock, CancellationToken cancellationToken)
    {
        using var timer = new PeriodicTimer(ReportEvery);
        var lastDone = 0L;
        var lastTime = TimeSpan.Zero;
        try
        {
            while (await timer.WaitForNextTickAsync(cancellationToken))
            {
                var stats = queue.GetStatistics();
                var now = clock.Elapsed;
                var done = stats.Handled + stats.Failed;
                var perSecond = (done - lastDone) / (now - lastTime).TotalSeconds;
                (lastDone, lastTime) = (done, now);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{now.TotalSeconds,5:0.00}s  depth {stats.Count,3}/{Capacity} {Bar(stats.Count, Capacity)}  in flight {stats.InFlight}/{Workers}  producers waiting {stats.WaitingProducers}/{Producers}  done {perSecond,5:0}/s  (accepted {stats.Accepted}, handled {stats.Handled}, failed {stats.Failed})"));
            }
        }
        catch (OperationCanceledException)
        {
            // The run is over.
        }
    }

    private bool PrintAccounting(WorkQueueStatistics stats)
    {
        var accepted = Interlocked.Read(ref _acceptedByProducers);
        Console.WriteLine();
        Console.WriteLine("Final accounting for work queue 'jobs':");
        Console.WriteLine($"  jobs offered by producers   {Interlocked.Read(ref _offered),8}");
        Console.WriteLine($"  accepted by the queue       {stats.Accepted,8}   ({Interlocked.Read(ref _gaveUpWaiting)} producers stopped while waiting for room: never accepted, nothing owed)");
        Console.WriteLine($"  handled                     {stats.Handled,8}");
        Console.WriteLine($"  failed                      {stats.Failed,8}   (each one passed to OnError: {Interlocked.Read(ref _errorsReported)})");
        Console.WriteLine($"  dropped                     {stats.Dropped,8}");
        Console.WriteLine($"  enqueues that had to wait   {stats.EnqueueWaits,8}   (the backpressure at work)");

        var checks = new (bool Ok, string What)[]
        {
            (stats.Accepted == stats.Handled + stats.Failed + stats.Dropped, "accepted = handled + failed + dropped"),
            (stats.Accepted == accepted, $"the queue's accepted count ({stats.Accepted}) matches the producers' ({accepted})"),
            (stats.Handled == Interlocked.Read(ref _handledByWorkers), $"handled matches the handler's own count ({Interlocked.Read(ref _handledByWorkers)})"),
            (stats.Failed == Interlocked.Read(ref _errorsReported), "every failure reached OnError"),
            (stats.Dropped == Interlocked.Read(ref _dropsReported), "every drop reached OnDropped"),
            (stats.Count == 0 && stats.InFlight == 0, "nothing is left waiting or in flight"),
        };
        var ok = true;
        foreach (var (passed, what) in checks)
        {
            if (!passed)
            {
                Console.WriteLine($"  MISMATCH: {what}");
                ok = false;
            }
        }

        Console.WriteLine(ok
            ? $"Nothing lost: accepted {stats.Accepted} = handled {stats.Handled} + failed {stats.Failed} + dropped {stats.Dropped}"
            : $"LOST WORK: accepted {stats.Accepted} vs handled {stats.Handled} + failed {stats.Failed} + dropped {stats.Dropped}");
        return ok;
    }

    private static string Bar(int value, int max)
    {
        const int Width = 20;
        var filled = (int)Math.Round((double)value / max * Width);
        return "[" + new string('#', filled) + new string('.', Width - filled) + "]";
    }

    private readonly record struct Job(int Producer, long Sequence)
    {
        public override string ToString() => $"{Producer}-{Sequence}";
    }
}
