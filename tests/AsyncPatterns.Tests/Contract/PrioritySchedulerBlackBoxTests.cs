using System.Collections.Concurrent;
using System.Threading.RateLimiting;
using Polly;
using AsyncPatterns.Tests.TestSupport;
using static AsyncPatterns.Tests.Contract.FlowBlackBox;

namespace AsyncPatterns.Tests.Contract;

/// <summary>
/// Black-box tests of <see cref="PriorityScheduler"/> written from DESIGN.md ("Shared rules" and "Priority
/// scheduler"), the README and the seeds, without reading the implementation.
/// </summary>
public sealed class PrioritySchedulerBlackBoxTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    /// <summary>Starts a blocker that holds the only slot until the returned gate is opened.</summary>
    private static async Task<(TaskCompletionSource Gate, Task Blocker)> BlockAsync(PriorityScheduler scheduler, int priority = 0)
    {
        var gate = Gate();
        var started = Gate();
        var blocker = scheduler.RunAsync(
            async ct =>
            {
                started.TrySetResult();
                await gate.Task;
            },
            priority);
        await started.Task.WithTimeout();
        return (gate, blocker);
    }

    private static Task Record(PriorityScheduler scheduler, ConcurrentQueue<string> order, string label, int priority, CancellationToken cancellationToken = default) =>
        scheduler.RunAsync(
            ct =>
            {
                order.Enqueue(label);
                return ValueTask.CompletedTask;
            },
            priority,
            cancellationToken);

    private static PrioritySchedulerOptions Options(bool aging, ManualTimeProvider? clock = null, int maxConcurrency = 1, int capacity = int.MaxValue) => new()
    {
        MaxConcurrency = maxConcurrency,
        Capacity = capacity,
        // A long aging interval on a clock that does not move: strict priority, but on the aging data structure.
        AgingInterval = aging ? TimeSpan.FromHours(1) : null,
        TimeProvider = clock ?? new ManualTimeProvider(),
    };

    // ---------------------------------------------------------------- seeds / README

    [Fact]
    public async Task Seed_lower_number_runs_first_high_medium_low()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1 });
        var (gate, blocker) = await BlockAsync(scheduler);
        var order = new ConcurrentQueue<string>();

        var low = Record(scheduler, order, "low", 3);
        var high = Record(scheduler, order, "high", 1);
        var medium = Record(scheduler, order, "medium", 2);
        scheduler.QueuedCount.Should().Be(3);
        scheduler.RunningCount.Should().Be(1);

        gate.SetResult();
        await Task.WhenAll(blocker, low, high, medium).WithTimeout();
        order.Should().Equal("high", "medium", "low");
    }

    [Fact]
    public async Task Readme_example_returns_the_result_and_sheds_with_WorkRejectedException()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1, Capacity = 1 });
        var page = await scheduler.RunAsync(async ct =>
        {
            await Task.Yield();
            return "page 7";
        }, priority: 1).WithTimeout();
        page.Should().Be("page 7");

        var (gate, blocker) = await BlockAsync(scheduler);
        var urgent = scheduler.RunAsync(ct => ValueTask.FromResult(1), priority: 1);
        var export = scheduler.RunAsync(ct => ValueTask.CompletedTask, priority: 9);

        var caught = false;
        try
        {
            await export.WithTimeout();
        }
        catch (WorkRejectedException)
        {
            caught = true;
        }

        caught.Should().BeTrue();
        gate.SetResult();
        (await urgent.WithTimeout()).Should().Be(1);
        await blocker.WithTimeout();
    }

    // ---------------------------------------------------------------- options

    [Fact]
    public void Options_have_the_documented_defaults()
    {
        var o = new PrioritySchedulerOptions();
        o.MaxConcurrency.Should().Be(1);
        o.Capacity.Should().Be(int.MaxValue);
        o.AgingInterval.Should().BeNull();
        o.RateLimiter.Should().BeNull();
        o.Name.Should().BeNull();
        o.TimeProvider.Should().BeNull();
        o.LoggerFactory.Should().BeNull();
    }

    [Theory]
    [InlineData("MaxConcurrency", 0)]
    [InlineData("MaxConcurrency", -1)]
    [InlineData("Capacity", 0)]
    [InlineData("Capacity", -10)]
    public void Out_of_range_counts_throw_ArgumentOutOfRangeException_naming_the_option(string option, int value)
    {
        var o = new PrioritySchedulerOptions();
        typeof(PrioritySchedulerOptions).GetProperty(option)!.SetValue(o, value);

        var create = () => new PriorityScheduler(o);

        var ex = create.Should().Throw<ArgumentOutOfRangeException>().Which;
        ex.ParamName.Should().Be(option);
        ex.Message.Should().Contain("0");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    public void Non_positive_AgingInterval_throws_naming_AgingInterval(int milliseconds)
    {
        var create = () => new PriorityScheduler(new PrioritySchedulerOptions { AgingInterval = TimeSpan.FromMilliseconds(milliseconds) });

        create.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(nameof(PrioritySchedulerOptions.AgingInterval));
    }

    [Fact]
    public async Task Options_are_copied_later_changes_have_no_effect()
    {
        var options = new PrioritySchedulerOptions { MaxConcurrency = 1, Capacity = 1, Name = "copied-scheduler" };
        await using var scheduler = new PriorityScheduler(options);
        options.MaxConcurrency = 10;
        options.Capacity = 100;
        options.Name = "renamed";

        var (gate, blocker) = await BlockAsync(scheduler);
        var queued = scheduler.RunAsync(ct => ValueTask.CompletedTask, 1);
        var refused = scheduler.RunAsync(ct => ValueTask.CompletedTask, 1);

        scheduler.RunningCount.Should().Be(1, "MaxConcurrency 1 was copied");
        await FluentActions.Awaiting(() => refused.WithTimeout()).Should().ThrowAsync<WorkRejectedException>("Capacity 1 was copied");
        gate.SetResult();
        await Task.WhenAll(blocker, queued).WithTimeout();

        await scheduler.DrainAsync().WithTimeout();
        var ex = await FluentActions.Awaiting(() => scheduler.RunAsync(ct => ValueTask.CompletedTask)).Should().ThrowAsync<InvalidOperationException>();
        ex.Which.Message.Should().Contain("copied-scheduler");
    }

    [Fact]
    public async Task Null_work_throws_ArgumentNullException()
    {
        await using var scheduler = new PriorityScheduler();
        await FluentActions.Awaiting(() => scheduler.RunAsync((Func<CancellationToken, ValueTask>)null!)).Should().ThrowAsync<ArgumentNullException>();
        await FluentActions.Awaiting(() => scheduler.RunAsync((Func<CancellationToken, ValueTask<int>>)null!)).Should().ThrowAsync<ArgumentNullException>();
    }

    // ---------------------------------------------------------------- ordering

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Equal_priorities_run_in_submission_order_and_priorities_in_ascending_order(bool aging)
    {
        await using var scheduler = new PriorityScheduler(Options(aging));
        var (gate, blocker) = await BlockAsync(scheduler);
        var order = new ConcurrentQueue<string>();
        var random = new Random(1234);
        var submitted = new List<(int Priority, int Seq)>();
        var tasks = new List<Task>();
        for (var i = 0; i < 200; i++)
        {
            var p = random.Next(-3, 4);
            submitted.Add((p, i));
            tasks.Add(Record(scheduler, order, $"{p}:{i}", p));
        }

        gate.SetResult();
        await Task.WhenAll(tasks.Append(blocker)).WithTimeout();

        var expected = submitted.OrderBy(s => s.Priority).ThenBy(s => s.Seq).Select(s => $"{s.Priority}:{s.Seq}");
        order.Should().Equal(expected);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Extreme_and_negative_priorities_order_correctly(bool aging)
    {
        await using var scheduler = new PriorityScheduler(Options(aging));
        var (gate, blocker) = await BlockAsync(scheduler);
        var order = new ConcurrentQueue<string>();

        var tasks = new[]
        {
            Record(scheduler, order, "max", int.MaxValue),
            Record(scheduler, order, "zero", 0),
            Record(scheduler, order, "min", int.MinValue),
            Record(scheduler, order, "minus-one", -1),
            Record(scheduler, order, "max-2", int.MaxValue),
            Record(scheduler, order, "min-2", int.MinValue),
        };
        gate.SetResult();
        await Task.WhenAll(tasks.Append(blocker)).WithTimeout();

        order.Should().Equal("min", "min-2", "minus-one", "zero", "max", "max-2");
    }

    [Fact]
    public async Task At_most_MaxConcurrency_items_run_at_once_and_free_slots_take_the_most_urgent()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 2 });
        var gates = new ConcurrentDictionary<string, TaskCompletionSource>();
        var order = new ConcurrentQueue<string>();
        int current = 0, max = 0;
        Task Submit(string label, int priority)
        {
            var gate = gates.GetOrAdd(label, _ => Gate());
            return scheduler.RunAsync(
                async ct =>
                {
                    var now = Interlocked.Increment(ref current);
                    int seen;
                    while ((seen = Volatile.Read(ref max)) < now && Interlocked.CompareExchange(ref max, now, seen) != seen)
                    {
                    }

                    order.Enqueue(label);
                    await gate.Task;
                    Interlocked.Decrement(ref current);
                },
                priority);
        }

        var tasks = new List<Task> { Submit("a", 5), Submit("b", 5) };
        await AsyncAssert.EventuallyAsync(() => order.Count == 2);
        tasks.Add(Submit("c", 9));
        tasks.Add(Submit("d", 1));
        tasks.Add(Submit("e", 4));
        scheduler.RunningCount.Should().Be(2);
        scheduler.QueuedCount.Should().Be(3);

        gates["a"].SetResult();
        await AsyncAssert.EventuallyAsync(() => order.Count == 3);
        order.Last().Should().Be("d");
        gates["b"].SetResult();
        await AsyncAssert.EventuallyAsync(() => order.Count == 4);
        order.Last().Should().Be("e");
        foreach (var g in gates.Values)
        {
            g.TrySetResult();
        }

        gates.GetOrAdd("c", _ => Gate()).TrySetResult();
        await Task.WhenAll(tasks).WithTimeout();
        // a and b start together on two slots, so either may record itself first; the queued ones follow by priority.
        order.Take(2).Should().BeEquivalentTo("a", "b");
        order.Skip(2).Should().Equal("d", "e", "c");
        max.Should().Be(2);
    }

    [Fact]
    public async Task Work_starts_on_the_thread_pool_never_inline_in_RunAsync()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1 });
        using var release = new ManualResetEventSlim();
        var submit = Task.Factory.StartNew(() => scheduler.RunAsync(ct =>
        {
            release.Wait(Wait); // blocks synchronously: would block RunAsync if run inline
            return ValueTask.CompletedTask;
        }), CancellationToken.None, TaskCreationOptions.DenyChildAttach, TaskScheduler.Default);

        var work = await submit.WithTimeout(TimeSpan.FromSeconds(5));
        work.IsCompleted.Should().BeFalse();
        release.Set();
        await work.WithTimeout();
    }

    [Fact]
    public async Task The_submitters_ExecutionContext_flows_to_the_work()
    {
        var local = new AsyncLocal<string>();
        await using var scheduler = new PriorityScheduler();
        local.Value = "from the caller";

        var seen = await scheduler.RunAsync(ct => ValueTask.FromResult(local.Value)).WithTimeout();

        seen.Should().Be("from the caller");
    }

    // ---------------------------------------------------------------- results and failures

    [Fact]
    public async Task A_failing_item_faults_its_own_task_with_the_same_exception_and_the_scheduler_goes_on()
    {
        await using var scheduler = new PriorityScheduler();
        var boom = new InvalidOperationException("boom");

        var failed = scheduler.RunAsync<int>(ct => throw boom);
        var failedAsync = scheduler.RunAsync(async ct =>
        {
            await Task.Yield();
            throw new TimeoutException();
        });
        var ok = scheduler.RunAsync(ct => ValueTask.FromResult(42));

        (await FluentActions.Awaiting(() => failed.WithTimeout()).Should().ThrowAsync<InvalidOperationException>()).Which.Should().BeSameAs(boom);
        await FluentActions.Awaiting(() => failedAsync.WithTimeout()).Should().ThrowAsync<TimeoutException>();
        (await ok.WithTimeout()).Should().Be(42);
        await scheduler.DrainAsync().WithTimeout();
        var s = scheduler.GetStatistics();
        s.Failed.Should().Be(2);
        s.Handled.Should().Be(1);
        s.Accepted.Should().Be(3);
    }

    // ---------------------------------------------------------------- cancellation

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Cancelling_before_start_removes_the_item_at_once_and_cancels_its_task(bool aging)
    {
        await using var scheduler = new PriorityScheduler(Options(aging));
        var (gate, blocker) = await BlockAsync(scheduler);
        var order = new ConcurrentQueue<string>();
        using var cts = new CancellationTokenSource();

        var a = Record(scheduler, order, "a", 1);
        var cancelled = Record(scheduler, order, "cancelled", 0, cts.Token);
        var b = Record(scheduler, order, "b", 2);
        scheduler.QueuedCount.Should().Be(3);

        cts.Cancel();

        scheduler.QueuedCount.Should().Be(2, "the item leaves the queue at once");
        cancelled.IsCanceled.Should().BeTrue("its task is cancelled at once");
        var ex = await FluentActions.Awaiting(() => cancelled).Should().ThrowAsync<OperationCanceledException>();
        ex.Which.CancellationToken.Should().Be(cts.Token);

        gate.SetResult();
        await Task.WhenAll(blocker, a, b).WithTimeout();
        await scheduler.DrainAsync().WithTimeout();
        order.Should().Equal("a", "b");
        var s = scheduler.GetStatistics();
        s.Canceled.Should().Be(1);
        s.Dropped.Should().Be(1);
        s.Handled.Should().Be(3);
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
    }

    [Fact]
    public async Task An_already_cancelled_token_returns_a_cancelled_task_and_the_work_never_runs()
    {
        await using var scheduler = new PriorityScheduler();
        var ran = false;

        var task = scheduler.RunAsync(ct =>
        {
            ran = true;
            return ValueTask.CompletedTask;
        }, 0, new CancellationToken(true));

        await FluentActions.Awaiting(() => task.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        task.IsCanceled.Should().BeTrue();
        await scheduler.DrainAsync().WithTimeout();
        ran.Should().BeFalse();
        var s = scheduler.GetStatistics();
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
    }

    [Fact]
    public async Task After_start_the_token_reaches_the_work()
    {
        await using var scheduler = new PriorityScheduler();
        using var cts = new CancellationTokenSource();
        var started = Gate();

        var task = scheduler.RunAsync(async ct =>
        {
            started.SetResult();
            await Task.Delay(Timeout.Infinite, ct);
        }, 0, cts.Token);
        await started.Task.WithTimeout();
        scheduler.RunningCount.Should().Be(1);

        cts.Cancel();

        await FluentActions.Awaiting(() => task.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        task.IsCanceled.Should().BeTrue("an OperationCanceledException from the work cancels the task");
        await AsyncAssert.EventuallyAsync(() => scheduler.RunningCount == 0);
        await scheduler.DrainAsync().WithTimeout();
        var s = scheduler.GetStatistics();
        s.Canceled.Should().Be(0, "it had started");
        (s.Handled + s.Failed + s.Dropped).Should().Be(1);
    }

    [Fact]
    public async Task Cancelling_after_the_item_finished_changes_nothing()
    {
        await using var scheduler = new PriorityScheduler();
        using var cts = new CancellationTokenSource();
        var result = await scheduler.RunAsync(ct => ValueTask.FromResult(5), 0, cts.Token).WithTimeout();
        cts.Cancel();
        result.Should().Be(5);
        await scheduler.DrainAsync().WithTimeout();
        scheduler.GetStatistics().Handled.Should().Be(1);
        scheduler.GetStatistics().Canceled.Should().Be(0);
    }

    // ---------------------------------------------------------------- capacity shedding

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task At_capacity_a_more_urgent_item_evicts_the_least_urgent_and_others_are_refused(bool aging)
    {
        await using var scheduler = new PriorityScheduler(Options(aging, capacity: 2));
        var (gate, blocker) = await BlockAsync(scheduler);
        var order = new ConcurrentQueue<string>();

        var a = Record(scheduler, order, "a", 3);
        var b = Record(scheduler, order, "b", 5);
        scheduler.QueuedCount.Should().Be(2);

        var c = Record(scheduler, order, "c", 1); // evicts b
        var evicted = await FluentActions.Awaiting(() => b.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();
        scheduler.QueuedCount.Should().Be(2);

        var d = Record(scheduler, order, "d", 9); // less urgent than all: refused
        var refused = await FluentActions.Awaiting(() => d.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();
        var e = Record(scheduler, order, "e", 3); // as urgent as the least urgent queued (a): refused
        await FluentActions.Awaiting(() => e.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();
        scheduler.QueuedCount.Should().Be(2);

        evicted.Which.Should().BeAssignableTo<ExecutionRejectedException>();
        evicted.Which.Message.Should().NotBe(refused.Which.Message, "the message says why the item was shed");

        gate.SetResult();
        await Task.WhenAll(blocker, a, c).WithTimeout();
        await scheduler.DrainAsync().WithTimeout();
        order.Should().Equal("c", "a");
        var s = scheduler.GetStatistics();
        s.Evicted.Should().Be(1);
        s.Rejected.Should().Be(2);
        s.Accepted.Should().Be(4, "blocker, a, b, c; refused items were never accepted");
        s.Handled.Should().Be(3);
        s.Dropped.Should().Be(1);
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Among_equal_least_urgent_items_the_one_that_would_run_last_is_evicted(bool aging)
    {
        await using var scheduler = new PriorityScheduler(Options(aging, capacity: 2));
        var (gate, blocker) = await BlockAsync(scheduler);
        var order = new ConcurrentQueue<string>();

        var first = Record(scheduler, order, "first", 5);
        var second = Record(scheduler, order, "second", 5);
        var urgent = Record(scheduler, order, "urgent", 0);

        await FluentActions.Awaiting(() => second.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();
        gate.SetResult();
        await Task.WhenAll(blocker, first, urgent).WithTimeout();
        order.Should().Equal("urgent", "first");
    }

    [Fact]
    public async Task Running_items_do_not_count_against_Capacity()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1, Capacity = 1 });
        var (gate, blocker) = await BlockAsync(scheduler);

        var queued = scheduler.RunAsync(ct => ValueTask.CompletedTask, 7);
        await Task.Delay(20);
        queued.IsCompleted.Should().BeFalse("one queued item fits Capacity 1 while another runs");
        gate.SetResult();
        await Task.WhenAll(blocker, queued).WithTimeout();
    }

    // ---------------------------------------------------------------- aging

    [Theory]
    [InlineData(10_000, "low")]    // low: 5 + 0, urgent: 1 + 10 → low first
    [InlineData(2_000, "urgent")]  // urgent: 1 + 2 = 3 < 5
    [InlineData(4_000, "low")]     // tie at 5: submission order
    [InlineData(3_999, "urgent")]  // 1 + 3.999 < 5
    [InlineData(4_001, "low")]
    public async Task Aging_lifts_a_waiting_item_one_level_per_interval_on_the_fake_clock(int waitedMs, string expectedFirst)
    {
        var clock = new ManualTimeProvider();
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions
        {
            MaxConcurrency = 1,
            AgingInterval = TimeSpan.FromSeconds(1),
            TimeProvider = clock,
        });
        var (gate, blocker) = await BlockAsync(scheduler);
        var order = new ConcurrentQueue<string>();

        var low = Record(scheduler, order, "low", 5);
        clock.AdvanceMilliseconds(waitedMs);
        var urgent = Record(scheduler, order, "urgent", 1);

        gate.SetResult();
        await Task.WhenAll(blocker, low, urgent).WithTimeout();
        order.First().Should().Be(expectedFirst);
    }

    [Fact]
    public async Task Without_aging_a_constant_stream_of_urgent_work_starves_low_priority_but_with_aging_it_runs()
    {
        foreach (var aging in new[] { false, true })
        {
            var clock = new ManualTimeProvider();
            await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions
            {
                MaxConcurrency = 1,
                AgingInterval = aging ? TimeSpan.FromSeconds(1) : null,
                TimeProvider = clock,
            });
            var (gate, blocker) = await BlockAsync(scheduler);
            var order = new ConcurrentQueue<string>();
            var tasks = new List<Task> { blocker, Record(scheduler, order, "low", 10) };
            for (var i = 0; i < 30; i++)
            {
                clock.AdvanceMilliseconds(1000);
                tasks.Add(Record(scheduler, order, "urgent" + i, 0));
            }

            gate.SetResult();
            await Task.WhenAll(tasks).WithTimeout();
            var position = order.ToList().IndexOf("low");
            if (aging)
            {
                position.Should().Be(9, "low has key 10 + 0; urgent i has key 0 + (i + 1): urgent0..urgent8 go first, urgent9 ties and low came first");
            }
            else
            {
                position.Should().Be(30, "strict priority");
            }
        }
    }

    // ---------------------------------------------------------------- rate limiter

    [Fact]
    public async Task RateLimiter_paces_starts_on_the_fake_clock_and_permits_go_in_priority_order()
    {
        var clock = new ManualTimeProvider();
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 10, Burst = 1, TimeProvider = clock });
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1, RateLimiter = limiter, TimeProvider = clock });
        var order = new ConcurrentQueue<string>();

        var first = Record(scheduler, order, "first", 5);
        await first.WithTimeout();
        var low = Record(scheduler, order, "low", 3);
        var high = Record(scheduler, order, "high", 1);
        var mid = Record(scheduler, order, "mid", 2);

        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount > 0, "the item holding the slot waits out RetryAfter");
        await Task.Delay(30);
        order.Should().Equal("first");
        scheduler.RunningCount.Should().Be(1, "an item waiting for its permit holds its slot");

        for (var n = 2; n <= 4; n++)
        {
            clock.AdvanceMilliseconds(100);
            var expected = n;
            await AsyncAssert.EventuallyAsync(() => order.Count == expected);
            if (n < 4)
            {
                await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount > 0);
            }
        }

        await Task.WhenAll(low, high, mid).WithTimeout();
        order.Should().Equal("first", "low", "high", "mid");
        scheduler.GetStatistics().Failed.Should().Be(0);
    }

    [Fact]
    public async Task A_permit_refused_without_RetryAfter_faults_the_task_with_RateLimitRejectedException()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 0 });
        using var held = limiter.AttemptAcquire();
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { RateLimiter = limiter });
        var ran = false;

        var task = scheduler.RunAsync(ct =>
        {
            ran = true;
            return ValueTask.CompletedTask;
        });

        var ex = await FluentActions.Awaiting(() => task.WithTimeout()).Should().ThrowAsync<RateLimitRejectedException>();
        ex.Which.Should().BeAssignableTo<ExecutionRejectedException>();
        ran.Should().BeFalse();
        await scheduler.DrainAsync().WithTimeout();
        scheduler.GetStatistics().Failed.Should().Be(1);
    }

    [Fact]
    public async Task RateLimiter_lease_is_held_until_the_work_ends()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 100 });
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 4, RateLimiter = limiter });
        int current = 0, max = 0;
        var tasks = Enumerable.Range(0, 12).Select(i => scheduler.RunAsync(async ct =>
        {
            var now = Interlocked.Increment(ref current);
            int seen;
            while ((seen = Volatile.Read(ref max)) < now && Interlocked.CompareExchange(ref max, now, seen) != seen)
            {
            }

            await Task.Delay(2, ct);
            Interlocked.Decrement(ref current);
        })).ToList();

        await Task.WhenAll(tasks).WithTimeout();
        max.Should().Be(1);
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(1);
    }

    // ---------------------------------------------------------------- draining and closed state

    [Fact]
    public async Task DrainAsync_refuses_new_work_and_still_runs_queued_items_in_priority_order()
    {
        var name = UniqueName("drain-scheduler");
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { Name = name });
        var (gate, blocker) = await BlockAsync(scheduler);
        var order = new ConcurrentQueue<string>();
        var a = Record(scheduler, order, "a", 2);
        var b = Record(scheduler, order, "b", 1);

        var drain = scheduler.DrainAsync();
        var ex = await FluentActions.Awaiting(() => scheduler.RunAsync(ct => ValueTask.CompletedTask)).Should().ThrowAsync<InvalidOperationException>();
        ex.Which.Message.Should().Contain(name);
        await AsyncAssert.StillPendingAsync(drain);

        gate.SetResult();
        await drain.WithTimeout();
        await Task.WhenAll(blocker, a, b).WithTimeout();
        order.Should().Equal("b", "a");
        await scheduler.Completion.WithTimeout();
        var s = scheduler.GetStatistics();
        s.Accepted.Should().Be(3);
        s.Handled.Should().Be(3);
    }

    [Fact]
    public async Task Refusal_on_a_closed_scheduler_names_the_primitive_without_a_Name_and_an_already_cancelled_token_wins()
    {
        var scheduler = new PriorityScheduler();
        await scheduler.DisposeAsync();

        var ex = await FluentActions.Awaiting(() => scheduler.RunAsync(ct => ValueTask.FromResult(1))).Should().ThrowAsync<InvalidOperationException>();
        ex.Which.Message.Should().Contain("PriorityScheduler");

        var cancelled = scheduler.RunAsync(ct => ValueTask.CompletedTask, 0, new CancellationToken(true));
        cancelled.IsCanceled.Should().BeTrue();
    }

    [Fact]
    public async Task A_drain_cut_short_drops_queued_items_cancels_running_work_and_throws()
    {
        await using var scheduler = new PriorityScheduler();
        var started = Gate();
        var running = scheduler.RunAsync(async ct =>
        {
            started.SetResult();
            await Task.Delay(Timeout.Infinite, ct);
        });
        await started.Task.WithTimeout();
        var queued1 = scheduler.RunAsync(ct => ValueTask.CompletedTask, 1);
        var queued2 = scheduler.RunAsync(ct => ValueTask.FromResult(2), 2);

        using var cts = new CancellationTokenSource();
        var drain = scheduler.DrainAsync(cts.Token);
        await AsyncAssert.StillPendingAsync(drain);
        cts.Cancel();

        await FluentActions.Awaiting(() => drain.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await FluentActions.Awaiting(() => queued1.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await FluentActions.Awaiting(() => queued2.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        queued1.IsCanceled.Should().BeTrue();
        await FluentActions.Awaiting(() => running.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await scheduler.Completion.WithTimeout();
        var s = scheduler.GetStatistics();
        s.Abandoned.Should().Be(2);
        s.Dropped.Should().Be(2);
        s.Failed.Should().Be(1);
        s.QueuedCount.Should().Be(0);
        s.RunningCount.Should().Be(0);
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
    }

    [Fact]
    public async Task A_drain_cut_short_does_not_wait_for_work_that_ignores_its_token()
    {
        await using var scheduler = new PriorityScheduler();
        var gate = Gate();
        var started = Gate();
        var stubborn = scheduler.RunAsync(async ct =>
        {
            started.SetResult();
            await gate.Task;
        });
        await started.Task.WithTimeout();

        await FluentActions.Awaiting(() => scheduler.DrainAsync(new CancellationToken(true)).WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        scheduler.Completion.IsCompleted.Should().BeFalse();

        gate.SetResult();
        await stubborn.WithTimeout();
        await scheduler.Completion.WithTimeout();
    }

    [Fact]
    public async Task Concurrent_and_repeated_drains_complete_together_and_DisposeAsync_never_throws()
    {
        var scheduler = new PriorityScheduler();
        var (gate, blocker) = await BlockAsync(scheduler);
        var d1 = scheduler.DrainAsync();
        var d2 = scheduler.DrainAsync();
        var dispose = scheduler.DisposeAsync().AsTask();
        await AsyncAssert.StillPendingAsync(d1);
        d2.IsCompleted.Should().BeFalse();
        dispose.IsCompleted.Should().BeFalse();

        gate.SetResult();
        await Task.WhenAll(d1, d2, dispose, blocker).WithTimeout();
        await scheduler.DisposeAsync();
        await scheduler.DrainAsync().WithTimeout();
        ((IDrainable)scheduler).Should().NotBeNull();
    }

    // ---------------------------------------------------------------- adversarial

    [Fact]
    public async Task A_drain_cut_short_while_an_item_waits_for_its_permit_ends_that_item_without_moving_the_clock()
    {
        var clock = new ManualTimeProvider();
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 1, Burst = 1, TimeProvider = clock });
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { RateLimiter = limiter, TimeProvider = clock });
        await scheduler.RunAsync(ct => ValueTask.CompletedTask).WithTimeout();
        var ran = false;
        var waiting = scheduler.RunAsync(ct =>
        {
            ran = true;
            return ValueTask.CompletedTask;
        });
        var queued = scheduler.RunAsync(ct => ValueTask.CompletedTask, 1);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount > 0);

        await FluentActions.Awaiting(() => scheduler.DrainAsync(new CancellationToken(true)).WithTimeout()).Should().ThrowAsync<OperationCanceledException>();

        await scheduler.Completion.WithTimeout(TimeSpan.FromSeconds(5));
        await FluentActions.Awaiting(() => waiting.WithTimeout(TimeSpan.FromSeconds(5))).Should().ThrowAsync<Exception>();
        await FluentActions.Awaiting(() => queued.WithTimeout(TimeSpan.FromSeconds(5))).Should().ThrowAsync<OperationCanceledException>();
        ran.Should().BeFalse();
        var s = scheduler.GetStatistics();
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
        s.RunningCount.Should().Be(0);
    }

    [Fact]
    public async Task With_aging_shedding_compares_aged_keys_an_old_low_item_can_outrank_a_new_urgent_one()
    {
        var clock = new ManualTimeProvider();
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions
        {
            MaxConcurrency = 1,
            Capacity = 1,
            AgingInterval = TimeSpan.FromSeconds(1),
            TimeProvider = clock,
        });
        var (gate, blocker) = await BlockAsync(scheduler);
        var order = new ConcurrentQueue<string>();

        var old = Record(scheduler, order, "old", 5);      // key 5
        clock.AdvanceMilliseconds(10_000);
        var late = Record(scheduler, order, "late", 1);    // key 11: less urgent than the aged item
        await FluentActions.Awaiting(() => late.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();
        var newer = Record(scheduler, order, "newer", -10); // key 0: more urgent, evicts
        await FluentActions.Awaiting(() => old.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();

        gate.SetResult();
        await Task.WhenAll(blocker, newer).WithTimeout();
        order.Should().Equal("newer");
    }

    [Fact]
    public async Task Cancelling_an_evicted_item_later_changes_nothing()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { Capacity = 1 });
        var (gate, blocker) = await BlockAsync(scheduler);
        using var cts = new CancellationTokenSource();
        var evicted = scheduler.RunAsync(ct => ValueTask.CompletedTask, 5, cts.Token);
        var urgent = scheduler.RunAsync(ct => ValueTask.CompletedTask, 1);
        await FluentActions.Awaiting(() => evicted.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();

        cts.Cancel();

        scheduler.QueuedCount.Should().Be(1);
        gate.SetResult();
        await Task.WhenAll(blocker, urgent).WithTimeout();
        await scheduler.DrainAsync().WithTimeout();
        var s = scheduler.GetStatistics();
        s.Evicted.Should().Be(1);
        s.Canceled.Should().Be(0);
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
    }

    [Fact]
    public async Task Work_returning_a_faulted_or_cancelled_ValueTask_without_throwing_ends_its_task_accordingly()
    {
        await using var scheduler = new PriorityScheduler();
        var faulted = scheduler.RunAsync(ct => ValueTask.FromException<int>(new FormatException()));
        var cancelled = scheduler.RunAsync(ct => ValueTask.FromCanceled(new CancellationToken(true)));
        var ownOce = scheduler.RunAsync(ct => throw new OperationCanceledException());

        await FluentActions.Awaiting(() => faulted.WithTimeout()).Should().ThrowAsync<FormatException>();
        await FluentActions.Awaiting(() => cancelled.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await FluentActions.Awaiting(() => ownOce.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        cancelled.IsCanceled.Should().BeTrue();
        ownOce.IsCanceled.Should().BeTrue();
        await scheduler.DrainAsync().WithTimeout();
        scheduler.GetStatistics().Failed.Should().Be(3);
    }

    [Fact]
    public async Task Submitters_racing_a_drain_either_run_or_are_refused()
    {
        for (var round = 0; round < 20; round++)
        {
            var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 2 });
            var ran = 0;
            var tasks = new ConcurrentBag<Task>();
            var refused = 0;
            var go = Gate();
            var submitters = Enumerable.Range(0, 4).Select(p => Task.Run(async () =>
            {
                await go.Task;
                for (var i = 0; i < 200; i++)
                {
                    try
                    {
                        tasks.Add(scheduler.RunAsync(
                            async ct =>
                            {
                                await Task.Yield();
                                Interlocked.Increment(ref ran);
                            },
                            i % 5));
                    }
                    catch (InvalidOperationException)
                    {
                        Interlocked.Increment(ref refused);
                    }
                }
            })).ToArray();
            go.SetResult();
            await Task.Delay(1);
            await scheduler.DrainAsync().WithTimeout();
            await Task.WhenAll(submitters).WithTimeout();

            await Task.WhenAll(tasks).WithTimeout();
            (tasks.Count + refused).Should().Be(800);
            ran.Should().Be(tasks.Count, $"round {round}: every accepted item ran before the drain finished");
            var s = scheduler.GetStatistics();
            s.Accepted.Should().Be(tasks.Count);
            s.Handled.Should().Be(tasks.Count);
        }
    }

    [Fact]
    public async Task Counts_and_statistics_are_up_to_date_as_soon_as_the_items_task_completes()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 2 });
        for (var i = 1; i <= 50; i++)
        {
            await scheduler.RunAsync(ct => ValueTask.FromResult(1)).WithTimeout();
            scheduler.RunningCount.Should().Be(0);
            scheduler.QueuedCount.Should().Be(0);
            var s = scheduler.GetStatistics();
            s.Handled.Should().Be(i);
            s.Accepted.Should().Be(i);
        }

        await FluentActions.Awaiting(() => scheduler.RunAsync(ct => ValueTask.FromException(new FormatException()))).Should().ThrowAsync<FormatException>();
        scheduler.GetStatistics().Failed.Should().Be(1);
        scheduler.RunningCount.Should().Be(0);
        await AsyncAssert.StillPendingAsync(scheduler.Completion, "Completion waits for a drain");
    }

    [Fact]
    public async Task Item_tasks_run_their_continuations_asynchronously_so_a_blocking_continuation_cannot_stall_the_scheduler()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1 });
        var gate = Gate();
        using var nextStarted = new ManualResetEventSlim();
        var first = scheduler.RunAsync(async ct => await gate.Task);
        var second = scheduler.RunAsync(ct =>
        {
            nextStarted.Set();
            return ValueTask.CompletedTask;
        });
        var continuation = first.ContinueWith(
            _ => nextStarted.Wait(TimeSpan.FromSeconds(3)),
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);

        gate.SetResult();

        (await continuation.WithTimeout()).Should().BeTrue("the next item starts while a synchronous continuation of the previous one blocks");
        await second.WithTimeout();
    }

    // ---------------------------------------------------------------- statistics and observability

    [Fact]
    public async Task Statistics_add_up_while_running_and_after_draining()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 2, Capacity = 3 });
        var gate = Gate();
        var tasks = new List<Task>();
        using var cts = new CancellationTokenSource();
        for (var i = 0; i < 8; i++)
        {
            var n = i;
            tasks.Add(scheduler.RunAsync(
                async ct =>
                {
                    await gate.Task;
                    if (n == 1)
                    {
                        throw new InvalidOperationException();
                    }
                },
                priority: 10 - n,
                cancellationToken: n == 7 ? cts.Token : default));
        }

        await AsyncAssert.EventuallyAsync(() => scheduler.RunningCount == 2);
        cts.Cancel();
        var live = scheduler.GetStatistics();
        (live.Handled + live.Failed + live.Dropped + live.QueuedCount + live.RunningCount).Should().Be(live.Accepted);

        gate.SetResult();
        await Task.WhenAll(tasks.Select(t => t.ContinueWith(t => _ = t.Exception, TaskScheduler.Default))).WithTimeout();
        await scheduler.DrainAsync().WithTimeout();
        var s = scheduler.GetStatistics();
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
        s.Dropped.Should().Be(s.Canceled + s.Evicted + s.Abandoned);
        s.Failed.Should().Be(1);
        (s.Accepted + s.Rejected).Should().Be(8);
        s.Canceled.Should().Be(1);
    }

    [Fact]
    public async Task Library_awaits_never_capture_the_callers_synchronization_context()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 100 });
        var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 2, RateLimiter = limiter });
        var posts = -1;
        await RunOnNonPumpingContext(context =>
        {
            var tasks = Enumerable.Range(0, 20).Select(i => scheduler.RunAsync(async ct =>
            {
                await Task.Delay(1, ct).ConfigureAwait(false);
                return i;
            }, i % 3)).ToArray();
            Task.WhenAll(tasks).Wait(Wait).Should().BeTrue();
            scheduler.DrainAsync().Wait(Wait).Should().BeTrue();
            posts = context.Posts;
        }).WithTimeout(TimeSpan.FromSeconds(30));

        posts.Should().Be(0);
    }

    [Fact]
    public async Task Metrics_are_published_on_the_AsyncPatterns_meter_tagged_with_the_scheduler_name()
    {
        var name = UniqueName("ps-metrics");
        using var metrics = new MetricsCollector("asyncpatterns.priorityscheduler.", name);
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { Name = name, Capacity = 1 });
        var (gate, blocker) = await BlockAsync(scheduler);
        var a = scheduler.RunAsync(ct => ValueTask.CompletedTask, 5);
        var b = scheduler.RunAsync(ct => ValueTask.CompletedTask, 1); // evicts a
        var c = scheduler.RunAsync(ct => ValueTask.CompletedTask, 9); // refused
        gate.SetResult();
        await Task.WhenAll(blocker, b).WithTimeout();
        await scheduler.DrainAsync().WithTimeout();
        a.Exception!.InnerException.Should().BeOfType<WorkRejectedException>();
        c.Exception!.InnerException.Should().BeOfType<WorkRejectedException>();

        metrics.Measurements.Should().NotBeEmpty();
        metrics.Sum("asyncpatterns.priorityscheduler.evictions").Should().Be(1);
        metrics.Sum("asyncpatterns.priorityscheduler.rejections").Should().Be(1);
        metrics.Sum("asyncpatterns.priorityscheduler.queued").Should().Be(0, "every +1 has its −1");
    }

    [Fact]
    public async Task Shedding_is_logged_through_the_LoggerFactory()
    {
        using var provider = new CapturingLoggerProvider();
        using var factory = provider.CreateFactory();
        var name = UniqueName("ps-logs");
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { Name = name, Capacity = 1, LoggerFactory = factory });
        var (gate, blocker) = await BlockAsync(scheduler);
        var a = scheduler.RunAsync(ct => ValueTask.CompletedTask, 5);
        var b = scheduler.RunAsync(ct => ValueTask.CompletedTask, 9);
        gate.SetResult();
        await Task.WhenAll(blocker, a).WithTimeout();
        b.Exception!.InnerException.Should().BeOfType<WorkRejectedException>();

        provider.Entries.Should().Contain(e => e.Message.Contains(name));
        provider.Entries.Should().OnlyContain(e => e.EventId.Id != 0);
    }
}
