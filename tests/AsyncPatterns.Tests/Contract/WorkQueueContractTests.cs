using System.Collections.Concurrent;
using System.Threading.Channels;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Contract;

/// <summary>Black-box tests of the WorkQueue contract in DESIGN.md and System.Threading.Channels' bounded-channel semantics.</summary>
public sealed class WorkQueueContractTests
{
    [Fact]
    public void Options_have_the_documented_defaults()
    {
        var options = new WorkQueueOptions<int>();
        options.Capacity.Should().Be(1024);
        options.MaxConcurrency.Should().Be(1);
        options.FullMode.Should().Be(BoundedChannelFullMode.Wait);
        options.RateLimiter.Should().BeNull();
        options.Pipeline.Should().BeNull();
        options.OnError.Should().BeNull();
        options.OnDropped.Should().BeNull();
        options.DrainTimeout.Should().Be(Timeout.InfiniteTimeSpan);
    }

    [Theory]
    [InlineData(nameof(WorkQueueOptions<int>.Capacity), 0, 1)]
    [InlineData(nameof(WorkQueueOptions<int>.Capacity), -1, 1)]
    [InlineData(nameof(WorkQueueOptions<int>.MaxConcurrency), 1, 0)]
    [InlineData(nameof(WorkQueueOptions<int>.MaxConcurrency), 1, -5)]
    public void Invalid_options_throw_ArgumentOutOfRangeException_naming_the_option(string option, int capacity, int concurrency)
    {
        var create = () => new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int> { Capacity = capacity, MaxConcurrency = concurrency });

