using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Scopes;

/// <summary>The <c>await using</c> form: leaving cancels and waits, deadlines, refusals, nesting.</summary>
public sealed class CancellationScopeTests
{
    private static CancellationScopeOptions On(ManualTimeProvider clock, TimeSpan? timeout = null, int maxConcurrency = int.MaxValue) =>
        new() { TimeProvider = clock, Timeout = timeout, MaxConcurrency = maxConcurrency };

    [Fact]
    public async Task Leaving_cancels_children_still_running_and_waits_for_them()
    {
        var clock = new ManualTimeProvider();
        var sawCancellation = 0;
        var finished = 0;
        var children = new List<Task>();
        var scope = new CancellationScope(On(clock));
        for (var i = 0; i < 3; i++)
        {
            children.Add(scope.Run(async ct =>
            {
                try
                {
                    await Task.Delay(TimeSpan.FromHours(1), clock, ct);
                }
                catch (OperationCanceledException)
                {
                    Interlocked.Increment(ref sawCancellation);
                    await Task.Yield();
                    Interlocked.Increment(ref finished);
                    throw;
                }
            }));
        }

        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 3, "every child is waiting");
        await scope.DisposeAsync().WithTimeout();

        sawCancellation.Should().Be(3);
        finished.Should().Be(3, "DisposeAsync waits for children to finish, not just to be cancelled");
        children.Should().OnlyContain(t => t.IsCanceled);
        scope.TimedOut.Should().BeFalse();
        scope.IsCancellationRequested.Should().BeTrue();
    }

    [Fact]
    public async Task Children_that_ignore_cancellation_are_still_awaited()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var scope = new CancellationScope();
        var child = scope.Run(async _ =>
        {
            started.SetResult();
            await release.Task; // ignores the token
        });
        await started.Task.WithTimeout();

        var dispose = scope.DisposeAsync().AsTask();
        await AsyncAssert.StillPendingAsync(dispose, "a child that ignores cancellation is still running");
        child.IsCompleted.Should().BeFalse();

        release.SetResult();
        await dispose.WithTimeout();
        child.IsCompletedSuccessfully.Should().BeTrue();
        scope.Completion.IsCompleted.Should().BeTrue();
    }

    [Fact]
    public async Task Deadline_cancels_children_quietly_and_sets_TimedOut()
    {
        var clock = new ManualTimeProvider();
        await using var scope = new CancellationScope(On(clock, TimeSpan.FromSeconds(2)));
        var quick = scope.Run(async ct =>
        {
            await Task.Delay(TimeSpan.FromSeconds(1), clock, ct);
            return "A";
        });
        var slow = scope.Run(async ct =>
        {
            await Task.Delay(TimeSpan.FromSeconds(3), clock, ct);
            return "B";
        });
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 3, "both children wait on the clock");

        clock.Advance(TimeSpan.FromSeconds(1));
        (await quick.WithTimeout()).Should().Be("A");
        scope.TimedOut.Should().BeFalse();

        clock.Advance(TimeSpan.FromSeconds(1));
        await AsyncAssert.EventuallyAsync(() => slow.IsCompleted);
        slow.IsCanceled.Should().BeTrue();
        scope.TimedOut.Should().BeTrue();
        scope.IsCancellationRequested.Should().BeTrue();
        scope.GetFailures().Should().BeEmpty("cancellations the scope caused are not failures");
    }

    [Fact]
    public async Task Deadline_counts_from_creation_not_from_the_first_child()
    {
        var clock = new ManualTimeProvider();
        await using var scope = new CancellationScope(On(clock, TimeSpan.FromSeconds(1)));
        clock.Advance(TimeSpan.FromMilliseconds(600));
        var child = scope.Run(ct => Task.Delay(TimeSpan.FromSeconds(10), clock, ct));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 2);

        clock.Advance(TimeSpan.FromMilliseconds(399));
        scope.TimedOut.Should().BeFalse();
        clock.Advance(TimeSpan.FromMilliseconds(1));
        scope.TimedOut.Should().BeTrue("1 s has passed since the scope was created");
        await AsyncAssert.EventuallyAsync(() => child.IsCanceled);
    }

    [Fact]
    public async Task Deadline_timer_is_released_when_the_scope_ends()
    {
        var clock = new ManualTimeProvider();
        var scope = new CancellationScope(On(clock, TimeSpan.FromMinutes(5)));
        clock.ActiveTimerCount.Should().Be(1);
        await scope.Run(_ => Task.CompletedTask).WithTimeout();
        await scope.DisposeAsync().WithTimeout();
        clock.ActiveTimerCount.Should().Be(0);
        clock.Advance(TimeSpan.FromMinutes(10));
        scope.TimedOut.Should().BeFalse("the scope ended before its deadline");
    }

    [Fact]
    public async Task Child_failures_are_observed_logged_and_never_thrown_by_DisposeAsync()
    {
        var logs = new ListLoggerProvider();
        using var factory = logs.CreateFactory();
        var scope = new CancellationScope(new CancellationScopeOptions { Name = "failing", LoggerFactory = factory });
        var error = new TestException("boom " + Guid.NewGuid());
        var failed = scope.Run(async _ =>
        {
            await Task.Yield();
            throw error;
        });
        var sibling = scope.Run(async ct =>
        {
            await Task.Delay(50, CancellationToken.None);
            return ct.IsCancellationRequested;
        });

        await AsyncAssert.EventuallyAsync(() => failed.IsCompleted);
        sibling.IsCompleted.Should().BeFalse("a failure does not cancel siblings in the await-using form");
        (await sibling.WithTimeout()).Should().BeFalse();

        await scope.DisposeAsync().WithTimeout(); // does not throw
        failed.IsFaulted.Should().BeTrue();
        failed.Exception!.InnerException.Should().BeSameAs(error);
        scope.GetFailures().Should().ContainSingle().Which.Should().BeSameAs(error);
        logs.Entries.Should().Contain(e => e.EventId.Id == 1500 && e.Exception == error && e.Message.Contains("failing"));
        logs.Entries.Should().Contain(e => e.EventId.Id == 1504);
        var stats = scope.GetStatistics();
        stats.Should().BeEquivalentTo(new CancellationScopeStatistics { Accepted = 2, Started = 2, Succeeded = 1, Failed = 1, Cancelled = 0, Pending = 0, Waiting = 0 });
    }

    [Fact]
    public async Task Unawaited_failed_children_raise_no_UnobservedTaskException()
    {
        var marker = "unobserved-" + Guid.NewGuid();
        await using (var scope = new CancellationScope())
        {
            for (var i = 0; i < 20; i++)
            {
                _ = scope.Run(_ => throw new TestException(marker));
                _ = scope.Run<int>(async _ =>
                {
                    await Task.Yield();
                    throw new TestException(marker);
                });
            }
        }

        UnobservedTaskExceptionGuard.Flush();
        UnobservedTaskExceptionGuard.Exceptions
            .SelectMany(e => e is AggregateException a ? a.Flatten().InnerExceptions : [e])
            .Should().NotContain(e => e.Message == marker);
    }

    [Fact]
    public async Task Synchronous_throw_becomes_the_childs_failure_and_never_escapes_Run()
    {
        await using var scope = new CancellationScope();
        var error = new TestException("sync");
        Task child = null!;
        Action act = () => child = scope.Run(_ => throw error);
        act.Should().NotThrow();
        var thrown = await FluentActions.Awaiting(() => child.WithTimeout()).Should().ThrowAsync<TestException>();
        thrown.Which.Should().BeSameAs(error);
        scope.GetFailures().Should().ContainSingle().Which.Should().BeSameAs(error);
    }

    [Fact]
    public async Task A_null_task_from_the_delegate_is_a_failure()
    {
        await using var scope = new CancellationScope();
#pragma warning disable VSTHRD114 // deliberately bad input
        var child = scope.Run(_ => null!);
#pragma warning restore VSTHRD114
        await FluentActions.Awaiting(() => child.WithTimeout()).Should().ThrowAsync<InvalidOperationException>().WithMessage("*returned null*");
    }

    [Fact]
    public async Task Run_schedules_the_child_instead_of_running_it_inline()
    {
        await using var scope = new CancellationScope();
        using var gate = new ManualResetEventSlim();
        var child = scope.Run(_ =>
        {
            // Inline invocation would block here before Run returned and the gate could be set, and time out.
            // (No thread-id check: after the caller yields, the pool may run the child on that same thread.)
            return Task.FromResult(gate.Wait(TimeSpan.FromSeconds(10)));
        });
        gate.Set();
        (await child.WithTimeout()).Should().BeTrue("Run returned before the child ran");
    }

    [Fact]
    public async Task Execution_context_flows_to_children()
    {
        var local = new AsyncLocal<string>();
        local.Value = "flowed";
        await using var scope = new CancellationScope();
        (await scope.Run(_ => Task.FromResult(local.Value)).WithTimeout()).Should().Be("flowed");
    }

    [Fact]
    public async Task Run_after_Cancel_timeout_or_dispose_is_refused()
    {
        var clock = new ManualTimeProvider();
        var cancelled = new CancellationScope();
        cancelled.Cancel();
        ((Action)(() => cancelled.Run(_ => Task.CompletedTask))).Should().Throw<InvalidOperationException>().WithMessage("*cancelled or has ended*");

        var timedOut = new CancellationScope(On(clock, TimeSpan.FromSeconds(1)));
        clock.Advance(TimeSpan.FromSeconds(1));
        ((Action)(() => timedOut.Run(_ => Task.FromResult(1)))).Should().Throw<InvalidOperationException>();

        var disposed = new CancellationScope(new CancellationScopeOptions { Name = "named" });
        await disposed.DisposeAsync();
        ((Action)(() => disposed.Run(_ => Task.CompletedTask))).Should().Throw<InvalidOperationException>().WithMessage("*'named'*");

        await cancelled.DisposeAsync();
        await timedOut.DisposeAsync();
        cancelled.GetStatistics().Accepted.Should().Be(0);
    }

    [Fact]
    public async Task Cancel_cancels_children_and_is_idempotent()
    {
        await using var scope = new CancellationScope();
        var child = scope.Run(ct => Task.Delay(Timeout.Infinite, ct));
        scope.Cancel();
        scope.Cancel();
        await AsyncAssert.EventuallyAsync(() => child.IsCanceled);
        scope.TimedOut.Should().BeFalse();
        scope.GetFailures().Should().BeEmpty();
    }

    [Fact]
    public async Task Outer_token_cancels_the_scope()
    {
        using var outer = new CancellationTokenSource();
        await using var scope = new CancellationScope(cancellationToken: outer.Token);
        var child = scope.Run(ct => Task.Delay(Timeout.Infinite, ct));
        outer.Cancel();
        scope.IsCancellationRequested.Should().BeTrue();
        await AsyncAssert.EventuallyAsync(() => child.IsCanceled);
        scope.TimedOut.Should().BeFalse();
    }

    [Fact]
    public async Task An_already_cancelled_token_makes_a_cancelled_scope()
    {
        await using var scope = new CancellationScope(null, new CancellationToken(canceled: true));
        scope.IsCancellationRequested.Should().BeTrue();
        ((Action)(() => scope.Run(_ => Task.CompletedTask))).Should().Throw<InvalidOperationException>();
    }

    [Fact]
    public async Task Nested_scope_made_with_the_parent_token_is_cancelled_with_it()
    {
        var clock = new ManualTimeProvider();
        await using var parent = new CancellationScope(On(clock, TimeSpan.FromSeconds(1)));
        await using var child = new CancellationScope(On(clock, TimeSpan.FromSeconds(5)), parent.Token);
        var grandchild = child.Run(ct => Task.Delay(TimeSpan.FromHours(1), clock, ct));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 3);

        clock.Advance(TimeSpan.FromSeconds(1));
        parent.TimedOut.Should().BeTrue();
        child.IsCancellationRequested.Should().BeTrue();
        child.TimedOut.Should().BeFalse("the child was cancelled by its parent, not by its own deadline");
        await AsyncAssert.EventuallyAsync(() => grandchild.IsCanceled);
    }

    [Fact]
    public async Task Inner_deadline_does_not_cancel_the_parent()
    {
        var clock = new ManualTimeProvider();
        await using var parent = new CancellationScope(On(clock));
        await using (var inner = new CancellationScope(On(clock, TimeSpan.FromSeconds(1)), parent.Token))
        {
            clock.Advance(TimeSpan.FromSeconds(1));
            inner.TimedOut.Should().BeTrue();
        }

        parent.IsCancellationRequested.Should().BeFalse();
        (await parent.Run(_ => Task.FromResult(7)).WithTimeout()).Should().Be(7);
    }

    [Fact]
    public async Task A_child_cancelled_by_an_unrelated_token_is_a_failure()
    {
        await using var scope = new CancellationScope();
        using var unrelated = new CancellationTokenSource();
        unrelated.Cancel();
        var child = scope.Run(_ => Task.FromCanceled(unrelated.Token));
        await AsyncAssert.EventuallyAsync(() => child.IsCompleted);
        child.IsFaulted.Should().BeTrue();
        scope.GetFailures().Should().ContainSingle().Which.Should().BeAssignableTo<OperationCanceledException>();
        scope.GetStatistics().Failed.Should().Be(1);
    }

    [Fact]
    public async Task A_throwing_token_callback_is_recorded_not_thrown()
    {
        var scope = new CancellationScope();
        var error = new TestException("callback");
        scope.Token.Register(() => throw error);
        scope.Invoking(s => s.Cancel()).Should().NotThrow();
        await scope.DisposeAsync().WithTimeout();
        scope.GetFailures().Should().ContainSingle().Which.Should().BeSameAs(error);
    }

    [Fact]
    public async Task DisposeAsync_twice_waits_once_and_completes()
    {
        var scope = new CancellationScope();
        var release = new TaskCompletionSource();
        _ = scope.Run(_ => release.Task);
        var first = scope.DisposeAsync().AsTask();
        var second = scope.DisposeAsync().AsTask();
        second.IsCompleted.Should().BeFalse();
        release.SetResult();
        await Task.WhenAll(first, second).WithTimeout();
    }

    [Fact]
    public async Task Children_may_start_siblings_while_the_scope_is_open()
    {
        await using var scope = new CancellationScope();
        var inner = new TaskCompletionSource<Task<int>>(TaskCreationOptions.RunContinuationsAsynchronously);
        await scope.Run(_ =>
        {
            inner.SetResult(scope.Run(_ => Task.FromResult(42)));
            return Task.CompletedTask;
        }).WithTimeout();
        (await (await inner.Task).WithTimeout()).Should().Be(42);
    }

    [Fact]
    public async Task Metrics_count_children_and_record_the_duration()
    {
        var name = "metrics-" + Guid.NewGuid();
        using var recorder = new ScopeMetricsRecorder(name);
        var clock = new ManualTimeProvider();
        var scope = new CancellationScope(new CancellationScopeOptions { Name = name, TimeProvider = clock, Timeout = TimeSpan.FromSeconds(10) });
        await scope.Run(_ => Task.CompletedTask).WithTimeout();
        _ = scope.Run(_ => throw new TestException("metric"));
        var slow = scope.Run(ct => Task.Delay(TimeSpan.FromHours(1), clock, ct));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 2 && scope.GetStatistics().Failed == 1);
        clock.Advance(TimeSpan.FromSeconds(10));
        await scope.DisposeAsync().WithTimeout();

        recorder.Sum("asyncpatterns.cancellationscope.children.started").Should().Be(3);
        recorder.Sum("asyncpatterns.cancellationscope.children.failed").Should().Be(1);
        recorder.Sum("asyncpatterns.cancellationscope.children.cancelled").Should().Be(1);
        var duration = recorder.Measurements.Should().ContainSingle(m => m.Instrument == "asyncpatterns.cancellationscope.duration").Subject;
        duration.Value.Should().Be(10);
        duration.Tags[CancellationScopeMetrics.OutcomeTag].Should().Be("failed");
    }

    [Fact]
    public async Task Timeout_is_logged()
    {
        var logs = new ListLoggerProvider();
        using var factory = logs.CreateFactory();
        var clock = new ManualTimeProvider();
        await using var scope = new CancellationScope(new CancellationScopeOptions { TimeProvider = clock, Timeout = TimeSpan.FromSeconds(1), LoggerFactory = factory });
        clock.Advance(TimeSpan.FromSeconds(1));
        logs.Entries.Should().Contain(e => e.EventId.Id == 1502);
    }

    [Fact]
    public void Options_are_copied_at_construction()
    {
        var clock = new ManualTimeProvider();
        var options = On(clock, TimeSpan.FromSeconds(1));
        var scope = new CancellationScope(options);
        options.Timeout = TimeSpan.FromHours(1);
        clock.Advance(TimeSpan.FromSeconds(1));
        scope.TimedOut.Should().BeTrue();
    }
}
