using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using AsyncPatterns.Tests.TestSupport;
using Microsoft.Extensions.Logging;
using Polly;
using Polly.CircuitBreaker;
using Polly.Retry;
using Polly.Timeout;

namespace AsyncPatterns.Tests.Contract;

/// <summary>
/// Black-box tests of DESIGN.md's "Rejections", "Circuit breaker" and shared rules, written from the contract
/// (and Polly v8's breaker semantics) without reading the implementation.
/// </summary>
public sealed class CircuitBreakerBlackBoxTests
{
    private static readonly TimeSpan Break = TimeSpan.FromSeconds(60);
    private readonly ManualTimeProvider _clock = new();

    private CircuitBreaker Create(Action<CircuitBreakerOptions>? configure = null)
    {
        var options = new CircuitBreakerOptions { TimeProvider = _clock, BreakDuration = Break, FailureThreshold = 3 };
        configure?.Invoke(options);
        return new CircuitBreaker(options);
    }

    private sealed class BoomException(string message = "boom") : Exception(message);

    private static Task<int> Run(CircuitBreaker breaker, Func<CancellationToken, ValueTask<int>> action, CancellationToken ct = default) =>
        breaker.ExecuteAsync(action, ct).AsTask().WithTimeout();

    private static async Task<BoomException> FailOnce(CircuitBreaker breaker)
    {
        var boom = new BoomException();
        var thrown = await FluentActions.Awaiting(() => Run(breaker, _ => ValueTask.FromException<int>(boom)))
            .Should().ThrowAsync<BoomException>();
        thrown.Which.Should().BeSameAs(boom, "the action's exception is rethrown unchanged");
        return boom;
    }

    private static async Task<BoomException> FailTimes(CircuitBreaker breaker, int times)
    {
        BoomException last = null!;
        for (var i = 0; i < times; i++)
        {
            last = await FailOnce(breaker);
        }

        return last;
    }

    private static async Task SucceedOnce(CircuitBreaker breaker) =>
        (await Run(breaker, _ => new ValueTask<int>(42))).Should().Be(42);

    private static async Task<TException> Refused<TException>(CircuitBreaker breaker)
        where TException : Exception
    {
        var ran = false;
        var thrown = await FluentActions.Awaiting(() => Run(breaker, _ => { ran = true; return new ValueTask<int>(1); }))
            .Should().ThrowAsync<TException>();
        ran.Should().BeFalse("a refused call does not run");
        return thrown.Which;
    }

    // ---------------------------------------------------------------- options

    [Fact]
    public void Defaults_are_the_documented_ones_and_a_null_or_default_breaker_is_closed()
    {
        var o = new CircuitBreakerOptions();
        o.FailureThreshold.Should().Be(5);
        o.FailureRatio.Should().BeNull();
        o.MinimumThroughput.Should().Be(10);
        o.SamplingDuration.Should().Be(TimeSpan.FromSeconds(30));
        o.BreakDuration.Should().Be(TimeSpan.FromSeconds(60));
        o.HalfOpenMaxCalls.Should().Be(1);
        o.ShouldHandle.Should().BeNull();
        o.OnStateChanged.Should().BeNull();
        o.Name.Should().BeNull();
        o.TimeProvider.Should().BeNull();
        o.LoggerFactory.Should().BeNull();

        new CircuitBreaker().State.Should().Be(CircuitState.Closed);
        new CircuitBreaker(null).State.Should().Be(CircuitState.Closed);
        new CircuitBreaker(o).GetStatistics().State.Should().Be(CircuitState.Closed);
    }

