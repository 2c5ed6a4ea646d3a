using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Queues;

/// <summary>
/// Adversarial tests of the line of producers waiting for room (FullMode.Wait): the leader waiting on the channel,
/// the pump admitting the rest in order, and what cancellation, closing and cut-short drains do to both.
/// </summary>
public sealed class WorkQueueProducerLineTests
{
    /// <summary>
    /// A queue with Capacity 1 and one worker whose handler waits for a permit per item (the handler's token
    /// abandons that wait). After setup the worker holds item 0 and item 1 fills the channel.
    /// </summary>
    private sealed class Gated
    {
        public SemaphoreSlim Permits { get; } = new(0);

        public ConcurrentQueue<int> Handled { get; } = new();

        public ConcurrentQueue<int> Failed { get; } = new();

        public ConcurrentQueue<int> Dropped { get; } = new();

        public WorkQueue<int> Queue { get; private set; } = null!;

        public static async Task<Gated> FullAsync(TimeSpan? drainTimeout = null)
        {
            var gated = new Gated();
            gated.Queue = new WorkQueue<int>(
                async (item, ct) =>
                {
                    await gated.Permits.WaitAsync(ct);
                    gated.Handled.Enqueue(item);
                },
                new WorkQueueOptions<int>
                {
                    Name = "line",
                    Capacity = 1,
                    MaxConcurrency = 1,
                    OnError = (item, _) => gated.Failed.Enqueue(item),
                    OnDropped = gated.Dropped.Enqueue,
                    DrainTimeout = drainTimeout ?? Timeout.InfiniteTimeSpan,
                });
            await gated.Queue.EnqueueAsync(0).WithTimeout();
            await AsyncAssert.EventuallyAsync(() => gated.Queue.InFlight == 1, "the worker holds item 0");
            gated.Queue.TryEnqueue(1).Should().BeTrue();
            gated.Queue.Count.Should().Be(1, "item 1 fills the channel");
            return gated;
        }

        /// <summary>Lets one handler finish, so the worker takes the next item and makes room for one.</summary>
        public void Step() => Permits.Release();

        public void AssertAccounting()
        {
            var stats = Queue.GetStatistics();
            stats.Accepted.Should().Be(stats.Handled + stats.Failed + stats.Dropped);
            stats.Handled.Should().Be(Handled.Count);
            stats.Failed.Should().Be(Failed.Count);
            stats.Dropped.Should().Be(Dropped.Count);
            stats.WaitingProducers.Should().Be(0);
        }
    }

