using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Contract;

/// <summary>
/// Black-box tests of <see cref="CancellationScope"/> written from DESIGN.md ("Cancellation scopes"), the README and
/// the peers' test suites (CPython test_taskgroups.py / test_timeouts.py, Trio's nursery, move_on_after, fail_after).
/// </summary>
public sealed class CancellationScopeBlackBoxTests
{
    private static CancellationScope FakeScope(ManualTimeProvider clock, TimeSpan? timeout, CancellationToken ct = default) =>
        new(new CancellationScopeOptions { Timeout = timeout, TimeProvider = clock }, ct);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static async Task FailAfterYieldAsync(Exception error)
    {
        await Task.Yield();
        throw error;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static async Task<int> FailingChildWithResultAsync(Exception error)
    {
        await Task.Yield();
        throw error;
    }

    private static async Task<Exception> CaptureAsync(Task task)
    {
        try
        {
            await task.WithTimeout();
        }
        catch (Exception ex)
        {
            return ex;
        }

        throw new Xunit.Sdk.XunitException("Expected the task to throw, but it completed successfully.");
    }

    private static Action Sync(Func<Task> call) => () => _ = call();

    private static async Task WaitForCancellationAsync(CancellationToken ct) => await Task.Delay(Timeout.Infinite, ct);

    // ============================== await using form ==============================

    [Fact]
    public async Task Empty_scope_disposes_at_once_and_its_token_is_cancelled_afterwards()
    {
        var scope = new CancellationScope();
        scope.IsCancellationRequested.Should().BeFalse();
        scope.TimedOut.Should().BeFalse();
        scope.Token.CanBeCanceled.Should().BeTrue();

        await scope.DisposeAsync().WithTimeout();

        scope.IsCancellationRequested.Should().BeTrue("the token is cancelled when the scope ends");
        scope.TimedOut.Should().BeFalse();
    }

    [Fact]
    public async Task Seeds_form_leaving_the_block_cancels_running_children_and_waits_for_them()
    {
        var childSawCancel = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var childStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var releaseChild = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var childEnded = false;
        Task child;
        ValueTask dispose;
        var scope = new CancellationScope(TimeSpan.FromSeconds(30));
        await using (scope.ConfigureAwait(false))
        {
            child = scope.Run(async ct =>
            {
                childStarted.SetResult();
                try
                {
                    await Task.Delay(Timeout.Infinite, ct);
                }
                catch (OperationCanceledException)
                {
                    childSawCancel.SetResult();
                    await releaseChild.Task; // ignores cancellation for a while: cleanup
                    childEnded = true;
                    throw;
                }
            });

            await childStarted.Task.WithTimeout(); // a child cancelled before it starts is never invoked (documented)
            dispose = scope.DisposeAsync();
            await childSawCancel.Task.WithTimeout();
            var disposeTask = dispose.AsTask();
            await AsyncAssert.StillPendingAsync(disposeTask, "DisposeAsync must wait for the child still cleaning up");
            releaseChild.SetResult();
            await disposeTask.WithTimeout();
            childEnded.Should().BeTrue();
        }

        child.IsCanceled.Should().BeTrue("a child ended by the scope's cancellation is cancelled, not failed");
        scope.TimedOut.Should().BeFalse();
        scope.GetFailures().Should().BeEmpty();
    }

    [Fact]
    public async Task DisposeAsync_waits_for_a_child_that_ignores_cancellation_entirely()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var scope = new CancellationScope();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var child = scope.Run(_ =>
        {
            started.SetResult();
            return release.Task;
        });
        await started.Task.WithTimeout();

        var dispose = scope.DisposeAsync().AsTask();
        await AsyncAssert.StillPendingAsync(dispose, "the scope never ends while a child still runs");
        scope.IsCancellationRequested.Should().BeTrue();

        release.SetResult();
        await dispose.WithTimeout();
        child.IsCompletedSuccessfully.Should().BeTrue("it finished normally although the token fired");
    }

    [Fact]
    public async Task DisposeAsync_never_throws_for_sync_and_async_child_failures_and_the_failures_are_recorded()
    {
        var syncError = new InvalidOperationException("sync");
        var asyncError = new FormatException("async");
        var scope = new CancellationScope();

        var t1 = scope.Run(_ => throw syncError);
        var t2 = scope.Run(_ => FailAfterYieldAsync(asyncError));
        var t3 = scope.Run<int>(_ => throw new ArithmeticException("generic sync"));
        await Task.WhenAll(t1, t2, t3).ContinueWith(t => _ = t.Exception, TaskScheduler.Default).WithTimeout();

        await scope.DisposeAsync().WithTimeout(); // must not throw

        t1.IsFaulted.Should().BeTrue();
        t1.Exception!.InnerException.Should().BeSameAs(syncError);
        t2.IsFaulted.Should().BeTrue();
        t2.Exception!.InnerException.Should().BeSameAs(asyncError);
        t3.IsFaulted.Should().BeTrue();
        scope.GetFailures().Should().HaveCount(3).And.Contain(syncError).And.Contain(asyncError);
    }

    [Fact]
    public async Task A_synchronously_throwing_delegate_never_escapes_Run()
    {
        await using var scope = new CancellationScope();
        Task task = null!;
        FluentActions.Invoking(new Action(() => task = scope.Run(_ => throw new InvalidCastException("boom")))).Should().NotThrow();
        var ex = await CaptureAsync(task);
        ex.Should().BeOfType<InvalidCastException>();
    }

    [Fact]
    public async Task Run_does_not_run_the_child_inline_so_a_blocking_child_cannot_stall_the_caller()
    {
        using var gate = new ManualResetEventSlim(false);
        await using var scope = new CancellationScope();
        var child = scope.Run(_ =>
        {
            gate.Wait(TimeSpan.FromSeconds(10)); // blocks a pool thread, not the caller
            return Task.CompletedTask;
        });
        child.IsCompleted.Should().BeFalse();
        gate.Set();
        await child.WithTimeout();
    }

    [Fact]
    public async Task Run_T_returns_the_childs_result_and_children_get_the_scope_token()
    {
        await using var scope = new CancellationScope();
        CancellationToken seen = default;
        var value = await scope.Run(ct =>
        {
            seen = ct;
            return Task.FromResult(42);
        }).WithTimeout();
        value.Should().Be(42);
        seen.Should().Be(scope.Token);
    }

    [Fact]
    public async Task A_failure_in_the_await_using_form_does_not_cancel_siblings()
    {
        var scope = new CancellationScope();
        var sibling = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var s = scope.Run(async ct =>
        {
            await Task.Delay(Timeout.Infinite, ct).ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
        });
        var failing = scope.Run(_ => FailAfterYieldAsync(new InvalidOperationException("x")));
        await ((Task)failing).ContinueWith(t => _ = t.Exception, TaskScheduler.Default).WithTimeout();
        await AsyncAssert.StillPendingAsync(s);
        scope.IsCancellationRequested.Should().BeFalse("only the nursery form is fail-fast");
        await scope.DisposeAsync().WithTimeout();
        s.IsCompleted.Should().BeTrue();
    }

