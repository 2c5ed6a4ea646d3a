using System.Collections.Concurrent;
using System.Threading.Channels;
using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;
using Polly;
using Polly.Retry;
using static AsyncPatterns.Tests.Contract.FlowBlackBox;

namespace AsyncPatterns.Tests.Contract;

/// <summary>
/// Black-box tests of <see cref="WorkQueue{T}"/> written from DESIGN.md ("Shared rules" and "Backpressured work
/// queue"), the README and bounded-channel semantics, without reading the implementation.
/// </summary>
public sealed class WorkQueueBlackBoxTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    // ---------------------------------------------------------------- README / seeds

    [Fact]
    public async Task Readme_example_every_order_is_handled_or_failed_and_the_statistics_add_up()
    {
        var handled = new ConcurrentBag<int>();
        var errors = new ConcurrentBag<(int Order, Exception Error)>();
        await using var queue = new WorkQueue<int>(
            async (order, ct) =>
            {
                await Task.Yield();
                if (order % 10 == 0)
                {
                    throw new InvalidOperationException("card declined " + order);
                }

                handled.Add(order);
            },
            new WorkQueueOptions<int> { Capacity = 500, MaxConcurrency = 8, OnError = (o, ex) => errors.Add((o, ex)) });

        for (var i = 1; i <= 1000; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();

        var s = queue.GetStatistics();
        s.Accepted.Should().Be(1000);
        s.Handled.Should().Be(900);
        s.Failed.Should().Be(100);
        s.Dropped.Should().Be(0);
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
        s.Count.Should().Be(0);
        s.InFlight.Should().Be(0);
        s.IsClosed.Should().BeTrue();
        handled.Should().HaveCount(900);
        errors.Select(e => e.Order).Should().BeEquivalentTo(Enumerable.Range(1, 100).Select(i => i * 10));
        errors.Should().OnlyContain(e => e.Error is InvalidOperationException && e.Error.Message.StartsWith("card declined", StringComparison.Ordinal));
        queue.Completion.IsCompletedSuccessfully.Should().BeTrue();
    }

    [Fact]
    public async Task Seed_producer_consumer_several_producers_and_workers_lose_nothing()
    {
        var seen = new ConcurrentDictionary<int, int>();
        await using var queue = new WorkQueue<int>(
            async (job, ct) =>
            {
                await Task.Yield();
                seen.AddOrUpdate(job, 1, (_, n) => n + 1);
            },
            new WorkQueueOptions<int> { Capacity = 10, MaxConcurrency = 5 });

        var producers = Enumerable.Range(0, 4).Select(p => Task.Run(async () =>
        {
            for (var i = 0; i < 250; i++)
            {
                await queue.EnqueueAsync(p * 1000 + i);
            }
        }));
        await Task.WhenAll(producers).WithTimeout();
        await queue.DrainAsync().WithTimeout();

        seen.Should().HaveCount(1000);
        seen.Values.Should().OnlyContain(n => n == 1);
        queue.GetStatistics().Handled.Should().Be(1000);
    }

    // ---------------------------------------------------------------- options

    [Fact]
    public void Options_have_the_documented_defaults()
    {
        var o = new WorkQueueOptions<string>();
        o.Capacity.Should().Be(1024);
        o.MaxConcurrency.Should().Be(1);
        o.FullMode.Should().Be(BoundedChannelFullMode.Wait);
        o.RateLimiter.Should().BeNull();
        o.Pipeline.Should().BeNull();
        o.OnError.Should().BeNull();
        o.OnDropped.Should().BeNull();
        o.DrainTimeout.Should().Be(Timeout.InfiniteTimeSpan);
        o.Name.Should().BeNull();
        o.TimeProvider.Should().BeNull();
        o.LoggerFactory.Should().BeNull();
    }

    [Theory]
    [InlineData("Capacity", 0)]
    [InlineData("Capacity", -1)]
    [InlineData("Capacity", int.MinValue)]
    [InlineData("MaxConcurrency", 0)]
    [InlineData("MaxConcurrency", -3)]
    public void Out_of_range_counts_throw_ArgumentOutOfRangeException_naming_the_option(string option, int value)
    {
        var o = new WorkQueueOptions<int>();
        typeof(WorkQueueOptions<int>).GetProperty(option)!.SetValue(o, value);

        var create = () => new WorkQueue<int>((_, _) => ValueTask.CompletedTask, o);

        var ex = create.Should().Throw<ArgumentOutOfRangeException>().Which;
        ex.ParamName.Should().Be(option);
        ex.Message.Should().Contain("0", "the message says what is allowed");
    }

    [Fact]
    public void Undefined_FullMode_throws_ArgumentOutOfRangeException_naming_FullMode()
    {
        var create = () => new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int> { FullMode = (BoundedChannelFullMode)42 });

        create.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(nameof(WorkQueueOptions<int>.FullMode));
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(-5000)]
    public void Negative_DrainTimeout_other_than_infinite_throws_naming_DrainTimeout(int milliseconds)
    {
        var timeout = TimeSpan.FromMilliseconds(milliseconds) - TimeSpan.FromTicks(1);
        var create = () => new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int> { DrainTimeout = timeout });

        create.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(nameof(WorkQueueOptions<int>.DrainTimeout));
    }

    [Fact]
    public async Task Infinite_and_zero_DrainTimeout_and_extreme_counts_are_valid()
    {
        await using var a = new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int> { DrainTimeout = Timeout.InfiniteTimeSpan });
        await using var b = new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int> { DrainTimeout = TimeSpan.Zero });
        await using var c = new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int> { Capacity = 1, MaxConcurrency = 1 });
        await using var d = new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int> { Capacity = int.MaxValue });
        await Task.WhenAll(a.EnqueueAsync(1).AsTask(), b.EnqueueAsync(1).AsTask(), c.EnqueueAsync(1).AsTask(), d.EnqueueAsync(1).AsTask()).WithTimeout();
    }

    [Fact]
    public void Null_handler_throws_ArgumentNullException()
    {
        var create = () => new WorkQueue<int>(null!);
        create.Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public async Task Null_options_mean_every_default()
    {
        var handled = 0;
        await using var queue = new WorkQueue<int>((_, _) =>
        {
            Interlocked.Increment(ref handled);
            return ValueTask.CompletedTask;
        });
        await queue.EnqueueAsync(1).WithTimeout();
        await queue.DrainAsync().WithTimeout();
        handled.Should().Be(1);
        queue.Name.Should().NotBeNullOrEmpty();
    }

    [Fact]
    public async Task Options_are_copied_later_changes_have_no_effect()
    {
        var gate = Gate();
        var started = new SemaphoreSlim(0);
        var firstErrors = new ConcurrentQueue<int>();
        var secondErrors = new ConcurrentQueue<int>();
        var options = new WorkQueueOptions<int>
        {
            Capacity = 1,
            Name = "copied-queue",
            OnError = (i, _) => firstErrors.Enqueue(i),
        };
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                started.Release();
                await gate.Task;
                throw new InvalidOperationException("fail " + i);
            },
            options);

        options.Capacity = 1000;
        options.MaxConcurrency = 50;
        options.FullMode = BoundedChannelFullMode.DropWrite;
        options.OnError = (i, _) => secondErrors.Enqueue(i);
        options.Name = "renamed";

        await queue.EnqueueAsync(0).WithTimeout();
        (await started.WaitAsync(Wait)).Should().BeTrue();
        await queue.EnqueueAsync(1).WithTimeout();
        queue.TryEnqueue(2).Should().BeFalse("Capacity 1 in Wait mode was copied");
        queue.InFlight.Should().Be(1, "MaxConcurrency 1 was copied");
        queue.Name.Should().Be("copied-queue");

        gate.SetResult();
        await queue.DrainAsync().WithTimeout();

        firstErrors.Should().Equal(0, 1);
        secondErrors.Should().BeEmpty();
    }

    // ---------------------------------------------------------------- async shape

    [Fact]
    public async Task EnqueueAsync_completes_synchronously_when_there_is_room()
    {
        await using var queue = new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int> { Capacity = 100 });

        var pending = queue.EnqueueAsync(1);

        pending.IsCompletedSuccessfully.Should().BeTrue();
        await pending;
    }

    [Fact]
    public async Task EnqueueAsync_with_an_already_cancelled_token_is_cancelled_and_the_item_not_accepted()
    {
        var handled = 0;
        await using var queue = new WorkQueue<int>((_, _) =>
        {
            Interlocked.Increment(ref handled);
            return ValueTask.CompletedTask;
        });

        var pending = queue.EnqueueAsync(1, new CancellationToken(true));

        pending.IsCanceled.Should().BeTrue();
        await FluentActions.Awaiting(() => pending.AsTask()).Should().ThrowAsync<OperationCanceledException>();
        await queue.DrainAsync().WithTimeout();
        handled.Should().Be(0);
        queue.GetStatistics().Accepted.Should().Be(0);
    }

    [Fact]
    public async Task EnqueueAsync_with_an_already_cancelled_token_on_a_closed_queue_is_cancelled_not_refused()
    {
        await using var queue = new WorkQueue<int>((_, _) => ValueTask.CompletedTask);
        queue.Complete();

        var pending = queue.EnqueueAsync(1, new CancellationToken(true));

        await FluentActions.Awaiting(() => pending.AsTask()).Should().ThrowAsync<OperationCanceledException>();
    }

    [Fact]
    public async Task Library_awaits_never_capture_the_callers_synchronization_context()
    {
        var handled = 0;
        var queue = new WorkQueue<int>(
            async (_, ct) =>
            {
                await Task.Delay(1, ct).ConfigureAwait(false);
                Interlocked.Increment(ref handled);
            },
            new WorkQueueOptions<int> { Capacity = 1, MaxConcurrency = 2 });

        var posts = -1;
        await RunOnNonPumpingContext(context =>
        {
            for (var i = 0; i < 30; i++)
            {
                queue.EnqueueAsync(i).AsTask().Wait(Wait).Should().BeTrue("a producer waiting for room must not need the caller's context");
            }

            queue.DrainAsync().Wait(Wait).Should().BeTrue("the drain must not need the caller's context");
            queue.DisposeAsync().AsTask().Wait(Wait).Should().BeTrue();
            posts = context.Posts;
        }).WithTimeout(TimeSpan.FromSeconds(30));

        posts.Should().Be(0);
        handled.Should().Be(30);
    }

    // ---------------------------------------------------------------- backpressure (Wait mode)

    [Fact]
    public async Task Wait_mode_EnqueueAsync_waits_while_Capacity_items_wait_and_resumes_when_one_is_taken()
    {
        var gate = Gate();
        var started = new SemaphoreSlim(0);
        var handled = new ConcurrentQueue<int>();
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                started.Release();
                await gate.Task;
                handled.Enqueue(i);
            },
            new WorkQueueOptions<int> { Capacity = 2 });

        await queue.EnqueueAsync(0).WithTimeout();
        (await started.WaitAsync(Wait)).Should().BeTrue();
        queue.InFlight.Should().Be(1);
        queue.Count.Should().Be(0, "an item inside the handler is not waiting");

        await queue.EnqueueAsync(1).WithTimeout();
        await queue.EnqueueAsync(2).WithTimeout();
        queue.Count.Should().Be(2);

        var third = queue.EnqueueAsync(3).AsTask();
        await AsyncAssert.StillPendingAsync(third, "Capacity items are waiting: that wait is the backpressure");
        queue.TryEnqueue(4).Should().BeFalse("the queue is full in Wait mode");

        var s = queue.GetStatistics();
        s.Accepted.Should().Be(3);
        s.WaitingProducers.Should().Be(1);
        s.EnqueueWaits.Should().BeGreaterThanOrEqualTo(1);
        s.Count.Should().Be(2);
        s.InFlight.Should().Be(1);

        gate.SetResult();
        await third.WithTimeout();
        await queue.DrainAsync().WithTimeout();

        handled.Should().Equal(0, 1, 2, 3);
        queue.GetStatistics().Accepted.Should().Be(4);
        queue.GetStatistics().WaitingProducers.Should().Be(0);
    }

    [Fact]
    public async Task Waiting_producers_are_admitted_in_arrival_order()
    {
        var gate = Gate();
        var started = new SemaphoreSlim(0);
        var handled = new ConcurrentQueue<int>();
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                started.Release();
                await gate.Task;
                handled.Enqueue(i);
            },
            new WorkQueueOptions<int> { Capacity = 1 });

        await queue.EnqueueAsync(0).WithTimeout();
        (await started.WaitAsync(Wait)).Should().BeTrue();
        await queue.EnqueueAsync(1).WithTimeout();

        var waiters = new List<Task>();
        for (var i = 2; i < 7; i++)
        {
            waiters.Add(queue.EnqueueAsync(i).AsTask());
            var n = i - 1;
            await AsyncAssert.EventuallyAsync(() => queue.GetStatistics().WaitingProducers == n);
        }

        gate.SetResult();
        await Task.WhenAll(waiters).WithTimeout();
        await queue.DrainAsync().WithTimeout();
        handled.Should().Equal(0, 1, 2, 3, 4, 5, 6);
    }

    [Fact]
    public async Task The_token_abandons_only_the_wait_the_item_is_not_accepted_and_never_handled()
    {
        var gate = Gate();
        var started = new SemaphoreSlim(0);
        var handled = new ConcurrentQueue<int>();
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                started.Release();
                await gate.Task;
                handled.Enqueue(i);
            },
            new WorkQueueOptions<int> { Capacity = 1 });
        await queue.EnqueueAsync(0).WithTimeout();
        (await started.WaitAsync(Wait)).Should().BeTrue();
        await queue.EnqueueAsync(1).WithTimeout();

        using var cts = new CancellationTokenSource();
        var waiting = queue.EnqueueAsync(99, cts.Token).AsTask();
        var behind = queue.EnqueueAsync(2).AsTask();
        await AsyncAssert.StillPendingAsync(waiting);
        cts.Cancel();

        var ex = await FluentActions.Awaiting(() => waiting.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        ex.Which.CancellationToken.Should().Be(cts.Token);
        queue.GetStatistics().Accepted.Should().Be(2);

        gate.SetResult();
        await behind.WithTimeout();
        await queue.DrainAsync().WithTimeout();
        handled.Should().Equal(0, 1, 2);
        var s = queue.GetStatistics();
        s.Accepted.Should().Be(3);
        (s.Handled + s.Failed + s.Dropped).Should().Be(3);
    }

    [Fact]
    public async Task Handlers_run_in_order_with_one_worker()
    {
        var handled = new List<int>();
        await using var queue = new WorkQueue<int>((i, _) =>
        {
            handled.Add(i);
            return ValueTask.CompletedTask;
        }, new WorkQueueOptions<int> { Capacity = 8 });

        for (var i = 0; i < 500; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();
        handled.Should().Equal(Enumerable.Range(0, 500));
    }

    [Fact]
    public async Task At_most_MaxConcurrency_handlers_run_at_once_and_all_of_them_are_used()
    {
        var gate = Gate();
        int current = 0, max = 0;
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                var now = Interlocked.Increment(ref current);
                int seen;
                while ((seen = Volatile.Read(ref max)) < now && Interlocked.CompareExchange(ref max, now, seen) != seen)
                {
                }

                await gate.Task;
                Interlocked.Decrement(ref current);
            },
            new WorkQueueOptions<int> { MaxConcurrency = 3, Capacity = 100 });

        for (var i = 0; i < 10; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 3, "three workers take three items");
        await Task.Delay(50);
        queue.InFlight.Should().Be(3);
        queue.Count.Should().Be(7);
        Volatile.Read(ref max).Should().Be(3);

        gate.SetResult();
        await queue.DrainAsync().WithTimeout();
        max.Should().Be(3);
        queue.GetStatistics().Handled.Should().Be(10);
    }

    // ---------------------------------------------------------------- drop modes

    private static async Task<(WorkQueue<int> Queue, TaskCompletionSource Gate, ConcurrentQueue<int> Handled, ConcurrentQueue<int> Dropped)> BlockedQueueAsync(BoundedChannelFullMode mode)
    {
        var gate = Gate();
        var started = new SemaphoreSlim(0);
        var handled = new ConcurrentQueue<int>();
        var dropped = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                started.Release();
                await gate.Task;
                handled.Enqueue(i);
            },
            new WorkQueueOptions<int> { Capacity = 2, FullMode = mode, OnDropped = dropped.Enqueue });
        await queue.EnqueueAsync(0).WithTimeout();
        (await started.WaitAsync(Wait)).Should().BeTrue();
        return (queue, gate, handled, dropped);
    }

    /// <summary>
    /// Worker busy with 0, items 1 and 2 waiting (Capacity 2), then 3 and 4 offered: which item each mode drops
    /// (OnDropped) is the one a bounded channel's itemDropped callback receives, and nothing ever waits.
    /// </summary>
    [Theory]
    [InlineData(BoundedChannelFullMode.DropOldest, new[] { 1 }, new[] { 1, 2 }, new[] { 0, 3, 4 })]
    [InlineData(BoundedChannelFullMode.DropNewest, new[] { 2 }, new[] { 2, 3 }, new[] { 0, 1, 4 })]
    [InlineData(BoundedChannelFullMode.DropWrite, new[] { 3 }, new[] { 3, 4 }, new[] { 0, 1, 2 })]
    public async Task Each_drop_mode_drops_its_item_never_waits_and_accounts_for_everything(
        BoundedChannelFullMode mode, int[] droppedAfterThird, int[] droppedAfterFourth, int[] expectedHandled)
    {
        var (queue, gate, handled, dropped) = await BlockedQueueAsync(mode);
        await using var _ = queue;
        await queue.EnqueueAsync(1).WithTimeout();
        await queue.EnqueueAsync(2).WithTimeout();

        var third = queue.EnqueueAsync(3);
        third.IsCompletedSuccessfully.Should().BeTrue("drop modes never wait");
        await third;
        dropped.Should().Equal(droppedAfterThird);
        queue.TryEnqueue(4).Should().BeTrue("as ChannelWriter.TryWrite in a drop mode");
        dropped.Should().Equal(droppedAfterFourth);
        queue.Count.Should().Be(2);

        gate.SetResult();
        await queue.DrainAsync().WithTimeout();
        handled.Should().Equal(expectedHandled);
        var s = queue.GetStatistics();
        s.Accepted.Should().Be(5, "a dropped item was accepted first, then dropped");
        s.Handled.Should().Be(3);
        s.Dropped.Should().Be(2);
        s.Failed.Should().Be(0);
    }

    [Fact]
    public async Task Drop_modes_under_concurrent_producers_account_for_every_item()
    {
        foreach (var mode in new[] { BoundedChannelFullMode.DropOldest, BoundedChannelFullMode.DropNewest, BoundedChannelFullMode.DropWrite })
        {
            var handled = new ConcurrentBag<int>();
            var dropped = new ConcurrentBag<int>();
            var queue = new WorkQueue<int>(
                async (i, ct) =>
                {
                    await Task.Yield();
                    handled.Add(i);
                },
                new WorkQueueOptions<int> { Capacity = 4, MaxConcurrency = 2, FullMode = mode, OnDropped = dropped.Add });

            await Task.WhenAll(Enumerable.Range(0, 4).Select(p => Task.Run(async () =>
            {
                for (var i = 0; i < 500; i++)
                {
                    await queue.EnqueueAsync(p * 1000 + i);
                }
            }))).WithTimeout();
            await queue.DrainAsync().WithTimeout();

            var s = queue.GetStatistics();
            s.Accepted.Should().Be(2000, mode.ToString());
            (s.Handled + s.Failed + s.Dropped).Should().Be(2000, mode.ToString());
            s.Dropped.Should().Be(dropped.Count, mode.ToString());
            s.Handled.Should().Be(handled.Count, mode.ToString());
            handled.Concat(dropped).Should().OnlyHaveUniqueItems().And.HaveCount(2000, mode.ToString());
        }
    }

    // ---------------------------------------------------------------- failures

    [Fact]
    public async Task A_failing_handler_fails_only_its_item_and_never_stops_its_worker()
    {
        var errors = new ConcurrentQueue<(int Item, Exception Error)>();
        var handled = new ConcurrentQueue<int>();
        var boom = new InvalidOperationException("boom");
        await using var queue = new WorkQueue<int>(
            (i, ct) =>
            {
                if (i % 2 == 0)
                {
                    throw boom; // synchronous throw
                }

                handled.Enqueue(i);
                return ValueTask.CompletedTask;
            },
            new WorkQueueOptions<int> { OnError = (i, ex) => errors.Enqueue((i, ex)) });

        for (var i = 0; i < 10; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();

        handled.Should().Equal(1, 3, 5, 7, 9);
        errors.Select(e => e.Item).Should().Equal(0, 2, 4, 6, 8);
        errors.Should().OnlyContain(e => ReferenceEquals(e.Error, boom));
        queue.Completion.IsCompletedSuccessfully.Should().BeTrue("Completion never faults");
        var s = queue.GetStatistics();
        s.Failed.Should().Be(5);
        s.Handled.Should().Be(5);
    }

    [Fact]
    public async Task Asynchronous_failures_and_OperationCanceledException_thrown_by_the_handler_count_as_failed()
    {
        var errors = new ConcurrentQueue<(int Item, Exception Error)>();
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                await Task.Yield();
                if (i == 1)
                {
                    throw new OperationCanceledException("handler gave up on its own");
                }

                if (i == 2)
                {
                    throw new TimeoutException();
                }
            },
            new WorkQueueOptions<int> { OnError = (i, ex) => errors.Enqueue((i, ex)) });

        await queue.EnqueueAsync(1).WithTimeout();
        await queue.EnqueueAsync(2).WithTimeout();
        await queue.EnqueueAsync(3).WithTimeout();
        await queue.DrainAsync().WithTimeout();

        errors.Select(e => e.Item).Should().Equal(1, 2);
        errors.First().Error.Should().BeOfType<OperationCanceledException>();
        errors.Last().Error.Should().BeOfType<TimeoutException>();
        var s = queue.GetStatistics();
        s.Failed.Should().Be(2);
        s.Handled.Should().Be(1);
        queue.Completion.IsCompletedSuccessfully.Should().BeTrue();
    }

    [Fact]
    public async Task Callbacks_that_throw_are_ignored_and_the_queue_goes_on()
    {
        var handled = new ConcurrentQueue<int>();
        await using var queue = new WorkQueue<int>(
            (i, ct) =>
            {
                if (i == 0)
                {
                    throw new InvalidOperationException("fail");
                }

                handled.Enqueue(i);
                return ValueTask.CompletedTask;
            },
            new WorkQueueOptions<int>
            {
                OnError = (_, _) => throw new ApplicationException("bad OnError"),
                OnDropped = _ => throw new ApplicationException("bad OnDropped"),
                FullMode = BoundedChannelFullMode.DropWrite,
                Capacity = 1,
            });

        for (var i = 0; i < 50; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();
        var s = queue.GetStatistics();
        s.Failed.Should().Be(1);
        (s.Handled + s.Failed + s.Dropped).Should().Be(50);
        handled.Should().HaveCount((int)s.Handled);
    }

    // ---------------------------------------------------------------- closed states

    public enum CloseHow
    {
        Complete,
        Drain,
        Dispose,
    }

    private static async Task CloseAsync(WorkQueue<int> queue, CloseHow how)
    {
        switch (how)
        {
            case CloseHow.Complete:
                queue.Complete();
                break;
            case CloseHow.Drain:
                await queue.DrainAsync().WithTimeout();
                break;
            default:
                await queue.DisposeAsync().AsTask().WithTimeout();
                break;
        }
    }

    [Theory]
    [InlineData(CloseHow.Complete)]
    [InlineData(CloseHow.Drain)]
    [InlineData(CloseHow.Dispose)]
    public async Task New_work_after_closing_is_refused_with_InvalidOperationException_naming_the_queue(CloseHow how)
    {
        var name = UniqueName("billing");
        var queue = new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int> { Name = name });
        await CloseAsync(queue, how);

        var ex = await FluentActions.Awaiting(() => queue.EnqueueAsync(1).AsTask()).Should().ThrowAsync<InvalidOperationException>();
        ex.Which.Message.Should().Contain(name);
        queue.TryEnqueue(2).Should().BeFalse();
        queue.GetStatistics().IsClosed.Should().BeTrue();
        queue.GetStatistics().Accepted.Should().Be(0);
        await queue.DisposeAsync();
    }

    [Fact]
    public async Task Refusal_message_names_the_primitive_when_no_Name_is_set()
    {
        await using var queue = new WorkQueue<int>((_, _) => ValueTask.CompletedTask);
        queue.Complete();

        var ex = await FluentActions.Awaiting(() => queue.EnqueueAsync(1).AsTask()).Should().ThrowAsync<InvalidOperationException>();
        ex.Which.Message.Should().Contain("WorkQueue");
    }

    [Fact]
    public async Task Complete_refuses_producers_that_were_waiting_and_their_items_are_not_accepted()
    {
        var gate = Gate();
        var started = new SemaphoreSlim(0);
        var handled = new ConcurrentQueue<int>();
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                started.Release();
                await gate.Task;
                handled.Enqueue(i);
            },
            new WorkQueueOptions<int> { Capacity = 1, Name = "full-queue" });
        await queue.EnqueueAsync(0).WithTimeout();
        (await started.WaitAsync(Wait)).Should().BeTrue();
        await queue.EnqueueAsync(1).WithTimeout();
        var w1 = queue.EnqueueAsync(2).AsTask();
        var w2 = queue.EnqueueAsync(3).AsTask();
        await AsyncAssert.StillPendingAsync(w1);

        queue.Complete();

        await FluentActions.Awaiting(() => w1.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        await FluentActions.Awaiting(() => w2.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        queue.Completion.IsCompleted.Should().BeFalse("the backlog is not finished");

        gate.SetResult();
        await queue.Completion.WithTimeout();
        handled.Should().Equal(0, 1);
        queue.GetStatistics().Accepted.Should().Be(2);
    }

    [Fact]
    public async Task Completion_stays_pending_until_the_queue_is_closed_even_when_idle_and_Complete_is_idempotent()
    {
        await using var queue = new WorkQueue<int>((_, _) => ValueTask.CompletedTask);
        await queue.EnqueueAsync(1).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.GetStatistics().Handled == 1);

        await AsyncAssert.StillPendingAsync(queue.Completion, "an open queue is not complete");

        queue.Complete();
        queue.Complete();
        await queue.Completion.WithTimeout();
        queue.Complete();
        await queue.DrainAsync().WithTimeout();
    }

    [Fact]
    public async Task Complete_lets_the_workers_finish_the_backlog_then_Completion_completes()
    {
        var gate = Gate();
        var handled = new ConcurrentQueue<int>();
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                await gate.Task;
                handled.Enqueue(i);
            },
            new WorkQueueOptions<int> { Capacity = 10 });
        for (var i = 0; i < 5; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        queue.Complete();
        await AsyncAssert.StillPendingAsync(queue.Completion);

        gate.SetResult();
        await queue.Completion.WithTimeout();
        handled.Should().Equal(0, 1, 2, 3, 4);
    }

    // ---------------------------------------------------------------- draining

    [Fact]
    public async Task DrainAsync_waits_for_the_backlog_and_does_not_cancel_the_handlers_token()
    {
        var gate = Gate();
        var started = new SemaphoreSlim(0);
        var tokens = new ConcurrentQueue<CancellationToken>();
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                tokens.Enqueue(ct);
                started.Release();
                await gate.Task;
                ct.IsCancellationRequested.Should().BeFalse("a normal drain never cancels the handler");
            },
            new WorkQueueOptions<int> { Capacity = 10 });
        for (var i = 0; i < 3; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        (await started.WaitAsync(Wait)).Should().BeTrue();
        var drain = queue.DrainAsync();
        var again = queue.DrainAsync();
        await AsyncAssert.StillPendingAsync(drain, "the backlog is not finished");
        again.IsCompleted.Should().BeFalse();
        tokens.Should().OnlyContain(t => !t.IsCancellationRequested);

        gate.SetResult();
        await drain.WithTimeout();
        await again.WithTimeout();
        await queue.DrainAsync().WithTimeout();
        var s = queue.GetStatistics();
        s.Handled.Should().Be(3);
        s.Failed.Should().Be(0);
    }

    [Fact]
    public async Task A_drain_cut_short_cancels_the_handlers_token_and_reports_unstarted_items_to_OnDropped()
    {
        var started = new SemaphoreSlim(0);
        var dropped = new ConcurrentQueue<int>();
        var errors = new ConcurrentQueue<(int Item, Exception Error)>();
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                started.Release();
                await Task.Delay(Timeout.Infinite, ct);
            },
            new WorkQueueOptions<int> { Capacity = 10, OnDropped = dropped.Enqueue, OnError = (i, ex) => errors.Enqueue((i, ex)) });
        for (var i = 0; i < 4; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        (await started.WaitAsync(Wait)).Should().BeTrue();
        using var cts = new CancellationTokenSource();
        var drain = queue.DrainAsync(cts.Token);
        await AsyncAssert.StillPendingAsync(drain);

        cts.Cancel();

        await FluentActions.Awaiting(() => drain.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await queue.Completion.WithTimeout();
        dropped.Should().BeEquivalentTo(new[] { 1, 2, 3 });
        errors.Select(e => e.Item).Should().Equal(0);
        errors.Single().Error.Should().BeAssignableTo<OperationCanceledException>();
        var s = queue.GetStatistics();
        s.Accepted.Should().Be(4);
        s.Handled.Should().Be(0);
        s.Failed.Should().Be(1);
        s.Dropped.Should().Be(3);
        (await FluentActions.Awaiting(() => queue.EnqueueAsync(9).AsTask()).Should().ThrowAsync<InvalidOperationException>()).Which.Message.Should().NotBeEmpty();
    }

    [Fact]
    public async Task A_drain_cut_short_returns_without_waiting_for_a_handler_that_ignores_cancellation()
    {
        var gate = Gate();
        var started = new SemaphoreSlim(0);
        var dropped = new ConcurrentQueue<int>();
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                started.Release();
                await gate.Task; // ignores ct
            },
            new WorkQueueOptions<int> { Capacity = 10, OnDropped = dropped.Enqueue });
        await queue.EnqueueAsync(0).WithTimeout();
        await queue.EnqueueAsync(1).WithTimeout();
        (await started.WaitAsync(Wait)).Should().BeTrue();

        await FluentActions.Awaiting(() => queue.DrainAsync(new CancellationToken(true)).WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        dropped.Should().Equal(1);
        queue.Completion.IsCompleted.Should().BeFalse("Completion still waits for the handler that ignores its token");

        gate.SetResult();
        await queue.Completion.WithTimeout();
        var s = queue.GetStatistics();
        (s.Handled + s.Failed + s.Dropped).Should().Be(2);
        s.Dropped.Should().Be(1);
    }

    [Fact]
    public async Task DrainAsync_on_a_finished_queue_completes_whatever_the_token()
    {
        await using var queue = new WorkQueue<int>((_, _) => ValueTask.CompletedTask);
        await queue.EnqueueAsync(1).WithTimeout();
        await queue.DrainAsync().WithTimeout();

        await queue.DrainAsync(new CancellationToken(true)).WithTimeout();
        queue.GetStatistics().Dropped.Should().Be(0);
    }

    [Fact]
    public async Task DisposeAsync_waits_for_every_accepted_item_by_default()
    {
        var gate = Gate();
        var handled = 0;
        var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                await gate.Task;
                ct.IsCancellationRequested.Should().BeFalse();
                Interlocked.Increment(ref handled);
            },
            new WorkQueueOptions<int> { Capacity = 10 });
        for (var i = 0; i < 5; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        var dispose = queue.DisposeAsync().AsTask();
        await AsyncAssert.StillPendingAsync(dispose, "the default DrainTimeout is infinite");
        gate.SetResult();
        await dispose.WithTimeout();
        handled.Should().Be(5);
        queue.GetStatistics().Handled.Should().Be(5);
        await queue.DisposeAsync();
    }

    [Fact]
    public async Task DisposeAsync_cuts_the_drain_short_after_DrainTimeout_on_the_fake_clock()
    {
        var clock = new ManualTimeProvider();
        var started = new SemaphoreSlim(0);
        var dropped = new ConcurrentQueue<int>();
        var tokens = new ConcurrentQueue<CancellationToken>();
        var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                tokens.Enqueue(ct);
                started.Release();
                await Task.Delay(Timeout.Infinite, ct);
            },
            new WorkQueueOptions<int> { Capacity = 10, DrainTimeout = TimeSpan.FromSeconds(5), TimeProvider = clock, OnDropped = dropped.Enqueue });
        for (var i = 0; i < 3; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        (await started.WaitAsync(Wait)).Should().BeTrue();
        var dispose = queue.DisposeAsync().AsTask();
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount > 0, "the drain timeout runs on the options' TimeProvider");
        clock.Advance(TimeSpan.FromSeconds(5) - TimeSpan.FromTicks(1));
        await AsyncAssert.StillPendingAsync(dispose, "the deadline has not passed");
        tokens.Single().IsCancellationRequested.Should().BeFalse();

        clock.Advance(TimeSpan.FromTicks(1));

        await dispose.WithTimeout(); // never throws
        await queue.Completion.WithTimeout();
        tokens.Single().IsCancellationRequested.Should().BeTrue();
        dropped.Should().Equal(1, 2);
        var s = queue.GetStatistics();
        s.Accepted.Should().Be(3);
        s.Failed.Should().Be(1);
        s.Dropped.Should().Be(2);
    }

    [Fact]
    public async Task DisposeAsync_with_zero_DrainTimeout_returns_at_once_and_never_throws()
    {
        var gate = Gate();
        var started = new SemaphoreSlim(0);
        var dropped = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                started.Release();
                await gate.Task; // ignores ct
            },
            new WorkQueueOptions<int> { Capacity = 10, DrainTimeout = TimeSpan.Zero, OnDropped = dropped.Enqueue });
        await queue.EnqueueAsync(0).WithTimeout();
        await queue.EnqueueAsync(1).WithTimeout();
        (await started.WaitAsync(Wait)).Should().BeTrue();

        await queue.DisposeAsync().AsTask().WithTimeout();

        dropped.Should().Equal(1);
        gate.SetResult();
        await queue.Completion.WithTimeout();
        var s = queue.GetStatistics();
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
    }

    [Fact]
    public async Task IDrainable_is_implemented_and_DrainAsync_through_the_interface_drains()
    {
        var handled = 0;
        var queue = new WorkQueue<int>((_, _) =>
        {
            Interlocked.Increment(ref handled);
            return ValueTask.CompletedTask;
        });
        await queue.EnqueueAsync(1).WithTimeout();
        IDrainable drainable = queue;
        IAsyncDisposable disposable = queue;

        await drainable.DrainAsync().WithTimeout();
        await disposable.DisposeAsync().AsTask().WithTimeout();

        handled.Should().Be(1);
    }

    // ---------------------------------------------------------------- rate limiter and pipeline

    [Fact]
    public async Task RateLimiter_paces_items_on_the_fake_clock_one_permit_per_item()
    {
        var clock = new ManualTimeProvider();
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 10, Burst = 1, TimeProvider = clock });
        var handled = new ConcurrentQueue<int>();
        await using var queue = new WorkQueue<int>(
            (i, ct) =>
            {
                handled.Enqueue(i);
                return ValueTask.CompletedTask;
            },
            new WorkQueueOptions<int> { RateLimiter = limiter, TimeProvider = clock });

        for (var i = 0; i < 3; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => handled.Count == 1);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount > 0, "the worker waits out RetryAfter on the clock");
        await Task.Delay(30);
        handled.Should().HaveCount(1, "the next permit is due in 100 ms");

        clock.AdvanceMilliseconds(100);
        await AsyncAssert.EventuallyAsync(() => handled.Count == 2);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount > 0);
        handled.Should().HaveCount(2);

        clock.AdvanceMilliseconds(100);
        await AsyncAssert.EventuallyAsync(() => handled.Count == 3);
        var drain = queue.DrainAsync();
        await drain.WithTimeout();
        handled.Should().Equal(0, 1, 2);
        queue.GetStatistics().Failed.Should().Be(0, "work is paced, not failed");
    }

    [Fact]
    public async Task RateLimiter_lease_is_held_until_the_handler_finishes()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 100 });
        int current = 0, max = 0;
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                var now = Interlocked.Increment(ref current);
                int seen;
                while ((seen = Volatile.Read(ref max)) < now && Interlocked.CompareExchange(ref max, now, seen) != seen)
                {
                }

                await Task.Delay(2, ct);
                Interlocked.Decrement(ref current);
            },
            new WorkQueueOptions<int> { MaxConcurrency = 4, RateLimiter = limiter });
        for (var i = 0; i < 12; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();
        max.Should().Be(1);
        queue.GetStatistics().Handled.Should().Be(12);
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(1, "every lease was disposed");
    }

    [Fact]
    public async Task A_permit_refused_without_RetryAfter_fails_the_item_with_RateLimitRejectedException()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 0 });
        using var held = limiter.AttemptAcquire();
        held.IsAcquired.Should().BeTrue();
        var errors = new ConcurrentQueue<(int Item, Exception Error)>();
        var handled = 0;
        await using var queue = new WorkQueue<int>(
            (i, ct) =>
            {
                Interlocked.Increment(ref handled);
                return ValueTask.CompletedTask;
            },
            new WorkQueueOptions<int> { RateLimiter = limiter, OnError = (i, ex) => errors.Enqueue((i, ex)) });

        await queue.EnqueueAsync(7).WithTimeout();
        await queue.DrainAsync().WithTimeout();

        handled.Should().Be(0);
        errors.Should().ContainSingle();
        errors.Single().Item.Should().Be(7);
        errors.Single().Error.Should().BeOfType<RateLimitRejectedException>().Which.Should().BeAssignableTo<ExecutionRejectedException>();
        queue.GetStatistics().Failed.Should().Be(1);
    }

    [Fact]
    public async Task Pipeline_retries_the_handler_and_the_item_counts_once_as_handled()
    {
        var attempts = new ConcurrentDictionary<int, int>();
        var pipeline = new ResiliencePipelineBuilder()
            .AddRetry(new RetryStrategyOptions { MaxRetryAttempts = 3, Delay = TimeSpan.Zero })
            .Build();
        var errors = new ConcurrentQueue<int>();
        await using var queue = new WorkQueue<int>(
            (i, ct) =>
            {
                var n = attempts.AddOrUpdate(i, 1, (_, a) => a + 1);
                if (n < 3)
                {
                    throw new InvalidOperationException("transient");
                }

                return ValueTask.CompletedTask;
            },
            new WorkQueueOptions<int> { Pipeline = pipeline, OnError = (i, _) => errors.Enqueue(i) });

        await queue.EnqueueAsync(1).WithTimeout();
        await queue.EnqueueAsync(2).WithTimeout();
        await queue.DrainAsync().WithTimeout();

        attempts[1].Should().Be(3);
        attempts[2].Should().Be(3);
        errors.Should().BeEmpty();
        var s = queue.GetStatistics();
        s.Handled.Should().Be(2);
        s.Failed.Should().Be(0);
    }

    [Fact]
    public async Task Pipeline_that_gives_up_fails_the_item_with_the_last_exception()
    {
        var attempts = 0;
        var pipeline = new ResiliencePipelineBuilder()
            .AddRetry(new RetryStrategyOptions { MaxRetryAttempts = 2, Delay = TimeSpan.Zero })
            .Build();
        var errors = new ConcurrentQueue<(int Item, Exception Error)>();
        await using var queue = new WorkQueue<int>(
            (i, ct) => throw new InvalidOperationException("attempt " + Interlocked.Increment(ref attempts)),
            new WorkQueueOptions<int> { Pipeline = pipeline, OnError = (i, ex) => errors.Enqueue((i, ex)) });

        await queue.EnqueueAsync(5).WithTimeout();
        await queue.DrainAsync().WithTimeout();

        attempts.Should().Be(3);
        errors.Should().ContainSingle();
        errors.Single().Item.Should().Be(5);
        errors.Single().Error.Should().BeOfType<InvalidOperationException>().Which.Message.Should().Be("attempt 3");
        queue.GetStatistics().Failed.Should().Be(1);
    }

    // ---------------------------------------------------------------- adversarial: races and cut-short waits

    [Fact]
    public async Task A_drain_cut_short_while_a_worker_waits_for_a_permit_still_finishes_and_accounts_for_the_item()
    {
        var clock = new ManualTimeProvider();
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 1, Burst = 1, TimeProvider = clock });
        var handled = new ConcurrentQueue<int>();
        var dropped = new ConcurrentQueue<int>();
        var errors = new ConcurrentQueue<int>();
        await using var queue = new WorkQueue<int>(
            (i, ct) =>
            {
                handled.Enqueue(i);
                return ValueTask.CompletedTask;
            },
            new WorkQueueOptions<int> { RateLimiter = limiter, TimeProvider = clock, OnDropped = dropped.Enqueue, OnError = (i, _) => errors.Enqueue(i) });
        await queue.EnqueueAsync(0).WithTimeout();
        await queue.EnqueueAsync(1).WithTimeout();
        await queue.EnqueueAsync(2).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => handled.Count == 1);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount > 0, "item 1 waits for its permit");

        await FluentActions.Awaiting(() => queue.DrainAsync(new CancellationToken(true)).WithTimeout()).Should().ThrowAsync<OperationCanceledException>();

        await queue.Completion.WithTimeout(TimeSpan.FromSeconds(5)); // without moving the clock
        handled.Should().Equal(0);
        var s = queue.GetStatistics();
        s.Accepted.Should().Be(3);
        (s.Handled + s.Failed + s.Dropped).Should().Be(3);
        dropped.Concat(errors).Should().BeEquivalentTo(new[] { 1, 2 });
    }

    [Fact]
    public async Task Producers_racing_a_drain_either_get_accepted_and_handled_or_refused()
    {
        for (var round = 0; round < 20; round++)
        {
            var handled = 0;
            var queue = new WorkQueue<int>(
                async (i, ct) =>
                {
                    await Task.Yield();
                    Interlocked.Increment(ref handled);
                },
                new WorkQueueOptions<int> { Capacity = 4, MaxConcurrency = 2 });
            var accepted = 0;
            var refused = 0;
            var go = Gate();
            var producers = Enumerable.Range(0, 4).Select(p => Task.Run(async () =>
            {
                await go.Task;
                for (var i = 0; i < 200; i++)
                {
                    try
                    {
                        await queue.EnqueueAsync(i);
                        Interlocked.Increment(ref accepted);
                    }
                    catch (InvalidOperationException)
                    {
                        Interlocked.Increment(ref refused);
                    }
                }
            })).ToArray();
            go.SetResult();
            await Task.Delay(1);
            await queue.DrainAsync().WithTimeout();
            await Task.WhenAll(producers).WithTimeout();

            (accepted + refused).Should().Be(800);
            var s = queue.GetStatistics();
            s.Accepted.Should().Be(accepted, $"round {round}");
            s.Handled.Should().Be(accepted, $"round {round}");
            handled.Should().Be(accepted, $"round {round}");
        }
    }

    [Fact]
    public async Task DrainAsync_refuses_producers_that_were_waiting_for_room()
    {
        var gate = Gate();
        var started = new SemaphoreSlim(0);
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                started.Release();
                await gate.Task;
            },
            new WorkQueueOptions<int> { Capacity = 1 });
        await queue.EnqueueAsync(0).WithTimeout();
        (await started.WaitAsync(Wait)).Should().BeTrue();
        await queue.EnqueueAsync(1).WithTimeout();
        var waiting = queue.EnqueueAsync(2).AsTask();
        await AsyncAssert.StillPendingAsync(waiting);

        var drain = queue.DrainAsync();

        await FluentActions.Awaiting(() => waiting.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        gate.SetResult();
        await drain.WithTimeout();
        queue.GetStatistics().Accepted.Should().Be(2);
        queue.GetStatistics().Handled.Should().Be(2);
    }

    [Fact]
    public async Task Handler_returning_a_faulted_ValueTask_without_throwing_counts_as_failed()
    {
        var errors = new ConcurrentQueue<Exception>();
        await using var queue = new WorkQueue<int>(
            (i, ct) => ValueTask.FromException(new FormatException("bad " + i)),
            new WorkQueueOptions<int> { OnError = (_, ex) => errors.Enqueue(ex) });
        await queue.EnqueueAsync(1).WithTimeout();
        await queue.DrainAsync().WithTimeout();
        errors.Single().Should().BeOfType<FormatException>();
        queue.GetStatistics().Failed.Should().Be(1);
    }

    [Fact]
    public async Task InFlight_and_Count_are_zero_and_statistics_exact_once_Completion_has_completed()
    {
        var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                await Task.Yield();
                if (i % 7 == 0)
                {
                    throw new InvalidOperationException();
                }
            },
            new WorkQueueOptions<int> { MaxConcurrency = 4, Capacity = 16 });
        for (var i = 0; i < 200; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        queue.Complete();
        await queue.Completion.WithTimeout();

        queue.InFlight.Should().Be(0);
        queue.Count.Should().Be(0);
        var s = queue.GetStatistics();
        s.Accepted.Should().Be(200);
        s.Failed.Should().Be(29);
        s.Handled.Should().Be(171);
        await queue.DisposeAsync();
    }

    [Fact]
    public async Task A_waiting_producers_continuation_does_not_run_inline_on_a_worker()
    {
        var gate = Gate();
        var started = new SemaphoreSlim(0);
        using var oneHandled = new ManualResetEventSlim();
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                started.Release();
                if (i == 0)
                {
                    await gate.Task;
                }

                if (i == 1)
                {
                    oneHandled.Set();
                }
            },
            new WorkQueueOptions<int> { Capacity = 1 });
        await queue.EnqueueAsync(0).WithTimeout();
        (await started.WaitAsync(Wait)).Should().BeTrue();
        await queue.EnqueueAsync(1).WithTimeout();
        var producer = Task.Run(async () =>
        {
            await queue.EnqueueAsync(2);
            return oneHandled.Wait(TimeSpan.FromSeconds(3)); // blocks whatever thread resumed us
        });
        await AsyncAssert.EventuallyAsync(() => queue.GetStatistics().WaitingProducers == 1);

        gate.SetResult();

        (await producer.WithTimeout()).Should().BeTrue("the worker that made room must not be the thread running the producer's continuation");
        await queue.DrainAsync().WithTimeout();
        queue.GetStatistics().Handled.Should().Be(3);
    }

    [Fact]
    public async Task Pipeline_timeout_reaches_the_handler_through_its_token()
    {
        var pipeline = new ResiliencePipelineBuilder().AddTimeout(TimeSpan.FromMilliseconds(50)).Build();
        var errors = new ConcurrentQueue<Exception>();
        await using var queue = new WorkQueue<int>(
            async (i, ct) => await Task.Delay(Timeout.Infinite, ct),
            new WorkQueueOptions<int> { Pipeline = pipeline, OnError = (_, ex) => errors.Enqueue(ex) });

        await queue.EnqueueAsync(1).WithTimeout();
        await queue.DrainAsync().WithTimeout(TimeSpan.FromSeconds(5));

        errors.Single().Should().BeOfType<Polly.Timeout.TimeoutRejectedException>();
        queue.GetStatistics().Failed.Should().Be(1);
    }

    // ---------------------------------------------------------------- observability

    [Fact]
    public async Task Metrics_are_published_on_the_AsyncPatterns_meter_tagged_with_the_queue_name()
    {
        var name = UniqueName("wq-metrics");
        using var metrics = new MetricsCollector("asyncpatterns.workqueue.", name);
        await using var queue = new WorkQueue<int>(
            (i, _) => i == 3 ? throw new InvalidOperationException() : ValueTask.CompletedTask,
            new WorkQueueOptions<int> { Name = name });
        for (var i = 0; i < 5; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();

        metrics.Sum("asyncpatterns.workqueue.accepted").Should().Be(5);
        metrics.Sum("asyncpatterns.workqueue.handled").Should().Be(4);
        metrics.Sum("asyncpatterns.workqueue.failed").Should().Be(1);
    }

    [Fact]
    public async Task Drops_and_failures_are_logged_through_the_LoggerFactory()
    {
        using var provider = new CapturingLoggerProvider();
        using var factory = provider.CreateFactory();
        var name = UniqueName("wq-logs");
        var gate = Gate();
        var started = new SemaphoreSlim(0);
        await using var queue = new WorkQueue<int>(
            async (i, ct) =>
            {
                started.Release();
                await gate.Task;
                if (i == 0)
                {
                    throw new InvalidOperationException("logged failure");
                }
            },
            new WorkQueueOptions<int> { Name = name, LoggerFactory = factory, Capacity = 1, FullMode = BoundedChannelFullMode.DropWrite });
        await queue.EnqueueAsync(0).WithTimeout();
        (await started.WaitAsync(Wait)).Should().BeTrue();
        await queue.EnqueueAsync(1).WithTimeout();
        await queue.EnqueueAsync(2).WithTimeout(); // dropped
        gate.SetResult();
        await queue.DrainAsync().WithTimeout();

        provider.Entries.Should().Contain(e => e.Message.Contains(name) && e.Message.Contains("drop", StringComparison.OrdinalIgnoreCase));
        provider.Entries.Should().Contain(e => e.Message.Contains(name) && e.Level >= LogLevelWarning);
        provider.Entries.Should().OnlyContain(e => e.EventId.Id != 0, "messages come from LoggerMessage-generated methods with event ids");
    }

    private const Microsoft.Extensions.Logging.LogLevel LogLevelWarning = Microsoft.Extensions.Logging.LogLevel.Warning;
}