    private static async Task ShouldBeCanceledAsync(Task task, CancellationToken token)
    {
        var error = await FluentActions.Awaiting(() => task.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        error.Which.CancellationToken.Should().Be(token);
    }

    private static async Task ShouldBeClosedAsync(Task task)
    {
        var error = await FluentActions.Awaiting(() => task.WithTimeout()).Should().ThrowExactlyAsync<InvalidOperationException>();
        error.Which.Message.Should().Contain("line");
    }

    [Fact]
    public async Task The_leader_cancelled_while_others_wait_hands_the_line_over_and_its_item_is_never_handled()
    {
        var g = await Gated.FullAsync();
        using var leaderCts = new CancellationTokenSource();
        var leader = g.Queue.EnqueueAsync(2, leaderCts.Token).AsTask();
        await AsyncAssert.StillPendingAsync(leader, "the queue is full");
        var second = g.Queue.EnqueueAsync(3).AsTask();
        var third = g.Queue.EnqueueAsync(4).AsTask();
        g.Queue.GetStatistics().WaitingProducers.Should().Be(3);
        g.Queue.GetStatistics().EnqueueWaits.Should().Be(3);

        await leaderCts.CancelAsync();
        await ShouldBeCanceledAsync(leader, leaderCts.Token);
        g.Queue.GetStatistics().WaitingProducers.Should().Be(2);
        await AsyncAssert.StillPendingAsync(second, "the queue is still full");
        g.Queue.TryEnqueue(99).Should().BeFalse("a line exists and the queue is full");

        g.Step();
        await second.WithTimeout();
        await AsyncAssert.StillPendingAsync(third, "one slot freed, one producer admitted");
        g.Queue.TryEnqueue(99).Should().BeFalse("the third producer still waits, it goes first");
        g.Step();
        await third.WithTimeout();

        g.Permits.Release(10);
        await g.Queue.DrainAsync().WithTimeout();
        g.Handled.Should().Equal(0, 1, 3, 4);
        g.AssertAccounting();
        g.Queue.GetStatistics().EnqueueWaits.Should().Be(3);
    }

    [Fact]
    public async Task A_cancelled_lone_leader_leaves_no_line_behind_so_TryEnqueue_succeeds_as_soon_as_there_is_room()
    {
        var g = await Gated.FullAsync();
        using var cts = new CancellationTokenSource();
        var leader = g.Queue.EnqueueAsync(2, cts.Token).AsTask();
        await AsyncAssert.StillPendingAsync(leader);
        await cts.CancelAsync();
        await ShouldBeCanceledAsync(leader, cts.Token);
        g.Queue.GetStatistics().WaitingProducers.Should().Be(0);

        g.Step();
        await AsyncAssert.EventuallyAsync(() => g.Queue.Count == 0, "the worker takes item 1");
        g.Queue.TryEnqueue(5).Should().BeTrue("no producer waits any more");

        g.Permits.Release(10);
        await g.Queue.DrainAsync().WithTimeout();
        g.Handled.Should().Equal(0, 1, 5);
        g.AssertAccounting();
    }

    [Fact]
    public async Task Every_waiter_cancelled_while_the_pump_waits_for_room_leaves_a_queue_that_accepts_again_once_there_is_room()
    {
        var g = await Gated.FullAsync();
        var leader = g.Queue.EnqueueAsync(2).AsTask();
        await AsyncAssert.StillPendingAsync(leader);
        using var cts = new CancellationTokenSource();
        var waiters = Enumerable.Range(3, 5).Select(i => g.Queue.EnqueueAsync(i, cts.Token).AsTask()).ToArray();

        // Room for the leader: it writes item 2 and the pump takes over the line, then waits for room.
        g.Step();
        await leader.WithTimeout();
        await AsyncAssert.StillPendingAsync(waiters[0], "the queue is full again");

        await cts.CancelAsync();
        foreach (var waiter in waiters)
        {
            await ShouldBeCanceledAsync(waiter, cts.Token);
        }

        g.Queue.GetStatistics().WaitingProducers.Should().Be(0);
        g.Queue.TryEnqueue(98).Should().BeFalse("the queue is still full");

        // A producer that arrives now queues behind the dead waiters and is admitted at the next room.
        var late = g.Queue.EnqueueAsync(8).AsTask();
        await AsyncAssert.StillPendingAsync(late);
        g.Step();
        await late.WithTimeout();

        g.Step();
        await AsyncAssert.EventuallyAsync(() => g.Queue.TryEnqueue(9), "with room and nobody waiting, TryEnqueue accepts");

        g.Permits.Release(10);
        await g.Queue.DrainAsync().WithTimeout();
        g.Handled.Should().Equal(0, 1, 2, 8, 9);
        g.AssertAccounting();
        g.Queue.GetStatistics().EnqueueWaits.Should().Be(7, "the leader, five cancelled waiters and the late one waited");
    }

    [Fact]
    public async Task Complete_while_the_leader_and_the_line_wait_refuses_them_all_and_none_of_their_items_is_handled()
    {
        var g = await Gated.FullAsync();
        using var cts = new CancellationTokenSource();
        var leader = g.Queue.EnqueueAsync(2, cts.Token).AsTask();
        await AsyncAssert.StillPendingAsync(leader);
        var line = new[]
        {
            g.Queue.EnqueueAsync(3, cts.Token).AsTask(),
            g.Queue.EnqueueAsync(4).AsTask(),
            g.Queue.EnqueueAsync(5, cts.Token).AsTask(),
        };

        g.Queue.Complete();
        await ShouldBeClosedAsync(leader);
        foreach (var waiter in line)
        {
            await ShouldBeClosedAsync(waiter);
        }

        g.Queue.GetStatistics().WaitingProducers.Should().Be(0);
        await cts.CancelAsync(); // too late: changes nothing

        g.Permits.Release(10);
        await g.Queue.Completion.WithTimeout();
        g.Handled.Should().Equal(0, 1);
        g.AssertAccounting();
        g.Queue.GetStatistics().Accepted.Should().Be(2);
        g.Queue.TryEnqueue(6).Should().BeFalse();
        await ShouldBeClosedAsync(g.Queue.EnqueueAsync(7).AsTask());
    }

    [Fact]
    public async Task Complete_while_the_pump_waits_for_room_refuses_the_line_and_the_leaders_item_is_still_handled()
    {
        var g = await Gated.FullAsync();
        var leader = g.Queue.EnqueueAsync(2).AsTask();
        await AsyncAssert.StillPendingAsync(leader);
        var line = Enumerable.Range(3, 3).Select(i => g.Queue.EnqueueAsync(i).AsTask()).ToArray();
        g.Step();
        await leader.WithTimeout();
        await AsyncAssert.StillPendingAsync(line[0], "the pump waits for room");

        g.Queue.Complete();
        foreach (var waiter in line)
        {
            await ShouldBeClosedAsync(waiter);
        }

        g.Permits.Release(10);
        await g.Queue.Completion.WithTimeout();
        g.Handled.Should().Equal(0, 1, 2);
        g.AssertAccounting();
    }

    [Fact]
    public async Task A_drain_cut_short_while_the_leader_and_the_line_wait_refuses_them_drops_the_waiting_item_and_cancels_the_handler()
    {
        var g = await Gated.FullAsync();
        using var cts = new CancellationTokenSource();
        var leader = g.Queue.EnqueueAsync(2, cts.Token).AsTask();
        await AsyncAssert.StillPendingAsync(leader);
        var line = Enumerable.Range(3, 3).Select(i => g.Queue.EnqueueAsync(i).AsTask()).ToArray();

        await FluentActions.Awaiting(() => g.Queue.DrainAsync(new CancellationToken(canceled: true)).WithTimeout())
            .Should().ThrowAsync<OperationCanceledException>();
        await ShouldBeClosedAsync(leader);
        foreach (var waiter in line)
        {
            await ShouldBeClosedAsync(waiter);
        }

        await g.Queue.Completion.WithTimeout();
        g.Handled.Should().BeEmpty();
        g.Failed.Should().Equal(0);
        g.Dropped.Should().Equal(1);
        g.AssertAccounting();
        g.Queue.GetStatistics().Accepted.Should().Be(2);
    }

    [Fact]
    public async Task A_drain_with_a_deadline_refuses_the_line_at_once_and_only_the_deadline_cancels_the_handler()
    {
        var g = await Gated.FullAsync();
        var leader = g.Queue.EnqueueAsync(2).AsTask();
        await AsyncAssert.StillPendingAsync(leader);
        var line = Enumerable.Range(3, 3).Select(i => g.Queue.EnqueueAsync(i).AsTask()).ToArray();
        g.Step();
        await leader.WithTimeout();

        using var deadline = new CancellationTokenSource();
        var drain = g.Queue.DrainAsync(deadline.Token);
        foreach (var waiter in line)
        {
            await ShouldBeClosedAsync(waiter);
        }

        await AsyncAssert.StillPendingAsync(drain, "item 1 is still in its handler");
        g.Handled.Should().Equal(0);

        await deadline.CancelAsync();
        await FluentActions.Awaiting(() => drain.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await g.Queue.Completion.WithTimeout();
        g.Failed.Should().Equal(1);
        g.Dropped.Should().Equal(new[] { 2 }, "the leader's item was accepted, then abandoned by the cut-short drain");
        g.AssertAccounting();
    }

    [Fact]
    public async Task DisposeAsync_with_a_zero_DrainTimeout_while_the_leader_and_the_line_wait_never_throws_and_accounts_for_everything()
    {
        var g = await Gated.FullAsync(drainTimeout: TimeSpan.Zero);
        using var cts = new CancellationTokenSource();
        var leader = g.Queue.EnqueueAsync(2, cts.Token).AsTask();
        await AsyncAssert.StillPendingAsync(leader);
        var line = Enumerable.Range(3, 3).Select(i => g.Queue.EnqueueAsync(i, cts.Token).AsTask()).ToArray();

        await g.Queue.DisposeAsync().AsTask().WithTimeout();
        await ShouldBeClosedAsync(leader);
        foreach (var waiter in line)
        {
            await ShouldBeClosedAsync(waiter);
        }

        await g.Queue.Completion.WithTimeout();
        g.Dropped.Should().Equal(1);
        g.Failed.Should().Equal(0);
        g.AssertAccounting();
    }

    [Fact]
    public async Task Producers_that_arrive_while_the_pump_serves_the_line_queue_behind_it_and_TryEnqueue_never_barges_in()
    {
        var g = await Gated.FullAsync();
        var writes = new List<Task> { g.Queue.EnqueueAsync(2).AsTask() };
        await AsyncAssert.StillPendingAsync(writes[0]);
        writes.Add(g.Queue.EnqueueAsync(3).AsTask());
        writes.Add(g.Queue.EnqueueAsync(4).AsTask());

        for (var next = 5; next < 10; next++)
        {
            g.Step();
            writes.Add(g.Queue.EnqueueAsync(next).AsTask());
            g.Queue.TryEnqueue(100 + next).Should().BeFalse("producers are waiting");
            await writes[next - 5].WithTimeout();
        }

        g.Permits.Release(100);
        await Task.WhenAll(writes).WithTimeout();
        await g.Queue.DrainAsync().WithTimeout();
        g.Handled.Should().Equal(Enumerable.Range(0, 10), "every producer was admitted in arrival order");
        g.AssertAccounting();
    }

    [Fact]
    public async Task A_token_that_fires_after_admission_changes_nothing()
    {
        var g = await Gated.FullAsync();
        using var cts = new CancellationTokenSource();
        var leader = g.Queue.EnqueueAsync(2, cts.Token).AsTask();
        var waiter = g.Queue.EnqueueAsync(3, cts.Token).AsTask();
        g.Step();
        await leader.WithTimeout();
        g.Step();
        await waiter.WithTimeout();

        await cts.CancelAsync();
        g.Permits.Release(10);
        await g.Queue.DrainAsync().WithTimeout();
        g.Handled.Should().Equal(0, 1, 2, 3);
        g.AssertAccounting();
    }

    [Theory]
    [InlineData(BoundedChannelFullMode.DropNewest)]
    [InlineData(BoundedChannelFullMode.DropOldest)]
    [InlineData(BoundedChannelFullMode.DropWrite)]
    public async Task Drop_modes_never_wait_and_never_form_a_line(BoundedChannelFullMode mode)
    {
        using var release = new SemaphoreSlim(0);
        var dropped = 0;
        var queue = new WorkQueue<int>(
            async (_, ct) => await release.WaitAsync(ct),
            new WorkQueueOptions<int> { Capacity = 1, MaxConcurrency = 1, FullMode = mode, OnDropped = _ => Interlocked.Increment(ref dropped) });
        using var cts = new CancellationTokenSource();
        for (var i = 0; i < 50; i++)
        {
            var write = queue.EnqueueAsync(i, i % 2 == 0 ? cts.Token : default);
            write.IsCompletedSuccessfully.Should().BeTrue("a drop mode never waits");
            queue.TryEnqueue(1000 + i).Should().BeTrue();
        }

        var stats = queue.GetStatistics();
        stats.WaitingProducers.Should().Be(0);
        stats.EnqueueWaits.Should().Be(0);
        release.Release(1000);
        await queue.DrainAsync().WithTimeout();
        stats = queue.GetStatistics();
        stats.Accepted.Should().Be(100);
        stats.Accepted.Should().Be(stats.Handled + stats.Failed + stats.Dropped);
        stats.Dropped.Should().Be(Volatile.Read(ref dropped));
    }

    [Fact]
    public async Task Cancellation_registrations_of_admitted_and_refused_producers_are_released()
    {
        // A token that outlives the queue: if a producer's registration were left on it, the token would keep the
        // producer (and its item) alive.
        using var longLived = new CancellationTokenSource();
        var release = new SemaphoreSlim(0);
        var queue = new WorkQueue<object>(
            async (_, ct) => await release.WaitAsync(ct),
            new WorkQueueOptions<object> { Capacity = 1, MaxConcurrency = 1 });
        await queue.EnqueueAsync(new object()).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        queue.TryEnqueue(new object()).Should().BeTrue();

        var (admitted, admittedItems) = StartProducers(queue, 5, longLived.Token);
        await AsyncAssert.StillPendingAsync(admitted);
        release.Release(6);
        await admitted.WithTimeout();

        var (refused, refusedItems) = StartProducers(queue, 5, longLived.Token);
        await AsyncAssert.StillPendingAsync(refused);
        queue.Complete();
        await FluentActions.Awaiting(() => refused.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        release.Release(100);
        await queue.Completion.WithTimeout();
        await Task.Delay(50); // let the workers' and pump's last continuations unwind

        for (var attempt = 0; attempt < 10 && admittedItems.Concat(refusedItems).Any(w => w.IsAlive); attempt++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            await Task.Delay(10);
        }

        admittedItems.Should().OnlyContain(w => !w.IsAlive, "the registration of an admitted producer is disposed");
        refusedItems.Should().OnlyContain(w => !w.IsAlive, "the registration of a refused producer is disposed");
        longLived.IsCancellationRequested.Should().BeFalse();
        GC.KeepAlive(queue);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static (Task All, WeakReference[] Items) StartProducers(WorkQueue<object> queue, int count, CancellationToken token)
    {
        var items = new WeakReference[count];
        var tasks = new Task[count];
        for (var i = 0; i < count; i++)
        {
            var item = new object();
            items[i] = new WeakReference(item);
            tasks[i] = queue.EnqueueAsync(item, token).AsTask();
        }

        return (Task.WhenAll(tasks), items);
    }

    /// <summary>
    /// Two threads close the queue at once; the one that loses the race must not return from Complete (or from a
    /// drain cut short) before the queue refuses work: a TryEnqueue or an admission from the line after that is an
    /// item accepted by a closed queue, after a drain that promised to refuse new work.
    /// </summary>
    [Fact]
    public void Complete_returns_only_once_the_queue_refuses_work_even_when_another_thread_is_closing_it_at_the_same_moment()
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var iterations = 0;
        var acceptedAfterClose = 0;
        var stop = false;
        var queue = new WorkQueue<int>(static (_, _) => default, new WorkQueueOptions<int> { Capacity = 4 });
        var lateAccepted = false;
        using var barrier = new Barrier(2, b =>
        {
            if (b.CurrentPhaseNumber % 2 == 1)
            {
                iterations++;
                acceptedAfterClose += lateAccepted ? 1 : 0;
                lateAccepted = false;
                queue.DrainAsync().Wait();
                queue = new WorkQueue<int>(static (_, _) => default, new WorkQueueOptions<int> { Capacity = 4 });
                // Enough rounds to hit the race (about 1 in 3,000 before the fix), bounded in time for a loaded machine.
                stop = acceptedAfterClose > 0 || iterations >= 20_000 || clock.Elapsed > TimeSpan.FromSeconds(3);
            }
        });

        var first = new Thread(() =>
        {
            while (!Volatile.Read(ref stop))
            {
                barrier.SignalAndWait();
                queue.Complete();
                barrier.SignalAndWait();
            }
        });
        var second = new Thread(() =>
        {
            while (!Volatile.Read(ref stop))
            {
                barrier.SignalAndWait();
                queue.Complete();
                lateAccepted = queue.TryEnqueue(1);
                barrier.SignalAndWait();
            }
        });
        first.Start();
        second.Start();
        first.Join(TimeSpan.FromSeconds(30)).Should().BeTrue();
        second.Join(TimeSpan.FromSeconds(30)).Should().BeTrue();

        acceptedAfterClose.Should().Be(0, $"TryEnqueue after Complete returned must refuse (iteration {iterations})");
        iterations.Should().BeGreaterThan(10, "the test must have raced Complete against Complete at least a few times");
    }

    private const int Accepted = 1;
    private const int Cancelled = 2;
    private const int Closed = 3;
    private const int Refused = 4;

    /// <summary>
    /// Many producers on tiny room, random cancellations (before, during and after the wait), random handler faults,
    /// and at a random moment Complete, DrainAsync (with or without a deadline, or already cut short) or DisposeAsync.
    /// Each item: its enqueue succeeded if and only if it was handled, failed or dropped, exactly once.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Stress_random_closing_every_item_ends_exactly_once_if_and_only_if_its_enqueue_succeeded(int seed)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var rounds = 0;
        for (var round = 0; round < 40 && (round < 4 || clock.Elapsed < TimeSpan.FromSeconds(3)); round++)
        {
            await RunClosingRoundAsync((seed * 1000) + round).WaitAsync(TimeSpan.FromSeconds(20));
            rounds++;
        }

        rounds.Should().BeGreaterThan(0);
    }

    private static async Task RunClosingRoundAsync(int seed)
    {
        var random = new Random(seed);
        const int Producers = 12;
        const int PerProducer = 120;
        var total = Producers * PerProducer;
        var ends = new int[total]; // handled + failed + dropped, per item
        var calls = new int[total];
        var outcome = new int[total];
        var unexpected = new ConcurrentQueue<Exception>();
        long errors = 0, drops = 0;
        var capacity = random.Next(1, 4);
        var workers = random.Next(1, 4);
        var closeMode = random.Next(6);
        var drainTimeout = closeMode == 5 ? TimeSpan.FromMilliseconds(random.Next(0, 3)) : Timeout.InfiniteTimeSpan;

        var queue = new WorkQueue<int>(
            async (item, ct) =>
            {
                Interlocked.Increment(ref calls[item]);
                switch ((uint)HashCode.Combine(item, seed) % 10)
                {
                    case 0:
                        throw new InvalidOperationException("fault");
                    case 1:
                        await Task.Delay(1, ct);
                        break;
                    case 2:
                    case 3:
                        await Task.Yield();
                        break;
                }

                Interlocked.Increment(ref ends[item]);
            },
            new WorkQueueOptions<int>
            {
                Name = "stress",
                Capacity = capacity,
                MaxConcurrency = workers,
                DrainTimeout = drainTimeout,
                OnError = (item, _) =>
                {
                    Interlocked.Increment(ref ends[item]);
                    Interlocked.Increment(ref errors);
                },
                OnDropped = item =>
                {
                    Interlocked.Increment(ref ends[item]);
                    Interlocked.Increment(ref drops);
                },
            });

        var attempted = 0;
        var closeAt = random.Next(total / 8, total + (total / 4)); // sometimes never: everything enqueued first
        var closeGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var closer = Task.Run(async () =>
        {
            await closeGate.Task;
            try
            {
                switch (closeMode)
                {
                    case 0:
                        queue.Complete();
                        break;
                    case 1:
                        await queue.DrainAsync();
                        break;
                    case 2:
                        await queue.DrainAsync(new CancellationToken(canceled: true));
                        break;
                    case 3:
                        using (var deadline = new CancellationTokenSource(TimeSpan.FromMilliseconds(random.Next(0, 4))))
                        {
                            await queue.DrainAsync(deadline.Token);
                        }

                        break;
                    default:
                        await queue.DisposeAsync();
                        break;
                }
            }
            catch (OperationCanceledException) when (closeMode is 2 or 3)
            {
            }
        });

        var producers = Enumerable.Range(0, Producers).Select(p => Task.Run(async () =>
        {
            var rnd = new Random(HashCode.Combine(seed, p));
            for (var i = 0; i < PerProducer; i++)
            {
                var item = (p * PerProducer) + i;
                if (Interlocked.Increment(ref attempted) == closeAt)
                {
                    closeGate.TrySetResult();
                }

                var kind = rnd.Next(10);
                if (kind == 0)
                {
                    outcome[item] = queue.TryEnqueue(item) ? Accepted : Refused;
                    continue;
                }

                CancellationTokenSource? cts = kind <= 4 ? new CancellationTokenSource() : null;
                try
                {
                    var write = queue.EnqueueAsync(item, cts?.Token ?? default);
                    switch (kind)
                    {
                        case 1:
                            cts!.Cancel();
                            break;
                        case 2:
                            cts!.CancelAfter(rnd.Next(0, 2));
                            break;
                        case 3:
                            _ = Task.Run(cts!.Cancel);
                            break;
                    }

                    await write;
                    outcome[item] = Accepted;
                }
                catch (OperationCanceledException oce) when (cts is not null && oce.CancellationToken == cts.Token)
                {
                    outcome[item] = Cancelled;
                }
                catch (InvalidOperationException) when (queue.GetStatistics().IsClosed)
                {
                    outcome[item] = Closed;
                }
                catch (Exception ex)
                {
                    unexpected.Enqueue(ex);
                }
                finally
                {
                    // Cancel late too, so a registration left behind would run against a finished waiter. (Not
                    // disposed: a Task.Run(cts.Cancel) may still be pending, and a cancelled source needs no disposal.)
                    if (cts is not null)
                    {
                        await Task.Yield();
                        cts.Cancel();
                    }
                }
            }
        })).ToArray();

        await Task.WhenAll(producers).WithTimeout(TimeSpan.FromSeconds(15));
        closeGate.TrySetResult();
        await closer.WithTimeout(TimeSpan.FromSeconds(15));
        await queue.DrainAsync().WithTimeout(TimeSpan.FromSeconds(15));
        await queue.DisposeAsync();

        unexpected.Should().BeEmpty($"seed {seed}");
        var stats = queue.GetStatistics();
        for (var item = 0; item < total; item++)
        {
            if (outcome[item] == Accepted)
            {
                Volatile.Read(ref ends[item]).Should().Be(1, $"item {item} was accepted (seed {seed}, close mode {closeMode})");
            }
            else
            {
                outcome[item].Should().NotBe(0, $"item {item} got an outcome (seed {seed})");
                Volatile.Read(ref calls[item]).Should().Be(0, $"item {item} ended with outcome {outcome[item]} (seed {seed}, close mode {closeMode})");
                Volatile.Read(ref ends[item]).Should().Be(0, $"item {item} ended with outcome {outcome[item]} (seed {seed}, close mode {closeMode})");
            }
        }

        stats.Accepted.Should().Be(outcome.Count(o => o == Accepted), $"seed {seed}");
        stats.Accepted.Should().Be(stats.Handled + stats.Failed + stats.Dropped, $"seed {seed}");
        stats.Failed.Should().Be(Interlocked.Read(ref errors));
        stats.Dropped.Should().Be(Interlocked.Read(ref drops));
        stats.WaitingProducers.Should().Be(0, $"seed {seed}");
        stats.EnqueueWaits.Should().BeGreaterThanOrEqualTo(0);
    }

    /// <summary>
    /// No closing: producers on a queue of one slot, cancelled at random moments, so the pump often claims a head whose
    /// token is firing and the line often empties just as new producers arrive. Afterwards the line must be gone
    /// (TryEnqueue accepts on an idle queue) and every item accounted for.
    /// </summary>
    [Fact]
    public async Task Stress_line_handover_the_line_always_ends_and_nothing_is_lost_or_doubled()
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (var round = 0; round < 30 && (round < 3 || clock.Elapsed < TimeSpan.FromSeconds(3)); round++)
        {
            await RunHandoverRoundAsync(round).WaitAsync(TimeSpan.FromSeconds(20));
        }
    }

    private static async Task RunHandoverRoundAsync(int seed)
    {
        const int Producers = 16;
        const int PerProducer = 150;
        var total = Producers * PerProducer;
        var handled = new int[total + 1];
        var outcome = new int[total + 1];
        var unexpected = new ConcurrentQueue<Exception>();
        var queue = new WorkQueue<int>(
            async (item, _) =>
            {
                if (item % 3 == 0)
                {
                    await Task.Yield();
                }

                Interlocked.Increment(ref handled[item]);
            },
            new WorkQueueOptions<int> { Capacity = 1, MaxConcurrency = 1 + (seed % 2) });

        var producers = Enumerable.Range(0, Producers).Select(p => Task.Run(async () =>
        {
            var rnd = new Random(HashCode.Combine(seed, p, 17));
            for (var i = 0; i < PerProducer; i++)
            {
                var item = (p * PerProducer) + i;
                if (rnd.Next(8) == 0)
                {
                    outcome[item] = queue.TryEnqueue(item) ? Accepted : Refused;
                    continue;
                }

                var cts = new CancellationTokenSource(); // not disposed: a Task.Run(cts.Cancel) may still be pending
                var write = queue.EnqueueAsync(item, cts.Token).AsTask();
                switch (rnd.Next(4))
                {
                    case 0:
                        cts.Cancel();
                        break;
                    case 1:
                        _ = Task.Run(cts.Cancel);
                        break;
                }

                try
                {
                    await write;
                    outcome[item] = Accepted;
                }
                catch (OperationCanceledException oce) when (oce.CancellationToken == cts.Token)
                {
                    outcome[item] = Cancelled;
                }
                catch (Exception ex)
                {
                    unexpected.Enqueue(ex);
                }
            }
        })).ToArray();

        await Task.WhenAll(producers).WithTimeout(TimeSpan.FromSeconds(15));
        unexpected.Should().BeEmpty();
        queue.GetStatistics().WaitingProducers.Should().Be(0);

        // Idle queue, nobody waiting: the line must end and the queue accept again without waiting.
        await AsyncAssert.EventuallyAsync(() => queue.TryEnqueue(total), "the line ends once nobody waits", TimeSpan.FromSeconds(5));
        outcome[total] = Accepted;

        await queue.DrainAsync().WithTimeout(TimeSpan.FromSeconds(15));
        for (var item = 0; item <= total; item++)
        {
            handled[item].Should().Be(outcome[item] == Accepted ? 1 : 0, $"item {item} ended with outcome {outcome[item]} (seed {seed})");
        }

        var stats = queue.GetStatistics();
        stats.Accepted.Should().Be(outcome.Count(o => o == Accepted));
        stats.Handled.Should().Be(stats.Accepted);
        stats.WaitingProducers.Should().Be(0);
    }
}
