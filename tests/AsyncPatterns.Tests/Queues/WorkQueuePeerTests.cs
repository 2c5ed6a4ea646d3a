using System.Collections.Concurrent;
using System.Threading.Channels;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Queues;

/// <summary>
/// Behaviours ported from dotnet/runtime's System.Threading.Channels tests (BoundedChannelTests, ChannelTestBase) and
/// TPL Dataflow's ActionBlockTests, restated for WorkQueue: what a user coming from a bounded channel or an
/// ActionBlock expects, or the documented place where DESIGN.md differs.
/// </summary>
public sealed class WorkQueuePeerTests
{
    /// <summary>A queue whose single worker is parked inside the handler of item -1, so items stay waiting.</summary>
    private static async Task<(WorkQueue<int> Queue, TaskCompletionSource Release, ConcurrentQueue<int> Handled, ConcurrentQueue<int> Dropped)> ParkedQueueAsync(
        int capacity, BoundedChannelFullMode mode = BoundedChannelFullMode.Wait)
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var handled = new ConcurrentQueue<int>();
        var dropped = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(
            async (item, _) =>
            {
                if (item == -1)
                {
                    await release.Task;
                }

                handled.Enqueue(item);
            },
            new WorkQueueOptions<int> { Capacity = capacity, MaxConcurrency = 1, FullMode = mode, OnDropped = dropped.Enqueue });
        await queue.EnqueueAsync(-1).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1, "the worker holds item -1");
        return (queue, release, handled, dropped);
    }

    // BoundedChannelTests.Count_IncrementsDecrementsAsExpected
    [Fact]
    public async Task Count_rises_with_each_waiting_item_stays_at_Capacity_when_full_and_falls_as_workers_take_items()
    {
        var (queue, release, handled, _) = await ParkedQueueAsync(capacity: 3);
        for (var i = 0; i < 3; i++)
        {
            queue.Count.Should().Be(i);
            queue.TryEnqueue(i).Should().BeTrue();
            queue.Count.Should().Be(i + 1);
        }

        queue.TryEnqueue(42).Should().BeFalse("the queue is full in Wait mode");
        queue.Count.Should().Be(3);

        release.SetResult();
        await queue.DrainAsync().WithTimeout();
        queue.Count.Should().Be(0);
        handled.Should().Equal(-1, 0, 1, 2);
    }

    // BoundedChannelTests.TryWrite_TryRead_Many_{DropOldest,DropNewest,Ignore} and DroppedDelegateCalledOnChannelFull_*
    [Theory]
    [InlineData(BoundedChannelFullMode.DropOldest, new[] { 0, 1, 2 }, new[] { 3, 4, 5 })]
    [InlineData(BoundedChannelFullMode.DropNewest, new[] { 2, 3, 4 }, new[] { 0, 1, 5 })]
    [InlineData(BoundedChannelFullMode.DropWrite, new[] { 3, 4, 5 }, new[] { 0, 1, 2 })]
    public async Task Drop_modes_accept_every_write_keep_what_a_bounded_channel_keeps_and_account_for_every_item(
        BoundedChannelFullMode mode, int[] expectedDropped, int[] expectedHandled)
    {
        var (queue, release, handled, dropped) = await ParkedQueueAsync(capacity: 3, mode);
        for (var i = 0; i < 6; i++)
        {
            if (i % 2 == 0)
            {
                queue.TryEnqueue(i).Should().BeTrue("a drop mode never refuses a write (as TryWrite on a channel)");
            }
            else
            {
                queue.EnqueueAsync(i).AsTask().IsCompletedSuccessfully.Should().BeTrue("a drop mode never waits");
            }
        }

        dropped.Should().Equal(expectedDropped);
        release.SetResult();
        await queue.DrainAsync().WithTimeout();

        handled.Should().Equal(new[] { -1 }.Concat(expectedHandled));
        var stats = queue.GetStatistics();
        stats.Accepted.Should().Be(7);
        stats.Dropped.Should().Be(3);
        stats.Accepted.Should().Be(stats.Handled + stats.Failed + stats.Dropped);
    }

    // BoundedChannelTests.DroppedDelegateNotCalledOnWaitMode_*
    [Fact]
    public async Task Wait_mode_never_calls_OnDropped()
    {
        var (queue, release, _, dropped) = await ParkedQueueAsync(capacity: 1);
        queue.TryEnqueue(1).Should().BeTrue();
        queue.TryEnqueue(2).Should().BeFalse();
        var waiting = queue.EnqueueAsync(3).AsTask();
        await AsyncAssert.StillPendingAsync(waiting);

        release.SetResult();
        await waiting.WithTimeout();
        await queue.DrainAsync().WithTimeout();
        dropped.Should().BeEmpty();
    }

    // BoundedChannelTests.DroppedDelegateCalledAfterLockReleased_*
    [Theory]
    [InlineData(BoundedChannelFullMode.DropOldest)]
    [InlineData(BoundedChannelFullMode.DropNewest)]
    [InlineData(BoundedChannelFullMode.DropWrite)]
    public async Task OnDropped_runs_outside_the_queues_lock_so_it_may_enqueue_from_another_thread(BoundedChannelFullMode mode)
    {
        WorkQueue<int>? queue = null;
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var reentered = 0;
        queue = new WorkQueue<int>(
            async (item, _) =>
            {
                if (item == -1)
                {
                    await release.Task;
                }
            },
            new WorkQueueOptions<int>
            {
                Capacity = 1,
                FullMode = mode,
                OnDropped = _ =>
                {
                    if (Interlocked.Increment(ref reentered) != 1)
                    {
                        return;
                    }

                    // Deadlocks (and times out) if the callback runs while the channel's lock is held.
                    Task.Run(() => queue!.TryEnqueue(3)).Wait(TimeSpan.FromSeconds(10)).Should().BeTrue();
                },
            });
        await queue.EnqueueAsync(-1).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);

        queue.TryEnqueue(1).Should().BeTrue();
        await Task.Run(() => queue.TryEnqueue(2)).WithTimeout();

        reentered.Should().BeGreaterThan(0);
        release.SetResult();
        await queue.DrainAsync().WithTimeout();
        var stats = queue.GetStatistics();
        stats.Accepted.Should().Be(stats.Handled + stats.Failed + stats.Dropped);
    }

    // BoundedChannelTests.CancelPendingWrite_Reading_DataTransferredFromCorrectWriter
    [Fact]
    public async Task A_cancelled_waiting_producer_leaves_no_item_and_the_next_waiting_producer_gets_the_room()
    {
        var (queue, release, handled, _) = await ParkedQueueAsync(capacity: 1);
        queue.TryEnqueue(42).Should().BeTrue();

        using var cts = new CancellationTokenSource();
        var write1 = queue.EnqueueAsync(43, cts.Token).AsTask();
        await AsyncAssert.StillPendingAsync(write1);
        await cts.CancelAsync();
        var write2 = queue.EnqueueAsync(44).AsTask();

        release.SetResult();
        var canceled = await FluentActions.Awaiting(() => write1.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        canceled.Which.CancellationToken.Should().Be(cts.Token, "the exception carries the caller's token");
        await write2.WithTimeout();
        await queue.DrainAsync().WithTimeout();

        handled.Should().Equal(-1, 42, 44);
        queue.GetStatistics().Accepted.Should().Be(3);
    }

    // ChannelTestBase.ManyWriteAsync_ThenManyTryRead_Success (on a bounded channel of capacity 1) and
    // ActionBlockTests.TestNonGreedy: producers that wait for room are admitted in the order they started waiting.
    [Fact]
    public async Task Waiting_producers_are_admitted_first_in_first_out()
    {
        var (queue, release, handled, _) = await ParkedQueueAsync(capacity: 1);
        queue.TryEnqueue(0).Should().BeTrue();

        const int Producers = 200;
        var writes = new Task[Producers];
        for (var i = 1; i <= Producers; i++)
        {
            writes[i - 1] = queue.EnqueueAsync(i).AsTask();
        }

        writes.Should().OnlyContain(w => !w.IsCompleted, "the queue is full");
        queue.GetStatistics().WaitingProducers.Should().Be(Producers);

        release.SetResult();
        await Task.WhenAll(writes).WithTimeout();
        await queue.DrainAsync().WithTimeout();

        handled.Should().Equal(new[] { -1 }.Concat(Enumerable.Range(0, Producers + 1)), "one worker handles items in the order they were admitted");
    }

    [Fact]
    public async Task A_producer_cancelled_in_the_middle_of_the_line_leaves_it_at_once_and_the_rest_keep_their_order()
    {
        var (queue, release, handled, _) = await ParkedQueueAsync(capacity: 1);
        queue.TryEnqueue(0).Should().BeTrue();
        using var cts = new CancellationTokenSource();
        var first = queue.EnqueueAsync(1).AsTask();
        var middle = queue.EnqueueAsync(2, cts.Token).AsTask();
        var last = queue.EnqueueAsync(3).AsTask();
        queue.TryEnqueue(4).Should().BeFalse("producers are waiting, so they go first");
        queue.GetStatistics().WaitingProducers.Should().Be(3);

        await cts.CancelAsync();
        await FluentActions.Awaiting(() => middle.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        queue.GetStatistics().WaitingProducers.Should().Be(2, "the cancelled producer left the line at once");
        first.IsCompleted.Should().BeFalse();

        release.SetResult();
        await Task.WhenAll(first, last).WithTimeout();
        await queue.DrainAsync().WithTimeout();
        handled.Should().Equal(-1, 0, 1, 3);
        queue.GetStatistics().Accepted.Should().Be(4);
    }

    [Fact]
    public async Task When_the_producer_at_the_head_of_the_line_is_cancelled_the_next_ones_are_still_admitted_in_order()
    {
        var (queue, release, handled, _) = await ParkedQueueAsync(capacity: 1);
        queue.TryEnqueue(0).Should().BeTrue();
        using var cts = new CancellationTokenSource();
        var head = queue.EnqueueAsync(1, cts.Token).AsTask();
        var second = queue.EnqueueAsync(2).AsTask();
        var third = queue.EnqueueAsync(3).AsTask();
        await AsyncAssert.StillPendingAsync(head);

        await cts.CancelAsync();
        await FluentActions.Awaiting(() => head.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        second.IsCompleted.Should().BeFalse("the queue is still full");

        release.SetResult();
        await Task.WhenAll(second, third).WithTimeout();
        await queue.DrainAsync().WithTimeout();
        handled.Should().Equal(-1, 0, 2, 3);
        queue.GetStatistics().WaitingProducers.Should().Be(0);
    }

    // ChannelTestBase.Complete_WithException_PropagatesToExistingWriter (without the exception): a writer blocked on a
    // channel that completes gets ChannelClosedException; a producer waiting in line gets InvalidOperationException.
    [Fact]
    public async Task Closing_refuses_every_producer_in_line_with_InvalidOperationException_and_none_of_their_items_is_accepted()
    {
        var (queue, release, handled, _) = await ParkedQueueAsync(capacity: 1);
        queue.TryEnqueue(0).Should().BeTrue();
        var writes = Enumerable.Range(1, 20).Select(i => queue.EnqueueAsync(i).AsTask()).ToArray();
        await AsyncAssert.StillPendingAsync(writes[^1]);

        var drain = queue.DrainAsync();
        foreach (var write in writes)
        {
            var error = await FluentActions.Awaiting(() => write.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
            error.Which.Message.Should().Contain("WorkQueue");
        }

        release.SetResult();
        await drain.WithTimeout();
        handled.Should().Equal(-1, 0);
        var stats = queue.GetStatistics();
        stats.Accepted.Should().Be(2);
        stats.WaitingProducers.Should().Be(0);
        stats.Accepted.Should().Be(stats.Handled + stats.Failed + stats.Dropped);
    }

    [Fact]
    public async Task Many_producers_cancelled_while_the_queue_is_stalled_all_leave_and_the_line_still_works()
    {
        var (queue, release, handled, _) = await ParkedQueueAsync(capacity: 1);
        queue.TryEnqueue(0).Should().BeTrue();
        var leader = queue.EnqueueAsync(1).AsTask();
        using var cts = new CancellationTokenSource();
        var cancelled = Enumerable.Range(100, 500).Select(i => queue.EnqueueAsync(i, cts.Token).AsTask()).ToArray();
        var tail = queue.EnqueueAsync(2).AsTask();

        await cts.CancelAsync();
        foreach (var write in cancelled)
        {
            await FluentActions.Awaiting(() => write.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        }

        queue.GetStatistics().WaitingProducers.Should().Be(2);
        release.SetResult();
        await Task.WhenAll(leader, tail).WithTimeout();
        await queue.DrainAsync().WithTimeout();
        handled.Should().Equal(-1, 0, 1, 2);
    }

    // ChannelTestBase.Precancellation_Writing_ReturnsImmediately
    [Fact]
    public async Task An_already_cancelled_token_cancels_EnqueueAsync_synchronously_even_when_full_or_closed()
    {
        var (queue, release, handled, _) = await ParkedQueueAsync(capacity: 1);
        queue.TryEnqueue(1).Should().BeTrue();
        var token = new CancellationToken(canceled: true);

        queue.EnqueueAsync(2, token).AsTask().IsCanceled.Should().BeTrue();
        queue.GetStatistics().EnqueueWaits.Should().Be(0, "no wait was started");

        queue.Complete();
        queue.EnqueueAsync(3, token).AsTask().IsCanceled.Should().BeTrue("cancellation is checked before anything else, as on a channel");

        release.SetResult();
        await queue.Completion.WithTimeout();
        handled.Should().Equal(-1, 1);
    }

    // ChannelTestBase.Completion_Idempotent, Complete_AfterEmpty_NoWaiters_TriggersCompletion, TryComplete_Twice
    [Fact]
    public async Task Completion_is_one_task_and_Complete_is_idempotent_unlike_ChannelWriter_Complete()
    {
        var queue = new WorkQueue<int>((_, _) => default);
        var completion = queue.Completion;
        completion.IsCompleted.Should().BeFalse("an open queue never completes");
        queue.Completion.Should().BeSameAs(completion);

        queue.Complete();
        FluentActions.Invoking(queue.Complete).Should().NotThrow("DrainAsync and DisposeAsync close too, so closing twice is fine");
        await completion.WithTimeout();
        queue.Completion.Should().BeSameAs(completion);
        completion.Status.Should().Be(TaskStatus.RanToCompletion);
    }

    // ChannelTestBase.WriteAsync_AfterComplete_ThrowsException / TryWrite_AfterComplete_ReturnsFalse
    [Fact]
    public async Task After_Complete_EnqueueAsync_throws_an_InvalidOperationException_naming_the_queue_and_TryEnqueue_returns_false()
    {
        var queue = new WorkQueue<int>((_, _) => default, new WorkQueueOptions<int> { Name = "orders" });
        queue.Complete();

        queue.TryEnqueue(1).Should().BeFalse();
        var error = await FluentActions.Awaiting(async () => await queue.EnqueueAsync(1)).Should().ThrowAsync<InvalidOperationException>();
        error.Which.Message.Should().Contain("WorkQueue").And.Contain("orders");
        await queue.Completion.WithTimeout();
        queue.GetStatistics().Accepted.Should().Be(0);
    }

    // ActionBlockTests.TestOperationCanceledExceptionsIgnored: ActionBlock silently ignores an OperationCanceledException
    // thrown by its delegate. DESIGN.md's "nothing is lost silently" wins here: it is a failure like any other.
    [Fact]
    public async Task A_handler_that_throws_OperationCanceledException_on_its_own_fails_its_item_and_the_worker_goes_on()
    {
        var errors = new ConcurrentQueue<(int Item, Exception Error)>();
        var handled = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(
            async (item, _) =>
            {
                await Task.Yield();
                if (item % 2 == 0)
                {
                    throw new OperationCanceledException();
                }

                handled.Enqueue(item);
            },
            new WorkQueueOptions<int> { OnError = (item, error) => errors.Enqueue((item, error)) });

        for (var i = 0; i < 10; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();
        handled.Should().Equal(1, 3, 5, 7, 9);
        errors.Select(e => e.Item).Should().Equal(0, 2, 4, 6, 8);
        errors.Should().OnlyContain(e => e.Error is OperationCanceledException);
        var stats = queue.GetStatistics();
        stats.Failed.Should().Be(5);
        stats.Handled.Should().Be(5);
        queue.Completion.Status.Should().Be(TaskStatus.RanToCompletion, "unlike an ActionBlock, failures never fault Completion");
    }

    // ActionBlockTests.TestOrderMaintained and TestBasicMessageProcessing (sync and async handlers).
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task One_worker_handles_every_item_in_order_whether_the_handler_is_sync_or_async(bool async)
    {
        var result = new List<int>();
        var queue = new WorkQueue<int>(
            async (item, _) =>
            {
                if (async)
                {
                    await Task.Yield();
                }

                result.Add(item);
            },
            new WorkQueueOptions<int> { Capacity = 2 });

        for (var i = 0; i < 100; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        queue.Complete();
        await queue.Completion.WithTimeout();
        result.Should().Equal(Enumerable.Range(0, 100));
    }
    // BoundedChannelTests.ManyProducerConsumer_ConcurrentReadWrite_WithBufferedCapacity_Success, with cancellations:
    // many producers queue for little room; whatever each EnqueueAsync reports is exactly what happened to its item.
    [Fact]
    public async Task Many_producers_with_cancellations_on_little_room_each_item_is_handled_exactly_when_its_enqueue_succeeded()
    {
        const int Producers = 32;
        const int PerProducer = 2_000;
        var calls = new int[Producers * PerProducer];
        var outcome = new int[Producers * PerProducer]; // 1 accepted, 2 cancelled
        var queue = new WorkQueue<int>(
            async (item, _) =>
            {
                Interlocked.Increment(ref calls[item]);
                if (item % 7 == 0)
                {
                    await Task.Yield();
                }
            },
            new WorkQueueOptions<int> { Capacity = 2, MaxConcurrency = 2 });

        var producers = Enumerable.Range(0, Producers).Select(p => Task.Run(async () =>
        {
            var random = new Random(p);
            for (var i = 0; i < PerProducer; i++)
            {
                var item = (p * PerProducer) + i;
                using var cts = new CancellationTokenSource();
                var enqueue = queue.EnqueueAsync(item, cts.Token).AsTask();
                if (random.Next(5) == 0)
                {
                    cts.Cancel();
                }

                try
                {
                    await enqueue;
                    outcome[item] = 1;
                }
                catch (OperationCanceledException)
                {
                    outcome[item] = 2;
                }
            }
        })).ToArray();

        await Task.WhenAll(producers).WithTimeout(TimeSpan.FromSeconds(20));
        await queue.DrainAsync().WithTimeout();

        for (var item = 0; item < calls.Length; item++)
        {
            calls[item].Should().Be(outcome[item] == 1 ? 1 : 0, $"item {item} ended with outcome {outcome[item]}");
        }

        var stats = queue.GetStatistics();
        stats.Accepted.Should().Be(outcome.Count(o => o == 1));
        stats.Handled.Should().Be(stats.Accepted);
        stats.WaitingProducers.Should().Be(0);
        outcome.Count(o => o == 2).Should().BeGreaterThan(0);
    }
}
