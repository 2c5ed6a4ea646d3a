using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Contract;

/// <summary>
/// Black-box tests of <see cref="GracefulShutdown"/> written from DESIGN.md ("Graceful shutdown") and the README:
/// the two phases on a fake clock, tracked work, ordered drains and cleanups, the report, idempotence.
/// HandleSignals needs a real process and is covered elsewhere.
/// </summary>
public sealed class GracefulShutdownBlackBoxTests
{
    private static readonly TimeSpan Drain = TimeSpan.FromSeconds(10);

    private static GracefulShutdown Create(ManualTimeProvider clock, TimeSpan? drain = null, TimeSpan? cleanup = null)
    {
        var options = new GracefulShutdownOptions { DrainTimeout = drain ?? Drain, TimeProvider = clock, Name = "bb" };
        if (cleanup is { } c)
        {
            options.CleanupTimeout = c;
        }

        return new GracefulShutdown(options);
    }

    private sealed class Drainable(Func<CancellationToken, Task> drain) : IDrainable
    {
        public Task DrainAsync(CancellationToken cancellationToken = default) => drain(cancellationToken);
    }

    private static Task Settle(Task task) => task.ContinueWith(t => _ = t.Exception, TaskScheduler.Default);

    // ------------------------------ options and initial state ------------------------------