    public static TheoryData<string, Action<CircuitBreakerOptions>> BadOptions => new()
    {
        { nameof(CircuitBreakerOptions.FailureThreshold), o => o.FailureThreshold = 0 },
        { nameof(CircuitBreakerOptions.FailureThreshold), o => o.FailureThreshold = int.MinValue },
        { nameof(CircuitBreakerOptions.FailureRatio), o => o.FailureRatio = 0 },
        { nameof(CircuitBreakerOptions.FailureRatio), o => o.FailureRatio = -0.5 },
        { nameof(CircuitBreakerOptions.FailureRatio), o => o.FailureRatio = 1.0001 },
        { nameof(CircuitBreakerOptions.FailureRatio), o => o.FailureRatio = double.NaN },
        { nameof(CircuitBreakerOptions.FailureRatio), o => o.FailureRatio = double.PositiveInfinity },
        { nameof(CircuitBreakerOptions.MinimumThroughput), o => o.MinimumThroughput = 0 },
        { nameof(CircuitBreakerOptions.MinimumThroughput), o => o.MinimumThroughput = -3 },
        { nameof(CircuitBreakerOptions.SamplingDuration), o => o.SamplingDuration = TimeSpan.Zero },
        { nameof(CircuitBreakerOptions.SamplingDuration), o => o.SamplingDuration = TimeSpan.FromSeconds(-1) },
        { nameof(CircuitBreakerOptions.BreakDuration), o => o.BreakDuration = TimeSpan.Zero },
        { nameof(CircuitBreakerOptions.BreakDuration), o => o.BreakDuration = TimeSpan.FromMilliseconds(-5) },
        { nameof(CircuitBreakerOptions.HalfOpenMaxCalls), o => o.HalfOpenMaxCalls = 0 },
        { nameof(CircuitBreakerOptions.HalfOpenMaxCalls), o => o.HalfOpenMaxCalls = -1 },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public void A_bad_option_throws_an_argument_exception_naming_it_with_a_useful_message(string option, Action<CircuitBreakerOptions> configure)
    {
        var options = new CircuitBreakerOptions();
        configure(options);
        var ex = FluentActions.Invoking(() => new CircuitBreaker(options)).Should().Throw<ArgumentException>().Which;
        ex.ParamName.Should().Be(option);
        ex.Message.Length.Should().BeGreaterThan(option.Length + 10, "the message says what is allowed");
    }

    [Fact]
    public void Edge_values_that_are_allowed_do_not_throw()
    {
        FluentActions.Invoking(() => new CircuitBreaker(new CircuitBreakerOptions { FailureRatio = 1.0 })).Should().NotThrow();
        FluentActions.Invoking(() => new CircuitBreaker(new CircuitBreakerOptions { FailureRatio = 0.0001, MinimumThroughput = 2 })).Should().NotThrow();
        FluentActions.Invoking(() => new CircuitBreaker(new CircuitBreakerOptions { FailureThreshold = 1, HalfOpenMaxCalls = 1 })).Should().NotThrow();
        FluentActions.Invoking(() => new CircuitBreaker(new CircuitBreakerOptions { BreakDuration = TimeSpan.FromTicks(1), SamplingDuration = TimeSpan.FromTicks(1) })).Should().NotThrow();
        FluentActions.Invoking(() => new CircuitBreaker(new CircuitBreakerOptions { BreakDuration = TimeSpan.MaxValue })).Should().NotThrow();
    }

    [Fact]
    public async Task Options_are_copied_so_later_changes_have_no_effect()
    {
        var options = new CircuitBreakerOptions { TimeProvider = _clock, FailureThreshold = 2, BreakDuration = Break };
        var breaker = new CircuitBreaker(options);
        options.FailureThreshold = 100;
        options.BreakDuration = TimeSpan.FromHours(5);
        options.TimeProvider = null;
        options.FailureRatio = 0.9;

        await FailTimes(breaker, 2);
        breaker.State.Should().Be(CircuitState.Open);
        var refusal = await Refused<BrokenCircuitException>(breaker);
        refusal.RetryAfter.Should().Be(Break);

        _clock.Advance(Break);
        await SucceedOnce(breaker);
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public void Name_defaults_to_the_type_name_and_uses_the_option()
    {
        new CircuitBreaker().Name.Should().Be("CircuitBreaker");
        new CircuitBreaker(new CircuitBreakerOptions { Name = "inventory" }).Name.Should().Be("inventory");
    }

    [Fact]
    public async Task A_null_action_throws_ArgumentNullException()
    {
        var breaker = Create();
        FluentActions.Invoking(() => breaker.ExecuteAsync<int>(null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => breaker.ExecuteAsync((Func<CancellationToken, ValueTask>)null!)).Should().Throw<ArgumentNullException>();
        await SucceedOnce(breaker);
    }

    // ---------------------------------------------------------------- closed, consecutive mode

    [Fact]
    public async Task Closed_calls_pass_with_results_and_the_action_gets_the_callers_token()
    {
        var breaker = Create();
        using var cts = new CancellationTokenSource();
        CancellationToken seen = default;
        var result = await breaker.ExecuteAsync(ct => { seen = ct; return new ValueTask<string>("hi"); }, cts.Token).AsTask().WithTimeout();
        result.Should().Be("hi");
        seen.Should().Be(cts.Token);

        var ran = 0;
        await breaker.ExecuteAsync(_ => { ran++; return ValueTask.CompletedTask; }).WithTimeout();
        ran.Should().Be(1);
    }

    [Fact]
    public async Task A_synchronous_success_completes_synchronously()
    {
        var breaker = Create();
        var task = breaker.ExecuteAsync(_ => new ValueTask<int>(5)).AsTask();
        task.IsCompletedSuccessfully.Should().BeTrue();
        (await task).Should().Be(5);
        breaker.ExecuteAsync(_ => ValueTask.CompletedTask).AsTask().IsCompletedSuccessfully.Should().BeTrue();
    }

    [Fact]
    public async Task Opens_after_exactly_FailureThreshold_failures_in_a_row()
    {
        var breaker = Create();
        await FailTimes(breaker, 2);
        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().ConsecutiveFailures.Should().Be(2);
        await FailOnce(breaker);
        breaker.State.Should().Be(CircuitState.Open);
        breaker.GetStatistics().TimesOpened.Should().Be(1);
    }

    [Fact]
    public async Task A_success_resets_the_run_of_failures()
    {
        var breaker = Create();
        for (var round = 0; round < 5; round++)
        {
            await FailTimes(breaker, 2);
            await SucceedOnce(breaker);
            breaker.GetStatistics().ConsecutiveFailures.Should().Be(0);
        }

        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().TimesOpened.Should().Be(0);
    }

    [Fact]
    public async Task FailureThreshold_one_opens_on_the_first_failure()
    {
        var breaker = Create(o => o.FailureThreshold = 1);
        await FailOnce(breaker);
        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task Failures_spread_over_time_still_count_in_consecutive_mode()
    {
        var breaker = Create();
        await FailOnce(breaker);
        _clock.Advance(TimeSpan.FromHours(1));
        await FailOnce(breaker);
        _clock.Advance(TimeSpan.FromDays(1));
        await FailOnce(breaker);
        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task A_synchronously_throwing_action_is_counted_and_its_exception_propagates()
    {
        var breaker = Create(o => o.FailureThreshold = 2);
        for (var i = 0; i < 2; i++)
        {
            await FluentActions.Awaiting(() => breaker.ExecuteAsync<int>(_ => throw new BoomException()).AsTask().WithTimeout())
                .Should().ThrowAsync<BoomException>();
        }

        breaker.State.Should().Be(CircuitState.Open);
        breaker.GetStatistics().Failures.Should().Be(2);
    }

    [Fact]
    public async Task The_non_generic_overload_counts_failures_the_same()
    {
        var breaker = Create(o => o.FailureThreshold = 2);
        for (var i = 0; i < 2; i++)
        {
            await FluentActions.Awaiting(() => breaker.ExecuteAsync(async _ => { await Task.Yield(); throw new BoomException(); }).WithTimeout())
                .Should().ThrowAsync<BoomException>();
        }

        breaker.State.Should().Be(CircuitState.Open);
        var ran = false;
        await FluentActions.Awaiting(() => breaker.ExecuteAsync(_ => { ran = true; return ValueTask.CompletedTask; }).WithTimeout())
            .Should().ThrowAsync<BrokenCircuitException>();
        ran.Should().BeFalse();
    }

    // ---------------------------------------------------------------- open

    [Fact]
    public async Task Open_refuses_without_running_with_BrokenCircuitException_carrying_time_left_and_the_cause()
    {
        var breaker = Create(o => o.Name = "inventory");
        var cause = await FailTimes(breaker, 3);

        var refusal = await Refused<BrokenCircuitException>(breaker);
        refusal.Should().BeAssignableTo<ExecutionRejectedException>("one catch covers our refusals and Polly's");
        refusal.Should().NotBeOfType<IsolatedCircuitException>();
        refusal.RetryAfter.Should().Be(Break);
        refusal.InnerException.Should().BeSameAs(cause);
        refusal.Message.Should().Contain("inventory", "refusal messages name the breaker");

        _clock.Advance(TimeSpan.FromSeconds(25));
        (await Refused<BrokenCircuitException>(breaker)).RetryAfter.Should().Be(TimeSpan.FromSeconds(35));
        _clock.Advance(TimeSpan.FromSeconds(35) - TimeSpan.FromTicks(1));
        (await Refused<BrokenCircuitException>(breaker)).RetryAfter.Should().Be(TimeSpan.FromTicks(1));
        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task Open_refusals_are_catchable_as_ExecutionRejectedException()
    {
        var breaker = Create(o => o.FailureThreshold = 1);
        await FailOnce(breaker);
        try
        {
            await breaker.ExecuteAsync(_ => new ValueTask<int>(1));
            throw new Xunit.Sdk.XunitException("expected a refusal");
        }
        catch (ExecutionRejectedException ex)
        {
            ex.Should().BeOfType<BrokenCircuitException>();
        }
    }

    [Fact]
    public async Task Refusals_are_counted_and_every_call_lands_in_exactly_one_statistic()
    {
        var breaker = Create();
        await SucceedOnce(breaker);
        await FailTimes(breaker, 3);
        for (var i = 0; i < 4; i++)
        {
            await Refused<BrokenCircuitException>(breaker);
        }

        using var cts = new CancellationTokenSource();
        await FluentActions.Awaiting(() => Run(breaker, _ => new ValueTask<int>(1), CancellationToken.None)).Should().ThrowAsync<BrokenCircuitException>();

        var s = breaker.GetStatistics();
        s.State.Should().Be(CircuitState.Open);
        s.Successes.Should().Be(1);
        s.Failures.Should().Be(3);
        s.Rejections.Should().Be(5);
        s.IgnoredOutcomes.Should().Be(0);
        s.TimesOpened.Should().Be(1);
        (s.Successes + s.Failures + s.IgnoredOutcomes + s.Rejections).Should().Be(9);
        s.HalfOpenTrialsInFlight.Should().Be(0);
    }

    // ---------------------------------------------------------------- half-open

    [Fact]
    public async Task After_the_break_a_trial_runs_half_open_and_its_success_closes()
    {
        var breaker = Create();
        await FailTimes(breaker, 3);
        _clock.Advance(Break);

        var trialRunning = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var trial = breaker.ExecuteAsync(async _ => { trialRunning.SetResult(); return await release.Task; }).AsTask();
        await trialRunning.Task.WithTimeout();
        breaker.State.Should().Be(CircuitState.HalfOpen);
        breaker.GetStatistics().HalfOpenTrialsInFlight.Should().Be(1);

        var refusal = await Refused<BrokenCircuitException>(breaker);
        refusal.Should().NotBeOfType<IsolatedCircuitException>();
        refusal.RetryAfter.Should().NotBeNull("a half-open refusal says when to come back");

        release.SetResult(7);
        (await trial.WithTimeout()).Should().Be(7);
        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().HalfOpenTrialsInFlight.Should().Be(0);
        await SucceedOnce(breaker);

        // Closed again with a fresh count: it takes a full threshold to re-open.
        await FailTimes(breaker, 2);
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task A_failed_trial_reopens_for_another_full_break()
    {
        var changes = new ConcurrentQueue<CircuitStateChange>();
        var breaker = Create(o => o.OnStateChanged = c => { changes.Enqueue(c); return ValueTask.CompletedTask; });
        await FailTimes(breaker, 3);
        _clock.Advance(Break + TimeSpan.FromSeconds(10));

        var trialCause = await FailOnce(breaker);
        breaker.State.Should().Be(CircuitState.Open);
        var refusal = await Refused<BrokenCircuitException>(breaker);
        refusal.RetryAfter.Should().Be(Break);
        refusal.InnerException.Should().BeSameAs(trialCause);
        breaker.GetStatistics().TimesOpened.Should().Be(2);

        _clock.Advance(Break - TimeSpan.FromTicks(1));
        await Refused<BrokenCircuitException>(breaker);
        _clock.Advance(TimeSpan.FromTicks(1));
        await SucceedOnce(breaker);
        breaker.State.Should().Be(CircuitState.Closed);

        changes.Select(c => (c.PreviousState, c.NewState)).Should().Equal(
            (CircuitState.Closed, CircuitState.Open),
            (CircuitState.Open, CircuitState.HalfOpen),
            (CircuitState.HalfOpen, CircuitState.Open),
            (CircuitState.Open, CircuitState.HalfOpen),
            (CircuitState.HalfOpen, CircuitState.Closed));
    }

    [Fact]
    public async Task HalfOpenMaxCalls_trials_run_at_once_and_the_rest_are_refused()
    {
        var breaker = Create(o => o.HalfOpenMaxCalls = 3);
        await FailTimes(breaker, 3);
        _clock.Advance(Break);

        var release = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = 0;
        var calls = Enumerable.Range(0, 10)
            .Select(_ => breaker.ExecuteAsync(async __ => { Interlocked.Increment(ref started); return await release.Task; }).AsTask())
            .ToList();

        await AsyncAssert.EventuallyAsync(() => calls.Count(c => c.IsFaulted) == 7, "7 of 10 are refused at once");
        started.Should().Be(3);
        breaker.GetStatistics().HalfOpenTrialsInFlight.Should().Be(3);
        calls.Where(c => c.IsFaulted).Should().OnlyContain(c => c.Exception!.InnerException is BrokenCircuitException);

        release.SetResult(1);
        await Task.WhenAll(calls.Where(c => !c.IsFaulted)).WithTimeout();
        breaker.State.Should().Be(CircuitState.Closed);
        var s = breaker.GetStatistics();
        s.Rejections.Should().Be(7);
        s.Successes.Should().Be(3);
    }

    [Fact]
    public async Task A_hung_trial_does_not_hold_the_circuit_half_open_forever()
    {
        var breaker = Create();
        await FailTimes(breaker, 3);
        _clock.Advance(Break);

        var hung = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var hungCall = breaker.ExecuteAsync(_ => new ValueTask<int>(hung.Task)).AsTask();
        breaker.State.Should().Be(CircuitState.HalfOpen);

        (await Refused<BrokenCircuitException>(breaker)).RetryAfter.Should().Be(Break);
        _clock.Advance(TimeSpan.FromSeconds(45));
        (await Refused<BrokenCircuitException>(breaker)).RetryAfter.Should().Be(TimeSpan.FromSeconds(15));
        _clock.Advance(TimeSpan.FromSeconds(15));

        // After another BreakDuration with the trial still out, a new trial is admitted.
        await SucceedOnce(breaker);
        breaker.State.Should().Be(CircuitState.Closed);

        // The abandoned trial finishing late with a failure is one closed-state failure: not enough to open.
        hung.SetException(new BoomException());
        await FluentActions.Awaiting(() => hungCall.WithTimeout()).Should().ThrowAsync<BoomException>();
        breaker.State.Should().Be(CircuitState.Closed);
        var s = breaker.GetStatistics();
        (s.Successes + s.Failures + s.IgnoredOutcomes + s.Rejections).Should().Be(3 + 1 + 2 + 1);
    }

    [Fact]
    public async Task A_hung_trial_that_later_fails_after_a_replacement_trial_failed_too_leaves_it_open()
    {
        var breaker = Create();
        await FailTimes(breaker, 3);
        _clock.Advance(Break);
        var hung = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var hungCall = breaker.ExecuteAsync(_ => new ValueTask<int>(hung.Task)).AsTask();
        _clock.Advance(Break);
        await FailOnce(breaker);                         // the replacement trial fails: open again
        breaker.State.Should().Be(CircuitState.Open);
        hung.SetResult(1);                               // the abandoned one cannot close it
        (await hungCall.WithTimeout()).Should().Be(1);
        breaker.State.Should().Be(CircuitState.Open);
        (await Refused<BrokenCircuitException>(breaker)).RetryAfter.Should().Be(Break);
    }

    [Fact]
    public async Task A_trial_cancelled_by_its_caller_frees_its_slot()
    {
        var breaker = Create();
        await FailTimes(breaker, 3);
        _clock.Advance(Break);

        using var cts = new CancellationTokenSource();
        var trial = breaker.ExecuteAsync(async ct => { await Task.Delay(Timeout.Infinite, ct); return 0; }, cts.Token).AsTask();
        breaker.State.Should().Be(CircuitState.HalfOpen);
        await Refused<BrokenCircuitException>(breaker);
        cts.Cancel();
        await FluentActions.Awaiting(() => trial.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();

        breaker.State.Should().NotBe(CircuitState.Closed, "a cancellation is not a success");
        breaker.State.Should().NotBe(CircuitState.Open, "a cancellation is not a failure");
        await SucceedOnce(breaker);
        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().IgnoredOutcomes.Should().Be(1);
    }

    [Fact]
    public async Task A_call_that_started_closed_and_fails_while_half_open_does_not_move_the_circuit()
    {
        var breaker = Create();
        var slow = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var slowCall = breaker.ExecuteAsync(_ => new ValueTask<int>(slow.Task)).AsTask();
        await FailTimes(breaker, 3);
        _clock.Advance(Break);

        var trialGate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var trial = breaker.ExecuteAsync(_ => new ValueTask<int>(trialGate.Task)).AsTask();
        breaker.State.Should().Be(CircuitState.HalfOpen);

        slow.SetException(new BoomException());
        await FluentActions.Awaiting(() => slowCall.WithTimeout()).Should().ThrowAsync<BoomException>();
        breaker.State.Should().Be(CircuitState.HalfOpen);

        trialGate.SetResult(1);
        await trial.WithTimeout();
        breaker.State.Should().Be(CircuitState.Closed);
    }

    // ---------------------------------------------------------------- cancellation and ShouldHandle

    [Fact]
    public async Task A_call_cancelled_through_the_callers_token_is_not_a_failure()
    {
        var breaker = Create(o => o.FailureThreshold = 1);
        for (var i = 0; i < 3; i++)
        {
            using var cts = new CancellationTokenSource();
            var call = breaker.ExecuteAsync(async ct => { await Task.Delay(Timeout.Infinite, ct); return 0; }, cts.Token).AsTask();
            cts.Cancel();
            await FluentActions.Awaiting(() => call.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        }

        breaker.State.Should().Be(CircuitState.Closed);
        var s = breaker.GetStatistics();
        s.IgnoredOutcomes.Should().Be(3);
        s.Failures.Should().Be(0);
        s.Successes.Should().Be(0);
    }

    [Fact]
    public async Task A_caller_cancellation_in_the_middle_of_a_run_neither_resets_nor_adds_to_it()
    {
        var breaker = Create();
        await FailTimes(breaker, 2);
        using var cts = new CancellationTokenSource();
        cts.CancelAfter(TimeSpan.Zero);
        await FluentActions.Awaiting(() => breaker.ExecuteAsync<int>(async ct => { await Task.Delay(Timeout.Infinite, ct); return 0; }, cts.Token).AsTask().WithTimeout())
            .Should().ThrowAsync<OperationCanceledException>();
        breaker.GetStatistics().ConsecutiveFailures.Should().Be(2);
        await FailOnce(breaker);
        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task An_OperationCanceledException_the_caller_did_not_ask_for_is_a_failure()
    {
        var breaker = Create(o => o.FailureThreshold = 2);
        using var inner = new CancellationTokenSource();
        inner.Cancel();
        for (var i = 0; i < 2; i++)
        {
            await FluentActions.Awaiting(() => breaker.ExecuteAsync<int>(_ => throw new OperationCanceledException(inner.Token)).AsTask().WithTimeout())
                .Should().ThrowAsync<OperationCanceledException>();
        }

        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task An_already_cancelled_token_returns_a_cancelled_task_without_running_or_counting()
    {
        var breaker = Create();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var ran = false;
        var task = breaker.ExecuteAsync(_ => { ran = true; return new ValueTask<int>(1); }, cts.Token).AsTask();
        await FluentActions.Awaiting(() => task.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        task.IsCanceled.Should().BeTrue();
        ran.Should().BeFalse();
        var s = breaker.GetStatistics();
        (s.Successes + s.Failures + s.IgnoredOutcomes + s.Rejections).Should().Be(0);
    }

    [Fact]
    public async Task ShouldHandle_decides_which_exceptions_are_failures_and_declined_ones_count_as_successes()
    {
        var breaker = Create(o => o.ShouldHandle = ex => ex is BoomException);
        await FailTimes(breaker, 2);
        var other = new ArgumentException("not a dependency failure");
        var thrown = await FluentActions.Awaiting(() => Run(breaker, _ => ValueTask.FromException<int>(other))).Should().ThrowAsync<ArgumentException>();
        thrown.Which.Should().BeSameAs(other);
        breaker.GetStatistics().ConsecutiveFailures.Should().Be(0);

        for (var i = 0; i < 10; i++)
        {
            await FluentActions.Awaiting(() => Run(breaker, _ => ValueTask.FromException<int>(new ArgumentException()))).Should().ThrowAsync<ArgumentException>();
        }

        breaker.State.Should().Be(CircuitState.Closed);
        await FailTimes(breaker, 3);
        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task A_throwing_ShouldHandle_counts_as_a_failure_and_the_action_exception_still_propagates()
    {
        var breaker = Create(o => { o.FailureThreshold = 1; o.ShouldHandle = _ => throw new InvalidCastException("predicate bug"); });
        await FailOnce(breaker);
        breaker.State.Should().Be(CircuitState.Open);
    }

    // ---------------------------------------------------------------- isolate and reset

    [Fact]
    public async Task Isolate_holds_the_circuit_open_until_Reset_whatever_the_time()
    {
        var breaker = Create();
        breaker.Isolate();
        breaker.State.Should().Be(CircuitState.Isolated);

        var refusal = await Refused<IsolatedCircuitException>(breaker);
        refusal.Should().BeAssignableTo<BrokenCircuitException>();
        refusal.Should().BeAssignableTo<ExecutionRejectedException>();

        _clock.Advance(Break * 10);
        await Refused<IsolatedCircuitException>(breaker);
        breaker.State.Should().Be(CircuitState.Isolated);

        breaker.Reset();
        breaker.State.Should().Be(CircuitState.Closed);
        await SucceedOnce(breaker);
        breaker.GetStatistics().Rejections.Should().Be(2);
    }

    [Fact]
    public async Task Isolate_works_from_open_and_half_open_and_Reset_from_every_state()
    {
        var breaker = Create();
        await FailTimes(breaker, 3);
        breaker.Isolate();
        breaker.State.Should().Be(CircuitState.Isolated);
        _clock.Advance(Break);
        await Refused<IsolatedCircuitException>(breaker);
        breaker.Reset();
        breaker.State.Should().Be(CircuitState.Closed);

        await FailTimes(breaker, 3);
        breaker.Reset();
        breaker.State.Should().Be(CircuitState.Closed);
        await SucceedOnce(breaker);

        await FailTimes(breaker, 3);
        _clock.Advance(Break);
        var gate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var trial = breaker.ExecuteAsync(_ => new ValueTask<int>(gate.Task)).AsTask();
        breaker.State.Should().Be(CircuitState.HalfOpen);
        breaker.Isolate();
        breaker.State.Should().Be(CircuitState.Isolated);
        gate.SetResult(1);
        await trial.WithTimeout();
        breaker.State.Should().Be(CircuitState.Isolated, "a trial finishing cannot close an isolated circuit");
        breaker.Reset();
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task Reset_clears_the_run_of_failures()
    {
        var breaker = Create();
        await FailTimes(breaker, 2);
        breaker.Reset();
        await FailTimes(breaker, 2);
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task A_call_running_when_isolated_that_fails_does_not_change_the_isolated_state()
    {
        var breaker = Create(o => o.FailureThreshold = 1);
        var gate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var call = breaker.ExecuteAsync(_ => new ValueTask<int>(gate.Task)).AsTask();
        breaker.Isolate();
        gate.SetException(new BoomException());
        await FluentActions.Awaiting(() => call.WithTimeout()).Should().ThrowAsync<BoomException>();
        breaker.State.Should().Be(CircuitState.Isolated);
        breaker.GetStatistics().Failures.Should().Be(1);
    }

    // ---------------------------------------------------------------- ratio mode

    private CircuitBreaker CreateRatio(double ratio = 0.5, int minimumThroughput = 4, Action<CircuitBreakerOptions>? configure = null) =>
        Create(o =>
        {
            o.FailureRatio = ratio;
            o.MinimumThroughput = minimumThroughput;
            o.SamplingDuration = TimeSpan.FromSeconds(10);
            o.FailureThreshold = 1; // must be ignored in ratio mode
            configure?.Invoke(o);
        });

    [Fact]
    public async Task Ratio_mode_needs_MinimumThroughput_before_it_can_open()
    {
        var breaker = CreateRatio();
        await FailTimes(breaker, 3);
        breaker.State.Should().Be(CircuitState.Closed, "3 calls are below the minimum throughput of 4, and FailureThreshold is ignored");
        breaker.GetStatistics().ConsecutiveFailures.Should().Be(0, "ConsecutiveFailures is 0 in ratio mode");
        await FailOnce(breaker);
        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task Ratio_mode_opens_when_the_failed_share_reaches_the_ratio()
    {
        var breaker = CreateRatio();
        await SucceedOnce(breaker);
        await SucceedOnce(breaker);
        await FailOnce(breaker);
        breaker.State.Should().Be(CircuitState.Closed);
        await FailOnce(breaker); // 2 of 4 = 0.5 ≥ 0.5
        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task Ratio_mode_stays_closed_below_the_ratio()
    {
        var breaker = CreateRatio();
        for (var i = 0; i < 6; i++)
        {
            await SucceedOnce(breaker);
        }

        for (var i = 0; i < 5; i++)
        {
            await FailOnce(breaker); // at most 5 of 11 < 0.5
        }

        breaker.State.Should().Be(CircuitState.Closed);
        await FailOnce(breaker); // 6 of 12 = 0.5
        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task Ratio_mode_forgets_outcomes_older_than_the_sampling_duration()
    {
        var breaker = CreateRatio();
        await FailTimes(breaker, 3);
        _clock.Advance(TimeSpan.FromSeconds(11));
        await FailOnce(breaker);
        breaker.State.Should().Be(CircuitState.Closed, "the first 3 failures left the 10 s sample");
        await FailTimes(breaker, 3);
        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task Ratio_mode_sample_is_emptied_when_the_circuit_closes()
    {
        var breaker = CreateRatio();
        await FailTimes(breaker, 4);
        breaker.State.Should().Be(CircuitState.Open);
        _clock.Advance(Break);
        await SucceedOnce(breaker);
        breaker.State.Should().Be(CircuitState.Closed);
        await FailTimes(breaker, 3);
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task Ratio_mode_matches_Pollys_breaker_on_the_same_sequence()
    {
        // Same rule as Polly v8's AddCircuitBreaker, checked side by side on one sequence.
        var pollyClock = new ManualTimeProvider();
        var ours = CreateRatio(0.5, 4, o => o.BreakDuration = TimeSpan.FromSeconds(5));
        var stateProvider = new CircuitBreakerStateProvider();
        var polly = new ResiliencePipelineBuilder { TimeProvider = pollyClock }
            .AddCircuitBreaker(new CircuitBreakerStrategyOptions
            {
                FailureRatio = 0.5,
                MinimumThroughput = 4,
                SamplingDuration = TimeSpan.FromSeconds(10),
                BreakDuration = TimeSpan.FromSeconds(5),
                StateProvider = stateProvider,
                ShouldHandle = new PredicateBuilder().Handle<BoomException>(),
            })
            .Build();

        var random = new Random(1234);
        for (var step = 0; step < 300; step++)
        {
            var advance = TimeSpan.FromMilliseconds(random.Next(0, 4) * 500);
            _clock.Advance(advance);
            pollyClock.Advance(advance);
            var fail = random.NextDouble() < 0.55;

            var ourOutcome = await ours.ExecuteOutcomeAsync(_ => fail ? ValueTask.FromException<int>(new BoomException()) : new ValueTask<int>(1));
            var pollyOutcome = await polly.ExecuteOutcomeAsync(
                (_, _) => new ValueTask<Outcome<int>>(fail ? Outcome.FromException<int>(new BoomException()) : Outcome.FromResult(1)),
                ResilienceContextPool.Shared.Get(),
                0);

            (ourOutcome.Exception?.GetType()).Should().Be(pollyOutcome.Exception?.GetType(), $"step {step}");
            ours.State.Should().Be(stateProvider.CircuitState, $"step {step}");
            if (ourOutcome.Exception is BrokenCircuitException b && pollyOutcome.Exception is BrokenCircuitException p)
            {
                b.RetryAfter.Should().Be(p.RetryAfter, $"step {step}");
            }
        }
    }

    // ---------------------------------------------------------------- notifications

    [Fact]
    public async Task OnStateChanged_reports_each_change_with_its_details_before_the_causing_call_returns()
    {
        var changes = new List<CircuitStateChange>();
        var breaker = Create(o =>
        {
            o.Name = "payments";
            o.OnStateChanged = c => { lock (changes) { changes.Add(c); } return ValueTask.CompletedTask; };
        });

        var cause = await FailTimes(breaker, 3);
        changes.Should().ContainSingle();
        var opened = changes[0];
        opened.PreviousState.Should().Be(CircuitState.Closed);
        opened.NewState.Should().Be(CircuitState.Open);
        opened.Reason.Should().Be(CircuitStateChangeReason.ConsecutiveFailures);
        opened.Exception.Should().BeSameAs(cause);
        opened.BreakDuration.Should().Be(Break);
        opened.BreakerName.Should().Be("payments");
        opened.Timestamp.Should().Be(_clock.GetUtcNow());

        _clock.Advance(Break);
        await SucceedOnce(breaker);
        changes.Should().HaveCount(3);
        changes[1].NewState.Should().Be(CircuitState.HalfOpen);
        changes[1].Exception.Should().BeNull();
        changes[2].NewState.Should().Be(CircuitState.Closed);
        changes[2].BreakDuration.Should().BeNull();

        breaker.Isolate();
        changes.Should().HaveCount(4);
        changes[3].NewState.Should().Be(CircuitState.Isolated);
        breaker.Reset();
        changes.Should().HaveCount(5);
        changes[4].NewState.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task A_throwing_or_slow_async_OnStateChanged_never_reaches_the_caller()
    {
        var breaker = Create(o =>
        {
            o.FailureThreshold = 1;
            o.OnStateChanged = async _ => { await Task.Yield(); throw new InvalidCastException("callback bug"); };
        });
        await FailOnce(breaker);
        breaker.State.Should().Be(CircuitState.Open);
        FluentActions.Invoking(() => breaker.Reset()).Should().NotThrow();
        breaker.Isolate();
        breaker.State.Should().Be(CircuitState.Isolated);
    }

    [Fact]
    public async Task OnStateChanged_is_not_called_under_a_lock_it_may_call_back_into_the_breaker()
    {
        CircuitState? seen = null;
        CircuitBreakerStatistics? stats = null;
        CircuitBreaker breaker = null!;
        breaker = Create(o =>
        {
            o.FailureThreshold = 1;
            o.OnStateChanged = c =>
            {
                seen = breaker.State;
                stats = breaker.GetStatistics();
                return ValueTask.CompletedTask;
            };
        });
        await FailOnce(breaker).WithTimeout(TimeSpan.FromSeconds(5));
        seen.Should().Be(CircuitState.Open);
        stats!.TimesOpened.Should().Be(1);
    }

    // ---------------------------------------------------------------- concurrency

    [Fact]
    public async Task Concurrent_calls_are_all_accounted_for()
    {
        var breaker = Create(o => o.FailureThreshold = int.MaxValue);
        const int Threads = 4, Calls = 2_000;
        var failures = 0L;
        await Task.WhenAll(Enumerable.Range(0, Threads).Select(t => Task.Run(async () =>
        {
            for (var i = 0; i < Calls; i++)
            {
                if ((i + t) % 3 == 0)
                {
                    try
                    {
                        await breaker.ExecuteAsync<int>(_ => ValueTask.FromException<int>(new BoomException()));
                    }
                    catch (BoomException)
                    {
                        Interlocked.Increment(ref failures);
                    }
                }
                else
                {
                    await breaker.ExecuteAsync(_ => new ValueTask<int>(i));
                }
            }
        }))).WithTimeout();

        var s = breaker.GetStatistics();
        s.Failures.Should().Be(failures);
        (s.Successes + s.Failures).Should().Be(Threads * Calls);
        s.Rejections.Should().Be(0);
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task Concurrent_failures_open_the_circuit_once()
    {
        var opened = 0;
        var breaker = Create(o =>
        {
            o.FailureThreshold = 5;
            o.OnStateChanged = c => { if (c.NewState == CircuitState.Open) { Interlocked.Increment(ref opened); } return ValueTask.CompletedTask; };
        });
        var go = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var calls = Enumerable.Range(0, 50).Select(_ => breaker.ExecuteAsync<int>(async __ => { await go.Task; throw new BoomException(); }).AsTask()).ToList();
        go.SetResult();
        foreach (var call in calls)
        {
            await FluentActions.Awaiting(() => call.WithTimeout()).Should().ThrowAsync<BoomException>();
        }

        breaker.State.Should().Be(CircuitState.Open);
        opened.Should().Be(1);
        breaker.GetStatistics().TimesOpened.Should().Be(1);
        breaker.GetStatistics().Failures.Should().Be(50);
    }

    // ---------------------------------------------------------------- Polly interop

    [Fact]
    public async Task In_a_Polly_pipeline_with_retry_the_breaker_counts_attempts_and_stops_the_retries()
    {
        var breaker = Create();
        var pipeline = new ResiliencePipelineBuilder()
            .AddRetry(new RetryStrategyOptions
            {
                ShouldHandle = new PredicateBuilder().Handle<BoomException>(),
                MaxRetryAttempts = 10,
                Delay = TimeSpan.Zero,
            })
            .AddCircuitBreaker(breaker)
            .Build();

        var attempts = 0;
        await FluentActions.Awaiting(() => pipeline.ExecuteAsync<int>(_ => { attempts++; throw new BoomException(); }).AsTask().WithTimeout())
            .Should().ThrowAsync<BrokenCircuitException>();
        attempts.Should().Be(3);
        breaker.State.Should().Be(CircuitState.Open);

        // The same breaker, used directly, shares that state.
        await Refused<BrokenCircuitException>(breaker);
        _clock.Advance(Break);
        (await pipeline.ExecuteAsync(_ => new ValueTask<int>(9)).AsTask().WithTimeout()).Should().Be(9);
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task In_a_typed_Polly_pipeline_refusals_and_results_flow_through()
    {
        var breaker = Create(o => o.FailureThreshold = 1);
        var pipeline = new ResiliencePipelineBuilder<string>().AddCircuitBreaker(breaker).Build();
        (await pipeline.ExecuteAsync(_ => new ValueTask<string>("ok")).AsTask().WithTimeout()).Should().Be("ok");
        await FluentActions.Awaiting(() => pipeline.ExecuteAsync<string>(_ => throw new BoomException()).AsTask().WithTimeout()).Should().ThrowAsync<BoomException>();
        var outcome = await pipeline.ExecuteOutcomeAsync((_, _) => new ValueTask<Outcome<string>>(Outcome.FromResult("x")), ResilienceContextPool.Shared.Get(), 0);
        outcome.Exception.Should().BeOfType<BrokenCircuitException>();
    }

    [Fact]
    public async Task A_Polly_timeout_inside_the_breaker_counts_as_a_failure()
    {
        var breaker = Create(o => o.FailureThreshold = 2);
        var pipeline = new ResiliencePipelineBuilder()
            .AddCircuitBreaker(breaker)
            .AddTimeout(TimeSpan.FromMilliseconds(20))
            .Build();
        for (var i = 0; i < 2; i++)
        {
            await FluentActions.Awaiting(() => pipeline.ExecuteAsync(async ct => await Task.Delay(Timeout.Infinite, ct)).AsTask().WithTimeout())
                .Should().ThrowAsync<TimeoutRejectedException>();
        }

        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task In_a_Polly_pipeline_the_callers_cancellation_is_not_a_failure()
    {
        var breaker = Create(o => o.FailureThreshold = 1);
        var pipeline = new ResiliencePipelineBuilder().AddCircuitBreaker(breaker).Build();
        using var cts = new CancellationTokenSource();
        var call = pipeline.ExecuteAsync(async ct => await Task.Delay(Timeout.Infinite, ct), cts.Token).AsTask();
        cts.Cancel();
        await FluentActions.Awaiting(() => call.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        breaker.State.Should().Be(CircuitState.Closed);
    }

    // ---------------------------------------------------------------- observability

    private sealed class MetricsRecorder : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly string _name;

        public MetricsRecorder(string name, string prefix)
        {
            _name = name;
            _listener.InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == "AsyncPatterns")
                {
                    Published.Add(instrument.Name);
                    if (instrument.Name.StartsWith(prefix, StringComparison.Ordinal))
                    {
                        l.EnableMeasurementEvents(instrument);
                    }
                }
            };
            _listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Record(i, v, tags));
            _listener.SetMeasurementEventCallback<int>((i, v, tags, _) => Record(i, v, tags));
            _listener.Start();
        }

        public ConcurrentBag<string> Published { get; } = [];

        public ConcurrentQueue<(string Instrument, long Value, Dictionary<string, object?> Tags)> Measurements { get; } = new();

        public void Observe() => _listener.RecordObservableInstruments();

        public long Sum(string instrument, string? tag = null, object? value = null) =>
            Measurements.Where(m => m.Instrument == instrument && (tag is null || Equals(m.Tags.GetValueOrDefault(tag)?.ToString(), value?.ToString())))
                .Sum(m => m.Value);

        private void Record(Instrument instrument, long value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var dict = new Dictionary<string, object?>();
            foreach (var t in tags)
            {
                dict[t.Key] = t.Value;
            }

            if (Equals(dict.GetValueOrDefault("asyncpatterns.name"), _name))
            {
                Measurements.Enqueue((instrument.Name, value, dict));
            }
        }

        public void Dispose() => _listener.Dispose();
    }

    [Fact]
    public async Task Metrics_are_named_asyncpatterns_circuitbreaker_and_tagged_with_the_name()
    {
        var name = "cb-" + Guid.NewGuid().ToString("N");
        using var metrics = new MetricsRecorder(name, "asyncpatterns.circuitbreaker.");
        var breaker = Create(o => o.Name = name);
        await SucceedOnce(breaker);
        await SucceedOnce(breaker);
        await FailTimes(breaker, 3);
        await Refused<BrokenCircuitException>(breaker);
        await Refused<BrokenCircuitException>(breaker);
        metrics.Observe();

        metrics.Published.Should().OnlyContain(n => n.StartsWith("asyncpatterns.", StringComparison.Ordinal) && n == n.ToLowerInvariant());
        metrics.Measurements.Should().NotBeEmpty();
        metrics.Measurements.Should().OnlyContain(m => m.Instrument.StartsWith("asyncpatterns.circuitbreaker.", StringComparison.Ordinal));

        metrics.Sum("asyncpatterns.circuitbreaker.calls", "outcome", "success").Should().Be(2);
        metrics.Sum("asyncpatterns.circuitbreaker.calls", "outcome", "failure").Should().Be(3);
        metrics.Sum("asyncpatterns.circuitbreaker.rejections").Should().Be(2);
        metrics.Sum("asyncpatterns.circuitbreaker.transitions").Should().Be(1);
        metrics.Measurements.Where(m => m.Instrument == "asyncpatterns.circuitbreaker.state").Select(m => m.Value).Should().Contain((long)(int)CircuitState.Open);
    }

    private sealed class CapturingLoggerProvider : ILoggerProvider
    {
        public ConcurrentQueue<(string Category, LogLevel Level, EventId Id, string Message, Exception? Exception)> Entries { get; } = new();

        public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

        public void Dispose()
        {
        }

        private sealed class Logger(CapturingLoggerProvider owner, string category) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                owner.Entries.Enqueue((category, logLevel, eventId, formatter(state, exception), exception));
        }
    }

    [Fact]
    public async Task State_changes_are_logged_with_the_name_through_the_LoggerFactory()
    {
        var provider = new CapturingLoggerProvider();
        using var factory = LoggerFactory.Create(b => b.AddProvider(provider).SetMinimumLevel(LogLevel.Trace));
        var breaker = Create(o => { o.Name = "search-upstream"; o.LoggerFactory = factory; });
        await SucceedOnce(breaker);
        provider.Entries.Where(e => e.Level >= LogLevel.Warning).Should().BeEmpty();

        var cause = await FailTimes(breaker, 3);
        var opened = provider.Entries.Where(e => e.Level >= LogLevel.Warning).Should().ContainSingle().Subject;
        opened.Message.Should().Contain("search-upstream");
        opened.Exception.Should().BeSameAs(cause);

        breaker.Isolate();
        provider.Entries.Count(e => e.Level >= LogLevel.Warning).Should().Be(2);
    }

    [Fact]
    public async Task Without_a_TimeProvider_the_system_clock_is_used()
    {
        var breaker = new CircuitBreaker(new CircuitBreakerOptions { FailureThreshold = 1, BreakDuration = TimeSpan.FromMilliseconds(50) });
        await FailOnce(breaker);
        var refusal = await Refused<BrokenCircuitException>(breaker);
        refusal.RetryAfter.Should().BeGreaterThan(TimeSpan.Zero).And.BeLessThanOrEqualTo(TimeSpan.FromMilliseconds(50));
        await Task.Delay(120);
        await SucceedOnce(breaker);
        breaker.State.Should().Be(CircuitState.Closed);
    }

    // ---------------------------------------------------------------- second round: adversarial

    [Fact]
    public async Task ExecuteOutcomeAsync_returns_refusals_and_failures_as_outcomes_without_throwing()
    {
        var breaker = Create(o => o.FailureThreshold = 1);
        var ok = await breaker.ExecuteOutcomeAsync(_ => new ValueTask<int>(3));
        ok.Result.Should().Be(3);
        ok.Exception.Should().BeNull();

        var boom = new BoomException();
        var failed = await breaker.ExecuteOutcomeAsync<int>(_ => ValueTask.FromException<int>(boom));
        failed.Exception.Should().BeSameAs(boom);
        breaker.State.Should().Be(CircuitState.Open);

        var ran = false;
        var refused = await breaker.ExecuteOutcomeAsync(_ => { ran = true; return new ValueTask<int>(1); });
        refused.Exception.Should().BeOfType<BrokenCircuitException>();
        ran.Should().BeFalse();

        using var cts = new CancellationTokenSource();
        cts.Cancel();
        (await breaker.ExecuteOutcomeAsync(_ => new ValueTask<int>(1), cts.Token)).Exception.Should().BeAssignableTo<OperationCanceledException>();
    }

    [Fact]
    public async Task A_slow_sibling_trial_succeeding_after_another_trial_reopened_the_circuit_does_not_close_it()
    {
        var breaker = Create(o => o.HalfOpenMaxCalls = 2);
        await FailTimes(breaker, 3);
        _clock.Advance(Break);
        var failGate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var okGate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var failing = breaker.ExecuteAsync(_ => new ValueTask<int>(failGate.Task)).AsTask();
        var succeeding = breaker.ExecuteAsync(_ => new ValueTask<int>(okGate.Task)).AsTask();
        breaker.GetStatistics().HalfOpenTrialsInFlight.Should().Be(2);

        failGate.SetException(new BoomException());
        await FluentActions.Awaiting(() => failing.WithTimeout()).Should().ThrowAsync<BoomException>();
        breaker.State.Should().Be(CircuitState.Open);

        okGate.SetResult(1);
        await succeeding.WithTimeout();
        breaker.State.Should().Be(CircuitState.Open, "a trial of a half-open period that already ended cannot close the re-opened circuit");
        (await Refused<BrokenCircuitException>(breaker)).RetryAfter.Should().Be(Break);
    }

    [Fact]
    public async Task A_slow_sibling_trial_failing_after_another_trial_closed_the_circuit_is_one_closed_failure()
    {
        var breaker = Create(o => o.HalfOpenMaxCalls = 2);
        await FailTimes(breaker, 3);
        _clock.Advance(Break);
        var okGate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var failGate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var succeeding = breaker.ExecuteAsync(_ => new ValueTask<int>(okGate.Task)).AsTask();
        var failing = breaker.ExecuteAsync(_ => new ValueTask<int>(failGate.Task)).AsTask();
        okGate.SetResult(1);
        await succeeding.WithTimeout();
        breaker.State.Should().Be(CircuitState.Closed);
        failGate.SetException(new BoomException());
        await FluentActions.Awaiting(() => failing.WithTimeout()).Should().ThrowAsync<BoomException>();
        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().ConsecutiveFailures.Should().Be(1);
    }

    [Fact]
    public async Task Half_open_refusals_with_several_slots_say_when_the_half_open_period_ends()
    {
        var breaker = Create(o => o.HalfOpenMaxCalls = 2);
        await FailTimes(breaker, 3);
        _clock.Advance(Break);
        var gate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var a = breaker.ExecuteAsync(_ => new ValueTask<int>(gate.Task)).AsTask();
        _clock.Advance(TimeSpan.FromSeconds(10));
        var b = breaker.ExecuteAsync(_ => new ValueTask<int>(gate.Task)).AsTask();
        _clock.Advance(TimeSpan.FromSeconds(5));
        (await Refused<BrokenCircuitException>(breaker)).RetryAfter.Should().Be(TimeSpan.FromSeconds(45));
        gate.SetResult(1);
        await Task.WhenAll(a, b).WithTimeout();
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task Isolating_twice_and_resetting_a_closed_circuit_report_nothing_new()
    {
        var changes = new ConcurrentQueue<CircuitStateChange>();
        var breaker = Create(o => o.OnStateChanged = c => { changes.Enqueue(c); return ValueTask.CompletedTask; });
        breaker.Reset();
        changes.Should().BeEmpty();
        breaker.Isolate();
        breaker.Isolate();
        changes.Should().ContainSingle().Which.Reason.Should().Be(CircuitStateChangeReason.Isolated);
        breaker.Reset();
        changes.Should().HaveCount(2);
        changes.Last().Reason.Should().Be(CircuitStateChangeReason.Reset);
        breaker.GetStatistics().TimesOpened.Should().Be(0, "isolation is not counted as an opening");
    }

    [Fact]
    public async Task The_call_that_opens_the_circuit_waits_for_an_async_OnStateChanged()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var breaker = Create(o => { o.FailureThreshold = 1; o.OnStateChanged = async _ => await gate.Task; });
        var call = breaker.ExecuteAsync<int>(_ => ValueTask.FromException<int>(new BoomException())).AsTask();
        await AsyncAssert.StillPendingAsync(call, "as in Polly, the call waits for the state-change callback");
        breaker.State.Should().Be(CircuitState.Open, "the state changed before the callback");
        gate.SetResult();
        await FluentActions.Awaiting(() => call.WithTimeout()).Should().ThrowAsync<BoomException>();
    }

    [Fact]
    public async Task OnStateChanged_may_reset_the_breaker_from_inside_the_callback()
    {
        var changes = new ConcurrentQueue<CircuitStateChange>();
        CircuitBreaker breaker = null!;
        breaker = Create(o =>
        {
            o.FailureThreshold = 1;
            o.OnStateChanged = c =>
            {
                changes.Enqueue(c);
                if (c.NewState == CircuitState.Open)
                {
                    breaker.Reset();
                }

                return ValueTask.CompletedTask;
            };
        });

        await FailOnce(breaker).WithTimeout(TimeSpan.FromSeconds(5));
        await AsyncAssert.EventuallyAsync(() => changes.Count == 2, "both changes are delivered", TimeSpan.FromSeconds(5));
        breaker.State.Should().Be(CircuitState.Closed);
        changes.Select(c => c.NewState).Should().Equal(CircuitState.Open, CircuitState.Closed);
    }

    [Fact]
    public async Task OnStateChanged_may_run_calls_through_the_breaker()
    {
        var refusedInside = false;
        CircuitBreaker breaker = null!;
        breaker = Create(o =>
        {
            o.FailureThreshold = 1;
            o.OnStateChanged = async c =>
            {
                if (c.NewState == CircuitState.Open)
                {
                    var outcome = await breaker.ExecuteOutcomeAsync(_ => new ValueTask<int>(1));
                    refusedInside = outcome.Exception is BrokenCircuitException;
                }
            };
        });
        await FailOnce(breaker).WithTimeout(TimeSpan.FromSeconds(5));
        refusedInside.Should().BeTrue();
    }

    [Fact]
    public async Task Concurrent_half_open_admission_never_exceeds_HalfOpenMaxCalls()
    {
        var breaker = Create(o => o.HalfOpenMaxCalls = 2);
        for (var round = 0; round < 20; round++)
        {
            await FailTimes(breaker, round == 0 ? 3 : 0);
            _clock.Advance(Break);
            var gate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
            var running = 0;
            var maxRunning = 0;
            using var start = new Barrier(4);
            var outcomes = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Task.Run(() =>
            {
                start.SignalAndWait();
                return Enumerable.Range(0, 10).Select(__ => breaker.ExecuteAsync(async ___ =>
                {
                    var now = Interlocked.Increment(ref running);
                    int seen;
                    while ((seen = Volatile.Read(ref maxRunning)) < now && Interlocked.CompareExchange(ref maxRunning, now, seen) != seen)
                    {
                    }

                    try
                    {
                        return await gate.Task;
                    }
                    finally
                    {
                        Interlocked.Decrement(ref running);
                    }
                }).AsTask()).ToList();
            }))).WithTimeout();

            var calls = outcomes.SelectMany(x => x).ToList();
            await AsyncAssert.EventuallyAsync(() => calls.Count(c => c.IsFaulted) == 38, $"round {round}: 38 of 40 refused");
            maxRunning.Should().Be(2, $"round {round}");

            // Fail the trials: back to open for the next round.
            gate.SetException(new BoomException());
            foreach (var c in calls.Where(c => !c.IsFaulted || c.Exception!.InnerException is BoomException))
            {
                await FluentActions.Awaiting(() => c.WithTimeout()).Should().ThrowAsync<BoomException>();
            }

            breaker.State.Should().Be(CircuitState.Open, $"round {round}");
        }

        var s = breaker.GetStatistics();
        (s.Successes + s.Failures + s.IgnoredOutcomes + s.Rejections).Should().Be(3 + 20 * 40);
    }

    [Fact]
    public async Task Stress_mixed_outcomes_with_transitions_keep_the_counters_consistent()
    {
        var breaker = Create(o => { o.FailureThreshold = 2; o.HalfOpenMaxCalls = 3; o.BreakDuration = TimeSpan.FromMilliseconds(10); });
        var calls = 0L;
        using var stop = new CancellationTokenSource();
        var ticker = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                _clock.AdvanceMilliseconds(3);
                await Task.Yield();
            }
        });
        await Task.WhenAll(Enumerable.Range(0, 4).Select(t => Task.Run(async () =>
        {
            var random = new Random(t);
            for (var i = 0; i < 3_000; i++)
            {
                Interlocked.Increment(ref calls);
                var kind = random.Next(4);
                using var cts = new CancellationTokenSource();
                var outcome = await breaker.ExecuteOutcomeAsync(async ct =>
                {
                    if (kind == 0)
                    {
                        await Task.Yield();
                        throw new BoomException();
                    }

                    if (kind == 1)
                    {
                        cts.Cancel();
                        ct.ThrowIfCancellationRequested();
                    }

                    return 1;
                }, cts.Token);
                _ = outcome;
            }
        }))).WithTimeout();
        stop.Cancel();
        await ticker.WithTimeout();

        var s = breaker.GetStatistics();
        (s.Successes + s.Failures + s.IgnoredOutcomes + s.Rejections).Should().Be(calls);
        s.HalfOpenTrialsInFlight.Should().Be(0);
        s.TimesOpened.Should().BeGreaterThan(0);
    }

    // ---------------------------------------------------------------- shared rules: cost and ConfigureAwait(false)

    private static readonly Func<CancellationToken, ValueTask<int>> SyncSuccess = _ => new ValueTask<int>(1);

    [Fact]
    public async Task The_closed_success_path_allocates_nothing()
    {
        var breaker = Create();
        var ratio = Create(o => { o.FailureRatio = 0.5; o.MinimumThroughput = 10; });
        for (var i = 0; i < 2_000; i++)
        {
            await breaker.ExecuteAsync(SyncSuccess);
            await ratio.ExecuteAsync(SyncSuccess);
            await breaker.ExecuteAsync(static (s, _) => new ValueTask<int>(s), 3);
        }

        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < 10_000; i++)
        {
            await breaker.ExecuteAsync(SyncSuccess);
            await ratio.ExecuteAsync(SyncSuccess);
            await breaker.ExecuteAsync(static (s, _) => new ValueTask<int>(s), 3);
        }

        (GC.GetAllocatedBytesForCurrentThread() - before).Should().BeLessThan(1_000, "a closed-state success allocates nothing");
    }

    private sealed class CountingSynchronizationContext : SynchronizationContext
    {
        public int Posts;

        public override void Post(SendOrPostCallback d, object? state)
        {
            Interlocked.Increment(ref Posts);
            ThreadPool.QueueUserWorkItem(_ => d(state));
        }
    }

    [Fact]
    public async Task Library_awaits_do_not_capture_the_callers_synchronization_context()
    {
        var context = new CountingSynchronizationContext();
        var breaker = Create(o =>
        {
            o.FailureThreshold = 1;
            o.OnStateChanged = async _ => await Task.Delay(1).ConfigureAwait(false);
        });
        Task<int> call;
        Task failing;
        var previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            call = breaker.ExecuteAsync(async _ => { await Task.Delay(1).ConfigureAwait(false); return 1; }).AsTask();
            failing = breaker.ExecuteAsync(async _ => { await Task.Delay(1).ConfigureAwait(false); throw new BoomException(); }).AsTask();
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }

        (await call.WithTimeout()).Should().Be(1);
        await FluentActions.Awaiting(() => failing.WithTimeout()).Should().ThrowAsync<BoomException>();
        context.Posts.Should().Be(0);
    }
}
