using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;
using Polly;

namespace AsyncPatterns.Tests.Contract;

/// <summary>Black-box tests of the PriorityScheduler contract in DESIGN.md.</summary>
public sealed class PrioritySchedulerContractTests
{
    private static async Task<(PriorityScheduler Scheduler, TaskCompletionSource Gate, Task Blocker)> BlockedAsync(PrioritySchedulerOptions? options = null)
    {
        var scheduler = new PriorityScheduler(options);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        await AsyncAssert.EventuallyAsync(() => scheduler.RunningCount == 1);
        return (scheduler, gate, blocker);
    }

    [Fact]
    public void Options_have_the_documented_defaults()
    {
        var options = new PrioritySchedulerOptions();
        options.MaxConcurrency.Should().Be(1);
        options.Capacity.Should().Be(int.MaxValue);
        options.AgingInterval.Should().BeNull();
        options.RateLimiter.Should().BeNull();
    }

    [Theory]
    [InlineData(nameof(PrioritySchedulerOptions.MaxConcurrency))]
    [InlineData(nameof(PrioritySchedulerOptions.Capacity))]
    [InlineData(nameof(PrioritySchedulerOptions.AgingInterval))]
    public void Invalid_options_throw_ArgumentOutOfRangeException_naming_the_option(string option)
    {
        var options = new PrioritySchedulerOptions();
        switch (option)
        {
            case nameof(PrioritySchedulerOptions.MaxConcurrency): options.MaxConcurrency = 0; break;
            case nameof(PrioritySchedulerOptions.Capacity): options.Capacity = 0; break;
            default: options.AgingInterval = TimeSpan.Zero; break;
        }

        FluentActions.Invoking(() => new PriorityScheduler(options)).Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(option);
    }

    [Fact]
    public void Null_work_throws_ArgumentNullException()
    {
        var scheduler = new PriorityScheduler();
        FluentActions.Invoking(() => { _ = scheduler.RunAsync((Func<CancellationToken, ValueTask>)null!); }).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => { _ = scheduler.RunAsync((Func<CancellationToken, ValueTask<int>>)null!); }).Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public async Task Lower_numbers_run_first_and_equal_priorities_in_submission_order()
    {
        var (scheduler, gate, blocker) = await BlockedAsync();
        var order = new ConcurrentQueue<string>();
        var tasks = new List<Task>();
        foreach (var (name, priority) in new[] { ("a5", 5), ("b1", 1), ("c3", 3), ("d1", 1), ("e-2", -2), ("f3", 3) })
        {
            tasks.Add(scheduler.RunAsync(_ => { order.Enqueue(name); return ValueTask.CompletedTask; }, priority));
        }

        scheduler.QueuedCount.Should().Be(6);
        gate.SetResult();
        await Task.WhenAll(tasks.Append(blocker)).WithTimeout();

        order.Should().Equal("e-2", "b1", "d1", "c3", "f3", "a5");
        await scheduler.DisposeAsync().AsTask().WithTimeout();
    }

    [Fact]
    public async Task RunAsync_returns_the_works_result_and_its_exception()
    {
        await using var scheduler = new PriorityScheduler();

        (await scheduler.RunAsync(_ => new ValueTask<int>(9)).WithTimeout()).Should().Be(9);
        await FluentActions.Awaiting(() => scheduler.RunAsync(_ => ValueTask.FromException(new FormatException())).WithTimeout())
            .Should().ThrowAsync<FormatException>();
        (await scheduler.RunAsync(_ => new ValueTask<int>(10)).WithTimeout()).Should().Be(10, "a failure does not stop the scheduler");
    }

