using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Scopes;

/// <summary>The concurrency limit, shielding and bad input.</summary>
public sealed class CancellationScopeLimitAndShieldTests
{
    [Fact]
    public async Task Children_beyond_the_limit_wait_and_start_in_order_as_slots_free()
    {
        var gates = Enumerable.Range(0, 6).Select(_ => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).ToArray();
        var startOrder = new System.Collections.Concurrent.ConcurrentQueue<int>();
        var running = 0;
        var maxRunning = 0;
        await using var scope = new CancellationScope(new CancellationScopeOptions { MaxConcurrency = 2 });
        var children = new List<Task>();
        for (var i = 0; i < 6; i++)
        {
            var index = i;
            children.Add(scope.Run(async _ =>
            {
                startOrder.Enqueue(index);
                var now = Interlocked.Increment(ref running);
                InterlockedMax(ref maxRunning, now);
                await gates[index].Task;
                Interlocked.Decrement(ref running);
            }));
        }

        await AsyncAssert.EventuallyAsync(() => startOrder.Count == 2);
        await AsyncAssert.StillPendingAsync(children[2]);
        startOrder.Should().BeEquivalentTo([0, 1]);
        scope.GetStatistics().Waiting.Should().Be(4);

        for (var i = 0; i < 6; i++)
        {
            gates[i].SetResult();
            await children[i].WithTimeout();

            // The freed slot goes to the next waiting child, which is scheduled on the pool: let it start before the
            // next release, or two scheduled children could reach their first line in either order.
            var started = Math.Min(i + 3, 6);
            await AsyncAssert.EventuallyAsync(() => startOrder.Count == started);
        }

        startOrder.Skip(2).Should().Equal(2, 3, 4, 5);
        maxRunning.Should().Be(2);
    }

    [Fact]
    public async Task Cancelling_drops_waiting_children_without_running_them()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var invoked = 0;
        var scope = new CancellationScope(new CancellationScopeOptions { MaxConcurrency = 1 });
        var first = scope.Run(async ct => { Interlocked.Increment(ref invoked); await release.Task; });
        var waiting = Enumerable.Range(0, 5).Select(_ => scope.Run(_ => { Interlocked.Increment(ref invoked); return Task.CompletedTask; })).ToList();
        await AsyncAssert.EventuallyAsync(() => Volatile.Read(ref invoked) == 1);

