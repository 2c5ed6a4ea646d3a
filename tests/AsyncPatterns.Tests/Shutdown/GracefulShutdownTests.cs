using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Shutdown;

public class GracefulShutdownTests
{
    private static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(10);

    private static GracefulShutdown Create(ManualTimeProvider clock, TimeSpan? drainTimeout = null, TimeSpan? cleanupTimeout = null) =>
        new(new GracefulShutdownOptions
        {
            TimeProvider = clock,
            DrainTimeout = drainTimeout ?? DrainTimeout,
            CleanupTimeout = cleanupTimeout ?? TimeSpan.FromSeconds(5),
        });

    [Fact]
    public async Task StoppingToken_fires_first_then_tasks_end_then_components_drain_in_reverse_then_cleanups_in_reverse()
    {
        var clock = new ManualTimeProvider();
        var log = new EventLog();
        await using var shutdown = Create(clock);
        var stoppingLogged = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        shutdown.StoppingToken.Register(() =>
        {
            log.Add("stopping");
            stoppingLogged.SetResult();
        });
        _ = shutdown.Run(async stopping =>
        {
            await stoppingLogged.Task; // this task ends only once StoppingToken has fired
            await Task.Yield();
            log.Add("task-ended");
        });
        shutdown.Register(new ScriptedDrainable("A", log));
        shutdown.Register(new ScriptedDrainable("B", log, async _ =>
        {
            await Task.Yield();
            log.Add("drained:B");
        }));
        shutdown.Register(ct => { log.Add("cleanup:1"); return Task.CompletedTask; });
        shutdown.Register(new ScriptedDrainable("C", log));
        shutdown.Register(async ct => { await Task.Yield(); log.Add("cleanup:2"); });

        var report = await shutdown.ShutdownAsync("test").WithTimeout();

        log.Events.Should().Equal("stopping", "task-ended", "drain:C", "drain:B", "drained:B", "drain:A", "cleanup:2", "cleanup:1");
        report.Reason.Should().Be("test");
        report.TimedOut.Should().BeFalse();
        report.TasksCompleted.Should().Be(1);
        shutdown.AbortToken.IsCancellationRequested.Should().BeFalse("nothing overran the deadline");
    }

    [Fact]
    public async Task RunningCount_counts_tracked_work_until_it_ends()
    {
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { TimeProvider = new ManualTimeProvider() });
        var first = new TaskCompletionSource();
        var second = new TaskCompletionSource();
        _ = shutdown.Run(_ => first.Task);
        _ = shutdown.Run(_ => second.Task);
        _ = shutdown.Run(_ => Task.CompletedTask);