    [Fact]
    public void Options_have_the_documented_defaults()
    {
        var options = new GracefulShutdownOptions();
        options.DrainTimeout.Should().Be(TimeSpan.FromSeconds(30));
        options.HandleSignals.Should().BeFalse();
        options.Name.Should().BeNull();
        options.TimeProvider.Should().BeNull();
        options.LoggerFactory.Should().BeNull();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-2)]
    [InlineData(-30000)]
    public void A_zero_or_negative_DrainTimeout_is_refused_naming_the_option(int milliseconds)
    {
        var act = () => new GracefulShutdown(new GracefulShutdownOptions { DrainTimeout = TimeSpan.FromMilliseconds(milliseconds) });
        act.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(nameof(GracefulShutdownOptions.DrainTimeout));
    }

    [Fact]
    public async Task Null_options_and_an_infinite_DrainTimeout_are_accepted()
    {
        await using var a = new GracefulShutdown();
        await using var b = new GracefulShutdown(null);
        var clock = new ManualTimeProvider();
        await using var c = new GracefulShutdown(new GracefulShutdownOptions { DrainTimeout = Timeout.InfiniteTimeSpan, TimeProvider = clock });
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = c.Run(_ => release.Task);
        var report = c.ShutdownAsync();
        clock.Advance(TimeSpan.FromDays(1));
        c.AbortToken.IsCancellationRequested.Should().BeFalse("an infinite drain timeout never aborts by itself");
        await AsyncAssert.StillPendingAsync(report);
        release.SetResult();
        (await report.WithTimeout()).TimedOut.Should().BeFalse();
    }

    [Fact]
    public async Task Options_are_copied_so_later_changes_have_no_effect()
    {
        var clock = new ManualTimeProvider();
        var options = new GracefulShutdownOptions { DrainTimeout = TimeSpan.FromSeconds(1), TimeProvider = clock };
        await using var shutdown = new GracefulShutdown(options);
        options.DrainTimeout = TimeSpan.FromHours(1);
        options.TimeProvider = null;

        _ = shutdown.Run(_ => new TaskCompletionSource().Task); // ignores everything
        var report = shutdown.ShutdownAsync();
        clock.Advance(TimeSpan.FromSeconds(1));
        shutdown.AbortToken.IsCancellationRequested.Should().BeTrue();
        (await report.WithTimeout()).TimedOut.Should().BeTrue();
    }

    [Fact]
    public async Task Before_a_shutdown_nothing_has_fired()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        shutdown.IsShuttingDown.Should().BeFalse();
        shutdown.StoppingToken.IsCancellationRequested.Should().BeFalse();
        shutdown.AbortToken.IsCancellationRequested.Should().BeFalse();
        shutdown.StoppingToken.CanBeCanceled.Should().BeTrue();
        shutdown.AbortToken.CanBeCanceled.Should().BeTrue();
        await AsyncAssert.StillPendingAsync(shutdown.Completion);
    }

    // ------------------------------ start, idempotence, report ------------------------------

    [Fact]
    public async Task ShutdownAsync_fires_StoppingToken_before_returning_and_an_idle_shutdown_reports_nothing_wrong()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var report = shutdown.ShutdownAsync("deploy");
        shutdown.StoppingToken.IsCancellationRequested.Should().BeTrue("phase 1 fires synchronously");
        shutdown.IsShuttingDown.Should().BeTrue();

        var r = await report.WithTimeout();
        r.Reason.Should().Be("deploy");
        r.TimedOut.Should().BeFalse();
        r.TasksCompleted.Should().Be(0);
        r.TasksCancelled.Should().Be(0);
        r.TasksFaulted.Should().Be(0);
        r.TasksAbandoned.Should().Be(0);
        r.Errors.Should().BeEmpty();
        r.Elapsed.Should().Be(TimeSpan.Zero, "the fake clock never moved");
        shutdown.AbortToken.IsCancellationRequested.Should().BeFalse("everything finished in time");
        shutdown.Completion.IsCompletedSuccessfully.Should().BeTrue();
        (await shutdown.Completion).Should().BeSameAs(r);

        clock.Advance(Drain * 3);
        shutdown.AbortToken.IsCancellationRequested.Should().BeFalse("the deadline no longer matters once the shutdown finished");
    }

    [Fact]
    public async Task A_null_reason_gets_a_non_empty_default()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        var r = await shutdown.ShutdownAsync().WithTimeout();
        r.Reason.Should().NotBeNullOrWhiteSpace();
    }

    [Fact]
    public async Task ShutdownAsync_is_idempotent_the_first_reason_wins_and_every_caller_gets_the_same_report()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        var first = shutdown.ShutdownAsync("first");
        var second = shutdown.ShutdownAsync("second");
        second.Should().BeSameAs(first);
        shutdown.Completion.Should().BeSameAs(first);
        var r1 = await first.WithTimeout();
        var later = await shutdown.ShutdownAsync("later").WithTimeout();
        later.Should().BeSameAs(r1);
        r1.Reason.Should().Be("first");
    }

    [Fact]
    public async Task Concurrent_ShutdownAsync_calls_all_get_the_same_task()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = shutdown.Run(async stopping => await release.Task);
        using var go = new ManualResetEventSlim();
        var callers = Enumerable.Range(0, 16).Select(i => Task.Factory.StartNew(() =>
        {
            go.Wait();
            return shutdown.ShutdownAsync("caller " + i);
        }, CancellationToken.None, TaskCreationOptions.None, TaskScheduler.Default)).ToArray();
        go.Set();
        var tasks = await Task.WhenAll(callers).WithTimeout();
        tasks.Distinct().Should().ContainSingle();
        release.SetResult();
        var reports = await Task.WhenAll(tasks).WithTimeout();
        reports.Should().OnlyContain(x => ReferenceEquals(x, reports[0]));
        reports[0].Reason.Should().StartWith("caller ");
        reports[0].TasksCompleted.Should().Be(1);
    }

    [Fact]
    public async Task Completion_completes_however_the_shutdown_was_started_including_DisposeAsync()
    {
        var shutdown = Create(new ManualTimeProvider());
        var completion = shutdown.Completion;
        await AsyncAssert.StillPendingAsync(completion);
        await shutdown.DisposeAsync().WithTimeout();
        completion.IsCompletedSuccessfully.Should().BeTrue();
        shutdown.IsShuttingDown.Should().BeTrue();
        shutdown.StoppingToken.IsCancellationRequested.Should().BeTrue();
        (await completion).Reason.Should().NotBeNullOrWhiteSpace();
    }

    [Fact]
    public async Task DisposeAsync_after_ShutdownAsync_is_harmless_and_keeps_the_report()
    {
        var shutdown = Create(new ManualTimeProvider());
        var r = await shutdown.ShutdownAsync("x").WithTimeout();
        await shutdown.DisposeAsync().WithTimeout();
        await shutdown.DisposeAsync().WithTimeout();
        (await shutdown.Completion).Should().BeSameAs(r);
    }

    // ------------------------------ tracked work ------------------------------

    [Fact]
    public async Task Run_gives_the_work_StoppingToken_returns_its_task_and_the_shutdown_waits_for_it()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        CancellationToken seen = default;
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var work = shutdown.Run(async token =>
        {
            seen = token;
            await release.Task;
        });
        seen.Should().Be(shutdown.StoppingToken);
        work.IsCompleted.Should().BeFalse();

        var report = shutdown.ShutdownAsync();
        await AsyncAssert.StillPendingAsync(report, "tracked work is awaited");
        release.SetResult();
        await work.WithTimeout();
        var r = await report.WithTimeout();
        r.TasksCompleted.Should().Be(1);
        r.TimedOut.Should().BeFalse();
    }

    [Fact]
    public async Task The_report_counts_every_tracked_task_by_outcome_over_the_instance_life()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var fault = new InvalidDataException("tracked fault");

        await shutdown.Run(_ => Task.CompletedTask).WithTimeout();                          // completed before the shutdown
        _ = shutdown.Run(async stopping => await Task.Delay(Timeout.Infinite, stopping)
            .ContinueWith(_ => { }, TaskScheduler.Default));                               // completes on stopping
        _ = shutdown.Run(async stopping => await Task.Delay(Timeout.Infinite, stopping));   // cancelled
        var faulted = shutdown.Run(async stopping =>
        {
            await Task.Delay(Timeout.Infinite, stopping).ContinueWith(_ => { }, TaskScheduler.Default);
            throw fault;
        });
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var abandoned = shutdown.Run(_ => release.Task);                                    // ignores everything

        var report = shutdown.ShutdownAsync();
        await AsyncAssert.EventuallyAsync(() => shutdown.RunningCount == 1, "only the abandoned task is left");
        await AsyncAssert.StillPendingAsync(report);
        clock.Advance(Drain);
        var r = await report.WithTimeout();

        r.TimedOut.Should().BeTrue();
        r.TasksCompleted.Should().Be(2);
        r.TasksCancelled.Should().Be(1);
        r.TasksFaulted.Should().Be(1);
        r.TasksAbandoned.Should().Be(1);
        (r.TasksCompleted + r.TasksCancelled + r.TasksFaulted + r.TasksAbandoned).Should().Be(5);
        r.Errors.Should().ContainSingle().Which.Should().BeSameAs(fault);
        (await Settle(faulted).ContinueWith(_ => faulted.Exception!.InnerException, TaskScheduler.Default)).Should().BeSameAs(fault);

        release.SetResult();
        await abandoned.WithTimeout();
        (await shutdown.Completion).Should().BeSameAs(r, "the report never changes after it is made");
        r.TasksAbandoned.Should().Be(1);
    }

    [Fact]
    public async Task A_delegate_that_throws_synchronously_yields_a_faulted_task_counted_as_faulted()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        var error = new NotSupportedException("sync");
        Task task = null!;
        FluentActions.Invoking(new Action(() => { task = shutdown.Run(_ => throw error); })).Should().NotThrow();
        await Settle(task).WithTimeout();
        task.IsFaulted.Should().BeTrue();
        var r = await shutdown.ShutdownAsync().WithTimeout();
        r.TasksFaulted.Should().Be(1);
        r.Errors.Should().ContainSingle().Which.Should().BeSameAs(error);
    }

    [Fact]
    public async Task Run_and_Register_after_the_start_throw_InvalidOperationException_and_null_is_refused()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        FluentActions.Invoking(new Action(() => { _ = shutdown.Run(null!); })).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(new Action(() => { shutdown.Register((IDrainable)null!); })).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(new Action(() => { shutdown.Register((Func<CancellationToken, Task>)null!); })).Should().Throw<ArgumentNullException>();

        _ = shutdown.ShutdownAsync();
        FluentActions.Invoking(new Action(() => { _ = shutdown.Run(_ => Task.CompletedTask); })).Should().Throw<InvalidOperationException>();
        FluentActions.Invoking(new Action(() => { shutdown.Register(new Drainable(_ => Task.CompletedTask)); })).Should().Throw<InvalidOperationException>();
        FluentActions.Invoking(new Action(() => { shutdown.Register(_ => Task.CompletedTask); })).Should().Throw<InvalidOperationException>();
        await shutdown.Completion.WithTimeout();
        FluentActions.Invoking(new Action(() => { _ = shutdown.Run(_ => Task.CompletedTask); })).Should().Throw<InvalidOperationException>();
    }

    [Fact]
    public async Task Tracked_work_may_start_the_shutdown_itself_without_awaiting_it()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        _ = shutdown.Run(async stopping =>
        {
            await Task.Yield();
            _ = shutdown.ShutdownAsync("fatal config error");
        });
        var r = await shutdown.Completion.WithTimeout();
        r.Reason.Should().Be("fatal config error");
        r.TasksCompleted.Should().Be(1);
        r.TimedOut.Should().BeFalse();
    }

    // ------------------------------ sequence ------------------------------

    [Fact]
    public async Task Sequence_stopping_then_tracked_work_then_drains_in_reverse_then_cleanups_in_reverse()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        var log = new ConcurrentQueue<string>();
        shutdown.StoppingToken.Register(() => log.Enqueue("stopping"));
        shutdown.AbortToken.Register(() => log.Enqueue("abort"));
        _ = shutdown.Run(async stopping =>
        {
            await Task.Delay(Timeout.Infinite, stopping).ContinueWith(_ => { }, TaskScheduler.Default);
            await Task.Yield();
            log.Enqueue("work ended");
        });
        shutdown.Register(new Drainable(async _ =>
        {
            await Task.Yield();
            log.Enqueue("drain A");
        }));
        shutdown.Register(_ =>
        {
            log.Enqueue("cleanup 1");
            return Task.CompletedTask;
        });
        shutdown.Register(new Drainable(async _ =>
        {
            await Task.Yield();
            log.Enqueue("drain B");
        }));
        shutdown.Register(async _ =>
        {
            await Task.Yield();
            log.Enqueue("cleanup 2");
        });
        shutdown.Register(new Drainable(_ =>
        {
            log.Enqueue("drain C");
            return Task.CompletedTask;
        }));

        var r = await shutdown.ShutdownAsync().WithTimeout();
        log.Should().Equal("stopping", "work ended", "drain C", "drain B", "drain A", "cleanup 2", "cleanup 1");
        r.TimedOut.Should().BeFalse();
        r.Errors.Should().BeEmpty();
    }

    [Fact]
    public async Task Drains_run_one_at_a_time()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        var second = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var firstStarted = false;
        shutdown.Register(new Drainable(_ =>
        {
            firstStarted = true;
            return Task.CompletedTask;
        }));
        shutdown.Register(new Drainable(_ => second.Task));
        var report = shutdown.ShutdownAsync();
        await AsyncAssert.StillPendingAsync(report);
        firstStarted.Should().BeFalse("the earlier-registered component waits for the later one's drain");
        second.SetResult();
        await report.WithTimeout();
        firstStarted.Should().BeTrue();
    }

    [Fact]
    public async Task DrainTimeout_on_the_fake_clock_fires_AbortToken_exactly_at_the_deadline_and_cancels_the_drains_token()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var log = new ConcurrentQueue<string>();
        var drainToken = new TaskCompletionSource<CancellationToken>(TaskCreationOptions.RunContinuationsAsynchronously);
        var laterDrainSawCancelled = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);

        shutdown.Register(_ =>
        {
            log.Enqueue("cleanup");
            return Task.CompletedTask;
        });
        shutdown.Register(new Drainable(ct =>
        {
            laterDrainSawCancelled.TrySetResult(ct.IsCancellationRequested);
            log.Enqueue("drain first-registered");
            return Task.CompletedTask;
        }));
        shutdown.Register(new Drainable(async ct =>
        {
            drainToken.SetResult(ct);
            await Task.Delay(Timeout.Infinite, ct); // cooperative: cut short by the token
        }));

        var report = shutdown.ShutdownAsync();
        var token = await drainToken.Task.WithTimeout();
        token.IsCancellationRequested.Should().BeFalse();

        clock.Advance(Drain - TimeSpan.FromTicks(1));
        shutdown.AbortToken.IsCancellationRequested.Should().BeFalse();
        token.IsCancellationRequested.Should().BeFalse();
        await AsyncAssert.StillPendingAsync(report);

        clock.Advance(TimeSpan.FromTicks(1));
        shutdown.AbortToken.IsCancellationRequested.Should().BeTrue("phase 2 fires at DrainTimeout");
        token.IsCancellationRequested.Should().BeTrue("the drains' tokens are cancelled at the deadline");

        var r = await report.WithTimeout();
        r.TimedOut.Should().BeTrue();
        r.Errors.Should().BeEmpty("a drain cut short by the deadline is expected, not an error");
        (await laterDrainSawCancelled.Task.WithTimeout()).Should().BeTrue("components not yet drained are drained with the cancelled token");
        log.Should().Equal("drain first-registered", "cleanup");
        r.Elapsed.Should().Be(Drain);
    }

    [Fact]
    public async Task A_drain_that_ignores_its_token_cannot_hold_the_shutdown_past_the_deadline()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var never = new TaskCompletionSource();
        var cleanupRan = false;
        shutdown.Register(_ =>
        {
            cleanupRan = true;
            return Task.CompletedTask;
        });
        shutdown.Register(new Drainable(_ =>
        {
            entered.SetResult();
            return never.Task;
        }));
        var report = shutdown.ShutdownAsync();
        await entered.Task.WithTimeout();
        clock.Advance(Drain);
        var r = await report.WithTimeout();
        r.TimedOut.Should().BeTrue();
        cleanupRan.Should().BeTrue("cleanups run even after an abort");
    }

    [Fact]
    public async Task Tracked_work_ignoring_StoppingToken_is_abandoned_at_the_deadline_and_drains_still_run()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var drained = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        shutdown.Register(new Drainable(ct =>
        {
            drained.TrySetResult(ct.IsCancellationRequested);
            return Task.CompletedTask;
        }));
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = shutdown.Run(_ => release.Task);

        var report = shutdown.ShutdownAsync();
        await AsyncAssert.StillPendingAsync(drained.Task, "drains start after the tracked work ended");
        clock.Advance(Drain);
        var r = await report.WithTimeout();
        r.TimedOut.Should().BeTrue();
        r.TasksAbandoned.Should().Be(1);
        (await drained.Task.WithTimeout()).Should().BeTrue("the drain ran, with the already-cancelled token");
        release.SetResult();
    }

    [Fact]
    public async Task Tracked_work_that_stops_on_AbortToken_is_not_an_error()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = shutdown.Run(async _ =>
        {
            entered.SetResult();
            await Task.Delay(Timeout.Infinite, shutdown.AbortToken); // finishes its item after stopping, gives up at the deadline
        });
        await entered.Task.WithTimeout();
        var report = shutdown.ShutdownAsync();
        clock.Advance(Drain);
        var r = await report.WithTimeout();
        r.TimedOut.Should().BeTrue();
        r.TasksFaulted.Should().Be(0);
        r.Errors.Should().BeEmpty();
        (r.TasksCancelled + r.TasksAbandoned).Should().Be(1);
    }

    [Fact]
    public async Task A_drain_that_throws_is_recorded_and_the_next_drain_still_runs()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        var error = new IOException("disk gone");
        var earlierDrained = false;
        shutdown.Register(new Drainable(_ =>
        {
            earlierDrained = true;
            return Task.CompletedTask;
        }));
        shutdown.Register(new Drainable(async _ =>
        {
            await Task.Yield();
            throw error;
        }));
        shutdown.Register(new Drainable(_ => throw new InvalidOperationException("sync drain throw")));
        var r = await shutdown.ShutdownAsync().WithTimeout();
        earlierDrained.Should().BeTrue();
        r.Errors.Should().HaveCount(2);
        r.Errors.Should().Contain(error);
        r.Errors.Should().ContainSingle(e => e is InvalidOperationException && e.Message == "sync drain throw");
        r.TimedOut.Should().BeFalse();
    }

    [Fact]
    public async Task A_cleanup_that_throws_is_recorded_and_the_others_run()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        var ran = new ConcurrentQueue<int>();
        var error = new InvalidOperationException("cleanup failed");
        shutdown.Register(_ =>
        {
            ran.Enqueue(1);
            return Task.CompletedTask;
        });
        shutdown.Register(_ => throw error);
        shutdown.Register(async _ =>
        {
            await Task.Yield();
            ran.Enqueue(3);
            throw new FormatException("async cleanup failure");
        });
        var r = await shutdown.ShutdownAsync().WithTimeout();
        ran.Should().Equal(3, 1);
        r.Errors.Should().HaveCount(2);
        r.Errors.Should().Contain(error);
        r.Errors.Should().ContainSingle(e => e is FormatException);
        r.TimedOut.Should().BeFalse("a cleanup failure is not a drain timeout");
    }

    [Fact]
    public async Task Cleanups_get_a_live_token_even_after_the_drain_was_aborted()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var cleanupToken = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        shutdown.Register(ct =>
        {
            cleanupToken.SetResult(ct.IsCancellationRequested);
            return Task.CompletedTask;
        });
        _ = shutdown.Run(_ => new TaskCompletionSource().Task);
        var report = shutdown.ShutdownAsync();
        clock.Advance(Drain);
        await report.WithTimeout();
        (await cleanupToken.Task.WithTimeout()).Should().BeFalse("each cleanup has its own bounded token");
    }

    [Fact]
    public async Task A_cleanup_that_overruns_its_bound_is_recorded_as_a_TimeoutException_and_the_next_runs()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock, cleanup: TimeSpan.FromSeconds(2));
        var nextRan = false;
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        shutdown.Register(_ =>
        {
            nextRan = true;
            return Task.CompletedTask;
        });
        shutdown.Register(_ =>
        {
            entered.SetResult();
            return new TaskCompletionSource().Task; // hangs, ignoring its token
        });
        var report = shutdown.ShutdownAsync();
        await entered.Task.WithTimeout();
        clock.Advance(TimeSpan.FromSeconds(2));
        var r = await report.WithTimeout();
        nextRan.Should().BeTrue();
        r.Errors.Should().ContainSingle().Which.Should().BeOfType<TimeoutException>();
    }

    [Fact]
    public async Task Elapsed_is_measured_on_the_fake_clock_from_the_start()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        shutdown.Register(new Drainable(async _ =>
        {
            entered.SetResult();
            await release.Task;
        }));
        clock.Advance(TimeSpan.FromMinutes(5)); // before the shutdown: not counted
        var report = shutdown.ShutdownAsync();
        await entered.Task.WithTimeout();
        clock.Advance(TimeSpan.FromSeconds(3));
        release.SetResult();
        var r = await report.WithTimeout();
        r.Elapsed.Should().Be(TimeSpan.FromSeconds(3));
        r.TimedOut.Should().BeFalse();
    }

    [Fact]
    public async Task A_throwing_StoppingToken_callback_is_recorded_not_thrown()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        var error = new InvalidOperationException("bad callback");
        shutdown.StoppingToken.Register(() => throw error);
        Task<ShutdownReport> report = null!;
        FluentActions.Invoking(new Action(() => { report = shutdown.ShutdownAsync(); })).Should().NotThrow();
        var r = await report.WithTimeout();
        r.Errors.Should().ContainSingle().Which.Should().BeSameAs(error);
    }

    [Fact]
    public async Task Completion_never_faults_even_when_every_phase_fails()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        shutdown.StoppingToken.Register(() => throw new InvalidOperationException("callback"));
        _ = shutdown.Run(_ => throw new InvalidOperationException("work"));
        shutdown.Register(new Drainable(_ => throw new InvalidOperationException("drain")));
        shutdown.Register(_ => throw new InvalidOperationException("cleanup"));
        var r = await shutdown.ShutdownAsync().WithTimeout();
        shutdown.Completion.IsCompletedSuccessfully.Should().BeTrue();
        r.Errors.Should().HaveCount(4);
        r.TasksFaulted.Should().Be(1);
    }

    [Fact]
    public async Task Abort_fires_AbortToken_now_and_the_report_says_TimedOut()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        shutdown.Register(new Drainable(async ct =>
        {
            entered.SetResult();
            await Task.Delay(Timeout.Infinite, ct);
        }));
        var report = shutdown.ShutdownAsync("SIGTERM-like");
        await entered.Task.WithTimeout();
        shutdown.Abort();
        shutdown.AbortToken.IsCancellationRequested.Should().BeTrue();
        var r = await report.WithTimeout();
        r.TimedOut.Should().BeTrue();
        r.Reason.Should().Be("SIGTERM-like");
        r.Errors.Should().BeEmpty();
    }

    // ------------------------------ concurrency and real primitives ------------------------------

    [Fact]
    public async Task Run_racing_ShutdownAsync_every_accepted_task_is_counted_exactly_once()
    {
        for (var round = 0; round < 10; round++)
        {
            var shutdown = Create(new ManualTimeProvider());
            var accepted = 0;
            var refused = 0;
            using var go = new ManualResetEventSlim();
            var starters = Enumerable.Range(0, 4).Select(i => Task.Run(async () =>
            {
                go.Wait();
                for (var n = 0; n < 300; n++)
                {
                    try
                    {
                        _ = shutdown.Run(n % 3 == 0 ? async _ => await Task.Yield() : _ => Task.CompletedTask);
                        Interlocked.Increment(ref accepted);
                    }
                    catch (InvalidOperationException)
                    {
                        Interlocked.Increment(ref refused);
                    }

                    if (n == 150 && i == 0)
                    {
                        _ = shutdown.ShutdownAsync("race");
                    }
                }

                await Task.Yield();
            })).ToArray();
            go.Set();
            await Task.WhenAll(starters).WithTimeout();
            var r = await shutdown.ShutdownAsync().WithTimeout();
            (accepted + refused).Should().Be(1200);
            (r.TasksCompleted + r.TasksCancelled + r.TasksFaulted + r.TasksAbandoned).Should().Be(accepted);
            r.TasksAbandoned.Should().Be(0);
            r.TimedOut.Should().BeFalse();
            await shutdown.DisposeAsync().WithTimeout();
        }
    }

    [Fact]
    public async Task README_example_producer_queue_and_cleanup_lose_nothing()
    {
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { DrainTimeout = TimeSpan.FromSeconds(20) });
        var handled = 0;
        var queue = new WorkQueue<int>(async (item, ct) =>
        {
            await Task.Yield();
            Interlocked.Increment(ref handled);
        }, new WorkQueueOptions<int> { Capacity = 16, MaxConcurrency = 2 });
        var dbClosed = false;
        shutdown.Register(queue);
        shutdown.Register(_ =>
        {
            dbClosed = true;
            return Task.CompletedTask;
        });
        var produced = 0;
        var producing = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = shutdown.Run(async stopping =>
        {
            var next = 0;
            try
            {
                while (!stopping.IsCancellationRequested)
                {
                    await queue.EnqueueAsync(next++, stopping);
                    Interlocked.Increment(ref produced);
                    if (next == 50)
                    {
                        producing.TrySetResult();
                    }
                }
            }
            catch (OperationCanceledException)
            {
                // stopping fired while waiting for room: the item was not accepted
            }
        });
        await producing.Task.WithTimeout();
        var r = await shutdown.ShutdownAsync("test").WithTimeout();

        r.TimedOut.Should().BeFalse();
        r.Errors.Should().BeEmpty();
        (r.TasksCompleted + r.TasksCancelled).Should().Be(1);
        dbClosed.Should().BeTrue();
        var s = queue.GetStatistics();
        s.Accepted.Should().Be(produced);
        s.Handled.Should().Be(s.Accepted, "a drain that finished in time handles everything accepted");
        s.Failed.Should().Be(0);
        s.Dropped.Should().Be(0);
        handled.Should().Be(produced);
        await queue.DisposeAsync();
    }
    // ------------------------------ more adversarial cases ------------------------------

    [Fact]
    public async Task A_throwing_AbortToken_callback_is_recorded_and_does_not_escape_the_timer()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var error = new InvalidOperationException("abort callback");
        shutdown.AbortToken.Register(() => throw error);
        _ = shutdown.Run(_ => new TaskCompletionSource().Task);
        var report = shutdown.ShutdownAsync();
        FluentActions.Invoking(() => clock.Advance(Drain)).Should().NotThrow();
        var r = await report.WithTimeout();
        r.TimedOut.Should().BeTrue();
        r.Errors.Should().Contain(error);
    }

    [Fact]
    public async Task Abort_before_any_shutdown_starts_it_and_Completion_completes()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        shutdown.Abort();
        shutdown.IsShuttingDown.Should().BeTrue();
        shutdown.StoppingToken.IsCancellationRequested.Should().BeTrue();
        shutdown.AbortToken.IsCancellationRequested.Should().BeTrue();
        var r = await shutdown.Completion.WithTimeout();
        r.Reason.Should().NotBeNullOrWhiteSpace();
    }

    [Fact]
    public async Task Abort_after_the_shutdown_finished_does_nothing()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        var r = await shutdown.ShutdownAsync().WithTimeout();
        shutdown.Abort();
        shutdown.AbortToken.IsCancellationRequested.Should().BeFalse();
        (await shutdown.Completion).Should().BeSameAs(r);
        r.TimedOut.Should().BeFalse();
    }

    [Fact]
    public async Task No_timer_is_left_behind_once_the_shutdown_finished()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        shutdown.Register(_ => Task.CompletedTask);
        await shutdown.Run(_ => Task.CompletedTask).WithTimeout();
        await shutdown.ShutdownAsync().WithTimeout();
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 0, "the drain deadline and cleanup bounds are disposed");
    }

    [Fact]
    public async Task ShutdownAsync_from_a_StoppingToken_callback_returns_the_same_task_without_deadlock()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        Task<ShutdownReport>? inner = null;
        shutdown.StoppingToken.Register(() => inner = shutdown.ShutdownAsync("re-entrant"));
        var outer = shutdown.ShutdownAsync("outer");
        var r = await outer.WithTimeout();
        inner.Should().BeSameAs(outer);
        r.Reason.Should().Be("outer");
        r.Errors.Should().BeEmpty();
    }

    [Fact]
    public async Task Register_from_a_drain_is_refused()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        Exception? refusal = null;
        shutdown.Register(new Drainable(_ =>
        {
            try
            {
                shutdown.Register(new Drainable(__ => Task.CompletedTask));
            }
            catch (Exception ex)
            {
                refusal = ex;
            }

            return Task.CompletedTask;
        }));
        await shutdown.ShutdownAsync().WithTimeout();
        refusal.Should().BeOfType<InvalidOperationException>();
    }

    [Fact]
    public async Task Many_tracked_tasks_are_all_counted_and_RunningCount_returns_to_zero()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        var tasks = new List<Task>();
        for (var i = 0; i < 5000; i++)
        {
            tasks.Add(shutdown.Run(i % 2 == 0 ? _ => Task.CompletedTask : async stopping => await Task.Yield()));
        }

        await Task.WhenAll(tasks).WithTimeout();
        shutdown.RunningCount.Should().Be(0);
        var r = await shutdown.ShutdownAsync().WithTimeout();
        r.TasksCompleted.Should().Be(5000);
    }

    [Fact]
    public async Task Concurrent_DisposeAsync_and_ShutdownAsync_agree_on_one_report()
    {
        var shutdown = Create(new ManualTimeProvider());
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = shutdown.Run(_ => release.Task);
        var a = Task.Run(() => shutdown.ShutdownAsync("a"));
        var b = Task.Run(async () => await shutdown.DisposeAsync());
        await AsyncAssert.EventuallyAsync(() => shutdown.IsShuttingDown);
        release.SetResult();
        var r = await a.WithTimeout();
        await b.WithTimeout();
        (await shutdown.Completion).Should().BeSameAs(r);
        r.TasksCompleted.Should().Be(1);
    }

    [Fact]
    public async Task Elapsed_of_an_aborted_shutdown_is_the_drain_timeout_plus_the_cleanup_time()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock, cleanup: TimeSpan.FromSeconds(30));
        var cleanupEntered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var cleanupRelease = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        shutdown.Register(async _ =>
        {
            cleanupEntered.SetResult();
            await cleanupRelease.Task;
        });
        _ = shutdown.Run(_ => new TaskCompletionSource().Task);
        var report = shutdown.ShutdownAsync();
        clock.Advance(Drain);
        await cleanupEntered.Task.WithTimeout();
        clock.Advance(TimeSpan.FromSeconds(2));
        cleanupRelease.SetResult();
        var r = await report.WithTimeout();
        r.Elapsed.Should().Be(Drain + TimeSpan.FromSeconds(2));
        r.TimedOut.Should().BeTrue();
        r.Errors.Should().BeEmpty();
    }
    [Fact]
    public async Task A_drain_that_throws_OperationCanceledException_before_any_abort_is_an_error()
    {
        await using var shutdown = Create(new ManualTimeProvider());
        using var own = new CancellationTokenSource();
        own.Cancel();
        shutdown.Register(new Drainable(_ => Task.FromCanceled(own.Token)));
        var r = await shutdown.ShutdownAsync().WithTimeout();
        r.TimedOut.Should().BeFalse();
        r.Errors.Should().ContainSingle().Which.Should().BeAssignableTo<OperationCanceledException>(
            "only the cancellation of a drain cut short by AbortToken is expected");
    }

    [Fact]
    public async Task Cleanups_run_after_the_abort_even_when_a_drain_was_cut_short()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = Create(clock);
        var log = new ConcurrentQueue<string>();
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        shutdown.Register(async _ =>
        {
            await Task.Yield();
            log.Enqueue("cleanup");
        });
        shutdown.Register(new Drainable(async ct =>
        {
            entered.SetResult();
            try
            {
                await Task.Delay(Timeout.Infinite, ct);
            }
            finally
            {
                log.Enqueue("drain cut short");
            }
        }));
        var report = shutdown.ShutdownAsync();
        await entered.Task.WithTimeout();
        clock.Advance(Drain);
        var r = await report.WithTimeout();
        // Documented: after the abort, a drain is no longer waited for (WaitAsync on AbortToken), so its own unwinding
        // (the finally here) races with the cleanups; only "the cleanup runs after the abort" is guaranteed.
        log.Should().Contain("cleanup");
        await AsyncAssert.EventuallyAsync(() => log.Contains("drain cut short"));
        r.TimedOut.Should().BeTrue();
        r.Errors.Should().BeEmpty();
    }
}
