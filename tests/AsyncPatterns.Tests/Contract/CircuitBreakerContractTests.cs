using AsyncPatterns.Tests.TestSupport;
using Polly;
using Polly.CircuitBreaker;

namespace AsyncPatterns.Tests.Contract;

/// <summary>Black-box tests of the CircuitBreaker contract in DESIGN.md and Polly v8's breaker semantics.</summary>
public sealed class CircuitBreakerContractTests
{
    private static readonly TimeSpan Break = TimeSpan.FromSeconds(60);
    private readonly ManualTimeProvider _clock = new();

    private CircuitBreaker Create(Action<CircuitBreakerOptions>? configure = null)
    {
        var options = new CircuitBreakerOptions { TimeProvider = _clock, BreakDuration = Break, FailureThreshold = 3 };
        configure?.Invoke(options);
        return new CircuitBreaker(options);
    }

    private static ValueTask<int> Fail(CancellationToken _) => ValueTask.FromException<int>(new InvalidOperationException("boom"));

    private static async Task FailTimes(CircuitBreaker breaker, int times)
    {
        for (var i = 0; i < times; i++)
        {
            await FluentActions.Awaiting(() => breaker.ExecuteAsync(Fail).AsTask().WithTimeout())
                .Should().ThrowAsync<InvalidOperationException>();
        }
    }

    private static Task<int> Succeed(CircuitBreaker breaker) => breaker.ExecuteAsync(_ => new ValueTask<int>(1)).AsTask().WithTimeout();

    [Fact]
    public void Options_have_the_documented_defaults()
    {
        var options = new CircuitBreakerOptions();
        options.FailureThreshold.Should().Be(5);
        options.FailureRatio.Should().BeNull();
        options.MinimumThroughput.Should().Be(10);
        options.SamplingDuration.Should().Be(TimeSpan.FromSeconds(30));
        options.BreakDuration.Should().Be(TimeSpan.FromSeconds(60));
        options.HalfOpenMaxCalls.Should().Be(1);
        options.ShouldHandle.Should().BeNull();
        options.OnStateChanged.Should().BeNull();
        options.Name.Should().BeNull();
        options.TimeProvider.Should().BeNull();
        options.LoggerFactory.Should().BeNull();
    }

    [Fact]
    public void Default_constructor_works_and_starts_closed()
    {
        new CircuitBreaker().State.Should().Be(CircuitState.Closed);
        new CircuitBreaker(null).State.Should().Be(CircuitState.Closed);
    }

    public static TheoryData<string, Action<CircuitBreakerOptions>> InvalidOptions => new()
    {
        { nameof(CircuitBreakerOptions.FailureThreshold), o => o.FailureThreshold = 0 },
        { nameof(CircuitBreakerOptions.FailureThreshold), o => o.FailureThreshold = -1 },
        { nameof(CircuitBreakerOptions.FailureRatio), o => o.FailureRatio = 1.5 },
        { nameof(CircuitBreakerOptions.FailureRatio), o => o.FailureRatio = -0.1 },
        { nameof(CircuitBreakerOptions.MinimumThroughput), o => { o.FailureRatio = 0.5; o.MinimumThroughput = 0; } },
        { nameof(CircuitBreakerOptions.SamplingDuration), o => { o.FailureRatio = 0.5; o.SamplingDuration = TimeSpan.Zero; } },
        { nameof(CircuitBreakerOptions.BreakDuration), o => o.BreakDuration = TimeSpan.Zero },
        { nameof(CircuitBreakerOptions.BreakDuration), o => o.BreakDuration = TimeSpan.FromSeconds(-1) },
        { nameof(CircuitBreakerOptions.HalfOpenMaxCalls), o => o.HalfOpenMaxCalls = 0 },
    };

    [Theory]
    [MemberData(nameof(InvalidOptions))]
    public void Invalid_options_throw_ArgumentOutOfRangeException_naming_the_option(string option, Action<CircuitBreakerOptions> configure)
    {
        var options = new CircuitBreakerOptions();
        configure(options);

        var create = () => new CircuitBreaker(options);

        create.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(option);
    }