    [Fact]
    public async Task At_most_MaxConcurrency_items_run_at_once()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 3 });
        var current = 0;
        var peak = 0;
        var tasks = Enumerable.Range(0, 40).Select(i => scheduler.RunAsync(async _ =>
        {
            var now = Interlocked.Increment(ref current);
            lock (scheduler)
            {
                peak = Math.Max(peak, now);
            }

            await Task.Delay(2);
            Interlocked.Decrement(ref current);
        }, i % 4)).ToList();

        await Task.WhenAll(tasks).WithTimeout();

        peak.Should().BeInRange(1, 3);
    }

    [Fact]
    public async Task Cancelling_before_start_removes_the_item_at_once_and_cancels_its_task()
    {
        var (scheduler, gate, blocker) = await BlockedAsync();
        using var cts = new CancellationTokenSource();
        var ran = false;
        var item = scheduler.RunAsync(_ => { ran = true; return ValueTask.CompletedTask; }, 0, cts.Token);
        scheduler.QueuedCount.Should().Be(1);

        await cts.CancelAsync();

        scheduler.QueuedCount.Should().Be(0);
        await FluentActions.Awaiting(() => item.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        item.IsCanceled.Should().BeTrue();
        gate.SetResult();
        await scheduler.DrainAsync().WithTimeout();
        ran.Should().BeFalse();
        await blocker.WithTimeout();
    }

    [Fact]
    public async Task After_start_the_token_reaches_the_work()
    {
        await using var scheduler = new PriorityScheduler();
        using var cts = new CancellationTokenSource();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var item = scheduler.RunAsync(async ct => { started.SetResult(); await Task.Delay(Timeout.Infinite, ct); }, 0, cts.Token);
        await started.Task.WithTimeout();

        await cts.CancelAsync();

        await FluentActions.Awaiting(() => item.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
    }

    [Fact]
    public async Task An_already_cancelled_token_returns_a_cancelled_task_without_running()
    {
        await using var scheduler = new PriorityScheduler();
        var ran = false;

        var item = scheduler.RunAsync(_ => { ran = true; return ValueTask.CompletedTask; }, 0, new CancellationToken(true));

        item.IsCanceled.Should().BeTrue();
        await scheduler.DrainAsync().WithTimeout();
        ran.Should().BeFalse();
    }

    [Fact]
    public async Task When_full_a_more_urgent_item_evicts_the_least_urgent_and_a_less_urgent_one_is_refused()
    {
        var (scheduler, gate, blocker) = await BlockedAsync(new PrioritySchedulerOptions { Capacity = 2 });
        var p5 = scheduler.RunAsync(_ => ValueTask.CompletedTask, 5);
        var p3 = scheduler.RunAsync(_ => ValueTask.CompletedTask, 3);

        var p1 = scheduler.RunAsync(_ => ValueTask.CompletedTask, 1);

        var evicted = await FluentActions.Awaiting(() => p5.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();
        evicted.Which.Should().BeAssignableTo<ExecutionRejectedException>();
        scheduler.QueuedCount.Should().Be(2);

        await FluentActions.Awaiting(() => scheduler.RunAsync(_ => ValueTask.CompletedTask, 7).WithTimeout()).Should().ThrowAsync<WorkRejectedException>();
        scheduler.QueuedCount.Should().Be(2);

        gate.SetResult();
        await Task.WhenAll(blocker, p3, p1).WithTimeout();
        await scheduler.DisposeAsync().AsTask().WithTimeout();
    }

    [Fact]
    public async Task RunAsync_after_DrainAsync_throws_InvalidOperationException_naming_the_scheduler()
    {
        var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { Name = "jobs" });
        await scheduler.DrainAsync().WithTimeout();

        var thrown = await FluentActions.Awaiting(() => scheduler.RunAsync(_ => ValueTask.CompletedTask)).Should().ThrowAsync<InvalidOperationException>();
        thrown.Which.Message.Should().Contain("jobs");
    }

    [Fact]
    public async Task DrainAsync_runs_the_queued_items_then_completes()
    {
        var (scheduler, gate, blocker) = await BlockedAsync();
        var ran = 0;
        var items = Enumerable.Range(0, 5).Select(i => scheduler.RunAsync(_ => { Interlocked.Increment(ref ran); return ValueTask.CompletedTask; }, i)).ToList();

        var drain = scheduler.DrainAsync();
        await AsyncAssert.StillPendingAsync(drain);
        gate.SetResult();

        await drain.WithTimeout();
        Volatile.Read(ref ran).Should().Be(5);
        await Task.WhenAll(items.Append(blocker)).WithTimeout();
    }

    [Fact]
    public async Task A_cut_short_drain_cancels_queued_tasks_signals_running_work_and_throws()
    {
        var scheduler = new PriorityScheduler();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var running = scheduler.RunAsync(async ct => { started.SetResult(); await Task.Delay(Timeout.Infinite, ct); });
        await started.Task.WithTimeout();
        var queued = scheduler.RunAsync(_ => ValueTask.CompletedTask, 1);
        using var cts = new CancellationTokenSource();
        var drain = scheduler.DrainAsync(cts.Token);

        await cts.CancelAsync();

        await FluentActions.Awaiting(() => drain.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await FluentActions.Awaiting(() => queued.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await FluentActions.Awaiting(() => running.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
    }

    [Fact]
    public async Task Aging_lifts_a_waiting_item_one_level_per_interval()
    {
        var clock = new ManualTimeProvider();
        var (scheduler, gate, blocker) = await BlockedAsync(new PrioritySchedulerOptions { AgingInterval = TimeSpan.FromSeconds(1), TimeProvider = clock });
        var order = new ConcurrentQueue<string>();
        var old5 = scheduler.RunAsync(_ => { order.Enqueue("old5"); return ValueTask.CompletedTask; }, 5);
        clock.Advance(TimeSpan.FromSeconds(3));
        var new3 = scheduler.RunAsync(_ => { order.Enqueue("new3"); return ValueTask.CompletedTask; }, 3); // key 3 + 3 = 6 > 5
        var new1 = scheduler.RunAsync(_ => { order.Enqueue("new1"); return ValueTask.CompletedTask; }, 1); // key 1 + 3 = 4 < 5

        gate.SetResult();
        await Task.WhenAll(blocker, old5, new3, new1).WithTimeout();

        order.Should().Equal("new1", "old5", "new3");
        await scheduler.DisposeAsync().AsTask().WithTimeout();
    }

    [Fact]
    public async Task Once_drained_accepted_equals_handled_plus_failed_plus_dropped()
    {
        var (scheduler, gate, blocker) = await BlockedAsync(new PrioritySchedulerOptions { Capacity = 1 });
        var low = scheduler.RunAsync(_ => ValueTask.CompletedTask, 5);
        var high = scheduler.RunAsync(_ => ValueTask.CompletedTask, 1); // evicts low
        await FluentActions.Awaiting(() => low.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();

        gate.SetResult();
        await scheduler.DrainAsync().WithTimeout();
        await Task.WhenAll(blocker, high).WithTimeout();

        var stats = scheduler.GetStatistics();
        stats.Accepted.Should().Be(3);
        (stats.Handled + stats.Failed + stats.Dropped).Should().Be(stats.Accepted);
    }

    [Fact]
    public async Task A_rate_limiter_paces_the_work_instead_of_faulting_items()
    {
        var clock = new ManualTimeProvider();
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 10, TimeProvider = clock });
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { RateLimiter = limiter, TimeProvider = clock });
        var items = Enumerable.Range(0, 3).Select(_ => scheduler.RunAsync(_ => ValueTask.CompletedTask)).ToList();

        for (var i = 0; i < 10 && !items.All(t => t.IsCompleted); i++)
        {
            clock.Advance(TimeSpan.FromMilliseconds(100));
            await Task.Delay(10);
        }

        await Task.WhenAll(items).WithTimeout();
    }
}
