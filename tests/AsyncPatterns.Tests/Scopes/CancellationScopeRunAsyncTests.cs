using System.Runtime.CompilerServices;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Scopes;

/// <summary>
/// The nursery form. Scenarios ported from CPython's <c>test_taskgroups.py</c> / <c>test_timeouts.py</c> and Trio's
/// nursery and cancel-scope tests; names cite the original where there is one.
/// </summary>
public sealed class CancellationScopeRunAsyncTests
{
    private static CancellationScopeOptions On(ManualTimeProvider clock, TimeSpan? timeout = null) =>
        new() { TimeProvider = clock, Timeout = timeout };

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static async Task CrashAfterAsync(TimeSpan delay, TimeProvider clock, CancellationToken ct, Exception error)
    {
        await Task.Delay(delay, clock, ct);
        throw error;
    }

    [Fact] // taskgroup_01
    public async Task Children_finish_and_their_results_are_available()
    {
        var clock = new ManualTimeProvider();
        Task<int>? t1 = null, t2 = null;
        var run = CancellationScope.RunAsync(scope =>
        {
            t1 = scope.Run(async ct => { await Task.Delay(TimeSpan.FromMilliseconds(100), clock, ct); return 42; });
            t2 = scope.Run(async ct => { await Task.Delay(TimeSpan.FromMilliseconds(200), clock, ct); return 11; });
            return Task.CompletedTask;
        }, On(clock));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 2);
        await AsyncAssert.StillPendingAsync(run, "RunAsync waits for its children");
        clock.AdvanceMilliseconds(200);
        await run.WithTimeout();
        (await t1!).Should().Be(42);
        (await t2!).Should().Be(11);
    }

    [Fact] // taskgroup_02: a child started after the body has awaited
    public async Task Children_started_later_in_the_body_are_awaited_too()
    {
        var clock = new ManualTimeProvider();
        var result = CancellationScope.RunAsync<(Task<int>, Task<int>)>(async scope =>
        {
            var t1 = scope.Run(async ct => { await Task.Delay(TimeSpan.FromMilliseconds(100), clock, ct); return 42; });
            await Task.Delay(TimeSpan.FromMilliseconds(150), clock, scope.Token);
            var t2 = scope.Run(async ct => { await Task.Delay(TimeSpan.FromMilliseconds(200), clock, ct); return 11; });
            return (t1, t2);
        }, On(clock));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 2);
        clock.AdvanceMilliseconds(150);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 1);
        clock.AdvanceMilliseconds(200);
        var (a, b) = await result.WithTimeout();
        (await a).Should().Be(42);
        (await b).Should().Be(11);
    }

    [Fact] // taskgroup_04 / test_cancel_children_on_child_error
    public async Task One_failure_cancels_siblings_and_the_body_and_surfaces_as_itself()
    {
        var clock = new ManualTimeProvider();
        var error = new DivideByZeroException("1 / 0");
        var siblingCancelled = 0;
        var bodyCancelled = false;
        var after = 0;
        var run = CancellationScope.RunAsync(async scope =>
        {
            _ = scope.Run(ct => CrashAfterAsync(TimeSpan.FromMilliseconds(100), clock, ct, error));
            for (var i = 0; i < 3; i++)
            {
                _ = scope.Run(async ct =>
                {
                    try
                    {
                        await Task.Delay(TimeSpan.FromSeconds(5), clock, ct);
                        Interlocked.Increment(ref after);
                    }
                    catch (OperationCanceledException)
                    {
                        Interlocked.Increment(ref siblingCancelled);
                        throw;
                    }
                });
            }

            try
            {
                await Task.Delay(TimeSpan.FromSeconds(10), clock, scope.Token);
            }
            catch (OperationCanceledException)
            {
                bodyCancelled = true;
                throw;
            }
        }, On(clock));

        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 5);
        clock.AdvanceMilliseconds(100);
        var thrown = await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<DivideByZeroException>();
        thrown.Which.Should().BeSameAs(error);
        thrown.Which.StackTrace.Should().Contain(nameof(CrashAfterAsync), "the original stack is kept");
        siblingCancelled.Should().Be(3);
        bodyCancelled.Should().BeTrue();
        after.Should().Be(0);
    }

    [Fact] // taskgroup_19: a second failure raised while handling the first's cancellation
    public async Task Several_failures_become_an_AggregateException_first_cause_first()
    {
        var clock = new ManualTimeProvider();
        var first = new DivideByZeroException("first");
        var second = new TestException("second");
        var run = CancellationScope.RunAsync(async scope =>
        {
            _ = scope.Run(ct => CrashAfterAsync(TimeSpan.FromMilliseconds(100), clock, ct, first));
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(10), clock, scope.Token);
            }
            finally
            {
                throw second;
            }
        }, On(clock));

        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 2);
        clock.AdvanceMilliseconds(100);
        var thrown = await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<AggregateException>();
        thrown.Which.InnerExceptions.Should().Equal(first, second);
    }

    [Fact] // trio test_two_child_crashes
    public async Task Two_children_crashing_together_are_both_reported()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = 0;
        var a = new KeyNotFoundException("a");
        var b = new ArgumentException("b");
        var run = CancellationScope.RunAsync(scope =>
        {
            foreach (var error in new Exception[] { a, b })
            {
                _ = scope.Run(async _ =>
                {
                    Interlocked.Increment(ref started);
                    await gate.Task; // both are running before either throws
                    throw error;
                });
            }

            return Task.CompletedTask;
        });
        await AsyncAssert.EventuallyAsync(() => Volatile.Read(ref started) == 2);
        gate.SetResult();
        var thrown = await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<AggregateException>();
        thrown.Which.InnerExceptions.Should().BeEquivalentTo(new Exception[] { a, b });
    }

    [Fact] // taskgroup_09
    public async Task A_body_failure_cancels_the_children_and_surfaces_as_itself()
    {
        var clock = new ManualTimeProvider();
        Task<int>? t1 = null, t2 = null;
        var error = new TestException("body");
        var run = CancellationScope.RunAsync(async scope =>
        {
            t1 = scope.Run(async ct => { await Task.Delay(TimeSpan.FromMilliseconds(1000), clock, ct); return 42; });
            t2 = scope.Run(async ct => { await Task.Delay(TimeSpan.FromMilliseconds(2000), clock, ct); return 11; });
            await Task.Delay(TimeSpan.FromMilliseconds(100), clock, scope.Token);
            throw error;
        }, On(clock));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 3);
        clock.AdvanceMilliseconds(100);
        (await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TestException>()).Which.Should().BeSameAs(error);
        t1!.IsCanceled.Should().BeTrue();
        t2!.IsCanceled.Should().BeTrue();
    }

    [Fact] // taskgroup_10: the body throws before its first await
    public async Task A_body_that_throws_synchronously_faults_the_task_not_the_call()
    {
        Task<int>? child = null;
        var error = new TestException("sync body");
        Task run = null!;
        Action start = () => run = CancellationScope.RunAsync(scope =>
        {
            child = scope.Run(ct => Task.Delay(Timeout.Infinite, ct).ContinueWith(_ => 1, TaskScheduler.Default));
            throw error;
        });
        start.Should().NotThrow();
        (await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TestException>()).Which.Should().BeSameAs(error);
        child!.IsCompleted.Should().BeTrue();
    }

    [Fact] // test_cancellation / taskgroup_07
    public async Task Callers_cancellation_cancels_everything_and_throws_OperationCanceledException()
    {
        var clock = new ManualTimeProvider();
        using var caller = new CancellationTokenSource();
        var cancelled = 0;
        var run = CancellationScope.RunAsync(async scope =>
        {
            for (var i = 0; i < 5; i++)
            {
                _ = scope.Run(async ct =>
                {
                    try
                    {
                        await Task.Delay(TimeSpan.FromSeconds(5), clock, ct);
                    }
                    catch (OperationCanceledException)
                    {
                        Interlocked.Increment(ref cancelled);
                        throw;
                    }
                });
            }

            try
            {
                await Task.Delay(TimeSpan.FromSeconds(10), clock, scope.Token);
            }
            catch (OperationCanceledException)
            {
                Interlocked.Add(ref cancelled, 10);
                throw;
            }
        }, On(clock), caller.Token);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 6);
        caller.Cancel();
        var thrown = await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        thrown.Which.CancellationToken.Should().Be(caller.Token);
        cancelled.Should().Be(15);
    }

    [Fact]
    public async Task An_already_cancelled_token_returns_a_cancelled_task_without_running_the_body()
    {
        var ran = false;
        var run = CancellationScope.RunAsync(_ => { ran = true; return Task.CompletedTask; }, cancellationToken: new CancellationToken(true));
        run.IsCanceled.Should().BeTrue();
        var typed = CancellationScope.RunAsync(_ => { ran = true; return Task.FromResult(1); }, null, new CancellationToken(true));
        typed.IsCanceled.Should().BeTrue();
        ran.Should().BeFalse();
        await Task.CompletedTask;
    }

    [Fact] // taskgroup_18: the body turns the cancellation into an error
    public async Task A_failure_wins_over_the_callers_cancellation()
    {
        using var caller = new CancellationTokenSource();
        var error = new TestException("raised on cancel");
        var run = CancellationScope.RunAsync(async scope =>
        {
            try
            {
                await Task.Delay(Timeout.Infinite, scope.Token);
            }
            catch (OperationCanceledException)
            {
                throw error;
            }
        }, cancellationToken: caller.Token);
        caller.Cancel();
        (await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TestException>()).Which.Should().BeSameAs(error);
    }

    [Fact] // taskgroup_15: the body takes its time to unwind after cancellation
    public async Task RunAsync_waits_for_a_body_that_unwinds_slowly()
    {
        var clock = new ManualTimeProvider();
        using var caller = new CancellationTokenSource();
        var run = CancellationScope.RunAsync(async scope =>
        {
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(10), clock, scope.Token);
            }
            catch (OperationCanceledException)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(500), clock, CancellationToken.None);
                throw;
            }
        }, On(clock), caller.Token);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 1);
        caller.Cancel();
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 1, "the body's unwinding delay");
        await AsyncAssert.StillPendingAsync(run);
        clock.AdvanceMilliseconds(500);
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
    }

    [Fact] // test_timeout_basic / trio fail_after
    public async Task Timeout_throws_TimeoutException_and_cancels_children()
    {
        var clock = new ManualTimeProvider();
        Task? child = null;
        var run = CancellationScope.RunAsync(async scope =>
        {
            child = scope.Run(ct => Task.Delay(TimeSpan.FromSeconds(10), clock, ct));
            await Task.Delay(TimeSpan.FromSeconds(10), clock, scope.Token);
        }, On(clock, TimeSpan.FromMilliseconds(10)));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 3);
        clock.AdvanceMilliseconds(10);
        var thrown = await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TimeoutException>();
        thrown.Which.Message.Should().Contain("00:00:00.0100000");
        child!.IsCanceled.Should().BeTrue();
        clock.ActiveTimerCount.Should().Be(0);
    }

    [Fact]
    public async Task Timeout_with_a_body_that_swallows_the_cancellation_still_throws_TimeoutException()
    {
        var clock = new ManualTimeProvider();
        var run = CancellationScope.RunAsync(async scope =>
        {
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(10), clock, scope.Token);
            }
            catch (OperationCanceledException)
            {
            }

            return 5;
        }, On(clock, TimeSpan.FromSeconds(1)));
        clock.Advance(TimeSpan.FromSeconds(1));
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TimeoutException>();
    }

    [Fact] // test_timeout_not_expired: finishing just before the deadline is success, and a late deadline changes nothing
    public async Task Finishing_before_the_deadline_returns_the_result()
    {
        var clock = new ManualTimeProvider();
        var run = CancellationScope.RunAsync(async scope =>
        {
            await Task.Delay(TimeSpan.FromMilliseconds(999), clock, scope.Token);
            return "done";
        }, On(clock, TimeSpan.FromSeconds(1)));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 2);
        clock.AdvanceMilliseconds(999);
        (await run.WithTimeout()).Should().Be("done");
        clock.AdvanceMilliseconds(1);
        clock.ActiveTimerCount.Should().Be(0);
    }

    [Fact] // test_foreign_exception_passed
    public async Task A_foreign_exception_within_the_timeout_is_not_a_timeout()
    {
        var clock = new ManualTimeProvider();
        var run = CancellationScope.RunAsync<int>(_ => throw new KeyNotFoundException(), On(clock, TimeSpan.FromSeconds(1)));
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<KeyNotFoundException>();
    }

    [Fact] // test_foreign_cancel_doesnt_timeout_if_not_expired
    public async Task Callers_cancellation_before_the_deadline_is_not_a_timeout()
    {
        var clock = new ManualTimeProvider();
        using var caller = new CancellationTokenSource();
        var run = CancellationScope.RunAsync(scope => Task.Delay(TimeSpan.FromSeconds(10), clock, scope.Token), On(clock, TimeSpan.FromSeconds(5)), caller.Token);
        caller.Cancel();
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        run.IsCanceled.Should().BeTrue();
    }

    [Fact] // test_nested_timeouts: the outer deadline fires first
    public async Task Outer_deadline_cancels_a_nested_scope_and_only_the_outer_times_out()
    {
        var clock = new ManualTimeProvider();
        Task? inner = null;
        var run = CancellationScope.RunAsync(async outer =>
        {
            inner = CancellationScope.RunAsync(s => Task.Delay(TimeSpan.FromSeconds(10), clock, s.Token), On(clock, TimeSpan.FromSeconds(2)), outer.Token);
            await inner;
        }, On(clock, TimeSpan.FromSeconds(1)));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 3);
        clock.Advance(TimeSpan.FromSeconds(1));
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TimeoutException>();
        inner!.IsCanceled.Should().BeTrue("the inner scope was cancelled by its caller, the outer scope");
    }

    [Fact] // test_nested_timeouts: the inner deadline fires first
    public async Task Inner_timeout_surfaces_as_itself_through_the_outer_scope()
    {
        var clock = new ManualTimeProvider();
        CancellationScope? outerScope = null;
        var run = CancellationScope.RunAsync(async outer =>
        {
            outerScope = outer;
            await CancellationScope.RunAsync(s => Task.Delay(TimeSpan.FromSeconds(10), clock, s.Token), On(clock, TimeSpan.FromSeconds(1)), outer.Token);
        }, On(clock, TimeSpan.FromSeconds(5)));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 3);
        clock.Advance(TimeSpan.FromSeconds(1));
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TimeoutException>();
        outerScope!.TimedOut.Should().BeFalse();
    }

    [Fact] // taskgroup_13: an outer child crashes while a nested scope runs
    public async Task Outer_failure_cancels_a_nested_scope()
    {
        var clock = new ManualTimeProvider();
        var error = new ArgumentException("0.1");
        Task? inner = null;
        var run = CancellationScope.RunAsync(async g1 =>
        {
            _ = g1.Run(ct => CrashAfterAsync(TimeSpan.FromMilliseconds(100), clock, ct, error));
            inner = CancellationScope.RunAsync(g2 =>
            {
                _ = g2.Run(ct => CrashAfterAsync(TimeSpan.FromSeconds(10), clock, ct, new ArgumentException("10")));
                return Task.CompletedTask;
            }, On(clock), g1.Token);
            await inner;
        }, On(clock));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 2);
        clock.AdvanceMilliseconds(100);
        (await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<ArgumentException>()).Which.Should().BeSameAs(error);
        inner!.IsCanceled.Should().BeTrue();
    }

    [Fact] // taskgroup_14: the nested scope's child crashes
    public async Task Nested_failure_propagates_to_the_outer_scope_as_itself()
    {
        var clock = new ManualTimeProvider();
        var error = new ArgumentException("0.1");
        Task? outerChild = null;
        var run = CancellationScope.RunAsync(async g1 =>
        {
            outerChild = g1.Run(ct => CrashAfterAsync(TimeSpan.FromSeconds(10), clock, ct, new ArgumentException("10")));
            await CancellationScope.RunAsync(g2 =>
            {
                _ = g2.Run(ct => CrashAfterAsync(TimeSpan.FromMilliseconds(100), clock, ct, error));
                return Task.CompletedTask;
            }, On(clock), g1.Token);
        }, On(clock));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 2);
        clock.AdvanceMilliseconds(100);
        (await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<ArgumentException>()).Which.Should().BeSameAs(error);
        outerChild!.IsCanceled.Should().BeTrue();
    }

    [Fact] // anyio test_already_closed
    public async Task Run_after_RunAsync_finished_is_refused()
    {
        CancellationScope? escaped = null;
        await CancellationScope.RunAsync(scope => { escaped = scope; return Task.CompletedTask; }).WithTimeout();
        Action run = () => escaped!.Run(_ => Task.CompletedTask);
        run.Should().Throw<InvalidOperationException>();
        escaped!.IsCancellationRequested.Should().BeTrue("a finished scope's token is cancelled");
        escaped.TimedOut.Should().BeFalse();
    }

    [Fact] // trio: children can start siblings while the nursery waits for them
    public async Task A_child_may_start_siblings_after_the_body_returned()
    {
        var clock = new ManualTimeProvider();
        Task<int>? late = null;
        var run = CancellationScope.RunAsync(scope =>
        {
            _ = scope.Run(async ct =>
            {
                await Task.Delay(TimeSpan.FromMilliseconds(100), clock, ct);
                late = scope.Run(async ct2 => { await Task.Delay(TimeSpan.FromMilliseconds(100), clock, ct2); return 3; });
            });
            return Task.CompletedTask;
        }, On(clock));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 1);
        clock.AdvanceMilliseconds(100);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 1 && late is not null);
        await AsyncAssert.StillPendingAsync(run);
        clock.AdvanceMilliseconds(100);
        await run.WithTimeout();
        (await late!).Should().Be(3);
    }

    [Fact] // trio: nursery.cancel_scope.cancel() exits quietly
    public async Task Cancel_inside_the_nursery_is_not_a_failure()
    {
        Task? child = null;
        await CancellationScope.RunAsync(async scope =>
        {
            child = scope.Run(ct => Task.Delay(Timeout.Infinite, ct));
            scope.Cancel();
            await Task.Delay(Timeout.Infinite, scope.Token);
        }).WithTimeout();
        child!.IsCanceled.Should().BeTrue();

        var typed = CancellationScope.RunAsync<int>(async scope =>
        {
            scope.Cancel();
            await Task.Delay(Timeout.Infinite, scope.Token);
            return 1;
        });
        await FluentActions.Awaiting(() => typed.WithTimeout()).Should().ThrowAsync<OperationCanceledException>("a cancelled body has no result");

        (await CancellationScope.RunAsync(scope => { scope.Cancel(); return Task.FromResult(9); }).WithTimeout()).Should().Be(9);
    }

    [Fact]
    public async Task Children_that_ignore_cancellation_are_awaited_after_a_failure()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = CancellationScope.RunAsync(async scope =>
        {
            var stubborn = scope.Run(async _ => { started.SetResult(); await release.Task; });
            await started.Task;
            throw new TestException("fail");
        });
        await AsyncAssert.StillPendingAsync(run, "the stubborn child still runs");
        release.SetResult();
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TestException>();
    }

    [Fact]
    public async Task A_null_body_task_is_a_failure()
    {
#pragma warning disable VSTHRD114 // deliberately bad input
        await FluentActions.Awaiting(() => CancellationScope.RunAsync(_ => null!).WithTimeout())
#pragma warning restore VSTHRD114
            .Should().ThrowExactlyAsync<InvalidOperationException>().WithMessage("*returned null*");
    }

    [Fact]
    public async Task RunAsync_with_a_result_returns_it()
    {
        var sum = await CancellationScope.RunAsync(async scope =>
        {
            var parts = Enumerable.Range(1, 10).Select(i => scope.Run(_ => Task.FromResult(i))).ToArray();
            return (await Task.WhenAll(parts)).Sum();
        }).WithTimeout();
        sum.Should().Be(55);
    }

    [Fact]
    public async Task Child_failures_in_the_nursery_are_logged_at_debug_level()
    {
        var logs = new ListLoggerProvider();
        using var factory = logs.CreateFactory();
        var error = new TestException("logged");
        var run = CancellationScope.RunAsync(scope => { _ = scope.Run(_ => throw error); return Task.CompletedTask; }, new CancellationScopeOptions { LoggerFactory = factory });
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TestException>();
        logs.Entries.Should().Contain(e => e.EventId.Id == 1501 && e.Exception == error);
    }

    [Fact]
    public async Task Disposing_the_scope_inside_the_body_ends_it_once()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task? stubborn = null;
        var run = CancellationScope.RunAsync(async scope =>
        {
            var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            stubborn = scope.Run(_ => { started.SetResult(); return release.Task; });
            await started.Task;
            var dispose = scope.DisposeAsync().AsTask();
            await AsyncAssert.StillPendingAsync(dispose, "the stubborn child still runs");
            release.SetResult();
            await dispose;
        });
        await run.WithTimeout();
        stubborn!.IsCompletedSuccessfully.Should().BeTrue("DisposeAsync waited for it before RunAsync returned");
    }
}
