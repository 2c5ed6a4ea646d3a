using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Shutdown;

/// <summary>
/// Each of the library's work-accepting primitives registered with a <see cref="GracefulShutdown"/> and shut down
/// under load: the report and the primitive's own statistics must account for every accepted item.
/// </summary>
public class GracefulShutdownPrimitivesTests
{
    private const int Producers = 4;

    private static readonly TimeSpan Flowing = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task WorkQueue_under_load_is_drained_completely_within_the_deadline()
    {
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { DrainTimeout = TimeSpan.FromSeconds(20) });
        var seen = new ConcurrentDictionary<long, byte>();
        var queue = new WorkQueue<long>(
            async (item, _) =>
            {
                await Task.Yield();
                seen.TryAdd(item, 0).Should().BeTrue("each item is handled once");
            },
            new WorkQueueOptions<long> { Capacity = 64, MaxConcurrency = 4 });
        shutdown.Register(queue);
        var next = 0L;
        for (var p = 0; p < Producers; p++)
        {
            _ = shutdown.Run(async stopping =>
            {
                while (true)
                {
                    try
                    {
                        await queue.EnqueueAsync(Interlocked.Increment(ref next), stopping);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                }
            });
        }

        await AsyncAssert.EventuallyAsync(() => queue.GetStatistics().Handled > 5000, "work flows", Flowing);
        var report = await shutdown.ShutdownAsync("load test").WithTimeout();
        await queue.Completion.WithTimeout();

        var stats = queue.GetStatistics();
        report.TimedOut.Should().BeFalse();
        report.TasksCompleted.Should().Be(Producers, "every producer stopped on StoppingToken");
        report.TasksAbandoned.Should().Be(0);
        report.Errors.Should().BeEmpty();
        stats.Accepted.Should().BeGreaterThan(5000);
        stats.Handled.Should().Be(stats.Accepted, "everything accepted was processed");
        stats.Failed.Should().Be(0);
        stats.Dropped.Should().Be(0);
        seen.Count.Should().Be((int)stats.Accepted);
        stats.IsClosed.Should().BeTrue();
    }

