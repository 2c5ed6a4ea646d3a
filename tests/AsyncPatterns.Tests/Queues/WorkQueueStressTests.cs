using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Queues;

public sealed class WorkQueueStressTests
{
    private const int Producers = 8;
    private const int ItemsPerProducer = 100_000;

    [Fact]
    public async Task Eight_producers_four_workers_with_faults_and_cancellations_lose_nothing_and_handle_nothing_twice()
    {
        // calls[item] counts handler calls; an accepted item must be called exactly once, a cancelled one never.
        var calls = new int[Producers * ItemsPerProducer];
        var accepted = new bool[Producers * ItemsPerProducer];
        long errors = 0;
        long dropped = 0;
        var queue = new WorkQueue<int>(
            async (item, _) =>
            {
                Interlocked.Increment(ref calls[item]);
                if (item % 1000 == 999)
                {
                    await Task.Yield(); // some handlers complete asynchronously
                }

                if (Hash(item) % 100 == 0)
                {
                    throw new InvalidOperationException("about 1% of handler calls fail");
                }
            },
            new WorkQueueOptions<int>
            {
                Name = "stress",
                Capacity = 64,
                MaxConcurrency = 4,
                OnError = (_, _) => Interlocked.Increment(ref errors),
                OnDropped = _ => Interlocked.Increment(ref dropped),
            });

        var cancelledEnqueues = 0L;
        var producers = Enumerable.Range(0, Producers).Select(p => Task.Run(async () =>
        {
            for (var i = 0; i < ItemsPerProducer; i++)
            {
                var item = (p * ItemsPerProducer) + i;
                if (Hash(item + 7) % 100 == 1)
                {
                    // About 1% of enqueues are cancelled; usually while waiting for room, sometimes too late.
                    using var cts = new CancellationTokenSource();
                    var enqueue = queue.EnqueueAsync(item, cts.Token);
                    cts.Cancel();
                    try
                    {
                        await enqueue;
                        accepted[item] = true;
                    }
                    catch (OperationCanceledException)
                    {
                        Interlocked.Increment(ref cancelledEnqueues);
                    }
                }
                else
                {
                    await queue.EnqueueAsync(item);
                    accepted[item] = true;
                }
            }
        })).ToArray();

        await Task.WhenAll(producers).WithTimeout(TimeSpan.FromSeconds(60));
        await queue.DrainAsync().WithTimeout(TimeSpan.FromSeconds(60));

        var stats = queue.GetStatistics();
        var acceptedCount = accepted.LongCount(a => a);
        stats.Accepted.Should().Be(acceptedCount);
        (stats.Handled + stats.Failed + stats.Dropped).Should().Be(stats.Accepted);
        stats.Dropped.Should().Be(0);
        Interlocked.Read(ref dropped).Should().Be(0);
        stats.Failed.Should().Be(Interlocked.Read(ref errors));
        stats.Failed.Should().BeInRange(5_000, 11_000, "about 1% of 800,000 handler calls throw");
        Interlocked.Read(ref cancelledEnqueues).Should().BeGreaterThan(0, "some enqueues were cancelled while waiting");
        (acceptedCount + Interlocked.Read(ref cancelledEnqueues)).Should().Be(Producers * ItemsPerProducer);

        for (var item = 0; item < calls.Length; item++)
        {
            if (calls[item] != (accepted[item] ? 1 : 0))
            {
                Assert.Fail($"item {item}: accepted {accepted[item]}, handler called {calls[item]} times");
            }
        }
    }

    [Fact]
    public async Task Producers_racing_a_drain_that_is_cut_short_still_account_for_every_accepted_item()
    {
        const int producers = 4;
        const int perProducer = 20_000;
        var outcomes = new int[producers * perProducer]; // handled, failed or dropped: each accepted item exactly once
        var accepted = new bool[producers * perProducer];
        var queue = new WorkQueue<int>(
            async (item, token) =>
            {
                if (item % 3 == 0)
                {
                    await Task.Yield();
                }

                token.ThrowIfCancellationRequested();
                Interlocked.Increment(ref outcomes[item]);
            },
            new WorkQueueOptions<int>
            {
                Capacity = 32,
                MaxConcurrency = 3,
                OnError = (item, _) => Interlocked.Increment(ref outcomes[item]),
                OnDropped = item => Interlocked.Increment(ref outcomes[item]),
            });

        var tasks = Enumerable.Range(0, producers).Select(p => Task.Run(async () =>
        {
            for (var i = 0; i < perProducer; i++)
            {
                var item = (p * perProducer) + i;
                try
                {
                    await queue.EnqueueAsync(item);
                    accepted[item] = true;
                }
                catch (InvalidOperationException)
                {
                    return; // closed by the drain
                }
            }
        })).ToArray();

        await AsyncAssert.EventuallyAsync(() => queue.GetStatistics().Handled > 5_000);
        using var cts = new CancellationTokenSource();
        var drain = queue.DrainAsync(cts.Token);
        await cts.CancelAsync();
        try
        {
            await drain.WithTimeout();
        }
        catch (OperationCanceledException)
        {
            // Expected unless the backlog was already done.
        }

        await Task.WhenAll(tasks).WithTimeout();
        await queue.Completion.WithTimeout();

        var stats = queue.GetStatistics();
        stats.Accepted.Should().Be(accepted.LongCount(a => a));
        (stats.Handled + stats.Failed + stats.Dropped).Should().Be(stats.Accepted);
        for (var item = 0; item < outcomes.Length; item++)
        {
            if (outcomes[item] != (accepted[item] ? 1 : 0))
            {
                Assert.Fail($"item {item}: accepted {accepted[item]}, outcomes {outcomes[item]}");
            }
        }
    }

    // A cheap deterministic scramble, so faults and cancellations spread over every producer.
    private static int Hash(int value) => (int)(((uint)value * 2654435761u) >> 8);
}
