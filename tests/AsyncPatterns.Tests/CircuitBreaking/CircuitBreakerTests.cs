using System.Runtime.CompilerServices;
using AsyncPatterns.Tests.TestSupport;
using Polly;
using Polly.CircuitBreaker;
using static AsyncPatterns.Tests.CircuitBreaking.CircuitBreakerTestKit;

namespace AsyncPatterns.Tests.CircuitBreaking;

public sealed class CircuitBreakerTests
{
    private readonly ManualTimeProvider _clock = new();

    [Fact]
    public async Task Consecutive_failures_below_the_threshold_with_a_success_between_keep_the_circuit_closed()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 5);

        await breaker.FailTimesAsync(4);
        await breaker.SucceedAsync();
        await breaker.FailTimesAsync(4);

        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().ConsecutiveFailures.Should().Be(4);
        await breaker.SucceedAsync();
        breaker.GetStatistics().ConsecutiveFailures.Should().Be(0);
    }

    [Fact]
    public async Task Threshold_failures_in_a_row_open_the_circuit()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 5);

        await breaker.FailTimesAsync(4);
        breaker.State.Should().Be(CircuitState.Closed);
        await breaker.FailAsync();

        breaker.State.Should().Be(CircuitState.Open);
        breaker.GetStatistics().TimesOpened.Should().Be(1);
    }

    [Fact]
    public async Task An_open_circuit_refuses_without_running_the_action_and_RetryAfter_is_the_break_left()
    {
        var breaker = Create(_clock);
        await breaker.FailTimesAsync(3);
        _clock.Advance(TimeSpan.FromSeconds(10));
        var ran = 0;

        var refusal = await breaker.Invoking(b => b.ExecuteAsync(_ => { ran++; return new ValueTask<int>(1); }).AsTask())
            .Should().ThrowAsync<BrokenCircuitException>();

        ran.Should().Be(0);
        refusal.Which.RetryAfter.Should().Be(TimeSpan.FromSeconds(50));
        refusal.Which.InnerException.Should().BeOfType<InvalidOperationException>().Which.Message.Should().Be("boom");
        refusal.Which.Should().BeAssignableTo<ExecutionRejectedException>();

        _clock.Advance(TimeSpan.FromSeconds(49.5));
        (await breaker.Invoking(b => b.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>())
            .Which.RetryAfter.Should().Be(TimeSpan.FromSeconds(0.5));
        breaker.GetStatistics().Rejections.Should().Be(2);
    }

    [Fact]
    public async Task State_reads_open_after_the_break_until_a_call_arrives_as_in_Polly()
    {
        var breaker = Create(_clock);
        await breaker.FailTimesAsync(3);

        _clock.Advance(Break + TimeSpan.FromSeconds(5));

        breaker.State.Should().Be(CircuitState.Open);
        var gate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var trial = breaker.ExecuteAsync(_ => new ValueTask<int>(gate.Task)).AsTask();
        breaker.State.Should().Be(CircuitState.HalfOpen);
        gate.SetResult(7);
        (await trial.WithTimeout()).Should().Be(7);
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task A_trial_success_closes_and_clears_the_failure_count()
    {
        var breaker = Create(_clock);
        await breaker.FailTimesAsync(3);
        _clock.Advance(Break);

        await breaker.SucceedAsync();

        breaker.State.Should().Be(CircuitState.Closed);
        await breaker.FailTimesAsync(2);
        breaker.State.Should().Be(CircuitState.Closed, "the run of failures started again from 0");
    }

    [Fact]
    public async Task A_trial_failure_reopens_for_a_full_break()
    {
        var breaker = Create(_clock);
        await breaker.FailTimesAsync(3);
        _clock.Advance(Break + TimeSpan.FromSeconds(1));

        await breaker.FailAsync();

        breaker.State.Should().Be(CircuitState.Open);
        (await breaker.Invoking(b => b.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>())
            .Which.RetryAfter.Should().Be(Break);
        _clock.Advance(Break - TimeSpan.FromTicks(1));
        await breaker.Invoking(b => b.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>();
        _clock.Advance(TimeSpan.FromTicks(1));
        await breaker.SucceedAsync();
        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().TimesOpened.Should().Be(2);
    }

    [Fact]
    public async Task Half_open_admits_exactly_HalfOpenMaxCalls_concurrent_trials_and_refuses_the_rest()
    {
        var breaker = Create(_clock, o => o.HalfOpenMaxCalls = 3);
        await breaker.FailTimesAsync(3);
        _clock.Advance(Break);
        var gate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var entered = 0;

        var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var callers = Enumerable.Range(0, 10).Select(_ => Task.Run(async () =>
        {
            await start.Task; // released together; no pool thread is blocked while waiting
            try
            {
                return await breaker.ExecuteAsync(async _ =>
                {
                    Interlocked.Increment(ref entered);
                    return await gate.Task;
                });
            }
            catch (BrokenCircuitException)
            {
                return -1;
            }
        })).ToArray();

        start.SetResult();
        await AsyncAssert.EventuallyAsync(() => breaker.GetStatistics().Rejections == 7, "seven callers should be refused");
        Volatile.Read(ref entered).Should().Be(3);
        breaker.State.Should().Be(CircuitState.HalfOpen);
        breaker.GetStatistics().HalfOpenTrialsInFlight.Should().Be(3);

        gate.SetResult(1);
        var results = await Task.WhenAll(callers).WithTimeout();

        results.Count(r => r == 1).Should().Be(3);
        results.Count(r => r == -1).Should().Be(7);
        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().Successes.Should().Be(3);
    }

    [Fact]
    public async Task A_hung_trial_does_not_hold_the_circuit_half_open_once_another_break_has_passed()
    {
        var breaker = Create(_clock);
        await breaker.FailTimesAsync(3);
        _clock.Advance(Break);
        var hung = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var hungTrial = breaker.ExecuteAsync(_ => new ValueTask<int>(hung.Task)).AsTask();
        breaker.State.Should().Be(CircuitState.HalfOpen);

        _clock.Advance(Break - TimeSpan.FromSeconds(1));
        (await breaker.Invoking(b => b.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>())
            .Which.RetryAfter.Should().Be(TimeSpan.FromSeconds(1));

        _clock.Advance(TimeSpan.FromSeconds(1));
        await breaker.SucceedAsync();
        breaker.State.Should().Be(CircuitState.Closed);

        // The abandoned trial finally fails: its outcome is counted but changes nothing.
        hung.SetException(new InvalidOperationException("late"));
        await hungTrial.Invoking(t => t.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().Failures.Should().Be(4);
    }

    [Fact]
    public async Task A_new_trial_after_a_hung_one_can_also_reopen_the_circuit()
    {
        var breaker = Create(_clock);
        await breaker.FailTimesAsync(3);
        _clock.Advance(Break);
        var hung = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var hungTrial = breaker.ExecuteAsync(_ => new ValueTask<int>(hung.Task)).AsTask();
        _clock.Advance(Break);

        await breaker.FailAsync();

        breaker.State.Should().Be(CircuitState.Open);
        hung.SetResult(1);
        (await hungTrial.WithTimeout()).Should().Be(1);
        breaker.State.Should().Be(CircuitState.Open, "a success from an abandoned trial must not close the circuit");
    }

    [Fact]
    public async Task A_trial_cancelled_by_its_caller_frees_its_slot_at_once()
    {
        var breaker = Create(_clock);
        await breaker.FailTimesAsync(3);
        _clock.Advance(Break);
        using var cts = new CancellationTokenSource();
        var trial = breaker.ExecuteAsync(async ct => { await Task.Delay(Timeout.Infinite, ct); return 1; }, cts.Token).AsTask();
        await breaker.Invoking(b => b.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>();

        await cts.CancelAsync();
        await trial.Invoking(t => t.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();

        breaker.State.Should().Be(CircuitState.HalfOpen);
        await breaker.SucceedAsync();
        breaker.State.Should().Be(CircuitState.Closed);
    }

    public static TheoryData<CircuitState> EveryState => [CircuitState.Closed, CircuitState.Open, CircuitState.HalfOpen, CircuitState.Isolated];

    [Theory]
    [MemberData(nameof(EveryState))]
    public async Task Isolate_works_from_every_state_and_refuses_with_IsolatedCircuitException(CircuitState from)
    {
        var breaker = await InStateAsync(from);
        var ran = 0;

        breaker.Isolate();

        breaker.State.Should().Be(CircuitState.Isolated);
        _clock.Advance(Break * 10);
        await breaker.Invoking(b => b.ExecuteAsync(_ => { ran++; return new ValueTask<int>(1); }).AsTask())
            .Should().ThrowAsync<IsolatedCircuitException>();
        ran.Should().Be(0);
        breaker.State.Should().Be(CircuitState.Isolated, "only Reset leaves isolation");

        breaker.Reset();
        breaker.State.Should().Be(CircuitState.Closed);
        await breaker.SucceedAsync();
    }

    [Theory]
    [MemberData(nameof(EveryState))]
    public async Task Reset_closes_from_every_state_and_clears_the_failure_count(CircuitState from)
    {
        var breaker = await InStateAsync(from);

        breaker.Reset();

        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().ConsecutiveFailures.Should().Be(0);
        await breaker.FailTimesAsync(2);
        breaker.State.Should().Be(CircuitState.Closed);
        await breaker.FailAsync();
        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task A_trial_running_when_the_circuit_is_reset_counts_only_as_a_closed_state_outcome_when_it_finishes()
    {
        var breaker = await InStateAsync(CircuitState.HalfOpen, out var trialGate);
        breaker.Reset();

        trialGate.SetException(new InvalidOperationException("late"));
        await AsyncAssert.EventuallyAsync(() => breaker.GetStatistics().Failures == 4);

        await AsyncAssert.EventuallyAsync(() => breaker.GetStatistics().ConsecutiveFailures == 1, "as in Polly, an outcome arriving while closed is counted");
        breaker.State.Should().Be(CircuitState.Closed, "a trial failure re-opens only a half-open circuit");
    }

    [Fact]
    public async Task Cancellation_through_the_callers_token_is_neither_failure_nor_success()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 1);
        using var cts = new CancellationTokenSource();

        var call = breaker.ExecuteAsync(async ct => { await Task.Delay(Timeout.Infinite, ct); return 1; }, cts.Token).AsTask();
        await cts.CancelAsync();

        await call.Invoking(c => c.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        breaker.State.Should().Be(CircuitState.Closed);
        var stats = breaker.GetStatistics();
        (stats.IgnoredOutcomes, stats.Failures, stats.Successes).Should().Be((1L, 0L, 0L));
    }

    [Fact]
    public async Task A_cancellation_the_caller_did_not_ask_for_is_a_failure()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 1);

        await breaker.Invoking(b => b.ExecuteAsync<int>(_ => throw new TaskCanceledException("upstream timeout")).AsTask())
            .Should().ThrowAsync<TaskCanceledException>();

        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task An_already_cancelled_token_returns_a_cancelled_task_without_running_or_counting()
    {
        var breaker = Create(_clock);
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();
        var ran = false;

        var call = breaker.ExecuteAsync(_ => { ran = true; return new ValueTask<int>(1); }, cts.Token);

        call.IsCanceled.Should().BeTrue();
        ran.Should().BeFalse();
        var stats = breaker.GetStatistics();
        (stats.Successes + stats.Failures + stats.IgnoredOutcomes + stats.Rejections).Should().Be(0);
        var outcome = await breaker.ExecuteOutcomeAsync(Ok, cts.Token);
        outcome.Exception.Should().BeOfType<OperationCanceledException>();
    }

    [Fact]
    public async Task ShouldHandle_decides_what_is_a_failure_and_a_declined_exception_counts_as_a_success()
    {
        var breaker = Create(_clock, o =>
        {
            o.FailureThreshold = 2;
            o.ShouldHandle = ex => ex is InvalidOperationException;
        });

        await breaker.FailAsync();
        await breaker.Invoking(b => b.ExecuteAsync<int>(_ => throw new ArgumentException("declined")).AsTask())
            .Should().ThrowAsync<ArgumentException>();
        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().ConsecutiveFailures.Should().Be(0, "as in Polly v8, a declined exception is a success and resets the run");

        await breaker.FailAsync();
        breaker.State.Should().Be(CircuitState.Closed);
        await breaker.FailAsync();
        breaker.State.Should().Be(CircuitState.Open);
        breaker.GetStatistics().Successes.Should().Be(1);
    }

    [Fact]
    public async Task A_throwing_ShouldHandle_counts_the_outcome_as_a_failure()
    {
        var breaker = Create(_clock, o =>
        {
            o.FailureThreshold = 1;
            o.ShouldHandle = _ => throw new NotSupportedException("bad predicate");
        });

        await breaker.FailAsync();

        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task An_action_that_throws_synchronously_is_counted_and_its_exception_rethrown()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 1);

        await breaker.Invoking(b => b.ExecuteAsync<int>(_ => throw new FormatException("sync")).AsTask())
            .Should().ThrowAsync<FormatException>().WithMessage("sync");

        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task The_non_generic_and_state_overloads_run_through_the_same_circuit()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 2);
        var calls = 0;

        await breaker.ExecuteAsync(_ => { calls++; return ValueTask.CompletedTask; });
        await breaker.ExecuteAsync(static (box, _) => { box.Value++; return ValueTask.CompletedTask; }, new StrongBox<int>());
        (await breaker.ExecuteAsync(static (n, _) => new ValueTask<int>(n * 2), 21)).Should().Be(42);
        await breaker.Invoking(b => b.ExecuteAsync(async _ => { await Task.Yield(); throw new InvalidOperationException(); }).AsTask())
            .Should().ThrowAsync<InvalidOperationException>();
        await breaker.Invoking(b => b.ExecuteAsync(static (_, _) => ValueTask.FromException(new InvalidOperationException()), 0).AsTask())
            .Should().ThrowAsync<InvalidOperationException>();

        calls.Should().Be(1);
        breaker.State.Should().Be(CircuitState.Open);
        await breaker.Invoking(b => b.ExecuteAsync(_ => ValueTask.CompletedTask).AsTask()).Should().ThrowAsync<BrokenCircuitException>();
        breaker.GetStatistics().Successes.Should().Be(3);
    }

    [Fact]
    public async Task ExecuteOutcomeAsync_never_throws_for_refusals_or_failures()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 1);

        var ok = await breaker.ExecuteOutcomeAsync(Ok);
        var failed = await breaker.ExecuteOutcomeAsync(Boom);
        var refused = await breaker.ExecuteOutcomeAsync(Ok);
        var refusedWithState = await breaker.ExecuteOutcomeAsync(static (n, _) => new ValueTask<int>(n), 5);

        ok.Result.Should().Be(42);
        failed.Exception.Should().BeOfType<InvalidOperationException>();
        refused.Exception.Should().BeOfType<BrokenCircuitException>().Which.RetryAfter.Should().Be(Break);
        refusedWithState.Exception.Should().BeOfType<BrokenCircuitException>();
        breaker.Isolate();
        (await breaker.ExecuteOutcomeAsync(Ok)).Exception.Should().BeOfType<IsolatedCircuitException>();
        var stats = breaker.GetStatistics();
        (stats.Successes, stats.Failures, stats.Rejections).Should().Be((1L, 1L, 3L));
    }

    [Fact]
    public async Task ExecuteOutcomeAsync_counts_asynchronous_outcomes_and_trials()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 1);
        var failed = await breaker.ExecuteOutcomeAsync(async _ => { await Task.Yield(); return Throw(); });
        _clock.Advance(Break);

        var trial = await breaker.ExecuteOutcomeAsync(async _ => { await Task.Yield(); return 3; });

        failed.Exception.Should().BeOfType<InvalidOperationException>();
        trial.Result.Should().Be(3);
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task Statistics_account_for_every_call()
    {
        var breaker = Create(_clock, o => o.ShouldHandle = ex => ex is InvalidOperationException);
        await breaker.SucceedAsync();
        await breaker.SucceedAsync();
        await breaker.Invoking(b => b.ExecuteAsync<int>(_ => throw new ArgumentException()).AsTask()).Should().ThrowAsync<ArgumentException>();
        await breaker.FailTimesAsync(3);
        await breaker.Invoking(b => b.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>();

        var stats = breaker.GetStatistics();

        stats.State.Should().Be(CircuitState.Open);
        (stats.Successes, stats.Failures, stats.IgnoredOutcomes, stats.Rejections, stats.TimesOpened).Should().Be((3L, 3L, 0L, 1L, 1L));
        stats.ConsecutiveFailures.Should().Be(3);
        stats.HalfOpenTrialsInFlight.Should().Be(0);
    }

    [Fact]
    public async Task Options_are_copied_so_later_changes_have_no_effect()
    {
        var options = new CircuitBreakerOptions { TimeProvider = _clock, FailureThreshold = 2, Name = "copied" };
        var breaker = new CircuitBreaker(options);
        options.FailureThreshold = 100;
        options.Name = "changed";

        await breaker.FailTimesAsync(2);

        breaker.State.Should().Be(CircuitState.Open);
        breaker.Name.Should().Be("copied");
    }

    [Fact]
    public async Task Defaults_are_the_documented_ones()
    {
        var options = new CircuitBreakerOptions();
        (options.FailureThreshold, options.FailureRatio, options.MinimumThroughput, options.HalfOpenMaxCalls).Should().Be((5, (double?)null, 10, 1));
        (options.SamplingDuration, options.BreakDuration).Should().Be((TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(60)));

        var breaker = new CircuitBreaker();
        breaker.Name.Should().Be("CircuitBreaker");
        for (var i = 0; i < 4; i++)
        {
            await breaker.FailAsync();
        }

        breaker.State.Should().Be(CircuitState.Closed);
        await breaker.FailAsync();
        (await breaker.Invoking(b => b.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>())
            .Which.RetryAfter.Should().BeCloseTo(TimeSpan.FromSeconds(60), TimeSpan.FromSeconds(10));
    }

    private static int Throw() => throw new InvalidOperationException();

    private Task<CircuitBreaker> InStateAsync(CircuitState state) => InStateAsync(state, out _);

    private Task<CircuitBreaker> InStateAsync(CircuitState state, out TaskCompletionSource<int> trialGate)
    {
        var gate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        trialGate = gate;
        return Build();

        async Task<CircuitBreaker> Build()
        {
            var breaker = Create(_clock);
            if (state == CircuitState.Isolated)
            {
                breaker.Isolate();
            }
            else if (state != CircuitState.Closed)
            {
                await breaker.FailTimesAsync(3);
                if (state == CircuitState.HalfOpen)
                {
                    _clock.Advance(Break);
                    _ = breaker.ExecuteAsync(_ => new ValueTask<int>(gate.Task)).AsTask().ContinueWith(
                        t => t.Exception, TaskScheduler.Default);
                }
            }
            else
            {
                await breaker.FailTimesAsync(2);
            }

            breaker.State.Should().Be(state);
            return breaker;
        }
    }
}