    [Fact]
    public async Task WorkQueue_whose_handlers_overrun_the_deadline_is_cut_short_and_reports_every_item()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { TimeProvider = clock, DrainTimeout = TimeSpan.FromSeconds(5) });
        var dropped = 0;
        var queue = new WorkQueue<int>(
            (_, ct) => new ValueTask(Task.Delay(Timeout.Infinite, ct)),
            new WorkQueueOptions<int> { Capacity = 100, MaxConcurrency = 2, OnDropped = _ => Interlocked.Increment(ref dropped) });
        shutdown.Register(queue);
        for (var i = 0; i < 50; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 2, "both workers are busy");
        var pending = shutdown.ShutdownAsync();
        await AsyncAssert.StillPendingAsync(pending, "the handlers never finish by themselves");
        clock.Advance(TimeSpan.FromSeconds(5));
        var report = await pending.WithTimeout();
        await queue.Completion.WithTimeout();

        var stats = queue.GetStatistics();
        report.TimedOut.Should().BeTrue();
        report.Errors.Should().BeEmpty("a drain cut short is expected, not an error");
        stats.Accepted.Should().Be(50);
        stats.Failed.Should().Be(2, "the two in-flight handlers saw their token cancelled");
        stats.Dropped.Should().Be(48);
        Volatile.Read(ref dropped).Should().Be(48, "dropped items reach OnDropped, never lost silently");
        (stats.Handled + stats.Failed + stats.Dropped).Should().Be(stats.Accepted);
    }

    [Fact]
    public async Task Batcher_under_load_flushes_every_accepted_item()
    {
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { DrainTimeout = TimeSpan.FromSeconds(20) });
        var processed = new ConcurrentQueue<long>();
        var batcher = new Batcher<long>(
            async (batch, _) =>
            {
                await Task.Yield();
                foreach (var item in batch)
                {
                    processed.Enqueue(item);
                }
            },
            new BatcherOptions<long> { MaxBatchSize = 50, MaxDelay = TimeSpan.FromMinutes(10), MaxConcurrentBatches = 2 });
        shutdown.Register(batcher);
        var next = 0L;
        for (var p = 0; p < Producers; p++)
        {
            _ = shutdown.Run(async stopping =>
            {
                while (true)
                {
                    try
                    {
                        await batcher.AddAsync(Interlocked.Increment(ref next), stopping);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                }
            });
        }

        await AsyncAssert.EventuallyAsync(() => batcher.GetStatistics().ItemsProcessed > 5000, "batches flow", Flowing);
        var report = await shutdown.ShutdownAsync().WithTimeout();

        var stats = batcher.GetStatistics();
        report.TimedOut.Should().BeFalse();
        report.TasksCompleted.Should().Be(Producers);
        report.Errors.Should().BeEmpty();
        stats.ItemsAccepted.Should().BeGreaterThan(5000);
        stats.ItemsProcessed.Should().Be(stats.ItemsAccepted, "the drain flushed the last, partial batch too");
        stats.ItemsFailed.Should().Be(0);
        stats.ItemsDropped.Should().Be(0);
        stats.ItemsPending.Should().Be(0);
        processed.Count.Should().Be((int)stats.ItemsAccepted);
        processed.Distinct().Count().Should().Be(processed.Count);
    }

    [Fact]
    public async Task Batcher_with_results_completes_every_submitted_item()
    {
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { DrainTimeout = TimeSpan.FromSeconds(20) });
        var batcher = new Batcher<int, int>(
            async (batch, _) =>
            {
                await Task.Yield();
                return batch.Select(x => x * 2).ToArray();
            },
            // A short MaxDelay: producers await their results, and the last partial batch must go without a drain
            // (the drains start only after the tracked producers have ended).
            new BatcherOptions<int> { MaxBatchSize = 32, MaxDelay = TimeSpan.FromMilliseconds(20) });
        shutdown.Register(batcher);
        var submitted = new ConcurrentQueue<(int Item, Task<int> Result)>();
        for (var p = 0; p < Producers; p++)
        {
            var producer = p;
            _ = shutdown.Run(async stopping =>
            {
                // Chunks of 16 awaited together: at most 64 items outstanding, well under the batcher's capacity
                // (320), so every submission is accepted at once; a submission still waiting for room when the
                // drain closes the batcher would (rightly) be refused, not accepted.
                for (var i = 0; !stopping.IsCancellationRequested;)
                {
                    var chunk = new Task<int>[16];
                    for (var j = 0; j < chunk.Length; j++, i++)
                    {
                        var item = producer * 1_000_000 + i;
                        chunk[j] = batcher.SubmitAsync(item, CancellationToken.None);
                        submitted.Enqueue((item, chunk[j]));
                    }

                    await Task.WhenAll(chunk);
                }
            });
        }

        await AsyncAssert.EventuallyAsync(() => batcher.GetStatistics().ItemsProcessed > 2000, "batches flow", Flowing);
        var report = await shutdown.ShutdownAsync().WithTimeout();

        report.TimedOut.Should().BeFalse();
        report.TasksCompleted.Should().Be(Producers);
        var stats = batcher.GetStatistics();
        stats.ItemsAccepted.Should().Be(submitted.Count);
        stats.ItemsProcessed.Should().Be(stats.ItemsAccepted);
        foreach (var (item, result) in submitted)
        {
            result.IsCompletedSuccessfully.Should().BeTrue("the drain finished every accepted item");
            (await result).Should().Be(item * 2);
        }
    }

    [Fact]
    public async Task PriorityScheduler_under_load_runs_every_accepted_item()
    {
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { DrainTimeout = TimeSpan.FromSeconds(20) });
        var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 4, Capacity = 10_000 });
        shutdown.Register(scheduler);
        var ran = 0;
        var results = new ConcurrentQueue<Task>();
        for (var p = 0; p < Producers; p++)
        {
            var producer = p;
            _ = shutdown.Run(async stopping =>
            {
                var random = new Random(producer);
                for (var i = 0; !stopping.IsCancellationRequested; i++)
                {
                    try
                    {
                        results.Enqueue(scheduler.RunAsync(
                            async _ =>
                            {
                                await Task.Yield();
                                Interlocked.Increment(ref ran);
                            },
                            priority: random.Next(5)));
                    }
                    catch (InvalidOperationException)
                    {
                        return;
                    }

                    if (scheduler.QueuedCount > 1000)
                    {
                        await Task.Delay(1, CancellationToken.None); // stay under Capacity: no shedding in this test
                    }
                    else if (i % 64 == 0)
                    {
                        await Task.Yield();
                    }
                }
            });
        }

        await AsyncAssert.EventuallyAsync(() => Volatile.Read(ref ran) > 5000, "work runs", Flowing);
        var report = await shutdown.ShutdownAsync().WithTimeout();

        var stats = scheduler.GetStatistics();
        report.TimedOut.Should().BeFalse();
        report.TasksCompleted.Should().Be(Producers);
        report.Errors.Should().BeEmpty();
        stats.Accepted.Should().Be(results.Count);
        stats.Handled.Should().Be(stats.Accepted, "every accepted item ran");
        (stats.Failed + stats.Dropped + stats.Rejected).Should().Be(0);
        stats.QueuedCount.Should().Be(0);
        Volatile.Read(ref ran).Should().Be((int)stats.Accepted);
        results.Should().OnlyContain(t => t.IsCompletedSuccessfully);
    }

    [Fact]
    public async Task A_pipeline_of_producers_WorkQueue_and_Batcher_drains_downstream_last_and_loses_nothing()
    {
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { DrainTimeout = TimeSpan.FromSeconds(20) });
        var stored = new ConcurrentDictionary<long, byte>();
        var writer = new Batcher<long>(
            async (batch, _) =>
            {
                await Task.Yield();
                foreach (var item in batch)
                {
                    stored.TryAdd(item, 0);
                }
            },
            new BatcherOptions<long> { MaxBatchSize = 100, MaxDelay = TimeSpan.FromMilliseconds(50) });
        var queue = new WorkQueue<long>(
            async (item, ct) => await writer.AddAsync(item, ct),
            new WorkQueueOptions<long> { Capacity = 200, MaxConcurrency = 8 });
        shutdown.Register(writer); // drained last: the queue's handlers feed it
        shutdown.Register(queue);  // drained first
        var next = 0L;
        for (var p = 0; p < Producers; p++)
        {
            _ = shutdown.Run(async stopping =>
            {
                while (true)
                {
                    try
                    {
                        await queue.EnqueueAsync(Interlocked.Increment(ref next), stopping);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                }
            });
        }

        await AsyncAssert.EventuallyAsync(() => stored.Count > 5000, "items reach the writer", Flowing);
        var report = await shutdown.ShutdownAsync().WithTimeout();

        var queueStats = queue.GetStatistics();
        var writerStats = writer.GetStatistics();
        report.TimedOut.Should().BeFalse();
        report.Errors.Should().BeEmpty();
        queueStats.Handled.Should().Be(queueStats.Accepted);
        queueStats.Failed.Should().Be(0, "the writer was still open while the queue drained");
        writerStats.ItemsAccepted.Should().Be(queueStats.Accepted);
        writerStats.ItemsProcessed.Should().Be(writerStats.ItemsAccepted);
        stored.Count.Should().Be((int)queueStats.Accepted, "every accepted item reached the store exactly once");
    }
}
