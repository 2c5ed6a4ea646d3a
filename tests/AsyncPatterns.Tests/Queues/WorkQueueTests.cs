using System.Collections.Concurrent;
using System.Threading.Channels;
using AsyncPatterns.Tests.TestSupport;
using Microsoft.Extensions.Logging;

namespace AsyncPatterns.Tests.Queues;

public sealed class WorkQueueTests
{
    [Fact]
    public async Task EnqueueAsync_waits_while_Capacity_items_wait_and_completes_when_a_worker_takes_one()
    {
        using var release = new SemaphoreSlim(0);
        await using var queue = new WorkQueue<int>(
            async (_, _) => await release.WaitAsync(),
            new WorkQueueOptions<int> { Capacity = 2, MaxConcurrency = 1 });

        await queue.EnqueueAsync(0).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1, "the worker takes item 0");
        await queue.EnqueueAsync(1).WithTimeout();
        await queue.EnqueueAsync(2).WithTimeout();
        queue.Count.Should().Be(2);

        var blocked = queue.EnqueueAsync(3).AsTask();
        await AsyncAssert.StillPendingAsync(blocked, "Capacity items are waiting");
        queue.GetStatistics().WaitingProducers.Should().Be(1);
        queue.GetStatistics().Accepted.Should().Be(3, "the waiting item is not accepted yet");

        release.Release(); // item 0 finishes, the worker takes item 1, which makes room
        await blocked.WithTimeout();