    [Fact]
    public async Task Timeout_on_a_fake_clock_cancels_children_quietly_and_sets_TimedOut()
    {
        var clock = new ManualTimeProvider();
        var scope = FakeScope(clock, TimeSpan.FromSeconds(5));
        var child = scope.Run(WaitForCancellationAsync);
        var finished = scope.Run(_ => Task.FromResult(7));

        clock.Advance(TimeSpan.FromSeconds(5) - TimeSpan.FromTicks(1));
        scope.IsCancellationRequested.Should().BeFalse();
        scope.TimedOut.Should().BeFalse();
        await AsyncAssert.StillPendingAsync(child);

        clock.Advance(TimeSpan.FromTicks(1));
        scope.IsCancellationRequested.Should().BeTrue();
        scope.TimedOut.Should().BeTrue();
        await ((Task)child).ContinueWith(t => _ = t.Exception, TaskScheduler.Default).WithTimeout();
        child.IsCanceled.Should().BeTrue();

        await scope.DisposeAsync().WithTimeout(); // quiet: never throws
        scope.TimedOut.Should().BeTrue("disposing after a timeout keeps the reason");
        (await finished.WithTimeout()).Should().Be(7);
        scope.GetFailures().Should().BeEmpty("a timeout is not a failure in the await using form");
    }

    [Fact]
    public async Task Timeout_with_the_contract_constructor_uses_real_time()
    {
        var scope = new CancellationScope(TimeSpan.FromMilliseconds(50));
        var child = scope.Run(WaitForCancellationAsync);
        await ((Task)child).ContinueWith(t => _ = t.Exception, TaskScheduler.Default).WithTimeout(TimeSpan.FromSeconds(5));
        scope.TimedOut.Should().BeTrue();
        child.IsCanceled.Should().BeTrue();
        await scope.DisposeAsync().WithTimeout();
    }

    [Fact]
    public async Task The_deadline_counts_from_creation_not_from_the_first_child()
    {
        var clock = new ManualTimeProvider();
        var scope = FakeScope(clock, TimeSpan.FromMilliseconds(100));
        clock.AdvanceMilliseconds(60);
        var child = scope.Run(WaitForCancellationAsync);
        clock.AdvanceMilliseconds(39);
        scope.IsCancellationRequested.Should().BeFalse();
        clock.AdvanceMilliseconds(1);
        scope.TimedOut.Should().BeTrue("100 ms passed since creation although the child started at 60 ms");
        await scope.DisposeAsync().WithTimeout();
        child.IsCanceled.Should().BeTrue();
    }

    [Fact]
    public async Task A_deadline_that_already_passed_before_the_first_Run_refuses_it()
    {
        var clock = new ManualTimeProvider();
        var scope = FakeScope(clock, TimeSpan.FromSeconds(1));
        clock.Advance(TimeSpan.FromSeconds(2));
        scope.TimedOut.Should().BeTrue();
        Sync(() => scope.Run(_ => Task.CompletedTask))
            .Should().Throw<InvalidOperationException>();
        await scope.DisposeAsync().WithTimeout();
    }

    [Fact]
    public async Task Cancel_is_idempotent_quiet_and_does_not_set_TimedOut()
    {
        var clock = new ManualTimeProvider();
        var scope = FakeScope(clock, TimeSpan.FromSeconds(1));
        var child = scope.Run(WaitForCancellationAsync);
        scope.Cancel();
        scope.Cancel();
        scope.IsCancellationRequested.Should().BeTrue();
        scope.TimedOut.Should().BeFalse();

        clock.Advance(TimeSpan.FromSeconds(5));
        scope.TimedOut.Should().BeFalse("the deadline did not cancel it: Cancel did, first");

        await scope.DisposeAsync().WithTimeout();
        child.IsCanceled.Should().BeTrue();
        scope.GetFailures().Should().BeEmpty();
    }

    [Fact]
    public async Task Cancel_after_the_deadline_keeps_TimedOut_true()
    {
        var clock = new ManualTimeProvider();
        var scope = FakeScope(clock, TimeSpan.FromSeconds(1));
        clock.Advance(TimeSpan.FromSeconds(1));
        scope.TimedOut.Should().BeTrue();
        scope.Cancel();
        scope.TimedOut.Should().BeTrue();
        await scope.DisposeAsync().WithTimeout();
        scope.TimedOut.Should().BeTrue();
    }

    [Fact]
    public async Task Disposing_before_the_deadline_means_no_timeout_even_if_the_clock_passes_it_later()
    {
        var clock = new ManualTimeProvider();
        var scope = FakeScope(clock, TimeSpan.FromSeconds(1));
        await scope.Run(_ => Task.CompletedTask).WithTimeout();
        await scope.DisposeAsync().WithTimeout();
        clock.Advance(TimeSpan.FromSeconds(10));
        scope.TimedOut.Should().BeFalse();
    }

    [Fact]
    public async Task Run_after_Cancel_or_after_dispose_throws_InvalidOperationException_for_both_overloads()
    {
        var cancelled = new CancellationScope();
        cancelled.Cancel();
        Sync(() => cancelled.Run(_ => Task.CompletedTask)).Should().Throw<InvalidOperationException>();
        Sync(() => cancelled.Run(_ => Task.FromResult(1))).Should().Throw<InvalidOperationException>();
        await cancelled.DisposeAsync().WithTimeout();

        var disposed = new CancellationScope();
        await disposed.DisposeAsync().WithTimeout();
        Sync(() => disposed.Run(_ => Task.CompletedTask)).Should().Throw<InvalidOperationException>();
        Sync(() => disposed.Run(_ => Task.FromResult(1))).Should().Throw<InvalidOperationException>();
    }

