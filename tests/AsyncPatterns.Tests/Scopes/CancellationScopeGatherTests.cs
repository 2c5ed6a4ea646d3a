using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Scopes;

/// <summary>SelectAsync (bounded, ordered, fail-fast) and WhenAllSettled (every outcome).</summary>
public sealed class CancellationScopeGatherTests
{
    [Fact]
    public async Task SelectAsync_returns_results_in_input_order_whatever_the_completion_order()
    {
        var clock = new ManualTimeProvider();
        var items = Enumerable.Range(0, 8).ToArray();
        var run = CancellationScope.SelectAsync(items, async (i, ct) =>
        {
            await Task.Delay(TimeSpan.FromMilliseconds(100 * (8 - i)), clock, ct); // later items finish first
            return i * 10;
        }, maxConcurrency: 8);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 8);
        clock.AdvanceMilliseconds(800);
        (await run.WithTimeout()).Should().Equal(items.Select(i => i * 10));
    }

    [Fact]
    public async Task SelectAsync_runs_at_most_maxConcurrency_calls_and_starts_them_in_order()
    {
        var running = 0;
        var max = 0;
        var started = new System.Collections.Concurrent.ConcurrentQueue<int>();
        var results = await CancellationScope.SelectAsync(Enumerable.Range(0, 200), async (i, _) =>
        {
            started.Enqueue(i);
            var now = Interlocked.Increment(ref running);
            lock (started)
            {
                max = Math.Max(max, now);
            }

            await Task.Yield();
            Interlocked.Decrement(ref running);
            return i;
        }, maxConcurrency: 3).WithTimeout();

        results.Should().Equal(Enumerable.Range(0, 200));
        max.Should().BeInRange(1, 3);
        started.Should().HaveCount(200);
    }

    [Fact]
    public async Task SelectAsync_is_fail_fast_and_rethrows_the_failure_as_itself()
    {
        var clock = new ManualTimeProvider();
        var error = new TestException("item 1");
        var invoked = 0;
        var cancelled = 0;
        var run = CancellationScope.SelectAsync(Enumerable.Range(0, 100).ToList(), async (i, ct) =>
        {
            Interlocked.Increment(ref invoked);
            if (i == 1)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(10), clock, ct);
                throw error;
            }

            try
            {
                await Task.Delay(TimeSpan.FromHours(1), clock, ct);
            }
            catch (OperationCanceledException)
            {
                Interlocked.Increment(ref cancelled);
                throw;
            }

            return i;
        }, maxConcurrency: 4);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 4);
        clock.AdvanceMilliseconds(10);
        (await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TestException>()).Which.Should().BeSameAs(error);
        invoked.Should().Be(4, "no new call starts after the failure");
        cancelled.Should().Be(3);
    }

    [Fact]
    public async Task SelectAsync_turns_a_synchronous_throw_into_the_failure()
    {
        var run = CancellationScope.SelectAsync<int, int>([1, 2, 3], (i, _) => i == 2 ? throw new TestException("sync") : ValueTask.FromResult(i), 1);
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TestException>();
    }

    [Fact]
    public async Task SelectAsync_honours_the_callers_cancellation()
    {
        using var caller = new CancellationTokenSource();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = CancellationScope.SelectAsync(Enumerable.Range(0, 10), async (i, ct) =>
        {
            started.TrySetResult();
            await Task.Delay(Timeout.Infinite, ct);
            return i;
        }, 2, caller.Token);
        await started.Task.WithTimeout();
        caller.Cancel();
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        CancellationScope.SelectAsync([1], (i, _) => ValueTask.FromResult(i), 1, caller.Token).IsCanceled.Should().BeTrue();
    }

    [Fact]
    public async Task SelectAsync_handles_empty_and_lazy_sources()
    {
        (await CancellationScope.SelectAsync(Array.Empty<int>(), (i, _) => ValueTask.FromResult(i), 4).WithTimeout()).Should().BeEmpty();
        var lazy = Enumerable.Range(0, 50).Where(i => i % 2 == 0);
        (await CancellationScope.SelectAsync(lazy, (i, _) => ValueTask.FromResult(i + 1), 4).WithTimeout()).Should().Equal(lazy.Select(i => i + 1));
    }

    [Fact]
    public async Task SelectAsync_reports_a_failing_source_through_the_task()
    {
        static IEnumerable<int> Broken()
        {
            yield return 1;
            throw new TestException("source");
        }

        var run = CancellationScope.SelectAsync(Broken(), (i, _) => ValueTask.FromResult(i), 2);
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TestException>();
    }

    [Fact]
    public async Task WhenAllSettled_returns_every_outcome_in_order_and_cancels_nothing()
    {
        var clock = new ManualTimeProvider();
        var run = CancellationScope.WhenAllSettled(Enumerable.Range(0, 6), async (i, ct) =>
        {
            await Task.Delay(TimeSpan.FromMilliseconds(10 * (6 - i)), clock, ct);
            return i % 3 == 0 ? throw new TestException("item " + i) : i;
        }, maxConcurrency: 6);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 6);
        clock.AdvanceMilliseconds(60);
        var outcomes = await run.WithTimeout();
        outcomes.Should().HaveCount(6);
        for (var i = 0; i < 6; i++)
        {
            if (i % 3 == 0)
            {
                outcomes[i].Exception.Should().BeOfType<TestException>().Which.Message.Should().Be("item " + i);
            }
            else
            {
                outcomes[i].Exception.Should().BeNull();
                outcomes[i].Result.Should().Be(i);
            }
        }
    }

    [Fact]
    public async Task WhenAllSettled_records_synchronous_throws_and_unrelated_cancellations_as_outcomes()
    {
        using var unrelated = new CancellationTokenSource();
        unrelated.Cancel();
        var outcomes = await CancellationScope.WhenAllSettled<int, int>([0, 1, 2], (i, _) => i switch
        {
            0 => throw new TestException("sync"),
            1 => ValueTask.FromCanceled<int>(unrelated.Token),
            _ => ValueTask.FromResult(i),
        }, 2).WithTimeout();
        outcomes[0].Exception.Should().BeOfType<TestException>();
        outcomes[1].Exception.Should().BeAssignableTo<OperationCanceledException>();
        outcomes[2].Result.Should().Be(2);
    }

    [Fact]
    public async Task WhenAllSettled_throws_OperationCanceledException_when_the_caller_cancels()
    {
        using var caller = new CancellationTokenSource();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = CancellationScope.WhenAllSettled(Enumerable.Range(0, 4), async (i, ct) =>
        {
            started.TrySetResult();
            await Task.Delay(Timeout.Infinite, ct);
            return i;
        }, 4, caller.Token);
        await started.Task.WithTimeout();
        caller.Cancel();
        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
    }

    // Regression: a worker that failed (or a caller that cancelled) while SelectAsync was still starting its workers
    // made the next internal Run throw InvalidOperationException, which was reported as a second failure: an
    // AggregateException [failure, InvalidOperationException] instead of the failure, or an InvalidOperationException
    // instead of an OperationCanceledException. The window is the start loop, so many workers widen it; on the unfixed
    // code these rounds hit it about one time in five (failure) and two times in three (cancellation).
    [Fact]
    public async Task SelectAsync_failure_while_workers_are_still_starting_reports_only_the_failures()
    {
        const int Workers = 20_000;
        var items = Enumerable.Range(0, Workers).ToArray();
        for (var round = 0; round < 30; round++)
        {
            var thrown = await Record.ExceptionAsync(() => CancellationScope.SelectAsync<int, int>(
                items, (i, _) => throw new TestException("item " + i), maxConcurrency: Workers).WithTimeout());

            var reported = thrown is AggregateException aggregate ? aggregate.InnerExceptions.ToArray() : [thrown!];
            reported.Should().AllBeOfType<TestException>("only the selector's failures are reported (round {0})", round);
        }
    }

    [Fact]
    public async Task Caller_cancellation_while_workers_are_still_starting_is_OperationCanceledException()
    {
        const int Workers = 2_000;
        var items = Enumerable.Range(0, Workers).ToArray();
        for (var round = 0; round < 30; round++)
        {
            using var caller = new CancellationTokenSource();
            Func<int, CancellationToken, ValueTask<int>> selector = (i, _) =>
            {
                caller.Cancel();
                return ValueTask.FromResult(i);
            };

            var select = CancellationScope.SelectAsync(items, selector, Workers, caller.Token);
            await FluentActions.Awaiting(() => select.WithTimeout()).Should().ThrowAsync<OperationCanceledException>("round {0}", round);

            using var settledCaller = new CancellationTokenSource();
            var settled = CancellationScope.WhenAllSettled(items, (i, _) =>
            {
                settledCaller.Cancel();
                return ValueTask.FromResult(i);
            }, Workers, settledCaller.Token);
            await FluentActions.Awaiting(() => settled.WithTimeout()).Should().ThrowAsync<OperationCanceledException>("round {0}", round);
        }
    }

    [Fact]
    public void Gather_helpers_refuse_bad_input()
    {
        Func<int, CancellationToken, ValueTask<int>> selector = (i, _) => ValueTask.FromResult(i);
        ((Action)(() => CancellationScope.SelectAsync<int, int>(null!, selector, 1))).Should().Throw<ArgumentNullException>().WithParameterName("source");
        ((Action)(() => CancellationScope.SelectAsync<int, int>([1], null!, 1))).Should().Throw<ArgumentNullException>().WithParameterName("selector");
        ((Action)(() => CancellationScope.SelectAsync([1], selector, 0))).Should().Throw<ArgumentOutOfRangeException>().WithParameterName("maxConcurrency");
        ((Action)(() => CancellationScope.WhenAllSettled<int, int>(null!, selector, 1))).Should().Throw<ArgumentNullException>().WithParameterName("source");
        ((Action)(() => CancellationScope.WhenAllSettled<int, int>([1], null!, 1))).Should().Throw<ArgumentNullException>().WithParameterName("selector");
        ((Action)(() => CancellationScope.WhenAllSettled([1], selector, -1))).Should().Throw<ArgumentOutOfRangeException>().WithParameterName("maxConcurrency");
    }
}