        scope.Cancel();
        waiting.Should().OnlyContain(t => t.IsCanceled, "waiting children end cancelled at once");
        release.SetResult();
        await scope.DisposeAsync().WithTimeout();
        invoked.Should().Be(1);
        first.IsCompletedSuccessfully.Should().BeTrue();
        scope.GetStatistics().Should().BeEquivalentTo(new CancellationScopeStatistics { Accepted = 6, Started = 1, Succeeded = 1, Cancelled = 5 });
    }

    [Fact]
    public async Task Run_never_blocks_when_the_limit_is_reached()
    {
        var never = new TaskCompletionSource();
        var scope = new CancellationScope(new CancellationScopeOptions { MaxConcurrency = 1 });
        _ = scope.Run(_ => never.Task);
        var queued = scope.Run(_ => Task.FromResult(1));
        queued.IsCompleted.Should().BeFalse();
        never.SetResult();
        (await queued.WithTimeout()).Should().Be(1);
        await scope.DisposeAsync();
    }

    [Fact]
    public async Task A_long_chain_of_synchronous_children_under_a_limit_does_not_recurse()
    {
        var order = new List<int>();
        await CancellationScope.RunAsync(scope =>
        {
            for (var i = 0; i < 10_000; i++)
            {
                var index = i;
                _ = scope.Run(_ => { order.Add(index); return Task.CompletedTask; }); // limit 1: never concurrent
            }

            return Task.CompletedTask;
        }, new CancellationScopeOptions { MaxConcurrency = 1 }).WithTimeout();
        order.Should().Equal(Enumerable.Range(0, 10_000));
    }

    [Fact]
    public async Task Limited_nursery_fail_fast_drops_the_queue()
    {
        var invoked = 0;
        var run = CancellationScope.RunAsync(scope =>
        {
            for (var i = 0; i < 100; i++)
            {
                var index = i;
                _ = scope.Run(async _ =>
                {
                    Interlocked.Increment(ref invoked);
                    await Task.Yield();
                    if (index == 0)
                    {
                        throw new TestException("first");
                    }
                });
            }

            return Task.CompletedTask;
        }, new CancellationScopeOptions { MaxConcurrency = 1 });
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TestException>();
        invoked.Should().Be(1);
    }

    [Fact]
    public async Task A_shielded_scope_ignores_outer_cancellation_until_its_budget()
    {
        var clock = new ManualTimeProvider();
        using var outer = new CancellationTokenSource();
        outer.Cancel();
        var cleanedUp = false;

        await using (var shield = CancellationScope.Shielded(TimeSpan.FromSeconds(5), clock))
        {
            shield.Token.IsCancellationRequested.Should().BeFalse("the outer cancellation does not reach a shield");
            var cleanup = Task.Delay(TimeSpan.FromSeconds(1), clock, shield.Token);
            clock.Advance(TimeSpan.FromSeconds(1));
            await cleanup.WithTimeout();
            cleanedUp = true;
        }

        cleanedUp.Should().BeTrue();
        clock.ActiveTimerCount.Should().Be(0);
    }

    [Fact]
    public async Task A_shield_cancels_cleanup_that_overruns_its_budget()
    {
        var clock = new ManualTimeProvider();
        await using var shield = CancellationScope.Shielded(TimeSpan.FromSeconds(2), clock);
        var hanging = shield.Run(ct => Task.Delay(Timeout.InfiniteTimeSpan, clock, ct));
        clock.Advance(TimeSpan.FromSeconds(2));
        shield.TimedOut.Should().BeTrue();
        await AsyncAssert.EventuallyAsync(() => hanging.IsCanceled);
    }

    [Fact]
    public async Task A_shield_inside_a_cancelled_nursery_lets_cleanup_finish()
    {
        var clock = new ManualTimeProvider();
        var flushed = false;
        using var caller = new CancellationTokenSource();
        var run = CancellationScope.RunAsync(async scope =>
        {
            try
            {
                await Task.Delay(Timeout.InfiniteTimeSpan, clock, scope.Token);
            }
            catch (OperationCanceledException)
            {
                await using var shield = CancellationScope.Shielded(TimeSpan.FromSeconds(5), clock);
                await Task.Delay(TimeSpan.FromSeconds(1), clock, shield.Token);
                flushed = true;
                throw;
            }
        }, new CancellationScopeOptions { TimeProvider = clock }, caller.Token);
        caller.Cancel();
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 2, "the shield's deadline and the cleanup delay");
        clock.Advance(TimeSpan.FromSeconds(1));
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        flushed.Should().BeTrue();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-2)] // -1 ms is Timeout.InfiniteTimeSpan, which means "no deadline"
    [InlineData(-60_000)]
    public void Zero_or_negative_timeouts_are_refused(int milliseconds)
    {
        var timeout = TimeSpan.FromMilliseconds(milliseconds);
        ((Action)(() => _ = new CancellationScope(timeout))).Should().Throw<ArgumentOutOfRangeException>().WithParameterName("timeout");
        ((Action)(() => _ = new CancellationScope(new CancellationScopeOptions { Timeout = timeout }))).Should().Throw<ArgumentOutOfRangeException>()
            .WithParameterName("Timeout").WithMessage("*greater than TimeSpan.Zero*");
        ((Action)(() => CancellationScope.RunAsync(_ => Task.CompletedTask, timeout))).Should().Throw<ArgumentOutOfRangeException>();
        ((Action)(() => CancellationScope.RunAsync(_ => Task.FromResult(1), timeout))).Should().Throw<ArgumentOutOfRangeException>();
        ((Action)(() => CancellationScope.RunAsync(_ => Task.CompletedTask, new CancellationScopeOptions { Timeout = timeout }))).Should().Throw<ArgumentOutOfRangeException>();
        ((Action)(() => CancellationScope.Shielded(timeout))).Should().Throw<ArgumentOutOfRangeException>().WithParameterName("budget");
    }

    [Fact]
    public async Task Infinite_timeout_means_no_deadline_but_a_shield_must_have_one()
    {
        await using var scope = new CancellationScope(Timeout.InfiniteTimeSpan);
        scope.IsCancellationRequested.Should().BeFalse();
        ((Action)(() => CancellationScope.Shielded(Timeout.InfiniteTimeSpan))).Should().Throw<ArgumentOutOfRangeException>();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-5)]
    public void A_limit_of_zero_or_less_is_refused(int limit)
    {
        ((Action)(() => _ = new CancellationScope(new CancellationScopeOptions { MaxConcurrency = limit }))).Should().Throw<ArgumentOutOfRangeException>()
            .WithParameterName("MaxConcurrency").WithMessage("*greater than 0*");
        ((Action)(() => CancellationScope.RunAsync(_ => Task.CompletedTask, new CancellationScopeOptions { MaxConcurrency = limit }))).Should().Throw<ArgumentOutOfRangeException>();
    }

    [Fact]
    public void Null_delegates_and_options_are_refused()
    {
        var scope = new CancellationScope();
        ((Action)(() => scope.Run(null!))).Should().Throw<ArgumentNullException>().WithParameterName("work");
        ((Action)(() => scope.Run<int>(null!))).Should().Throw<ArgumentNullException>().WithParameterName("work");
        ((Action)(() => CancellationScope.RunAsync((Func<CancellationScope, Task>)null!))).Should().Throw<ArgumentNullException>().WithParameterName("body");
        ((Action)(() => CancellationScope.RunAsync((Func<CancellationScope, Task<int>>)null!))).Should().Throw<ArgumentNullException>().WithParameterName("body");
        ((Action)(() => CancellationScope.RunAsync(_ => Task.CompletedTask, (CancellationScopeOptions)null!))).Should().Throw<ArgumentNullException>().WithParameterName("options");
        ((Action)(() => _ = new CancellationScope((CancellationScopeOptions)null!))).Should().Throw<ArgumentNullException>().WithParameterName("options");
        ((Action)(() => CancellationScope.Shielded(TimeSpan.FromSeconds(1), null!))).Should().Throw<ArgumentNullException>().WithParameterName("timeProvider");
    }

    [Fact]
    public async Task Null_for_the_timeout_picks_the_contract_overloads()
    {
        // With an options overload beside the contract's TimeSpan? overload, a literal null must stay unambiguous.
        await using var scope = new CancellationScope(null, CancellationToken.None);
        await CancellationScope.RunAsync(_ => Task.CompletedTask, null, CancellationToken.None).WithTimeout();
        (await CancellationScope.RunAsync(_ => Task.FromResult(2), null, CancellationToken.None).WithTimeout()).Should().Be(2);
    }

    private static void InterlockedMax(ref int target, int value)
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
