using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Scheduling;

public sealed class PrioritySchedulerTests
{
    [Fact]
    public async Task Lower_numbers_run_first_and_equal_priorities_in_submission_order()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1 });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        await AsyncAssert.EventuallyAsync(() => scheduler.RunningCount == 1);

        var order = new ConcurrentQueue<string>();
        var priorities = new[] { 5, 1, 3, 1, 2 };
        var tasks = priorities
            .Select((priority, index) => scheduler.RunAsync(
                _ =>
                {
                    order.Enqueue($"{priority}#{index}");
                    return ValueTask.CompletedTask;
                },
                priority))
            .ToArray();
        scheduler.QueuedCount.Should().Be(5);

        gate.SetResult();
        await Task.WhenAll(tasks.Append(blocker)).WithTimeout();

        order.Should().Equal("1#1", "1#3", "2#4", "3#2", "5#0");
    }

    [Fact]
    public async Task Equal_priorities_run_first_in_first_out()
    {
        await using var scheduler = new PriorityScheduler();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        var order = new ConcurrentQueue<int>();
        var tasks = Enumerable.Range(0, 100)
            .Select(i => scheduler.RunAsync(_ => { order.Enqueue(i); return ValueTask.CompletedTask; }, priority: 7))
            .ToArray();

        gate.SetResult();
        await Task.WhenAll(tasks.Append(blocker)).WithTimeout();

        order.Should().Equal(Enumerable.Range(0, 100));
    }

    [Fact]
    public async Task RunAsync_returns_the_results_of_the_work()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 2 });

        var sync = scheduler.RunAsync(_ => ValueTask.FromResult(42));
        var async = scheduler.RunAsync(async _ =>
        {
            await Task.Yield();
            return "done";
        });

        (await sync.WithTimeout()).Should().Be(42);
        (await async.WithTimeout()).Should().Be("done");
    }

    [Fact]
    public async Task Never_runs_more_than_MaxConcurrency_items_at_once()
    {
        const int maxConcurrency = 3;
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = maxConcurrency });
        var running = 0;
        var peak = 0;
        var random = new Random(7);
        var tasks = Enumerable.Range(0, 300).Select(i => scheduler.RunAsync(
            async _ =>
            {
                var now = Interlocked.Increment(ref running);
                InterlockedMax(ref peak, now);
                if (i % 3 == 0)
                {
                    await Task.Delay(1);
                }
                else
                {
                    await Task.Yield();
                }

                scheduler.RunningCount.Should().BeLessThanOrEqualTo(maxConcurrency);
                Interlocked.Decrement(ref running);
            },
            random.Next(10))).ToArray();

        await Task.WhenAll(tasks).WithTimeout();

        Volatile.Read(ref peak).Should().Be(maxConcurrency, "the slots are used, and never exceeded");
        await AsyncAssert.EventuallyAsync(() => scheduler.RunningCount == 0);
    }

    [Fact]
    public async Task Work_never_runs_inline_on_the_submitting_thread()
    {
        await using var scheduler = new PriorityScheduler();
        using var submitted = new ManualResetEventSlim();

        // If the work ran inside RunAsync, it would wait for a signal that is only given after RunAsync returns.
        var task = scheduler.RunAsync(_ => ValueTask.FromResult(submitted.Wait(TimeSpan.FromSeconds(10))));
        submitted.Set();

        (await task.WithTimeout()).Should().BeTrue();
    }

    [Fact]
    public async Task The_submitters_execution_context_flows_to_the_work()
    {
        var local = new AsyncLocal<string>();
        await using var scheduler = new PriorityScheduler();
        local.Value = "from the submitter";

        var seen = await scheduler.RunAsync(_ => ValueTask.FromResult(local.Value)).WithTimeout();

        seen.Should().Be("from the submitter");
    }

    [Fact]
    public async Task A_throwing_work_item_faults_only_its_own_task()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1 });

        var throwsSync = scheduler.RunAsync<int>(_ => throw new InvalidOperationException("sync"));
        var throwsAsync = scheduler.RunAsync(async _ =>
        {
            await Task.Yield();
            throw new InvalidOperationException("async");
        });
        var fine = scheduler.RunAsync(_ => ValueTask.FromResult(1));

        await FluentActions.Awaiting(() => throwsSync).Should().ThrowAsync<InvalidOperationException>().WithMessage("sync");
        await FluentActions.Awaiting(() => throwsAsync).Should().ThrowAsync<InvalidOperationException>().WithMessage("async");
        (await fine.WithTimeout()).Should().Be(1);
        (await scheduler.RunAsync(_ => ValueTask.FromResult(2)).WithTimeout()).Should().Be(2, "the scheduler keeps going");

        var statistics = scheduler.GetStatistics();
        statistics.Failed.Should().Be(2);
        statistics.Handled.Should().Be(2);
    }

    [Fact]
    public async Task Work_that_throws_OperationCanceledException_cancels_its_task()
    {
        await using var scheduler = new PriorityScheduler();
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();

        var task = scheduler.RunAsync(_ => ValueTask.FromException(new OperationCanceledException(cts.Token)));

        await FluentActions.Awaiting(() => task.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        task.IsCanceled.Should().BeTrue();
        scheduler.GetStatistics().Failed.Should().Be(1);
    }

    [Fact]
    public async Task Cancelled_before_start_cancels_the_task_drops_the_count_and_never_runs_the_work()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1 });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        using var cts = new CancellationTokenSource();
        var invoked = 0;
        var cancelled = scheduler.RunAsync(_ => { Interlocked.Increment(ref invoked); return ValueTask.CompletedTask; }, 1, cts.Token);
        var other = scheduler.RunAsync(_ => ValueTask.CompletedTask, 1);
        scheduler.QueuedCount.Should().Be(2);

        await cts.CancelAsync();

        scheduler.QueuedCount.Should().Be(1, "the cancelled item leaves the queue at once");
        cancelled.IsCanceled.Should().BeTrue();
        gate.SetResult();
        await Task.WhenAll(blocker, other).WithTimeout();
        await scheduler.DrainAsync().WithTimeout();
        Volatile.Read(ref invoked).Should().Be(0);
        var statistics = scheduler.GetStatistics();
        statistics.Canceled.Should().Be(1);
        statistics.Handled.Should().Be(2);
        statistics.Accepted.Should().Be(3);
    }

    [Fact]
    public async Task After_start_the_token_reaches_the_work()
    {
        await using var scheduler = new PriorityScheduler();
        using var cts = new CancellationTokenSource();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        var task = scheduler.RunAsync(
            async token =>
            {
                started.SetResult();
                await Task.Delay(Timeout.Infinite, token);
            },
            cancellationToken: cts.Token);
        await started.Task.WithTimeout();
        await cts.CancelAsync();

        await FluentActions.Awaiting(() => task.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        task.IsCanceled.Should().BeTrue();
        var statistics = scheduler.GetStatistics();
        statistics.Failed.Should().Be(1, "the work ended in cancellation after it started");
        statistics.Canceled.Should().Be(0);
    }

    [Fact]
    public async Task An_already_cancelled_token_returns_a_cancelled_task_without_side_effects()
    {
        await using var scheduler = new PriorityScheduler();
        var invoked = false;

        var task = scheduler.RunAsync(_ => { invoked = true; return ValueTask.FromResult(1); }, 0, new CancellationToken(canceled: true));

        task.IsCanceled.Should().BeTrue();
        await scheduler.DrainAsync().WithTimeout();
        invoked.Should().BeFalse();
        scheduler.GetStatistics().Accepted.Should().Be(0);
    }

    [Fact]
    public async Task A_full_queue_evicts_the_least_urgent_item_for_a_more_urgent_one_and_refuses_the_rest()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1, Capacity = 3 });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        var ran = new ConcurrentQueue<string>();
        Task Run(string name, int priority) => scheduler.RunAsync(_ => { ran.Enqueue(name); return ValueTask.CompletedTask; }, priority);
        var low = new[] { Run("5a", 5), Run("5b", 5), Run("5c", 5) };

        var urgent = Run("1", 1);

        await FluentActions.Awaiting(() => low[2].WithTimeout()).Should().ThrowAsync<WorkRejectedException>()
            .WithMessage("*evicted*");
        low[0].IsCompleted.Should().BeFalse();
        low[1].IsCompleted.Should().BeFalse();
        scheduler.QueuedCount.Should().Be(3);

        var unimportant = Run("9", 9);
        var equal = Run("5d", 5);

        await FluentActions.Awaiting(() => unimportant.WithTimeout()).Should().ThrowAsync<WorkRejectedException>()
            .WithMessage("*refused*");
        await FluentActions.Awaiting(() => equal.WithTimeout()).Should().ThrowAsync<WorkRejectedException>("an equally urgent item evicts nothing");
        scheduler.QueuedCount.Should().Be(3);

        gate.SetResult();
        await Task.WhenAll(blocker, urgent, low[0], low[1]).WithTimeout();
        ran.Should().Equal("1", "5a", "5b");
        var statistics = scheduler.GetStatistics();
        statistics.Evicted.Should().Be(1);
        statistics.Rejected.Should().Be(2);
        statistics.Accepted.Should().Be(5);
        statistics.Handled.Should().Be(4);
    }

    [Fact]
    public async Task Cancelled_items_do_not_count_against_Capacity()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1, Capacity = 2 });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        using var cts = new CancellationTokenSource();
        var cancelled = scheduler.RunAsync(_ => ValueTask.CompletedTask, 5, cts.Token);
        var kept = scheduler.RunAsync(_ => ValueTask.CompletedTask, 5);
        await cts.CancelAsync();

        var admitted = scheduler.RunAsync(_ => ValueTask.CompletedTask, 9);

        admitted.IsFaulted.Should().BeFalse("the cancelled item freed its place");
        scheduler.QueuedCount.Should().Be(2);
        gate.SetResult();
        await Task.WhenAll(blocker, kept, admitted).WithTimeout();
        cancelled.IsCanceled.Should().BeTrue();
        scheduler.GetStatistics().Evicted.Should().Be(0);
    }

    [Fact]
    public async Task Drain_runs_everything_queued_then_refuses_new_work_with_a_message_naming_the_scheduler()
    {
        var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 2, Name = "reports" });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var handled = 0;
        var tasks = Enumerable.Range(0, 20).Select(i => scheduler.RunAsync(
            async _ =>
            {
                await gate.Task;
                Interlocked.Increment(ref handled);
            },
            i % 4)).ToArray();

        var drain = scheduler.DrainAsync();
        Action submit = () => _ = scheduler.RunAsync(_ => ValueTask.CompletedTask);
        submit.Should().Throw<InvalidOperationException>().WithMessage("*PriorityScheduler 'reports'*closed*");
        await AsyncAssert.StillPendingAsync(drain, "queued work is still to run");

        gate.SetResult();
        await drain.WithTimeout();

        Volatile.Read(ref handled).Should().Be(20);
        tasks.Should().OnlyContain(t => t.IsCompletedSuccessfully, "every item's task is complete when the drain returns");
        scheduler.Completion.IsCompletedSuccessfully.Should().BeTrue();
        var statistics = scheduler.GetStatistics();
        statistics.Handled.Should().Be(20);
        statistics.QueuedCount.Should().Be(0);
        statistics.RunningCount.Should().Be(0);
        await scheduler.DisposeAsync();
        FluentActions.Invoking(() => { _ = scheduler.RunAsync(_ => ValueTask.FromResult(1)); }).Should().Throw<InvalidOperationException>();
    }

    [Fact]
    public async Task Drain_cut_short_cancels_unstarted_items_and_counts_them_as_dropped()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1 });
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var running = scheduler.RunAsync(async token =>
        {
            started.SetResult();
            await Task.Delay(Timeout.Infinite, token);
        });
        await started.Task.WithTimeout();
        var invoked = 0;
        var queued = Enumerable.Range(0, 5)
            .Select(i => scheduler.RunAsync(_ => { Interlocked.Increment(ref invoked); return ValueTask.CompletedTask; }, i))
            .ToArray();
        using var cts = new CancellationTokenSource();

        var drain = scheduler.DrainAsync(cts.Token);
        await cts.CancelAsync();

        await FluentActions.Awaiting(() => drain.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        queued.Should().OnlyContain(t => t.IsCanceled);
        await FluentActions.Awaiting(() => running.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await scheduler.Completion.WithTimeout();
        Volatile.Read(ref invoked).Should().Be(0);
        var statistics = scheduler.GetStatistics();
        statistics.Abandoned.Should().Be(5);
        statistics.Failed.Should().Be(1);
        statistics.QueuedCount.Should().Be(0);
        (statistics.Handled + statistics.Failed + statistics.Dropped)
            .Should().Be(statistics.Accepted);
    }

    [Fact]
    public async Task Drain_with_an_already_cancelled_token_drops_the_queue_and_throws_at_once()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1 });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async token =>
        {
            started.SetResult();
            await gate.Task.WaitAsync(token);
        });
        await started.Task.WithTimeout();
        var queued = scheduler.RunAsync(_ => ValueTask.CompletedTask);

        var drain = scheduler.DrainAsync(new CancellationToken(canceled: true));

        drain.IsCanceled.Should().BeTrue();
        queued.IsCanceled.Should().BeTrue();
        await FluentActions.Awaiting(() => blocker.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await scheduler.Completion.WithTimeout();
        scheduler.GetStatistics().Abandoned.Should().Be(1);
    }

    [Fact]
    public void Statistics_start_at_zero()
    {
        var statistics = new PriorityScheduler().GetStatistics();

        statistics.Should().BeEquivalentTo(new
        {
            Accepted = 0L, Handled = 0L, Failed = 0L, Canceled = 0L, Evicted = 0L, Dropped = 0L, Rejected = 0L,
            QueuedCount = 0, RunningCount = 0,
        });
    }

    [Fact]
    public async Task Statistics_account_for_every_outcome()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1, Capacity = 2 });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);                    // handled
        using var cts = new CancellationTokenSource();
        var cancelled = scheduler.RunAsync(_ => ValueTask.CompletedTask, 3, cts.Token); // canceled
        await cts.CancelAsync();
        var evictedVictim = scheduler.RunAsync(_ => ValueTask.CompletedTask, 8);         // evicted
        var failing = scheduler.RunAsync(_ => ValueTask.FromException(new InvalidOperationException()), 2); // failed
        var evictor = scheduler.RunAsync(_ => ValueTask.CompletedTask, 1);              // handled, evicts the 8
        var refused = scheduler.RunAsync(_ => ValueTask.CompletedTask, 4);              // rejected

        var snapshot = scheduler.GetStatistics();
        snapshot.QueuedCount.Should().Be(2);
        snapshot.RunningCount.Should().Be(1);
        gate.SetResult();
        await scheduler.DrainAsync().WithTimeout();
        await Task.WhenAll(new[] { blocker, cancelled, evictedVictim, failing, evictor, refused }
            .Select(t => t.ContinueWith(static _ => { }, TaskScheduler.Default))).WithTimeout();

        var statistics = scheduler.GetStatistics();
        statistics.Should().BeEquivalentTo(new
        {
            Accepted = 5L, Handled = 2L, Failed = 1L, Canceled = 1L, Evicted = 1L, Abandoned = 0L, Dropped = 2L, Rejected = 1L,
            QueuedCount = 0, RunningCount = 0,
        });
        (statistics.Handled + statistics.Failed + statistics.Dropped)
            .Should().Be(statistics.Accepted);
        failing.Exception!.InnerException.Should().BeOfType<InvalidOperationException>();
        evictedVictim.Exception!.InnerException.Should().BeOfType<WorkRejectedException>();
        refused.Exception!.InnerException.Should().BeOfType<WorkRejectedException>();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    public void MaxConcurrency_must_be_positive(int value)
    {
        var create = () => new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = value });

        create.Should().Throw<ArgumentOutOfRangeException>()
            .Where(e => e.ParamName == "MaxConcurrency" && e.Message.Contains("greater than 0"));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-5)]
    public void Capacity_must_be_positive(int value)
    {
        var create = () => new PriorityScheduler(new PrioritySchedulerOptions { Capacity = value });

        create.Should().Throw<ArgumentOutOfRangeException>()
            .Where(e => e.ParamName == "Capacity" && e.Message.Contains("greater than 0"));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1000)]
    public void AgingInterval_must_be_positive(int milliseconds)
    {
        var create = () => new PriorityScheduler(new PrioritySchedulerOptions { AgingInterval = TimeSpan.FromMilliseconds(milliseconds) });

        create.Should().Throw<ArgumentOutOfRangeException>()
            .Where(e => e.ParamName == "AgingInterval" && e.Message.Contains("greater than TimeSpan.Zero"));
    }

    [Fact]
    public async Task Null_work_throws_ArgumentNullException()
    {
        await using var scheduler = new PriorityScheduler();

        FluentActions.Invoking(() => { _ = scheduler.RunAsync((Func<CancellationToken, ValueTask>)null!); })
            .Should().Throw<ArgumentNullException>().WithParameterName("work");
        FluentActions.Invoking(() => { _ = scheduler.RunAsync((Func<CancellationToken, ValueTask<int>>)null!); })
            .Should().Throw<ArgumentNullException>().WithParameterName("work");
        scheduler.GetStatistics().Accepted.Should().Be(0);
    }

    [Fact]
    public async Task Options_are_copied_at_construction()
    {
        var options = new PrioritySchedulerOptions { MaxConcurrency = 1, Capacity = 1 };
        await using var scheduler = new PriorityScheduler(options);
        options.Capacity = 100;
        options.MaxConcurrency = 100;
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        var queued = scheduler.RunAsync(_ => ValueTask.CompletedTask);

        var refused = scheduler.RunAsync(_ => ValueTask.CompletedTask);

        scheduler.RunningCount.Should().Be(1);
        await FluentActions.Awaiting(() => refused.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();
        gate.SetResult();
        await Task.WhenAll(blocker, queued).WithTimeout();
    }

    internal static void InterlockedMax(ref int target, int value)
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