        shutdown.RunningCount.Should().Be(2, "work that ended synchronously is not running");
        first.SetResult();
        shutdown.RunningCount.Should().Be(1);
        second.SetException(new InvalidOperationException("boom"));
        shutdown.RunningCount.Should().Be(0);
        var report = await shutdown.ShutdownAsync().WithTimeout();
        report.TasksCompleted.Should().Be(2);
        report.TasksFaulted.Should().Be(1);
    }

    [Fact]
    public async Task ShutdownAsync_fires_StoppingToken_before_it_returns()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        shutdown.IsShuttingDown.Should().BeFalse();
        shutdown.StoppingToken.IsCancellationRequested.Should().BeFalse();

        var pending = shutdown.ShutdownAsync();

        shutdown.IsShuttingDown.Should().BeTrue();
        shutdown.StoppingToken.IsCancellationRequested.Should().BeTrue();
        (await pending.WithTimeout()).Reason.Should().Be("ShutdownAsync called");
    }

    [Fact]
    public async Task When_everything_finishes_in_time_the_report_has_exact_counts_and_TimedOut_false()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var boom = new InvalidOperationException("boom");
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var queue = new ContractQueue(async (_, _) => await gate.Task);
        shutdown.Register(queue);

        _ = shutdown.Run(_ => Task.CompletedTask);                                  // completed before the shutdown
        _ = shutdown.Run(async stopping => await stopping.WhenCancelled());          // completes when stopping
        var cancelled = shutdown.Run(stopping => Task.Delay(Timeout.Infinite, stopping)); // cancelled when stopping
        var faulted = shutdown.Run(async stopping =>
        {
            await stopping.WhenCancelled();
            throw boom;
        });
        for (var i = 0; i < 50; i++)
        {
            queue.Enqueue(i);
        }

        var pending = shutdown.ShutdownAsync();
        await AsyncAssert.StillPendingAsync(pending, "the queue still has accepted work");
        clock.Advance(TimeSpan.FromSeconds(3));
        gate.SetResult();
        var report = await pending.WithTimeout();

        report.TimedOut.Should().BeFalse();
        report.Elapsed.Should().Be(TimeSpan.FromSeconds(3), "elapsed is measured on the options' clock");
        report.TasksCompleted.Should().Be(2);
        report.TasksCancelled.Should().Be(1);
        report.TasksFaulted.Should().Be(1);
        report.TasksAbandoned.Should().Be(0);
        report.Errors.Should().ContainSingle().Which.Should().BeSameAs(boom);
        queue.Accepted.Should().Be(50);
        queue.Handled.Should().Be(50, "everything the queue accepted is processed within the deadline");
        queue.Dropped.Should().Be(0);
        cancelled.IsCanceled.Should().BeTrue();
        await FluentActions.Awaiting(() => faulted).Should().ThrowAsync<InvalidOperationException>();
        shutdown.AbortToken.IsCancellationRequested.Should().BeFalse();
    }

    [Fact]
    public async Task Work_that_ignores_StoppingToken_is_aborted_at_DrainTimeout_and_counted_as_abandoned()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var hung = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var stubborn = shutdown.Run(_ => hung.Task);                                  // ignores every token
        var polite = shutdown.Run(async _ => await shutdown.AbortToken.WhenCancelled()); // waits for the abort
        var log = new EventLog();
        var first = new ScriptedDrainable("first", log);
        var last = new ScriptedDrainable("last", log);
        shutdown.Register(first);
        shutdown.Register(last);
        var cleanedUp = false;
        shutdown.Register(_ => { cleanedUp = true; return Task.CompletedTask; });

        var pending = shutdown.ShutdownAsync();
        clock.Advance(DrainTimeout - TimeSpan.FromTicks(1));
        await AsyncAssert.StillPendingAsync(pending, "the deadline has not passed");
        shutdown.AbortToken.IsCancellationRequested.Should().BeFalse();
        first.Calls.Should().Be(0, "components drain after the tracked work, which is still running");

        clock.Advance(TimeSpan.FromTicks(1));
        var report = await pending.WithTimeout();

        shutdown.AbortToken.IsCancellationRequested.Should().BeTrue();
        report.TimedOut.Should().BeTrue();
        report.TasksAbandoned.Should().BeGreaterThanOrEqualTo(1, "the stubborn task is still running");
        (report.TasksAbandoned + report.TasksCompleted).Should().Be(2);
        report.Errors.Should().BeEmpty();
        report.Elapsed.Should().Be(DrainTimeout);
        log.Events.Should().Equal("drain:last", "drain:first");
        first.Token.IsCancellationRequested.Should().BeTrue("the drains' tokens are cancelled at the deadline");
        last.Token.IsCancellationRequested.Should().BeTrue();
        cleanedUp.Should().BeTrue("cleanups run even after a timeout");
        await polite.WithTimeout();

        hung.SetResult();
        await stubborn.WithTimeout();
        (await shutdown.Completion).Should().BeSameAs(report, "the report does not change after it is made");
    }

    [Fact]
    public async Task A_drain_cut_short_cancels_its_token_drops_nothing_silently_and_is_not_an_error()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var queue = new ContractQueue(async (_, ct) =>
        {
            started.TrySetResult();
            await Task.Delay(Timeout.Infinite, ct);
        });
        for (var i = 0; i < 20; i++)
        {
            queue.Enqueue(i);
        }

        shutdown.Register(queue);
        await started.Task.WithTimeout();

        var pending = shutdown.ShutdownAsync();
        await AsyncAssert.StillPendingAsync(pending, "the queue's work never ends by itself");
        clock.Advance(DrainTimeout);
        var report = await pending.WithTimeout();
        await queue.Completion.WithTimeout();

        report.TimedOut.Should().BeTrue();
        report.Errors.Should().BeEmpty("a drain cut short throws OperationCanceledException by contract");
        queue.Failed.Should().Be(1, "the in-flight item saw its token cancelled");
        queue.Dropped.Should().Be(19);
        (queue.Handled + queue.Failed + queue.Dropped).Should().Be(queue.Accepted);
    }

    [Fact]
    public async Task A_component_that_ignores_its_token_cannot_hold_the_shutdown_past_the_deadline()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var never = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var log = new EventLog();
        shutdown.Register(new ScriptedDrainable("after", log));
        shutdown.Register(new ScriptedDrainable("hung", log, _ => never.Task));

        var pending = shutdown.ShutdownAsync();
        await AsyncAssert.StillPendingAsync(pending);
        clock.Advance(DrainTimeout);
        var report = await pending.WithTimeout();

        report.TimedOut.Should().BeTrue();
        log.Events.Should().Equal("drain:hung", "drain:after");
        never.SetException(new InvalidOperationException("late failure, logged as abandoned work"));
    }

    [Fact]
    public async Task Concurrent_ShutdownAsync_calls_get_the_same_task_and_report()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = shutdown.Run(_ => gate.Task);
        using var start = new Barrier(8);

        var calls = new Task<ShutdownReport>[8];
        await Task.WhenAll(Enumerable.Range(0, 8).Select(i => Task.Run(() =>
        {
            start.SignalAndWait();
            calls[i] = shutdown.ShutdownAsync("caller " + i);
        }))).WithTimeout();
        gate.SetResult();
        var reports = await Task.WhenAll(calls).WithTimeout();

        calls.Distinct().Should().ContainSingle("every caller gets the same task");
        reports.Distinct().Should().ContainSingle();
        reports[0].Reason.Should().StartWith("caller ");
        reports[0].TasksCompleted.Should().Be(1);
        shutdown.Completion.Should().BeSameAs(calls[0]);
        (await shutdown.ShutdownAsync("later")).Should().BeSameAs(reports[0]);
    }

    [Fact]
    public async Task Run_and_Register_after_the_shutdown_started_throw_InvalidOperationException()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { TimeProvider = clock, Name = "svc" });
        var ran = false;
        var pending = shutdown.ShutdownAsync();

        FluentActions.Invoking(() => { _ = shutdown.Run(_ => { ran = true; return Task.CompletedTask; }); })
            .Should().Throw<InvalidOperationException>().WithMessage("*'svc'*shutting down*");
        FluentActions.Invoking(() => shutdown.Register(new ScriptedDrainable("late", new EventLog())))
            .Should().Throw<InvalidOperationException>();
        FluentActions.Invoking(() => shutdown.Register(_ => Task.CompletedTask))
            .Should().Throw<InvalidOperationException>();

        var report = await pending.WithTimeout();
        ran.Should().BeFalse();
        (report.TasksCompleted + report.TasksCancelled + report.TasksFaulted + report.TasksAbandoned).Should().Be(0);
        FluentActions.Invoking(() => { _ = shutdown.Run(_ => Task.CompletedTask); }).Should().Throw<InvalidOperationException>();
    }

    [Fact]
    public async Task A_throwing_cleanup_is_recorded_and_the_others_still_run()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var log = new EventLog();
        var async = new InvalidOperationException("async cleanup failure");
        var sync = new ArgumentException("sync cleanup failure");
        shutdown.Register(_ => { log.Add("cleanup:0"); return Task.CompletedTask; });
        shutdown.Register(async _ => { await Task.Yield(); log.Add("cleanup:1"); throw async; });
        shutdown.Register(_ => { log.Add("cleanup:2"); throw sync; });
        shutdown.Register(_ => { log.Add("cleanup:3"); return Task.CompletedTask; });

        var report = await shutdown.ShutdownAsync().WithTimeout();

        log.Events.Should().Equal("cleanup:3", "cleanup:2", "cleanup:1", "cleanup:0");
        report.Errors.Should().Equal(sync, async);
        report.TimedOut.Should().BeFalse("a failing cleanup is an error, not a timeout");
    }

    [Fact]
    public async Task A_cleanup_that_overruns_CleanupTimeout_has_its_token_cancelled_is_recorded_and_the_next_runs()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock, cleanupTimeout: TimeSpan.FromSeconds(2));
        var never = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        CancellationToken seen = default;
        var nextRan = false;
        shutdown.Register(_ => { nextRan = true; return Task.CompletedTask; });
        shutdown.Register(ct => { seen = ct; return never.Task; });

        var pending = shutdown.ShutdownAsync();
        await AsyncAssert.EventuallyAsync(() => seen.CanBeCanceled, "the slow cleanup starts");
        clock.Advance(TimeSpan.FromSeconds(2) - TimeSpan.FromTicks(1));
        await AsyncAssert.StillPendingAsync(pending, "the cleanup's own bound has not passed");
        nextRan.Should().BeFalse("cleanups run one at a time");

        clock.Advance(TimeSpan.FromTicks(1));
        var report = await pending.WithTimeout();

        seen.IsCancellationRequested.Should().BeTrue();
        nextRan.Should().BeTrue();
        report.Errors.Should().ContainSingle().Which.Should().BeOfType<TimeoutException>()
            .Which.Message.Should().Contain("CleanupTimeout");
        report.TimedOut.Should().BeFalse("the drain itself finished in time");
        shutdown.AbortToken.IsCancellationRequested.Should().BeFalse("the drain deadline does not apply to cleanups");
    }

    [Fact]
    public async Task A_drain_that_fails_is_recorded_and_the_other_components_still_drain()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var log = new EventLog();
        var failure = new InvalidOperationException("drain failed");
        shutdown.Register(new ScriptedDrainable("first", log));
        shutdown.Register(new ScriptedDrainable("throws", log, _ => throw failure));
        shutdown.Register(new ScriptedDrainable("faults", log, _ => Task.FromException(new TimeoutException("faulted drain"))));

        var report = await shutdown.ShutdownAsync().WithTimeout();

        log.Events.Should().Equal("drain:faults", "drain:throws", "drain:first");
        report.Errors.Should().HaveCount(2);
        report.Errors[0].Should().BeOfType<TimeoutException>();
        report.Errors[1].Should().BeSameAs(failure);
        report.TimedOut.Should().BeFalse();
    }

    [Fact]
    public async Task Abort_cuts_the_drain_short_at_once()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var log = new EventLog();
        var drainable = new ScriptedDrainable("slow", log, ct => Task.Delay(Timeout.Infinite, ct));
        shutdown.Register(drainable);

        var pending = shutdown.ShutdownAsync("first reason");
        await AsyncAssert.StillPendingAsync(pending);
        shutdown.Abort("ignored: already started");
        var report = await pending.WithTimeout();

        report.TimedOut.Should().BeTrue();
        report.Reason.Should().Be("first reason");
        report.Elapsed.Should().Be(TimeSpan.Zero, "no time passed on the clock");
        drainable.Token.IsCancellationRequested.Should().BeTrue();
        report.Errors.Should().BeEmpty();
    }

    [Fact]
    public async Task Abort_before_start_starts_the_shutdown_with_the_tokens_already_cancelled()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var log = new EventLog();
        var drainable = new ScriptedDrainable("component", log);
        shutdown.Register(drainable);

        shutdown.Abort();
        var report = await shutdown.Completion.WithTimeout();

        shutdown.StoppingToken.IsCancellationRequested.Should().BeTrue();
        shutdown.AbortToken.IsCancellationRequested.Should().BeTrue();
        report.Reason.Should().Be("aborted");
        report.TimedOut.Should().BeTrue();
        drainable.Calls.Should().Be(1, "an aborted shutdown still drains each component with a cancelled token, so it reports what it drops");
    }

    [Fact]
    public async Task DisposeAsync_runs_the_shutdown_and_waits_for_it_and_never_throws()
    {
        var clock = new ManualTimeProvider();
        var shutdown = Create(clock);
        var log = new EventLog();
        shutdown.Register(new ScriptedDrainable("component", log, async _ => { await Task.Yield(); log.Add("drained"); }));
        shutdown.Register(_ => throw new InvalidOperationException("cleanup failure is reported, not thrown"));

        await shutdown.DisposeAsync().AsTask().WithTimeout();

        log.Events.Should().Equal("drain:component", "drained");
        shutdown.Completion.IsCompletedSuccessfully.Should().BeTrue();
        var report = await shutdown.Completion;
        report.Reason.Should().Be("disposed");
        report.Errors.Should().ContainSingle();
        await shutdown.DisposeAsync().AsTask().WithTimeout();
    }

    [Fact]
    public async Task DisposeAsync_waits_for_a_shutdown_already_in_progress()
    {
        var clock = new ManualTimeProvider();
        var shutdown = Create(clock);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = shutdown.Run(_ => gate.Task);
        var pending = shutdown.ShutdownAsync("requested");

        var dispose = shutdown.DisposeAsync().AsTask();
        await AsyncAssert.StillPendingAsync(dispose, "the tracked task has not ended");
        gate.SetResult();
        await dispose.WithTimeout();

        pending.IsCompletedSuccessfully.Should().BeTrue();
        (await pending).Reason.Should().Be("requested");
    }

    [Fact]
    public async Task Run_passes_StoppingToken_and_returns_the_works_own_task()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        CancellationToken seen = default;
        var failure = new InvalidOperationException("sync throw");

        var ok = shutdown.Run(ct => { seen = ct; return Task.CompletedTask; });
        var thrown = shutdown.Run(_ => throw failure);