        create.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(option);
    }

    [Fact]
    public void Null_handler_throws_ArgumentNullException()
    {
        var create = () => new WorkQueue<int>(null!);
        create.Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public async Task Handles_every_item_and_Completion_completes_after_Complete()
    {
        var handled = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>((item, _) => { handled.Enqueue(item); return ValueTask.CompletedTask; });
        for (var i = 0; i < 50; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        queue.Completion.IsCompleted.Should().BeFalse("the queue is still open");
        queue.Complete();
        await queue.Completion.WithTimeout();

        handled.Should().Equal(Enumerable.Range(0, 50), "one worker handles items in order");
        var stats = queue.GetStatistics();
        stats.Accepted.Should().Be(50);
        stats.Handled.Should().Be(50);
        stats.Failed.Should().Be(0);
        stats.Dropped.Should().Be(0);
    }

    [Fact]
    public async Task EnqueueAsync_waits_while_Capacity_items_are_waiting_and_Count_and_InFlight_report_them()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var queue = new WorkQueue<int>(async (_, _) => await gate.Task, new WorkQueueOptions<int> { Capacity = 2 });
        await queue.EnqueueAsync(1).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        await queue.EnqueueAsync(2).WithTimeout();
        await queue.EnqueueAsync(3).WithTimeout();

        queue.Count.Should().Be(2);
        var blocked = queue.EnqueueAsync(4).AsTask();
        await AsyncAssert.StillPendingAsync(blocked, "the queue is full: the producer waits (backpressure)");

        gate.SetResult();
        await blocked.WithTimeout();
    }

    [Fact]
    public async Task TryEnqueue_returns_false_when_full_in_Wait_mode_and_when_closed()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var queue = new WorkQueue<int>(async (_, _) => await gate.Task, new WorkQueueOptions<int> { Capacity = 1 });
        queue.TryEnqueue(1).Should().BeTrue();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        queue.TryEnqueue(2).Should().BeTrue();

        queue.TryEnqueue(3).Should().BeFalse("full");

        queue.Complete();
        gate.SetResult();
        await queue.Completion.WithTimeout();
        queue.TryEnqueue(4).Should().BeFalse("closed");
        queue.GetStatistics().Accepted.Should().Be(2);
    }

    [Fact]
    public async Task EnqueueAsync_after_Complete_throws_InvalidOperationException_naming_the_queue()
    {
        var queue = new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int> { Name = "orders" });
        queue.Complete();

        var thrown = await FluentActions.Awaiting(() => queue.EnqueueAsync(1).AsTask().WithTimeout()).Should().ThrowAsync<InvalidOperationException>();

        thrown.Which.Message.Should().Contain("orders");
        await queue.Completion.WithTimeout();
    }

    [Fact]
    public async Task EnqueueAsync_with_an_already_cancelled_token_is_cancelled_and_does_not_add_the_item()
    {
        var handled = 0;
        var queue = new WorkQueue<int>((_, _) => { Interlocked.Increment(ref handled); return ValueTask.CompletedTask; });
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();

        var enqueue = queue.EnqueueAsync(1, cts.Token);

        enqueue.IsCanceled.Should().BeTrue();
        await queue.DrainAsync().WithTimeout();
        Volatile.Read(ref handled).Should().Be(0);
        queue.GetStatistics().Accepted.Should().Be(0);
    }

    [Fact]
    public async Task Cancelling_a_waiting_EnqueueAsync_abandons_only_the_wait()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var handled = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(async (item, _) => { await gate.Task; handled.Enqueue(item); }, new WorkQueueOptions<int> { Capacity = 1 });
        await queue.EnqueueAsync(1).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        await queue.EnqueueAsync(2).WithTimeout();
        using var cts = new CancellationTokenSource();
        var waiting = queue.EnqueueAsync(3, cts.Token).AsTask();

        await cts.CancelAsync();

        await FluentActions.Awaiting(() => waiting.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        gate.SetResult();
        await queue.DrainAsync().WithTimeout();
        handled.Should().Equal(1, 2);
        queue.GetStatistics().Accepted.Should().Be(2);
    }

    [Fact]
    public async Task Complete_refuses_producers_that_were_waiting()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var queue = new WorkQueue<int>(async (_, _) => await gate.Task, new WorkQueueOptions<int> { Capacity = 1 });
        await queue.EnqueueAsync(1).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        await queue.EnqueueAsync(2).WithTimeout();
        var waiting = queue.EnqueueAsync(3).AsTask();
        await AsyncAssert.StillPendingAsync(waiting);

        queue.Complete();

        await FluentActions.Awaiting(() => waiting.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        gate.SetResult();
        await queue.Completion.WithTimeout();
        queue.GetStatistics().Handled.Should().Be(2);
    }

    [Theory]
    [InlineData(BoundedChannelFullMode.DropOldest, 2)]
    [InlineData(BoundedChannelFullMode.DropNewest, 3)]
    [InlineData(BoundedChannelFullMode.DropWrite, 4)]
    public async Task Drop_modes_never_wait_and_pass_the_dropped_item_to_OnDropped(BoundedChannelFullMode mode, int expectedDrop)
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var dropped = new ConcurrentQueue<int>();
        var handled = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(
            async (item, _) => { await gate.Task; handled.Enqueue(item); },
            new WorkQueueOptions<int> { Capacity = 2, FullMode = mode, OnDropped = dropped.Enqueue });
        await queue.EnqueueAsync(1).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        await queue.EnqueueAsync(2).WithTimeout();
        await queue.EnqueueAsync(3).WithTimeout();

        var fourth = queue.EnqueueAsync(4);

        fourth.IsCompleted.Should().BeTrue("drop modes never wait");
        dropped.Should().Equal(expectedDrop);
        gate.SetResult();
        await queue.DrainAsync().WithTimeout();
        handled.Should().HaveCount(3).And.NotContain(expectedDrop);
        var stats = queue.GetStatistics();
        stats.Dropped.Should().Be(1);
        (stats.Handled + stats.Failed + stats.Dropped).Should().Be(stats.Accepted);
    }

    [Fact]
    public async Task A_failing_handler_never_stops_its_worker_and_each_failure_reaches_OnError()
    {
        var errors = new ConcurrentQueue<(int Item, Exception Error)>();
        var handled = 0;
        var queue = new WorkQueue<int>(
            (item, _) =>
            {
                if (item % 2 == 0)
                {
                    throw new InvalidOperationException("even " + item);
                }

                Interlocked.Increment(ref handled);
                return ValueTask.CompletedTask;
            },
            new WorkQueueOptions<int> { OnError = (item, error) => errors.Enqueue((item, error)) });
        for (var i = 0; i < 10; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();

        Volatile.Read(ref handled).Should().Be(5);
        errors.Select(e => e.Item).Should().Equal(0, 2, 4, 6, 8);
        errors.Should().OnlyContain(e => e.Error is InvalidOperationException && e.Error.Message == "even " + e.Item);
        var stats = queue.GetStatistics();
        stats.Failed.Should().Be(5);
        stats.Handled.Should().Be(5);
    }

    [Fact]
    public async Task At_most_MaxConcurrency_items_run_at_once()
    {
        var current = 0;
        var peak = 0;
        var queue = new WorkQueue<int>(
            async (_, _) =>
            {
                var now = Interlocked.Increment(ref current);
                InterlockedMax(ref peak, now);
                await Task.Delay(2);
                Interlocked.Decrement(ref current);
            },
            new WorkQueueOptions<int> { MaxConcurrency = 3 });
        for (var i = 0; i < 60; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();

        Volatile.Read(ref peak).Should().BeInRange(1, 3);
        queue.GetStatistics().Handled.Should().Be(60);
    }

    [Fact]
    public async Task The_handler_token_does_not_fire_during_an_uncut_drain()
    {
        var sawCancel = false;
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var queue = new WorkQueue<int>(async (_, token) => { await gate.Task; sawCancel |= token.IsCancellationRequested; });
        await queue.EnqueueAsync(1).WithTimeout();
        var drain = queue.DrainAsync();

        gate.SetResult();
        await drain.WithTimeout();

        sawCancel.Should().BeFalse();
    }

    [Fact]
    public async Task A_cut_short_drain_cancels_in_flight_work_drops_the_backlog_to_OnDropped_and_throws()
    {
        var dropped = new ConcurrentQueue<int>();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var queue = new WorkQueue<int>(
            async (_, token) => { started.TrySetResult(); await Task.Delay(Timeout.Infinite, token); },
            new WorkQueueOptions<int> { OnDropped = dropped.Enqueue });
        for (var i = 0; i < 5; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await started.Task.WithTimeout();
        using var cts = new CancellationTokenSource();
        var drain = queue.DrainAsync(cts.Token);
        await cts.CancelAsync();

        await FluentActions.Awaiting(() => drain.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await queue.Completion.WithTimeout();
        dropped.Should().BeEquivalentTo(new[] { 1, 2, 3, 4 });
        var stats = queue.GetStatistics();
        stats.Accepted.Should().Be(5);
        stats.Dropped.Should().Be(4);
        stats.Failed.Should().Be(1, "the in-flight handler ended in cancellation");
        (stats.Handled + stats.Failed + stats.Dropped).Should().Be(stats.Accepted);
    }

    [Fact]
    public async Task DrainAsync_with_an_already_cancelled_token_closes_drops_and_throws()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var dropped = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(async (_, _) => await gate.Task, new WorkQueueOptions<int> { OnDropped = dropped.Enqueue });
        await queue.EnqueueAsync(1).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        await queue.EnqueueAsync(2).WithTimeout();

        await FluentActions.Awaiting(() => queue.DrainAsync(new CancellationToken(true)).WithTimeout()).Should().ThrowAsync<OperationCanceledException>();

        dropped.Should().Equal(2);
        queue.TryEnqueue(3).Should().BeFalse();
        gate.SetResult();
        await queue.Completion.WithTimeout();
    }

    [Fact]
    public async Task DisposeAsync_with_a_DrainTimeout_cuts_the_drain_short_and_never_throws()
    {
        var clock = new ManualTimeProvider();
        var dropped = new ConcurrentQueue<int>();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var queue = new WorkQueue<int>(
            async (_, token) => { started.TrySetResult(); await Task.Delay(Timeout.Infinite, token); },
            new WorkQueueOptions<int> { DrainTimeout = TimeSpan.FromSeconds(5), TimeProvider = clock, OnDropped = dropped.Enqueue });
        await queue.EnqueueAsync(1).WithTimeout();
        await queue.EnqueueAsync(2).WithTimeout();
        await started.Task.WithTimeout();

        var dispose = queue.DisposeAsync().AsTask();
        await AsyncAssert.StillPendingAsync(dispose, "the bound has not passed");
        clock.Advance(TimeSpan.FromSeconds(5));

        await dispose.WithTimeout();
        dropped.Should().Equal(2);
        await queue.Completion.WithTimeout();
    }

    [Fact]
    public async Task A_rate_limiter_paces_the_handler_instead_of_failing_items()
    {
        var clock = new ManualTimeProvider();
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 10, TimeProvider = clock });
        var handled = 0;
        var failed = new ConcurrentQueue<Exception>();
        var queue = new WorkQueue<int>(
            (_, _) => { Interlocked.Increment(ref handled); return ValueTask.CompletedTask; },
            new WorkQueueOptions<int> { RateLimiter = limiter, TimeProvider = clock, OnError = (_, e) => failed.Enqueue(e) });
        for (var i = 0; i < 3; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => Volatile.Read(ref handled) + failed.Count >= 1);
        for (var i = 0; i < 10 && Volatile.Read(ref handled) + failed.Count < 3; i++)
        {
            clock.Advance(TimeSpan.FromMilliseconds(100));
            await Task.Delay(10);
        }

        await AsyncAssert.EventuallyAsync(() => Volatile.Read(ref handled) + failed.Count == 3);
        failed.Should().BeEmpty();
        Volatile.Read(ref handled).Should().Be(3);
        await queue.DrainAsync().WithTimeout();
    }

    private static void InterlockedMax(ref int target, int value)
    {
        var current = Volatile.Read(ref target);
        while (value > current)
        {
            var seen = Interlocked.CompareExchange(ref target, value, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }
}