        var stats = queue.GetStatistics();
        stats.Accepted.Should().Be(4);
        stats.WaitingProducers.Should().Be(0);
        stats.EnqueueWaits.Should().Be(1);
        release.Release(10);
    }

    [Fact]
    public async Task EnqueueAsync_token_cancels_only_the_wait_and_the_item_is_not_accepted()
    {
        using var release = new SemaphoreSlim(0);
        var handled = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(
            async (item, _) =>
            {
                await release.WaitAsync();
                handled.Enqueue(item);
            },
            new WorkQueueOptions<int> { Capacity = 1, MaxConcurrency = 1 });
        await queue.EnqueueAsync(1).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        await queue.EnqueueAsync(2).WithTimeout();

        using var cts = new CancellationTokenSource();
        var waiting = queue.EnqueueAsync(99, cts.Token).AsTask();
        await AsyncAssert.StillPendingAsync(waiting);
        await cts.CancelAsync();

        await FluentActions.Awaiting(() => waiting.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        queue.GetStatistics().Accepted.Should().Be(2);
        queue.GetStatistics().WaitingProducers.Should().Be(0);

        // The queue still works: the cancelled wait left no trace.
        var next = queue.EnqueueAsync(3).AsTask();
        release.Release(3);
        await next.WithTimeout();
        await queue.DrainAsync().WithTimeout();
        handled.Should().Equal(1, 2, 3);
        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s => s.Accepted == 3 && s.Handled == 3);
    }

    [Fact]
    public async Task EnqueueAsync_with_an_already_cancelled_token_returns_cancelled_without_adding_the_item()
    {
        var handled = 0;
        await using var queue = new WorkQueue<int>((_, _) =>
        {
            Interlocked.Increment(ref handled);
            return ValueTask.CompletedTask;
        });

        var enqueue = queue.EnqueueAsync(1, new CancellationToken(canceled: true));

        enqueue.IsCanceled.Should().BeTrue();
        await queue.DrainAsync().WithTimeout();
        queue.GetStatistics().Accepted.Should().Be(0);
        Volatile.Read(ref handled).Should().Be(0);
    }

    [Fact]
    public async Task TryEnqueue_returns_false_when_full_in_Wait_mode_and_true_when_there_is_room()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var queue = new WorkQueue<int>(async (_, _) => await gate.Task, new WorkQueueOptions<int> { Capacity = 2 });

        queue.TryEnqueue(0).Should().BeTrue();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        queue.TryEnqueue(1).Should().BeTrue();
        queue.TryEnqueue(2).Should().BeTrue();
        queue.TryEnqueue(3).Should().BeFalse();

        queue.GetStatistics().Accepted.Should().Be(3);
        gate.SetResult();
    }

    [Fact]
    public async Task A_handler_exception_is_counted_logged_and_passed_to_OnError_and_the_worker_keeps_going()
    {
        using var logs = new CapturingLoggerProvider();
        using var loggerFactory = logs.CreateFactory();
        var errors = new ConcurrentQueue<(int Item, Exception Error)>();
        var handled = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(
            async (item, _) =>
            {
                if (item == 1)
                {
                    throw new InvalidOperationException("boom 1");
                }

                await Task.Yield();
                if (item == 3)
                {
                    throw new InvalidOperationException("boom 3");
                }

                handled.Enqueue(item);
            },
            new WorkQueueOptions<int> { Name = "failing", OnError = (item, error) => errors.Enqueue((item, error)), LoggerFactory = loggerFactory });

        for (var i = 0; i < 5; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();

        handled.Should().Equal(0, 2, 4);
        errors.Select(e => e.Item).Should().Equal(1, 3);
        errors.Select(e => e.Error.Message).Should().Equal("boom 1", "boom 3");
        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s => s.Accepted == 5 && s.Handled == 3 && s.Failed == 2 && s.Dropped == 0);
        var failures = logs.Entries.Where(e => e.EventId.Id == 1000).ToList();
        failures.Should().HaveCount(2);
        failures.Should().OnlyContain(e => e.Level == LogLevel.Warning && e.Message.Contains("failing") && e.Exception is InvalidOperationException);
    }

    [Fact]
    public async Task A_synchronously_throwing_handler_and_a_throwing_OnError_do_not_stop_the_worker()
    {
        var handled = 0;
        var queue = new WorkQueue<int>(
            (item, _) =>
            {
                if (item % 2 == 0)
                {
                    throw new InvalidOperationException("sync");
                }

                Interlocked.Increment(ref handled);
                return ValueTask.CompletedTask;
            },
            new WorkQueueOptions<int> { OnError = (_, _) => throw new InvalidOperationException("callback"), OnDropped = _ => throw new InvalidOperationException("callback") });

        for (var i = 0; i < 10; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();
        Volatile.Read(ref handled).Should().Be(5);
        queue.GetStatistics().Failed.Should().Be(5);
    }

    [Fact]
    public async Task A_handler_result_that_completed_synchronously_is_observed_exactly_once_like_an_await()
    {
        // Items 0..11 cycle through: a completed source-backed ValueTask, a faulted source-backed one, a
        // ValueTask.FromException, and an asynchronously completing handler. The worker must read each source's
        // result exactly once (that is what releases a pooled IValueTaskSource) and count every outcome.
        var sources = new ConcurrentQueue<CountingValueTaskSource>();
        var handled = new ConcurrentQueue<int>();
        var errors = new ConcurrentQueue<(int Item, string Message)>();
        var queue = new WorkQueue<int>(
            (item, _) =>
            {
                switch (item % 4)
                {
                    case 0:
                        handled.Enqueue(item);
                        return Completed(sources, error: null);
                    case 1:
                        return Completed(sources, new InvalidOperationException("source " + item));
                    case 2:
                        return ValueTask.FromException(new InvalidOperationException("faulted " + item));
                    default:
                        return HandleLaterAsync(item);
                }
            },
            new WorkQueueOptions<int> { Capacity = 16, MaxConcurrency = 1, OnError = (item, error) => errors.Enqueue((item, error.Message)) });

        for (var i = 0; i < 12; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();

        handled.Should().Equal(0, 3, 4, 7, 8, 11);
        errors.Should().Equal((1, "source 1"), (2, "faulted 2"), (5, "source 5"), (6, "faulted 6"), (9, "source 9"), (10, "faulted 10"));
        sources.Should().HaveCount(6).And.OnlyContain(s => s.GetResultCalls == 1);
        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s => s.Accepted == 12 && s.Handled == 6 && s.Failed == 6 && s.Dropped == 0 && s.InFlight == 0);

        async ValueTask HandleLaterAsync(int item)
        {
            await Task.Yield();
            handled.Enqueue(item);
        }
    }

    private static ValueTask Completed(ConcurrentQueue<CountingValueTaskSource> sources, Exception? error)
    {
        var source = new CountingValueTaskSource();
        sources.Enqueue(source);
        return source.Complete(error);
    }

    /// <summary>An <see cref="IValueTaskSource"/> completed before it is returned; counts the reads of its result.</summary>
    private sealed class CountingValueTaskSource : System.Threading.Tasks.Sources.IValueTaskSource
    {
        private System.Threading.Tasks.Sources.ManualResetValueTaskSourceCore<bool> _core;
        private int _getResultCalls;

        public int GetResultCalls => Volatile.Read(ref _getResultCalls);

        public ValueTask Complete(Exception? error)
        {
            if (error is null)
            {
                _core.SetResult(true);
            }
            else
            {
                _core.SetException(error);
            }

            return new ValueTask(this, _core.Version);
        }

        public void GetResult(short token)
        {
            Interlocked.Increment(ref _getResultCalls);
            _core.GetResult(token);
        }

        public System.Threading.Tasks.Sources.ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, System.Threading.Tasks.Sources.ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);
    }

    [Fact]
    public async Task A_hanging_handler_does_not_hold_DrainAsync_past_its_token()
    {
        var hang = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var queue = new WorkQueue<int>(async (_, _) => await hang.Task); // ignores its token
        await queue.EnqueueAsync(1).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);

        using var cts = new CancellationTokenSource();
        var drain = queue.DrainAsync(cts.Token);
        await AsyncAssert.StillPendingAsync(drain);
        await cts.CancelAsync();

        await FluentActions.Awaiting(() => drain.WithTimeout(TimeSpan.FromSeconds(10))).Should().ThrowAsync<OperationCanceledException>();
        queue.Completion.IsCompleted.Should().BeFalse("the hung handler is still running");
        hang.SetResult();
        await queue.Completion.WithTimeout();
        queue.GetStatistics().Handled.Should().Be(1);
    }

    public static TheoryData<string> ClosingWays => new() { "Complete", "DrainAsync", "DisposeAsync" };

    [Theory]
    [MemberData(nameof(ClosingWays))]
    public async Task After_closing_EnqueueAsync_throws_InvalidOperationException_naming_the_queue_and_TryEnqueue_returns_false(string way)
    {
        var queue = new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int> { Name = "orders" });
        switch (way)
        {
            case "Complete":
                queue.Complete();
                break;
            case "DrainAsync":
                await queue.DrainAsync().WithTimeout();
                break;
            default:
                await queue.DisposeAsync().AsTask().WithTimeout();
                break;
        }

        var error = await FluentActions.Awaiting(() => queue.EnqueueAsync(1).AsTask()).Should().ThrowAsync<InvalidOperationException>();
        error.Which.Message.Should().Contain("WorkQueue 'orders'").And.Contain("closed");
        queue.TryEnqueue(2).Should().BeFalse();
        await queue.Completion.WithTimeout();
        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s => s.Accepted == 0 && s.IsClosed);
    }

    [Fact]
    public async Task A_producer_waiting_when_the_queue_closes_gets_InvalidOperationException_and_its_item_is_not_accepted()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var queue = new WorkQueue<int>(async (_, _) => await gate.Task, new WorkQueueOptions<int> { Name = "jobs", Capacity = 1 });
        await queue.EnqueueAsync(1).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        await queue.EnqueueAsync(2).WithTimeout();
        var waiting = queue.EnqueueAsync(3).AsTask();
        await AsyncAssert.StillPendingAsync(waiting);

        queue.Complete();

        (await FluentActions.Awaiting(() => waiting.WithTimeout()).Should().ThrowAsync<InvalidOperationException>())
            .Which.Message.Should().Contain("'jobs'");
        gate.SetResult();
        await queue.Completion.WithTimeout();
        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s => s.Accepted == 2 && s.Handled == 2);
    }

    [Fact]
    public async Task Drain_cut_short_cancels_in_flight_handlers_sends_unstarted_items_to_OnDropped_and_the_statistics_add_up()
    {
        using var logs = new CapturingLoggerProvider();
        using var loggerFactory = logs.CreateFactory();
        var dropped = new ConcurrentQueue<int>();
        var errors = new ConcurrentQueue<Exception>();
        var started = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(
            async (item, token) =>
            {
                started.Enqueue(item);
                await Task.Delay(Timeout.Infinite, token);
            },
            new WorkQueueOptions<int>
            {
                MaxConcurrency = 2,
                OnDropped = dropped.Enqueue,
                OnError = (_, e) => errors.Enqueue(e),
                LoggerFactory = loggerFactory,
            });
        for (var i = 0; i < 10; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 2);
        using var cts = new CancellationTokenSource();
        var drain = queue.DrainAsync(cts.Token);
        await cts.CancelAsync();

        await FluentActions.Awaiting(() => drain.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await queue.Completion.WithTimeout();

        started.Should().BeEquivalentTo([0, 1]);
        dropped.Should().BeEquivalentTo(Enumerable.Range(2, 8));
        errors.Should().HaveCount(2).And.AllBeAssignableTo<OperationCanceledException>();
        var stats = queue.GetStatistics();
        stats.Should().Match<WorkQueueStatistics>(s => s.Accepted == 10 && s.Handled == 0 && s.Failed == 2 && s.Dropped == 8 && s.Count == 0 && s.InFlight == 0);
        logs.Entries.Should().ContainSingle(e => e.EventId.Id == 1004 && e.Level == LogLevel.Warning);
        logs.Entries.Should().ContainSingle(e => e.EventId.Id == 1003 && e.Message.Contains("accepted 10 = handled 0 + failed 2 + dropped 8"));
    }

    [Fact]
    public async Task DrainAsync_with_an_already_cancelled_token_drops_the_backlog_and_throws()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var dropped = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(async (_, token) => await gate.Task.WaitAsync(token), new WorkQueueOptions<int> { OnDropped = dropped.Enqueue });
        for (var i = 0; i < 4; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);

        var drain = queue.DrainAsync(new CancellationToken(canceled: true));

        drain.IsCanceled.Should().BeTrue();
        dropped.Should().Equal(1, 2, 3);
        await queue.Completion.WithTimeout();
        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s => s.Accepted == 4 && s.Failed == 1 && s.Dropped == 3);

        // Once finished, a drain succeeds whatever its token.
        await queue.DrainAsync(new CancellationToken(canceled: true)).WithTimeout();
    }

    [Fact]
    public async Task The_handler_token_is_not_cancelled_by_a_normal_drain()
    {
        var cancelled = new ConcurrentQueue<bool>();
        var queue = new WorkQueue<int>(async (_, token) =>
        {
            await Task.Yield();
            cancelled.Enqueue(token.IsCancellationRequested);
        });
        for (var i = 0; i < 5; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DisposeAsync().AsTask().WithTimeout();

        cancelled.Should().HaveCount(5).And.OnlyContain(c => !c);
    }

    [Fact]
    public async Task DisposeAsync_cuts_the_drain_short_after_DrainTimeout_on_the_queues_clock_and_never_throws()
    {
        var clock = new ManualTimeProvider();
        var sawCancellation = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var dropped = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(
            async (_, token) =>
            {
                try
                {
                    await Task.Delay(Timeout.Infinite, token);
                }
                finally
                {
                    sawCancellation.TrySetResult();
                }
            },
            new WorkQueueOptions<int> { TimeProvider = clock, DrainTimeout = TimeSpan.FromSeconds(5), OnDropped = dropped.Enqueue });
        await queue.EnqueueAsync(1).WithTimeout();
        await queue.EnqueueAsync(2).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);

        var dispose = queue.DisposeAsync().AsTask();
        await AsyncAssert.StillPendingAsync(dispose, "DrainTimeout has not passed on the queue's clock");
        clock.Advance(TimeSpan.FromSeconds(4));
        await AsyncAssert.StillPendingAsync(dispose, "4 s < DrainTimeout");
        sawCancellation.Task.IsCompleted.Should().BeFalse();

        clock.Advance(TimeSpan.FromSeconds(1));
        await dispose.WithTimeout();
        await sawCancellation.Task.WithTimeout();
        dropped.Should().Equal(2);
        await queue.Completion.WithTimeout();
        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s => s.Accepted == 2 && s.Failed == 1 && s.Dropped == 1);
    }

    [Fact]
    public async Task DisposeAsync_with_a_zero_DrainTimeout_abandons_at_once()
    {
        var hang = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var queue = new WorkQueue<int>(async (_, _) => await hang.Task, new WorkQueueOptions<int> { DrainTimeout = TimeSpan.Zero });
        await queue.EnqueueAsync(1).WithTimeout();
        await queue.EnqueueAsync(2).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);

        await queue.DisposeAsync().AsTask().WithTimeout();

        queue.GetStatistics().Dropped.Should().Be(1);
        hang.SetResult();
        await queue.Completion.WithTimeout();
        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s => s.Accepted == 2 && s.Handled == 1 && s.Dropped == 1);
    }

    [Fact]
    public async Task Complete_lets_the_workers_finish_the_backlog_then_Completion_completes()
    {
        using var release = new SemaphoreSlim(0);
        var queue = new WorkQueue<int>(async (_, _) => await release.WaitAsync(), new WorkQueueOptions<int> { MaxConcurrency = 2 });
        for (var i = 0; i < 6; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 2);
        queue.Count.Should().Be(4);
        queue.Complete();
        queue.Complete(); // idempotent
        await AsyncAssert.StillPendingAsync(queue.Completion, "the backlog is not done");

        release.Release(6);
        await queue.Completion.WithTimeout();

        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s =>
            s.Accepted == 6 && s.Handled == 6 && s.Count == 0 && s.InFlight == 0 && s.IsClosed);
    }

    [Fact]
    public async Task At_most_MaxConcurrency_handlers_run_at_once_and_all_of_them_are_used()
    {
        var running = 0;
        var peak = 0;
        var queue = new WorkQueue<int>(
            async (_, _) =>
            {
                var now = Interlocked.Increment(ref running);
                InterlockedMax(ref peak, now);
                await Task.Delay(1);
                Interlocked.Decrement(ref running);
            },
            new WorkQueueOptions<int> { MaxConcurrency = 3, Capacity = 8 });

        for (var i = 0; i < 60; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();
        Volatile.Read(ref peak).Should().Be(3);
        queue.GetStatistics().Handled.Should().Be(60);
    }

    [Fact]
    public async Task With_one_worker_items_are_handled_in_order()
    {
        var handled = new List<int>();
        var queue = new WorkQueue<int>((item, _) =>
        {
            handled.Add(item);
            return ValueTask.CompletedTask;
        }, new WorkQueueOptions<int> { Capacity = 4 });

        for (var i = 0; i < 200; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();
        handled.Should().Equal(Enumerable.Range(0, 200));
    }

    public static TheoryData<string, int> InvalidOptions => new()
    {
        { nameof(WorkQueueOptions<int>.Capacity), 0 },
        { nameof(WorkQueueOptions<int>.Capacity), -1 },
        { nameof(WorkQueueOptions<int>.MaxConcurrency), 0 },
        { nameof(WorkQueueOptions<int>.MaxConcurrency), -5 },
        { nameof(WorkQueueOptions<int>.FullMode), 42 },
        { nameof(WorkQueueOptions<int>.DrainTimeout), -2 },
    };

    [Theory]
    [MemberData(nameof(InvalidOptions))]
    public void Invalid_options_throw_at_construction_naming_the_option_and_the_allowed_range(string option, int value)
    {
        var options = new WorkQueueOptions<int>();
        var allowed = "greater than 0";
        switch (option)
        {
            case nameof(options.Capacity):
                options.Capacity = value;
                break;
            case nameof(options.MaxConcurrency):
                options.MaxConcurrency = value;
                break;
            case nameof(options.FullMode):
                options.FullMode = (BoundedChannelFullMode)value;
                allowed = "one of Wait, DropNewest, DropOldest, DropWrite";
                break;
            default:
                options.DrainTimeout = TimeSpan.FromMilliseconds(value);
                allowed = "TimeSpan.Zero or greater, or Timeout.InfiniteTimeSpan";
                break;
        }

        var create = () => new WorkQueue<int>((_, _) => ValueTask.CompletedTask, options);

        create.Should().Throw<ArgumentOutOfRangeException>()
            .Where(e => e.ParamName == option && e.Message.Contains(option + " must be " + allowed));
    }

    [Fact]
    public void A_null_handler_throws_ArgumentNullException()
    {
        var create = () => new WorkQueue<int>(null!);

        create.Should().Throw<ArgumentNullException>().WithParameterName("handler");
    }

    [Fact]
    public async Task Options_are_copied_so_later_changes_have_no_effect()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var options = new WorkQueueOptions<int> { Capacity = 1, Name = "copied" };
        await using var queue = new WorkQueue<int>(async (_, _) => await gate.Task, options);
        options.Capacity = 100;
        options.Name = "changed";

        queue.TryEnqueue(1).Should().BeTrue();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        queue.TryEnqueue(2).Should().BeTrue();
        queue.TryEnqueue(3).Should().BeFalse();
        queue.Name.Should().Be("copied");
        gate.SetResult();
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