    [Fact]
    public void Null_action_throws_ArgumentNullException()
    {
        var breaker = Create();
        FluentActions.Invoking(() => breaker.ExecuteAsync((Func<CancellationToken, ValueTask<int>>)null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => breaker.ExecuteAsync((Func<CancellationToken, ValueTask>)null!)).Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public async Task Returns_the_result_and_rethrows_the_actions_exception_unchanged()
    {
        var breaker = Create();
        (await breaker.ExecuteAsync(_ => new ValueTask<string>("x")).AsTask().WithTimeout()).Should().Be("x");

        var error = new FormatException("mine");
        var thrown = await FluentActions.Awaiting(() => breaker.ExecuteAsync(_ => ValueTask.FromException(error)).AsTask().WithTimeout())
            .Should().ThrowAsync<FormatException>();
        thrown.Which.Should().BeSameAs(error);
    }

    [Fact]
    public async Task Consecutive_mode_opens_after_FailureThreshold_failures_in_a_row()
    {
        var breaker = Create();
        await FailTimes(breaker, 2);
        breaker.State.Should().Be(CircuitState.Closed);

        await FailTimes(breaker, 1);

        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task A_success_resets_the_consecutive_count()
    {
        var breaker = Create();
        await FailTimes(breaker, 2);
        await Succeed(breaker);
        await FailTimes(breaker, 2);

        breaker.State.Should().Be(CircuitState.Closed);
        await FailTimes(breaker, 1);
        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task Open_circuit_refuses_without_running_with_BrokenCircuitException_whose_RetryAfter_is_the_time_left()
    {
        var breaker = Create();
        await FailTimes(breaker, 3);
        _clock.Advance(TimeSpan.FromSeconds(20));
        var ran = false;

        var thrown = await FluentActions.Awaiting(() => breaker.ExecuteAsync(_ => { ran = true; return ValueTask.CompletedTask; }).AsTask().WithTimeout())
            .Should().ThrowAsync<BrokenCircuitException>();

        ran.Should().BeFalse();
        thrown.Which.RetryAfter.Should().Be(TimeSpan.FromSeconds(40));
        thrown.Which.Should().BeAssignableTo<ExecutionRejectedException>();
    }

    [Fact]
    public async Task State_stays_Open_after_the_break_until_a_call_arrives_then_a_trial_success_closes()
    {
        var breaker = Create();
        await FailTimes(breaker, 3);
        _clock.Advance(Break);

        breaker.State.Should().Be(CircuitState.Open, "as in Polly v8 the transition to half-open happens on the next call");

        var observed = CircuitState.Closed;
        await breaker.ExecuteAsync(_ => { observed = breaker.State; return ValueTask.CompletedTask; }).AsTask().WithTimeout();

        observed.Should().Be(CircuitState.HalfOpen);
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task A_trial_failure_reopens_for_another_full_BreakDuration()
    {
        var breaker = Create();
        await FailTimes(breaker, 3);
        _clock.Advance(Break);

        await FailTimes(breaker, 1);

        breaker.State.Should().Be(CircuitState.Open);
        var thrown = await FluentActions.Awaiting(() => Succeed(breaker)).Should().ThrowAsync<BrokenCircuitException>();
        thrown.Which.RetryAfter.Should().Be(Break);
    }

    [Fact]
    public async Task Half_open_admits_HalfOpenMaxCalls_trials_and_refuses_others()
    {
        var breaker = Create(o => o.HalfOpenMaxCalls = 2);
        await FailTimes(breaker, 3);
        _clock.Advance(Break);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        var first = breaker.ExecuteAsync(async _ => await gate.Task).AsTask();
        var second = breaker.ExecuteAsync(async _ => await gate.Task).AsTask();
        var third = breaker.ExecuteAsync(_ => ValueTask.CompletedTask).AsTask();

        await FluentActions.Awaiting(() => third.WithTimeout()).Should().ThrowAsync<BrokenCircuitException>();
        first.IsCompleted.Should().BeFalse();
        second.IsCompleted.Should().BeFalse();
        gate.SetResult();
        await Task.WhenAll(first, second).WithTimeout();
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task A_hung_trial_does_not_hold_the_circuit_half_open_forever()
    {
        var breaker = Create();
        await FailTimes(breaker, 3);
        _clock.Advance(Break);
        var hung = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var trial = breaker.ExecuteAsync(async _ => await hung.Task).AsTask();

        await FluentActions.Awaiting(() => Succeed(breaker)).Should().ThrowAsync<BrokenCircuitException>();
        _clock.Advance(Break);

        (await Succeed(breaker)).Should().Be(1);
        breaker.State.Should().Be(CircuitState.Closed);
        hung.SetResult();
        await trial.WithTimeout();
    }

    [Fact]
    public async Task Isolate_refuses_with_IsolatedCircuitException_until_Reset()
    {
        var breaker = Create();
        breaker.Isolate();

        breaker.State.Should().Be(CircuitState.Isolated);
        await FluentActions.Awaiting(() => Succeed(breaker)).Should().ThrowAsync<IsolatedCircuitException>();
        _clock.Advance(Break * 10);
        await FluentActions.Awaiting(() => Succeed(breaker)).Should().ThrowAsync<IsolatedCircuitException>();
        breaker.State.Should().Be(CircuitState.Isolated);

        breaker.Reset();

        breaker.State.Should().Be(CircuitState.Closed);
        (await Succeed(breaker)).Should().Be(1);
    }

    [Fact]
    public async Task Reset_closes_an_open_circuit_at_once()
    {
        var breaker = Create();
        await FailTimes(breaker, 3);

        breaker.Reset();

        breaker.State.Should().Be(CircuitState.Closed);
        (await Succeed(breaker)).Should().Be(1);
        await FailTimes(breaker, 2);
        breaker.State.Should().Be(CircuitState.Closed, "Reset cleared the failure count");
    }

    [Fact]
    public async Task An_already_cancelled_token_cancels_without_running_or_counting()
    {
        var breaker = Create(o => o.FailureThreshold = 1);
        var ran = false;
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();

        await FluentActions.Awaiting(() => breaker.ExecuteAsync(_ => { ran = true; return ValueTask.CompletedTask; }, cts.Token).AsTask().WithTimeout())
            .Should().ThrowAsync<OperationCanceledException>();

        ran.Should().BeFalse();
        breaker.State.Should().Be(CircuitState.Closed);
        var stats = breaker.GetStatistics();
        stats.Failures.Should().Be(0);
        stats.Successes.Should().Be(0);
    }

    [Fact]
    public async Task A_call_cancelled_through_the_callers_token_is_not_a_failure()
    {
        var breaker = Create(o => o.FailureThreshold = 1);
        using var cts = new CancellationTokenSource();

        var call = breaker.ExecuteAsync(async ct => await Task.Delay(Timeout.Infinite, ct), cts.Token).AsTask();
        await cts.CancelAsync();

        await FluentActions.Awaiting(() => call.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().Failures.Should().Be(0);
    }

    [Fact]
    public async Task An_OperationCanceledException_not_caused_by_the_callers_token_is_a_failure_by_default()
    {
        var breaker = Create(o => o.FailureThreshold = 1);

        await FluentActions.Awaiting(() => breaker.ExecuteAsync(_ => ValueTask.FromException(new OperationCanceledException())).AsTask().WithTimeout())
            .Should().ThrowAsync<OperationCanceledException>();

        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task ShouldHandle_decides_which_exceptions_are_failures()
    {
        var breaker = Create(o => { o.FailureThreshold = 1; o.ShouldHandle = ex => ex is TimeoutException; });

        await FluentActions.Awaiting(() => breaker.ExecuteAsync(Fail).AsTask().WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        breaker.State.Should().Be(CircuitState.Closed);

        await FluentActions.Awaiting(() => breaker.ExecuteAsync(_ => ValueTask.FromException(new TimeoutException())).AsTask().WithTimeout())
            .Should().ThrowAsync<TimeoutException>();
        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task Ratio_mode_opens_only_at_MinimumThroughput_and_FailureRatio()
    {
        var breaker = Create(o => { o.FailureRatio = 0.5; o.MinimumThroughput = 4; o.SamplingDuration = TimeSpan.FromSeconds(10); });

        await Succeed(breaker);
        await Succeed(breaker);
        await FailTimes(breaker, 1);
        breaker.State.Should().Be(CircuitState.Closed, "3 calls are below MinimumThroughput");

        await FailTimes(breaker, 1);
        breaker.State.Should().Be(CircuitState.Open, "4 calls, half failed");
    }

    [Fact]
    public async Task Ratio_mode_forgets_calls_older_than_SamplingDuration()
    {
        var breaker = Create(o => { o.FailureRatio = 0.5; o.MinimumThroughput = 2; o.SamplingDuration = TimeSpan.FromSeconds(10); });
        await FailTimes(breaker, 1);
        _clock.Advance(TimeSpan.FromSeconds(11));

        await FailTimes(breaker, 1);

        breaker.State.Should().Be(CircuitState.Closed, "the first failure has left the sample");
    }

    /// <summary>
    /// DESIGN: ratio mode is "the same rule as Polly v8". In Polly v8 an exception that ShouldHandle declines is an
    /// unhandled outcome, which Polly records as a success (it adds to the throughput and lowers the ratio).
    /// </summary>
    [Fact]
    public async Task Ratio_mode_matches_Polly_when_ShouldHandle_declines_an_exception()
    {
        var pollyState = new CircuitBreakerStateProvider();
        var polly = new ResiliencePipelineBuilder { TimeProvider = _clock }
            .AddCircuitBreaker(new CircuitBreakerStrategyOptions
            {
                FailureRatio = 0.5,
                MinimumThroughput = 2,
                SamplingDuration = TimeSpan.FromSeconds(10),
                BreakDuration = Break,
                ShouldHandle = new PredicateBuilder().Handle<InvalidOperationException>(),
                StateProvider = pollyState,
            })
            .Build();
        var ours = Create(o =>
        {
            o.FailureRatio = 0.5;
            o.MinimumThroughput = 2;
            o.SamplingDuration = TimeSpan.FromSeconds(10);
            o.ShouldHandle = ex => ex is InvalidOperationException;
        });

        // Sequence: declined, declined, declined, failure, failure.
        var sequence = new Exception[] { new FormatException(), new FormatException(), new FormatException(), new InvalidOperationException(), new InvalidOperationException() };
        var pollyOpen = new List<bool>();
        var oursOpen = new List<bool>();
        foreach (var error in sequence)
        {
            try
            {
                await polly.ExecuteAsync(_ => ValueTask.FromException(error));
            }
            catch (Exception)
            {
            }

            try
            {
                await ours.ExecuteAsync(_ => ValueTask.FromException(error));
            }
            catch (Exception)
            {
            }

            pollyOpen.Add(pollyState.CircuitState == CircuitState.Open);
            oursOpen.Add(ours.State == CircuitState.Open);
        }

        pollyOpen.Should().Equal(false, false, false, false, false);
        oursOpen.Should().Equal(pollyOpen);
    }

    [Fact]
    public async Task OnStateChanged_reports_each_transition()
    {
        var changes = new List<(CircuitState From, CircuitState To)>();
        var breaker = Create(o => o.OnStateChanged = change =>
        {
            lock (changes)
            {
                changes.Add((change.PreviousState, change.NewState));
            }

            return ValueTask.CompletedTask;
        });

        await FailTimes(breaker, 3);
        _clock.Advance(Break);
        await Succeed(breaker);

        await AsyncAssert.EventuallyAsync(() => { lock (changes) { return changes.Count >= 3; } });
        lock (changes)
        {
            changes.Should().Equal(
                (CircuitState.Closed, CircuitState.Open),
                (CircuitState.Open, CircuitState.HalfOpen),
                (CircuitState.HalfOpen, CircuitState.Closed));
        }
    }

    [Fact]
    public async Task Options_are_copied_at_construction()
    {
        var options = new CircuitBreakerOptions { TimeProvider = _clock, FailureThreshold = 1 };
        var breaker = new CircuitBreaker(options);
        options.FailureThreshold = 100;

        await FailTimes(breaker, 1);

        breaker.State.Should().Be(CircuitState.Open);
    }

    [Fact]
    public async Task GetStatistics_counts_successes_failures_and_rejections()
    {
        var breaker = Create();
        await Succeed(breaker);
        await FailTimes(breaker, 3);
        await FluentActions.Awaiting(() => Succeed(breaker)).Should().ThrowAsync<BrokenCircuitException>();

        var stats = breaker.GetStatistics();

        stats.State.Should().Be(CircuitState.Open);
        stats.Successes.Should().Be(1);
        stats.Failures.Should().Be(3);
        stats.Rejections.Should().Be(1);
        stats.TimesOpened.Should().Be(1);
    }

    [Fact]
    public async Task The_same_breaker_composes_inside_a_Polly_pipeline_with_retry()
    {
        var breaker = Create(o => o.FailureThreshold = 2);
        var calls = 0;
        var pipeline = new ResiliencePipelineBuilder { TimeProvider = _clock }
            .AddRetry(new Polly.Retry.RetryStrategyOptions
            {
                MaxRetryAttempts = 5,
                Delay = TimeSpan.Zero,
                ShouldHandle = new PredicateBuilder().Handle<InvalidOperationException>(),
            })
            .AddCircuitBreaker(breaker)
            .Build();

        await FluentActions.Awaiting(() => pipeline.ExecuteAsync(_ => { calls++; return ValueTask.FromException(new InvalidOperationException()); }).AsTask().WithTimeout())
            .Should().ThrowAsync<BrokenCircuitException>();

        calls.Should().Be(2, "the breaker opened after two failures and refused the third attempt");
        breaker.State.Should().Be(CircuitState.Open);
    }
}