#pragma warning disable VSTHRD114 // on purpose: a delegate that returns no task
        var nullTask = shutdown.Run(_ => null!);
#pragma warning restore VSTHRD114

        seen.Should().Be(shutdown.StoppingToken);
        ok.IsCompletedSuccessfully.Should().BeTrue();
        thrown.IsFaulted.Should().BeTrue("a synchronous throw becomes the task's fault");
        thrown.Exception!.InnerException.Should().BeSameAs(failure);
        nullTask.IsFaulted.Should().BeTrue();
        var report = await shutdown.ShutdownAsync().WithTimeout();
        report.TasksCompleted.Should().Be(1);
        report.TasksFaulted.Should().Be(2);
        report.Errors.Should().HaveCount(2).And.Contain(failure);
    }

    [Fact]
    public async Task A_throwing_StoppingToken_callback_is_recorded_and_the_shutdown_goes_on()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var failure = new InvalidOperationException("callback");
        shutdown.StoppingToken.Register(() => throw failure);
        var drained = false;
        shutdown.Register(new ScriptedDrainable("c", new EventLog(), _ => { drained = true; return Task.CompletedTask; }));

        var report = await shutdown.ShutdownAsync().WithTimeout();

        report.Errors.Should().ContainSingle().Which.Should().BeSameAs(failure);
        drained.Should().BeTrue();
    }

    [Fact]
    public async Task DrainTimeout_infinite_waits_for_the_work()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock, drainTimeout: Timeout.InfiniteTimeSpan);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = shutdown.Run(_ => gate.Task);

        var pending = shutdown.ShutdownAsync();
        clock.Advance(TimeSpan.FromDays(1));
        await AsyncAssert.StillPendingAsync(pending);
        gate.SetResult();

        var report = await pending.WithTimeout();
        report.TimedOut.Should().BeFalse();
        report.Elapsed.Should().Be(TimeSpan.FromDays(1));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-5)]
    public void Invalid_timeouts_throw_naming_the_option(int seconds)
    {
        var drain = () => new GracefulShutdown(new GracefulShutdownOptions { DrainTimeout = TimeSpan.FromSeconds(seconds) });
        var cleanup = () => new GracefulShutdown(new GracefulShutdownOptions { CleanupTimeout = TimeSpan.FromSeconds(seconds) });

        drain.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("DrainTimeout");
        drain.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*greater than TimeSpan.Zero*");
        cleanup.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("CleanupTimeout");
    }

    [Fact]
    public async Task Null_arguments_throw_ArgumentNullException()
    {
        await using var shutdown = new GracefulShutdown();

        FluentActions.Invoking(() => { _ = shutdown.Run(null!); }).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => shutdown.Register((IDrainable)null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => shutdown.Register((Func<CancellationToken, Task>)null!)).Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public void Defaults_match_the_design()
    {
        var options = new GracefulShutdownOptions();

        options.DrainTimeout.Should().Be(TimeSpan.FromSeconds(30));
        options.CleanupTimeout.Should().Be(TimeSpan.FromSeconds(5));
        options.HandleSignals.Should().BeFalse();
    }

    [Fact]
    public async Task Under_load_every_item_the_registered_components_accepted_is_processed()
    {
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { DrainTimeout = TimeSpan.FromSeconds(20) });
        var downstream = new ContractQueue(async (_, _) => await Task.Yield());
        var upstream = new ContractQueue(async (item, _) =>
        {
            await Task.Yield();
            downstream.Enqueue(item); // upstream feeds downstream, so downstream is registered first
        });
        shutdown.Register(downstream);
        shutdown.Register(upstream);
        for (var p = 0; p < 4; p++)
        {
            _ = shutdown.Run(async stopping =>
            {
                var i = 0;
                while (!stopping.IsCancellationRequested)
                {
                    upstream.Enqueue(i++);
                    if (i % 32 == 0)
                    {
                        await Task.Yield();
                    }
                }
            });
        }

        await AsyncAssert.EventuallyAsync(() => downstream.Handled > 2000, "work flows through both queues");
        var report = await shutdown.ShutdownAsync().WithTimeout();

        report.TimedOut.Should().BeFalse();
        report.TasksCompleted.Should().Be(4);
        report.Errors.Should().BeEmpty();
        upstream.Handled.Should().Be(upstream.Accepted);
        downstream.Accepted.Should().Be(upstream.Accepted, "the upstream drained into an open downstream");
        downstream.Handled.Should().Be(downstream.Accepted);
        (upstream.Failed + upstream.Dropped + downstream.Failed + downstream.Dropped).Should().Be(0);
    }

    [Fact]
    public async Task Stress_racing_Run_with_ShutdownAsync_accounts_for_every_started_task()
    {
        for (var round = 0; round < 20; round++)
        {
            await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { DrainTimeout = TimeSpan.FromSeconds(5) });
            var started = 0;
            var refused = 0;
            using var go = new ManualResetEventSlim();
            var producers = Enumerable.Range(0, 4).Select(p => Task.Run(async () =>
            {
                var random = new Random(round * 31 + p);
                go.Wait();
                for (var i = 0; i < 200; i++)
                {
                    var kind = random.Next(4);
                    var delay = random.Next(3);
                    try
                    {
                        _ = shutdown.Run(async stopping =>
                        {
                            await Task.Yield();
                            switch (kind)
                            {
                                case 0: return;
                                case 1: throw new InvalidOperationException("fault");
                                case 2: await Task.Delay(Timeout.Infinite, stopping); return;
                                default: await Task.Delay(delay); return;
                            }
                        });
                        Interlocked.Increment(ref started);
                    }
                    catch (InvalidOperationException)
                    {
                        Interlocked.Increment(ref refused);
                    }

                    if (i % 16 == 0)
                    {
                        await Task.Yield();
                    }
                }
            })).ToArray();

            go.Set();
            await Task.Delay(round % 3);
            var report = await shutdown.ShutdownAsync().WithTimeout(TimeSpan.FromSeconds(10));
            await Task.WhenAll(producers).WithTimeout();

            (report.TasksCompleted + report.TasksCancelled + report.TasksFaulted + report.TasksAbandoned)
                .Should().Be(Volatile.Read(ref started), "every accepted Run is counted exactly once");
            (started + refused).Should().Be(800);
            report.TasksAbandoned.Should().Be(0, "every task ends soon after StoppingToken fires");
            report.Errors.Should().HaveCount(report.TasksFaulted);
            report.TimedOut.Should().BeFalse();
        }
    }
}

internal static class TokenExtensions
{
    /// <summary>Completes (successfully) when the token fires.</summary>
    public static Task WhenCancelled(this CancellationToken token)
    {
        var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        token.Register(() => tcs.TrySetResult());
        return tcs.Task;
    }
}