    [Fact]
    public async Task Run_with_a_null_delegate_throws_ArgumentNullException()
    {
        await using var scope = new CancellationScope();
        Sync(() => scope.Run(null!)).Should().Throw<ArgumentNullException>();
        Sync(() => scope.Run<int>(null!)).Should().Throw<ArgumentNullException>();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-2)]
    [InlineData(-5000)]
    public async Task A_zero_or_negative_timeout_is_refused(int milliseconds)
    {
        FluentActions.Invoking(new Action(() => _ = new CancellationScope(TimeSpan.FromMilliseconds(milliseconds))))
            .Should().Throw<ArgumentOutOfRangeException>();
        Func<Task> nursery = () => CancellationScope.RunAsync(_ => Task.CompletedTask, TimeSpan.FromMilliseconds(milliseconds));
        await nursery.Should().ThrowAsync<ArgumentOutOfRangeException>();
    }

    [Fact]
    public async Task Infinite_timeout_means_no_deadline()
    {
        await using var scope = new CancellationScope(Timeout.InfiniteTimeSpan);
        scope.IsCancellationRequested.Should().BeFalse();
        (await scope.Run(_ => Task.FromResult("ok")).WithTimeout()).Should().Be("ok");
    }

    [Fact]
    public async Task The_outer_token_cancels_the_scope_without_TimedOut()
    {
        using var outer = new CancellationTokenSource();
        var scope = new CancellationScope(TimeSpan.FromMinutes(5), outer.Token);
        var child = scope.Run(WaitForCancellationAsync);
        outer.Cancel();
        scope.IsCancellationRequested.Should().BeTrue();
        scope.TimedOut.Should().BeFalse();
        await scope.DisposeAsync().WithTimeout();
        child.IsCanceled.Should().BeTrue("a cancellation the caller caused is not a failure");
        scope.GetFailures().Should().BeEmpty();
    }

    [Fact]
    public async Task An_already_cancelled_outer_token_makes_a_cancelled_scope()
    {
        var scope = new CancellationScope(null, new CancellationToken(true));
        scope.IsCancellationRequested.Should().BeTrue();
        Sync(() => scope.Run(_ => Task.CompletedTask)).Should().Throw<InvalidOperationException>();
        await scope.DisposeAsync().WithTimeout();
    }

    [Fact]
    public async Task DisposeAsync_twice_is_harmless()
    {
        var scope = new CancellationScope();
        _ = scope.Run(_ => Task.Delay(10));
        await scope.DisposeAsync().WithTimeout();
        await scope.DisposeAsync().WithTimeout();
    }

    [Fact]
    public async Task Nested_scopes_the_inner_is_cancelled_with_the_outer_and_its_TimedOut_stays_false()
    {
        var clock = new ManualTimeProvider();
        var outer = FakeScope(clock, TimeSpan.FromSeconds(1));
        var inner = FakeScope(clock, TimeSpan.FromSeconds(10), outer.Token);
        var innerChild = inner.Run(WaitForCancellationAsync);

        clock.Advance(TimeSpan.FromSeconds(1));
        outer.TimedOut.Should().BeTrue();
        inner.IsCancellationRequested.Should().BeTrue();
        inner.TimedOut.Should().BeFalse("its own deadline did not fire");

        await inner.DisposeAsync().WithTimeout();
        await outer.DisposeAsync().WithTimeout();
        innerChild.IsCanceled.Should().BeTrue();
    }

    [Fact]
    public async Task An_inner_scope_with_a_shorter_deadline_times_out_alone()
    {
        var clock = new ManualTimeProvider();
        var outer = FakeScope(clock, TimeSpan.FromSeconds(10));
        var inner = FakeScope(clock, TimeSpan.FromSeconds(1), outer.Token);
        clock.Advance(TimeSpan.FromSeconds(1));
        inner.TimedOut.Should().BeTrue();
        outer.IsCancellationRequested.Should().BeFalse("an inner scope never cancels its parent");
        await inner.DisposeAsync().WithTimeout();
        await outer.DisposeAsync().WithTimeout();
    }

    [Fact]
    public async Task Disposing_waits_for_grandchildren_started_by_children()
    {
        var grandchildDone = false;
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var scope = new CancellationScope();
        _ = scope.Run(ct =>
        {
            _ = scope.Run(async __ =>
            {
                started.SetResult();
                await release.Task;
                grandchildDone = true;
            });
            return Task.CompletedTask;
        });
        await started.Task.WithTimeout();
        var dispose = scope.DisposeAsync().AsTask();
        await AsyncAssert.StillPendingAsync(dispose);
        release.SetResult();
        await dispose.WithTimeout();
        grandchildDone.Should().BeTrue();
    }

    [Fact]
    public async Task A_child_cancelled_by_an_unrelated_token_is_a_failure_not_a_cancellation()
    {
        var scope = new CancellationScope();
        using var other = new CancellationTokenSource();
        other.Cancel();
        var child = scope.Run(_ => Task.Delay(1000, other.Token)); // like an HttpClient timeout
        await ((Task)child).ContinueWith(t => _ = t.Exception, TaskScheduler.Default).WithTimeout();
        await scope.DisposeAsync().WithTimeout();
        child.IsFaulted.Should().BeTrue();
        scope.GetFailures().Should().ContainSingle().Which.Should().BeAssignableTo<OperationCanceledException>();
    }

    [Fact]
    public async Task Statistics_add_up_once_the_scope_has_ended()
    {
        var scope = new CancellationScope();
        for (var i = 0; i < 10; i++)
        {
            _ = scope.Run(_ => Task.CompletedTask);
        }

        for (var i = 0; i < 3; i++)
        {
            _ = scope.Run(_ => FailAfterYieldAsync(new InvalidOperationException()));
        }

        var waiting = 0;
        for (var i = 0; i < 4; i++)
        {
            _ = scope.Run(ct =>
            {
                Interlocked.Increment(ref waiting);
                return WaitForCancellationAsync(ct);
            });
        }

        await AsyncAssert.EventuallyAsync(() => scope.GetStatistics().Pending == 4 && Volatile.Read(ref waiting) == 4);
        await scope.DisposeAsync().WithTimeout();
        var stats = scope.GetStatistics();
        stats.Accepted.Should().Be(17);
        stats.Succeeded.Should().Be(10);
        stats.Failed.Should().Be(3);
        stats.Cancelled.Should().Be(4);
        stats.Pending.Should().Be(0);
        (stats.Succeeded + stats.Failed + stats.Cancelled).Should().Be(stats.Accepted);
    }

    [Fact]
    public async Task Concurrent_Run_from_many_threads_then_dispose_every_child_ends_and_counts_add_up()
    {
        var scope = new CancellationScope();
        var ran = 0;
        var tasks = new ConcurrentBag<Task>();
        await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(() =>
        {
            for (var i = 0; i < 250; i++)
            {
                tasks.Add(scope.Run(async ct =>
                {
                    Interlocked.Increment(ref ran);
                    await Task.Yield();
                }));
            }
        }))).WithTimeout();
        await scope.DisposeAsync().WithTimeout();
        tasks.Should().HaveCount(2000);
        tasks.Should().OnlyContain(t => t.IsCompleted);
        var stats = scope.GetStatistics();
        stats.Accepted.Should().Be(2000);
        (stats.Succeeded + stats.Failed + stats.Cancelled).Should().Be(2000);
        stats.Succeeded.Should().Be(ran);
    }

    [Fact]
    public async Task Concurrent_Run_racing_Cancel_every_accepted_child_ends_and_every_refusal_is_InvalidOperation()
    {
        for (var round = 0; round < 20; round++)
        {
            var scope = new CancellationScope();
            var accepted = new ConcurrentBag<Task>();
            var refused = 0;
            var starters = Enumerable.Range(0, 4).Select(_ => Task.Run(() =>
            {
                for (var i = 0; i < 200; i++)
                {
                    try
                    {
                        accepted.Add(scope.Run(WaitForCancellationAsync));
                    }
                    catch (InvalidOperationException)
                    {
                        Interlocked.Increment(ref refused);
                    }
                }
            })).ToArray();
            scope.Cancel();
            await Task.WhenAll(starters).WithTimeout();
            await scope.DisposeAsync().WithTimeout();
            (accepted.Count + refused).Should().Be(800);
            accepted.Where(t => !t.IsCanceled).Should().BeEmpty();
            scope.GetStatistics().Accepted.Should().Be(accepted.Count);
        }
    }

    [Fact]
    public async Task AsyncLocal_flows_to_children()
    {
        var local = new AsyncLocal<string>();
        local.Value = "request-7";
        await using var scope = new CancellationScope();
        (await scope.Run(_ => Task.FromResult(local.Value)).WithTimeout()).Should().Be("request-7");
    }

    [Fact]
    public async Task No_UnobservedTaskException_for_failed_children_nobody_awaits_in_either_form()
    {
        var unobserved = new ConcurrentQueue<Exception>();
        var marker = "unobserved-probe-" + Guid.NewGuid();
        void Handler(object? sender, UnobservedTaskExceptionEventArgs e)
        {
            if (e.Exception.ToString().Contains(marker, StringComparison.Ordinal))
            {
                unobserved.Enqueue(e.Exception);
            }
        }

        TaskScheduler.UnobservedTaskException += Handler;
        try
        {
            await StartAndForgetAsync(marker);
            for (var i = 0; i < 3; i++)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }

            unobserved.Should().BeEmpty();
        }
        finally
        {
            TaskScheduler.UnobservedTaskException -= Handler;
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static async Task StartAndForgetAsync(string marker)
    {
        var scope = new CancellationScope();
        _ = scope.Run(_ => FailAfterYieldAsync(new InvalidOperationException(marker)));
        _ = scope.Run(_ => throw new InvalidOperationException(marker));
        _ = scope.Run<int>(_ => FailingChildWithResultAsync(new InvalidOperationException(marker)));
        await scope.DisposeAsync();

        var nursery = CancellationScope.RunAsync(s =>
        {
            _ = s.Run(_ => FailAfterYieldAsync(new InvalidOperationException(marker + "-a")));
            _ = s.Run(async ct =>
            {
                try
                {
                    await Task.Delay(Timeout.Infinite, ct);
                }
                finally
                {
                    throw new InvalidOperationException(marker + "-b");
                }
            });
            return Task.CompletedTask;
        });
        try
        {
            await nursery;
        }
        catch (Exception)
        {
            // observed here; the children's own tasks are never awaited
        }
    }

    // ============================== nursery form ==============================

    [Fact]
    public async Task README_nursery_example_returns_both_results()
    {
        using var cts = new CancellationTokenSource();
        var (profile, history) = await CancellationScope.RunAsync(async scope =>
        {
            var profile = scope.Run(async ct =>
            {
                await Task.Delay(5, ct);
                return "profile";
            });
            var history = scope.Run(async ct =>
            {
                await Task.Yield();
                return new[] { 1, 2, 3 };
            });
            return (await profile, await history);
        }, timeout: TimeSpan.FromSeconds(2), cts.Token).WithTimeout();

        profile.Should().Be("profile");
        history.Should().Equal(1, 2, 3);
    }

    [Fact]
    public async Task README_nursery_example_with_one_failure_rethrows_it_as_itself()
    {
        var error = new HttpRequestException("upstream 503");
        var task = CancellationScope.RunAsync(async scope =>
        {
            var profile = scope.Run(async ct =>
            {
                await Task.Yield();
                throw error;
#pragma warning disable CS0162 // unreachable: gives the lambda its result type
                return "never";
#pragma warning restore CS0162
            });
            var history = scope.Run(async ct =>
            {
                await Task.Delay(Timeout.Infinite, ct);
                return 0;
            });
            return (await profile, await history);
        }, timeout: TimeSpan.FromSeconds(2));

        var ex = await CaptureAsync(task);
        ex.Should().BeSameAs(error);
    }

    [Fact]
    public async Task RunAsync_waits_for_children_that_outlive_the_body()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var childDone = false;
        var bodyReturned = false;
        var run = CancellationScope.RunAsync(scope =>
        {
            _ = scope.Run(async _ =>
            {
                await release.Task;
                childDone = true;
            });
            bodyReturned = true;
            return Task.CompletedTask;
        });
        bodyReturned.Should().BeTrue("the body runs inline until its first await");
        await AsyncAssert.StillPendingAsync(run, "the nursery waits for every child");
        release.SetResult();
        await run.WithTimeout();
        childDone.Should().BeTrue();
    }

    [Fact]
    public async Task RunAsync_waits_for_grandchildren_started_after_the_body_returned()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var grandchildDone = false;
        var run = CancellationScope.RunAsync(scope =>
        {
            _ = scope.Run(async ct =>
            {
                await Task.Yield();
                _ = scope.Run(async __ =>
                {
                    await release.Task;
                    grandchildDone = true;
                });
            });
            return Task.CompletedTask;
        });
        await AsyncAssert.StillPendingAsync(run);
        release.SetResult();
        await run.WithTimeout();
        grandchildDone.Should().BeTrue();
    }

    [Fact]
    public async Task First_child_failure_cancels_siblings_and_the_body_and_surfaces_as_itself_with_its_stack()
    {
        var error = new InvalidDataException("child failed");
        Task? sibling = null;
        var bodySawCancel = false;
        var run = CancellationScope.RunAsync(async scope =>
        {
            sibling = scope.Run(WaitForCancellationAsync);
            _ = scope.Run(_ => FailAfterYieldAsync(error));
            try
            {
                await Task.Delay(Timeout.Infinite, scope.Token);
            }
            catch (OperationCanceledException)
            {
                bodySawCancel = true;
                throw;
            }
        });

        var ex = await CaptureAsync(run);
        ex.Should().BeSameAs(error, "one failure is rethrown as itself, not wrapped");
        ex.StackTrace.Should().Contain(nameof(FailAfterYieldAsync), "the original stack is kept");
        bodySawCancel.Should().BeTrue();
        sibling!.IsCanceled.Should().BeTrue("siblings are cancelled, and their cancellation is not a failure");
    }

    [Fact]
    public async Task A_synchronously_throwing_child_in_the_nursery_is_rethrown_as_itself()
    {
        var error = new NotSupportedException("sync");
        var ex = await CaptureAsync(CancellationScope.RunAsync(scope =>
        {
            _ = scope.Run(_ => throw error);
            return Task.CompletedTask;
        }));
        ex.Should().BeSameAs(error);
    }

    [Fact]
    public async Task Body_failure_cancels_children_and_is_rethrown_as_itself()
    {
        var error = new ApplicationException("body");
        Task? child = null;
        var ex = await CaptureAsync(CancellationScope.RunAsync(async scope =>
        {
            child = scope.Run(WaitForCancellationAsync);
            await Task.Yield();
            throw error;
        }));
        ex.Should().BeSameAs(error);
        child!.IsCanceled.Should().BeTrue();
    }

    [Fact]
    public async Task A_body_that_throws_synchronously_fails_the_returned_task()
    {
        var error = new ApplicationException("sync body");
        Func<Task> act = () => CancellationScope.RunAsync(_ => throw error);
        (await act.Should().ThrowAsync<ApplicationException>()).Which.Should().BeSameAs(error);
    }

    [Fact]
    public async Task The_body_awaiting_a_failed_child_and_rethrowing_does_not_double_the_failure()
    {
        var error = new InvalidOperationException("once");
        var ex = await CaptureAsync(CancellationScope.RunAsync(async scope =>
        {
            var child = scope.Run(_ => FailAfterYieldAsync(error));
            var other = scope.Run(async ct =>
            {
                await Task.Delay(Timeout.Infinite, ct);
                return 1;
            });
            await child;
            await other;
        }));
        ex.Should().BeSameAs(error);
    }

    [Fact]
    public async Task A_child_failure_is_reported_even_if_the_body_caught_it()
    {
        var error = new InvalidOperationException("caught by the body");
        var ex = await CaptureAsync(CancellationScope.RunAsync(async scope =>
        {
            try
            {
                await scope.Run(_ => FailAfterYieldAsync(error));
            }
            catch (InvalidOperationException)
            {
                // swallowed; the child still failed (TaskGroup reports it anyway)
            }
        }));
        ex.Should().BeSameAs(error);
    }

    [Fact]
    public async Task Several_failures_are_an_AggregateException_with_the_first_cause_first_and_no_cancellations()
    {
        var first = new InvalidOperationException("first");
        var second = new FormatException("raised while being cancelled");
        var ex = await CaptureAsync(CancellationScope.RunAsync(async scope =>
        {
            var secondStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _ = scope.Run(async ct =>
            {
                secondStarted.SetResult();
                try
                {
                    await Task.Delay(Timeout.Infinite, ct);
                }
                catch (OperationCanceledException)
                {
                    throw second;
                }
            });
            await secondStarted.Task;
            _ = scope.Run(WaitForCancellationAsync); // cancelled by the scope: never reported
            await Task.Yield();
            _ = scope.Run(_ => FailAfterYieldAsync(first));
            await Task.Delay(Timeout.Infinite, scope.Token);
        }));

        var aggregate = ex.Should().BeOfType<AggregateException>().Subject;
        aggregate.InnerExceptions.Should().HaveCount(2);
        aggregate.InnerExceptions[0].Should().BeSameAs(first);
        aggregate.InnerExceptions[1].Should().BeSameAs(second);
    }

    [Fact]
    public async Task Several_failures_in_RunAsync_T_are_an_AggregateException_too()
    {
        var first = new InvalidOperationException("first");
        var second = new FormatException("second");
        var ex = await CaptureAsync(CancellationScope.RunAsync<int>(async scope =>
        {
            var secondStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _ = scope.Run(async ct =>
            {
                secondStarted.SetResult();
                try
                {
                    await Task.Delay(Timeout.Infinite, ct);
                }
                catch (OperationCanceledException)
                {
                    throw second;
                }
            });
            await secondStarted.Task;
            await Task.Yield();
            _ = scope.Run(_ => FailAfterYieldAsync(first));
            await Task.Delay(Timeout.Infinite, scope.Token);
            return 1;
        }));
        var aggregate = ex.Should().BeOfType<AggregateException>().Subject;
        aggregate.InnerExceptions.Should().Equal(first, second);
    }

    [Fact]
    public async Task Timeout_throws_TimeoutException_never_OperationCanceledException_on_a_fake_clock()
    {
        var clock = new ManualTimeProvider();
        var options = new CancellationScopeOptions { Timeout = TimeSpan.FromSeconds(2), TimeProvider = clock };
        Task? child = null;
        var run = CancellationScope.RunAsync(async scope =>
        {
            child = scope.Run(WaitForCancellationAsync);
            await Task.Delay(Timeout.Infinite, scope.Token);
        }, options);

        clock.Advance(TimeSpan.FromMilliseconds(1999));
        await AsyncAssert.StillPendingAsync(run);
        clock.AdvanceMilliseconds(1);

        var ex = await CaptureAsync(run);
        ex.Should().BeOfType<TimeoutException>();
        ex.InnerException.Should().BeAssignableTo<OperationCanceledException>();
        child!.IsCanceled.Should().BeTrue();
    }

    [Fact]
    public async Task Timeout_with_the_contract_overload_and_real_time_throws_TimeoutException()
    {
        var ex = await CaptureAsync(CancellationScope.RunAsync(async scope =>
        {
            _ = scope.Run(WaitForCancellationAsync);
            await Task.Delay(Timeout.Infinite, scope.Token);
        }, TimeSpan.FromMilliseconds(50)));
        ex.Should().BeOfType<TimeoutException>();
    }

    [Fact]
    public async Task Timeout_in_RunAsync_T_throws_TimeoutException()
    {
        var ex = await CaptureAsync(CancellationScope.RunAsync<int>(async scope =>
        {
            await Task.Delay(Timeout.Infinite, scope.Token);
            return 1;
        }, TimeSpan.FromMilliseconds(30)));
        ex.Should().BeOfType<TimeoutException>();
    }

    [Fact]
    public async Task Timeout_is_reported_even_when_the_body_swallows_the_cancellation()
    {
        var clock = new ManualTimeProvider();
        var run = CancellationScope.RunAsync(async scope =>
        {
            try
            {
                await Task.Delay(Timeout.Infinite, scope.Token);
            }
            catch (OperationCanceledException)
            {
                // swallowed, as fail_after still raises
            }
        }, new CancellationScopeOptions { Timeout = TimeSpan.FromSeconds(1), TimeProvider = clock });
        clock.Advance(TimeSpan.FromSeconds(1));
        (await CaptureAsync(run)).Should().BeOfType<TimeoutException>();
    }

    [Fact]
    public async Task Work_finishing_before_the_deadline_returns_normally_and_a_later_clock_tick_changes_nothing()
    {
        var clock = new ManualTimeProvider();
        var result = await CancellationScope.RunAsync(async scope =>
        {
            var a = scope.Run(_ => Task.FromResult(2));
            var b = scope.Run(_ => Task.FromResult(3));
            return await a * await b;
        }, new CancellationScopeOptions { Timeout = TimeSpan.FromSeconds(1), TimeProvider = clock }).WithTimeout();
        result.Should().Be(6);
        clock.Advance(TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task A_real_failure_wins_over_a_timeout_that_happened_at_the_same_time()
    {
        var clock = new ManualTimeProvider();
        var error = new InvalidDataException("cleanup failed during the timeout");
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = CancellationScope.RunAsync(scope =>
        {
            _ = scope.Run(async ct =>
            {
                started.SetResult();
                try
                {
                    await Task.Delay(Timeout.Infinite, ct);
                }
                catch (OperationCanceledException)
                {
                    throw error;
                }
            });
            return Task.CompletedTask;
        }, new CancellationScopeOptions { Timeout = TimeSpan.FromSeconds(1), TimeProvider = clock });
        await started.Task.WithTimeout();
        clock.Advance(TimeSpan.FromSeconds(1));
        (await CaptureAsync(run)).Should().BeSameAs(error);
    }

    [Fact]
    public async Task The_callers_cancellation_throws_OperationCanceledException_not_TimeoutException()
    {
        using var cts = new CancellationTokenSource();
        Task? child = null;
        var run = CancellationScope.RunAsync(async scope =>
        {
            child = scope.Run(WaitForCancellationAsync);
            await Task.Delay(Timeout.Infinite, scope.Token);
        }, TimeSpan.FromMinutes(1), cts.Token);
        await AsyncAssert.StillPendingAsync(run);
        cts.Cancel();
        var ex = await CaptureAsync(run);
        ex.Should().BeAssignableTo<OperationCanceledException>();
        ((OperationCanceledException)ex).CancellationToken.Should().Be(cts.Token);
        child!.IsCanceled.Should().BeTrue();
        run.IsCanceled.Should().BeTrue("a cancelled caller gets a cancelled task");
    }

    [Fact]
    public async Task The_callers_cancellation_in_RunAsync_T_throws_OperationCanceledException()
    {
        using var cts = new CancellationTokenSource();
        var run = CancellationScope.RunAsync<int>(async scope =>
        {
            await Task.Delay(Timeout.Infinite, scope.Token);
            return 5;
        }, cancellationToken: cts.Token);
        cts.Cancel();
        (await CaptureAsync(run)).Should().BeAssignableTo<OperationCanceledException>();
    }

    [Fact]
    public async Task The_callers_cancellation_with_a_body_that_swallows_it_still_throws_OperationCanceledException()
    {
        using var cts = new CancellationTokenSource();
        var run = CancellationScope.RunAsync(async scope =>
        {
            try
            {
                await Task.Delay(Timeout.Infinite, scope.Token);
            }
            catch (OperationCanceledException)
            {
            }
        }, cancellationToken: cts.Token);
        cts.Cancel();
        (await CaptureAsync(run)).Should().BeAssignableTo<OperationCanceledException>();
    }

    [Fact]
    public async Task A_real_failure_wins_over_the_callers_cancellation()
    {
        using var cts = new CancellationTokenSource();
        var error = new InvalidDataException("while cancelled");
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = CancellationScope.RunAsync(scope =>
        {
            _ = scope.Run(async ct =>
            {
                started.SetResult();
                try
                {
                    await Task.Delay(Timeout.Infinite, ct);
                }
                catch (OperationCanceledException)
                {
                    throw error;
                }
            });
            return Task.CompletedTask;
        }, cancellationToken: cts.Token);
        await started.Task.WithTimeout();
        cts.Cancel();
        (await CaptureAsync(run)).Should().BeSameAs(error);
    }

    [Fact]
    public async Task An_already_cancelled_caller_token_never_runs_the_body()
    {
        var ran = false;
        var run = CancellationScope.RunAsync(_ =>
        {
            ran = true;
            return Task.CompletedTask;
        }, cancellationToken: new CancellationToken(true));
        (await CaptureAsync(run)).Should().BeAssignableTo<OperationCanceledException>();
        ran.Should().BeFalse();

        var runT = CancellationScope.RunAsync(_ =>
        {
            ran = true;
            return Task.FromResult(1);
        }, cancellationToken: new CancellationToken(true));
        (await CaptureAsync(runT)).Should().BeAssignableTo<OperationCanceledException>();
        ran.Should().BeFalse();
    }

    [Fact]
    public async Task A_child_cancelled_by_an_unrelated_token_is_a_failure_of_the_nursery()
    {
        using var other = new CancellationTokenSource();
        other.Cancel();
        Task? sibling = null;
        var ex = await CaptureAsync(CancellationScope.RunAsync(scope =>
        {
            sibling = scope.Run(WaitForCancellationAsync);
            _ = scope.Run(_ => Task.Delay(1000, other.Token));
            return Task.CompletedTask;
        }));
        ex.Should().BeAssignableTo<OperationCanceledException>();
        ((OperationCanceledException)ex).CancellationToken.Should().Be(other.Token);
        sibling!.IsCanceled.Should().BeTrue("an unrelated cancellation is a failure, so it cancels the siblings");
    }

    [Fact]
    public async Task Cancel_inside_the_body_is_a_quiet_stop()
    {
        Task? child = null;
        await CancellationScope.RunAsync(async scope =>
        {
            child = scope.Run(WaitForCancellationAsync);
            await Task.Yield();
            scope.Cancel();
        }).WithTimeout();
        child!.IsCanceled.Should().BeTrue();

        var value = await CancellationScope.RunAsync(async scope =>
        {
            _ = scope.Run(WaitForCancellationAsync);
            await Task.Yield();
            scope.Cancel();
            return 9;
        }).WithTimeout();
        value.Should().Be(9, "the body returned normally after Cancel");
    }

    [Fact]
    public async Task Cancel_from_a_child_stops_the_nursery_quietly()
    {
        await CancellationScope.RunAsync(async scope =>
        {
            _ = scope.Run(async ct =>
            {
                await Task.Yield();
                scope.Cancel();
            });
            try
            {
                await Task.Delay(Timeout.Infinite, scope.Token);
            }
            catch (OperationCanceledException)
            {
            }
        }).WithTimeout();
    }

    [Fact]
    public async Task Run_on_a_nursery_after_Cancel_throws_InvalidOperationException()
    {
        Exception? refusal = null;
        await CancellationScope.RunAsync(scope =>
        {
            scope.Cancel();
            try
            {
                scope.Run(_ => Task.CompletedTask);
            }
            catch (Exception ex)
            {
                refusal = ex;
            }

            return Task.CompletedTask;
        }).WithTimeout();
        refusal.Should().BeOfType<InvalidOperationException>();
    }

    [Fact]
    public async Task Run_on_a_nursery_that_finished_throws_InvalidOperationException()
    {
        CancellationScope? captured = null;
        await CancellationScope.RunAsync(scope =>
        {
            captured = scope;
            return Task.CompletedTask;
        }).WithTimeout();
        captured!.IsCancellationRequested.Should().BeTrue("the token is cancelled when the scope ends");
        Sync(() => captured.Run(_ => Task.CompletedTask)).Should().Throw<InvalidOperationException>();
    }

    [Fact]
    public async Task Nested_nursery_failure_reaches_the_outer_as_the_same_exception()
    {
        var error = new InvalidDataException("deep");
        var ex = await CaptureAsync(CancellationScope.RunAsync(async outer =>
        {
            _ = outer.Run(WaitForCancellationAsync);
            await outer.Run(ct => CancellationScope.RunAsync(inner =>
            {
                _ = inner.Run(_ => FailAfterYieldAsync(error));
                return Task.CompletedTask;
            }, cancellationToken: ct));
        }));
        ex.Should().BeSameAs(error);
    }

    [Fact]
    public async Task Nested_inner_timeout_reaches_the_outer_as_a_TimeoutException_failure()
    {
        var clock = new ManualTimeProvider();
        var innerStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = CancellationScope.RunAsync(async outer =>
        {
            await outer.Run(ct => CancellationScope.RunAsync(async inner =>
            {
                innerStarted.TrySetResult();
                await Task.Delay(Timeout.Infinite, inner.Token);
            }, new CancellationScopeOptions { Timeout = TimeSpan.FromSeconds(1), TimeProvider = clock }, ct));
        }, new CancellationScopeOptions { Timeout = TimeSpan.FromSeconds(10), TimeProvider = clock });
        await innerStarted.Task.WithTimeout();
        clock.Advance(TimeSpan.FromSeconds(1));
        (await CaptureAsync(run)).Should().BeOfType<TimeoutException>();
    }

    [Fact]
    public async Task Outer_timeout_cancels_an_inner_nursery_and_the_outer_throws_TimeoutException()
    {
        var clock = new ManualTimeProvider();
        var innerStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task? innerTask = null;
        var run = CancellationScope.RunAsync(async outer =>
        {
            innerTask = CancellationScope.RunAsync(async inner =>
            {
                _ = inner.Run(WaitForCancellationAsync);
                innerStarted.TrySetResult();
                await Task.Delay(Timeout.Infinite, inner.Token);
            }, new CancellationScopeOptions { Timeout = TimeSpan.FromSeconds(10), TimeProvider = clock }, outer.Token);
            await innerTask;
        }, new CancellationScopeOptions { Timeout = TimeSpan.FromSeconds(1), TimeProvider = clock });
        await innerStarted.Task.WithTimeout();
        clock.Advance(TimeSpan.FromSeconds(1));
        (await CaptureAsync(run)).Should().BeOfType<TimeoutException>("the outer's deadline passed");
        (await CaptureAsync(innerTask!)).Should().BeAssignableTo<OperationCanceledException>(
            "for the inner scope, the outer's cancellation is its caller's cancellation");
    }

    [Fact]
    public async Task Many_children_all_succeed_and_results_are_kept()
    {
        var results = await CancellationScope.RunAsync(async scope =>
        {
            var tasks = Enumerable.Range(0, 1000).Select(i => scope.Run(async _ =>
            {
                if (i % 2 == 0)
                {
                    await Task.Yield();
                }

                return i * 2;
            })).ToArray();
            return await Task.WhenAll(tasks);
        }).WithTimeout();
        results.Should().Equal(Enumerable.Range(0, 1000).Select(i => i * 2));
    }

    [Fact]
    public async Task Children_failing_while_the_body_keeps_starting_siblings_still_give_one_failure_as_itself()
    {
        for (var round = 0; round < 20; round++)
        {
            var error = new InvalidOperationException("only failure " + round);
            var ex = await CaptureAsync(CancellationScope.RunAsync(async scope =>
            {
                _ = scope.Run(_ => throw error);
                for (var i = 0; i < 200; i++)
                {
                    if (scope.IsCancellationRequested)
                    {
                        break;
                    }

                    try
                    {
                        _ = scope.Run(WaitForCancellationAsync);
                    }
                    catch (InvalidOperationException)
                    {
                        break;
                    }

                    if (i % 20 == 0)
                    {
                        await Task.Yield();
                    }
                }
            }));
            ex.Should().BeSameAs(error);
        }
    }

    [Fact]
    public async Task RunAsync_with_null_body_throws_ArgumentNullException()
    {
        Func<Task> act = () => CancellationScope.RunAsync(null!);
        await act.Should().ThrowAsync<ArgumentNullException>();
        Func<Task> actT = () => CancellationScope.RunAsync<int>(null!);
        await actT.Should().ThrowAsync<ArgumentNullException>();
    }

    [Fact]
    public async Task Nursery_body_sees_a_live_scope_and_its_token_is_cancelled_after_the_end()
    {
        CancellationToken token = default;
        await CancellationScope.RunAsync(scope =>
        {
            scope.IsCancellationRequested.Should().BeFalse();
            scope.TimedOut.Should().BeFalse();
            token = scope.Token;
            return Task.CompletedTask;
        }).WithTimeout();
        token.IsCancellationRequested.Should().BeTrue();
    }

    [Fact]
    public async Task Deadline_after_the_work_finished_is_ignored_for_the_nursery()
    {
        var clock = new ManualTimeProvider();
        CancellationScope? captured = null;
        await CancellationScope.RunAsync(scope =>
        {
            captured = scope;
            return Task.CompletedTask;
        }, new CancellationScopeOptions { Timeout = TimeSpan.FromSeconds(1), TimeProvider = clock }).WithTimeout();
        clock.Advance(TimeSpan.FromSeconds(2));
        captured!.TimedOut.Should().BeFalse();
    }
    // ============================== more adversarial cases ==============================

    [Fact]
    public async Task A_plain_OperationCanceledException_after_the_scope_was_cancelled_is_a_cancellation_not_a_failure()
    {
        var error = new InvalidOperationException("the one failure");
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task? sibling = null;
        var ex = await CaptureAsync(CancellationScope.RunAsync(async scope =>
        {
            sibling = scope.Run(async ct =>
            {
                started.SetResult();
                try
                {
                    await Task.Delay(Timeout.Infinite, ct);
                }
                catch (OperationCanceledException)
                {
                    throw new OperationCanceledException("no token attached");
                }
            });
            await started.Task;
            _ = scope.Run(_ => FailAfterYieldAsync(error));
        }));
        ex.Should().BeSameAs(error);
        sibling!.IsCanceled.Should().BeTrue();
    }

    [Fact]
    public async Task A_body_cancelled_by_an_unrelated_token_fails_the_nursery_as_itself()
    {
        using var other = new CancellationTokenSource();
        other.Cancel();
        var ex = await CaptureAsync(CancellationScope.RunAsync(async scope =>
        {
            await Task.Delay(1000, other.Token);
        }));
        ex.Should().BeAssignableTo<OperationCanceledException>();
        ((OperationCanceledException)ex).CancellationToken.Should().Be(other.Token);
    }

    [Fact]
    public async Task A_body_failure_and_a_child_failure_during_cancellation_are_aggregated_body_first()
    {
        var bodyError = new ApplicationException("body first");
        var childError = new FormatException("child while cancelled");
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var ex = await CaptureAsync(CancellationScope.RunAsync(async scope =>
        {
            _ = scope.Run(async ct =>
            {
                started.SetResult();
                try
                {
                    await Task.Delay(Timeout.Infinite, ct);
                }
                catch (OperationCanceledException)
                {
                    throw childError;
                }
            });
            await started.Task;
            throw bodyError;
        }));
        ex.Should().BeOfType<AggregateException>().Which.InnerExceptions.Should().Equal(bodyError, childError);
    }

    [Fact]
    public async Task RunAsync_T_whose_body_was_cancelled_by_Cancel_throws_OperationCanceledException()
    {
        var ex = await CaptureAsync(CancellationScope.RunAsync<int>(async scope =>
        {
            scope.Cancel();
            await Task.Delay(Timeout.Infinite, scope.Token);
            return 1;
        }));
        ex.Should().BeAssignableTo<OperationCanceledException>();
    }

    [Fact]
    public async Task Non_generic_RunAsync_whose_body_was_cancelled_by_Cancel_completes_normally()
    {
        await CancellationScope.RunAsync(async scope =>
        {
            scope.Cancel();
            await Task.Delay(Timeout.Infinite, scope.Token);
        }).WithTimeout();
    }

    [Fact]
    public async Task The_deadline_timer_is_released_when_the_scope_ends()
    {
        var clock = new ManualTimeProvider();
        var scope = FakeScope(clock, TimeSpan.FromMinutes(1));
        await scope.Run(_ => Task.CompletedTask).WithTimeout();
        await scope.DisposeAsync().WithTimeout();
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 0, "the deadline timer is disposed at the end");

        await CancellationScope.RunAsync(s => s.Run(_ => Task.CompletedTask),
            new CancellationScopeOptions { Timeout = TimeSpan.FromMinutes(1), TimeProvider = clock }).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 0, "the nursery's deadline timer is disposed too");
    }

    [Fact]
    public async Task Concurrent_DisposeAsync_calls_all_wait_for_the_children()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var scope = new CancellationScope();
        _ = scope.Run(_ =>
        {
            started.SetResult();
            return release.Task;
        });
        await started.Task.WithTimeout();
        var disposals = Enumerable.Range(0, 8).Select(_ => Task.Run(async () => await scope.DisposeAsync())).ToArray();
        await AsyncAssert.StillPendingAsync(Task.WhenAny(disposals));
        release.SetResult();
        await Task.WhenAll(disposals).WithTimeout();
    }

    [Fact]
    public async Task Completion_completes_once_the_scope_and_its_children_ended_and_never_faults()
    {
        var scope = new CancellationScope();
        _ = scope.Run(_ => FailAfterYieldAsync(new InvalidOperationException()));
        await AsyncAssert.StillPendingAsync(scope.Completion, "the owner still holds the scope");
        await scope.DisposeAsync().WithTimeout();
        await scope.Completion.WithTimeout();
        scope.Completion.IsCompletedSuccessfully.Should().BeTrue();
    }

    [Fact]
    public async Task Outer_token_then_deadline_leaves_TimedOut_false_and_deadline_then_outer_token_leaves_it_true()
    {
        var clock = new ManualTimeProvider();
        using (var outer = new CancellationTokenSource())
        {
            var scope = FakeScope(clock, TimeSpan.FromSeconds(1), outer.Token);
            outer.Cancel();
            clock.Advance(TimeSpan.FromSeconds(1));
            scope.TimedOut.Should().BeFalse();
            await scope.DisposeAsync().WithTimeout();
        }

        using (var outer = new CancellationTokenSource())
        {
            var scope = FakeScope(clock, TimeSpan.FromSeconds(1), outer.Token);
            clock.Advance(TimeSpan.FromSeconds(1));
            outer.Cancel();
            scope.TimedOut.Should().BeTrue();
            await scope.DisposeAsync().WithTimeout();
        }
    }

    [Fact]
    public async Task A_child_cancelled_by_the_callers_token_in_the_nursery_is_not_a_failure()
    {
        using var cts = new CancellationTokenSource();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = CancellationScope.RunAsync(scope =>
        {
            // the child listens to the caller's token directly, not the scope's
            _ = scope.Run(async _ =>
            {
                started.SetResult();
                await Task.Delay(Timeout.Infinite, cts.Token);
            });
            return Task.CompletedTask;
        }, cancellationToken: cts.Token);
        await started.Task.WithTimeout();
        cts.Cancel();
        var ex = await CaptureAsync(run);
        ex.Should().BeAssignableTo<OperationCanceledException>();
        ex.Should().NotBeOfType<AggregateException>();
    }
    [Fact]
    public async Task Docs_example_first_of_two_queries_wins_and_leaving_cancels_the_slower_one()
    {
        Task<string> fromPrimary;
        Task<string> fromReplica;
        string result;
        var scope = new CancellationScope(TimeSpan.FromSeconds(30));
        await using (scope.ConfigureAwait(false))
        {
            fromPrimary = scope.Run(async ct =>
            {
                await Task.Delay(Timeout.Infinite, ct);
                return "primary";
            });
            fromReplica = scope.Run(async ct =>
            {
                await Task.Yield();
                return "replica";
            });
            result = await (await Task.WhenAny(fromPrimary, fromReplica).WithTimeout());
        }

        result.Should().Be("replica");
        fromPrimary.IsCanceled.Should().BeTrue("the slower query has been cancelled and has ended");
        scope.TimedOut.Should().BeFalse();
    }

    [Fact]
    public async Task A_child_failing_after_the_body_returned_its_value_fails_RunAsync_T()
    {
        var error = new InvalidOperationException("late child");
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = CancellationScope.RunAsync(scope =>
        {
            _ = scope.Run(async _ =>
            {
                await release.Task;
                throw error;
            });
            return Task.FromResult(123);
        });
        await AsyncAssert.StillPendingAsync(run);
        release.SetResult();
        (await CaptureAsync(run)).Should().BeSameAs(error);
    }
}
