using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Shutdown;

/// <summary>
/// The seeds' GracefulApp (three workers that clean up when cancelled and re-raise, a shutdown that waits for them
/// with a timeout) restated for GracefulShutdown, plus the DESIGN.md report sentences it must prove.
/// </summary>
public sealed class GracefulShutdownPeerTests
{
    private static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(5);

    [Fact]
    public async Task Workers_that_clean_up_and_rethrow_on_StoppingToken_are_counted_as_cancelled_within_the_deadline()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { TimeProvider = clock, DrainTimeout = DrainTimeout });
        var cleanups = 0;
        for (var i = 0; i < 3; i++)
        {
            _ = shutdown.Run(async stopping =>
            {
                try
                {
                    while (true)
                    {
                        await Task.Delay(TimeSpan.FromSeconds(1), clock, stopping);
                    }
                }
                catch (OperationCanceledException)
                {
                    await Task.Yield(); // the seed's "await asyncio.sleep(0.5)" cleanup
                    Interlocked.Increment(ref cleanups);
                    throw;
                }
            });
        }

        clock.Advance(TimeSpan.FromSeconds(3)); // the workers loop a few times
        var report = await shutdown.ShutdownAsync("SIGTERM").WithTimeout();

        cleanups.Should().Be(3);
        report.Reason.Should().Be("SIGTERM");
        report.TimedOut.Should().BeFalse();
        report.TasksCancelled.Should().Be(3, "a worker that re-raises the cancellation ended cancelled, not faulted");
        report.TasksCompleted.Should().Be(0);
        report.TasksFaulted.Should().Be(0);
        report.TasksAbandoned.Should().Be(0);
        report.Errors.Should().BeEmpty();
        shutdown.AbortToken.IsCancellationRequested.Should().BeFalse("nothing overran the deadline");
    }

    [Fact]
    public async Task A_worker_whose_cleanup_overruns_the_deadline_is_abandoned_and_the_report_says_TimedOut()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { TimeProvider = clock, DrainTimeout = DrainTimeout });
        var slowCleanup = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var worker = shutdown.Run(async stopping =>
        {
            try
            {
                await Task.Delay(Timeout.InfiniteTimeSpan, stopping);
            }
            catch (OperationCanceledException)
            {
                await slowCleanup.Task; // longer than the seed's 5 s wait_for
                throw;
            }
        });
        var quick = shutdown.Run(stopping => Task.Delay(Timeout.InfiniteTimeSpan, stopping));

        var pending = shutdown.ShutdownAsync();
        await quick.ContinueWith(_ => { }, TaskScheduler.Default).WithTimeout();

        // The shutdown records quick's end on the thread that completed it, possibly after the continuation above ran.
        await AsyncAssert.EventuallyAsync(() => shutdown.RunningCount == 1, "quick's end is recorded");
        clock.Advance(DrainTimeout);
        var report = await pending.WithTimeout();

        report.TimedOut.Should().BeTrue();
        report.TasksAbandoned.Should().Be(1);
        report.TasksCancelled.Should().Be(1);
        (report.TasksCompleted + report.TasksCancelled + report.TasksFaulted + report.TasksAbandoned).Should().Be(2, "every tracked task is reported once");
        report.Elapsed.Should().Be(DrainTimeout);

        slowCleanup.SetResult();
        await FluentActions.Awaiting(() => worker.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        (await shutdown.Completion).Should().BeSameAs(report);
    }

    [Fact]
    public async Task Tracked_work_may_start_the_shutdown_without_awaiting_it_and_then_ends_normally()
    {
        var clock = new ManualTimeProvider();
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { TimeProvider = clock, DrainTimeout = DrainTimeout });
        _ = shutdown.Run(async stopping =>
        {
            await Task.Yield();
            _ = shutdown.ShutdownAsync("fatal error in a worker"); // not awaited: the shutdown waits for this work
        });

        var report = await shutdown.Completion.WithTimeout();
        report.Reason.Should().Be("fatal error in a worker");
        report.TimedOut.Should().BeFalse();
        report.TasksCompleted.Should().Be(1);
    }
}
