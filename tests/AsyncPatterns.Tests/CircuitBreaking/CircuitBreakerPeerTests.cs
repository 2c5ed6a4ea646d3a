using AsyncPatterns.Tests.TestSupport;
using Polly;
using Polly.CircuitBreaker;
using static AsyncPatterns.Tests.CircuitBreaking.CircuitBreakerTestKit;

namespace AsyncPatterns.Tests.CircuitBreaking;

/// <summary>
/// Behaviours ported from Polly v8's circuit-breaker tests (CircuitStateControllerTests, RollingHealthMetricsTests,
/// CircuitBreakerResiliencePipelineBuilderTests) and from the seeds' Python breaker. Where Polly can be configured the
/// same way (ratio mode, one trial), the scenario runs through Polly 8.9.1 side by side and both must agree step by step.
/// </summary>
public sealed class CircuitBreakerPeerTests
{
    private static readonly TimeSpan PeerBreak = TimeSpan.FromSeconds(5);

    // Polly: CircuitBreakerResiliencePipelineBuilderTests.AddCircuitBreaker_IntegrationTest (results → exceptions).
    [Fact]
    public async Task Polly_integration_scenario_opens_half_opens_reopens_and_closes_with_the_same_notifications()
    {
        var clock = new ManualTimeProvider();
        var changes = new List<CircuitState>();
        var breaker = new CircuitBreaker(new CircuitBreakerOptions
        {
            TimeProvider = clock,
            FailureRatio = 0.5,
            MinimumThroughput = 10,
            SamplingDuration = TimeSpan.FromSeconds(10),
            BreakDuration = TimeSpan.FromSeconds(1),
            OnStateChanged = change => { changes.Add(change.NewState); return default; },
        });

        await breaker.FailTimesAsync(9);
        changes.Should().BeEmpty("9 calls are below MinimumThroughput 10");
        await breaker.FailAsync();
        changes.Should().Equal(CircuitState.Open);
        await breaker.Invoking(b => b.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>();

        clock.Advance(TimeSpan.FromSeconds(1));
        await breaker.FailAsync();
        await breaker.Invoking(b => b.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>();
        changes.Should().Equal(CircuitState.Open, CircuitState.HalfOpen, CircuitState.Open);

        clock.Advance(TimeSpan.FromSeconds(1));
        await breaker.SucceedAsync();
        changes.Should().Equal(CircuitState.Open, CircuitState.HalfOpen, CircuitState.Open, CircuitState.HalfOpen, CircuitState.Closed);
    }

    // Polly: CircuitStateControllerTests.HalfOpen_EnsureBreakDuration / OnActionPreExecute_HalfOpen.
    [Fact]
    public async Task Refusals_while_a_trial_runs_carry_RetryAfter_counted_from_when_the_circuit_went_half_open()
    {
        var twin = new Twin();
        await twin.CallAsync(CallOutcome.Fail);
        await twin.CallAsync(CallOutcome.Fail);
        twin.Advance(PeerBreak + TimeSpan.FromSeconds(3)); // the trial arrives late: the count starts at the trial, not the break's end

        await twin.StartHeldAsync();
        twin.State.Should().Be(CircuitState.HalfOpen);
        twin.Advance(TimeSpan.FromSeconds(1));

        var refusal = await twin.CallAsync(CallOutcome.Succeed);
        refusal.Should().BeOfType<BrokenCircuitException>().Which.RetryAfter.Should().Be(PeerBreak - TimeSpan.FromSeconds(1));
        refusal!.InnerException.Should().BeOfType<InvalidOperationException>();

        await twin.FinishHeldAsync(CallOutcome.Succeed);
        twin.State.Should().Be(CircuitState.Closed);
    }

    // Polly 8.9.1: an exception ShouldHandle declines is an unhandled outcome, which closes a half-open circuit.
    [Fact]
    public async Task A_trial_that_throws_a_declined_exception_closes_the_circuit_as_in_Polly()
    {
        var twin = new Twin();
        await twin.CallAsync(CallOutcome.Fail);
        await twin.CallAsync(CallOutcome.Fail);
        twin.Advance(PeerBreak);

        await twin.CallAsync(CallOutcome.Declined);

        twin.State.Should().Be(CircuitState.Closed);
        twin.Ours.GetStatistics().Successes.Should().Be(1, "a declined exception is counted as a success");
    }

    // Polly 8.9.1 (CloseCircuitAsync while the trial runs): the trial's outcome then arrives in a closed circuit and
    // is counted like any closed-state outcome.
    [Fact]
    public async Task A_trial_still_running_when_Reset_closes_the_circuit_counts_as_a_closed_state_outcome_as_in_Polly()
    {
        var twin = new Twin();
        await twin.CallAsync(CallOutcome.Fail);
        await twin.CallAsync(CallOutcome.Fail);
        twin.Advance(PeerBreak);
        await twin.StartHeldAsync();

        await twin.ResetAsync();
        await twin.CallAsync(CallOutcome.Fail);
        twin.State.Should().Be(CircuitState.Closed, "1 call is below MinimumThroughput 2");

        await twin.FinishHeldAsync(CallOutcome.Fail);

        twin.State.Should().Be(CircuitState.Open, "the late trial failure is the second failure of the new sample");
    }

    [Fact]
    public async Task In_consecutive_mode_a_trial_finishing_after_Reset_also_counts_toward_the_run()
    {
        var clock = new ManualTimeProvider();
        var breaker = Create(clock, o => o.FailureThreshold = 2);
        await breaker.FailTimesAsync(2);
        clock.Advance(Break);
        var gate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var trial = breaker.ExecuteAsync(_ => new ValueTask<int>(gate.Task)).AsTask();

        breaker.Reset();
        await breaker.FailAsync();
        gate.SetException(new InvalidOperationException("late trial"));
        await trial.Invoking(t => t.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();

        breaker.State.Should().Be(CircuitState.Open);
        breaker.GetStatistics().TimesOpened.Should().Be(2);
    }

    [Fact]
    public async Task A_sibling_trial_finishing_after_another_trial_closed_the_circuit_counts_as_a_closed_state_outcome()
    {
        var clock = new ManualTimeProvider();
        var breaker = Create(clock, o => { o.FailureThreshold = 2; o.HalfOpenMaxCalls = 2; });
        await breaker.FailTimesAsync(2);
        clock.Advance(Break);
        var slow = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var slowTrial = breaker.ExecuteAsync(_ => new ValueTask<int>(slow.Task)).AsTask();

        await breaker.SucceedAsync();
        breaker.State.Should().Be(CircuitState.Closed);
        slow.SetException(new InvalidOperationException("slow sibling"));
        await slowTrial.Invoking(t => t.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();

        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().ConsecutiveFailures.Should().Be(1);
        await breaker.FailAsync();
        breaker.State.Should().Be(CircuitState.Open);
    }

    // Polly: CircuitStateControllerTests.OnActionFailureAsync_EnsureCorrectBehavior(Open/Isolated) and
    // OnActionSuccess_EnsureCorrectBehavior(Isolated): late outcomes neither extend the break nor move the circuit.
    [Fact]
    public async Task Late_outcomes_of_calls_admitted_while_closed_neither_extend_the_break_nor_move_an_open_circuit()
    {
        var twin = new Twin();
        await twin.StartHeldAsync();
        await twin.CallAsync(CallOutcome.Fail);
        await twin.CallAsync(CallOutcome.Fail);
        twin.State.Should().Be(CircuitState.Open);
        twin.Advance(TimeSpan.FromSeconds(2));

        await twin.FinishHeldAsync(CallOutcome.Fail);

        twin.State.Should().Be(CircuitState.Open);
        (await twin.CallAsync(CallOutcome.Succeed)).Should().BeOfType<BrokenCircuitException>()
            .Which.RetryAfter.Should().Be(PeerBreak - TimeSpan.FromSeconds(2), "a late failure does not restart the break");

        await twin.StartHeldAsync(); // refused: nothing held
        twin.Advance(PeerBreak);
        await twin.CallAsync(CallOutcome.Succeed);
        twin.State.Should().Be(CircuitState.Closed);
    }

    [Theory]
    [InlineData(CallOutcome.Succeed)]
    [InlineData(CallOutcome.Fail)]
    [InlineData(CallOutcome.Declined)]
    public async Task Isolating_while_a_trial_runs_holds_the_circuit_isolated_whatever_the_trial_does(CallOutcome outcome)
    {
        var twin = new Twin();
        await twin.CallAsync(CallOutcome.Fail);
        await twin.CallAsync(CallOutcome.Fail);
        twin.Advance(PeerBreak);
        await twin.StartHeldAsync();

        await twin.IsolateAsync();
        await twin.FinishHeldAsync(outcome);

        twin.State.Should().Be(CircuitState.Isolated);
        twin.Advance(PeerBreak * 100);
        var refusal = await twin.CallAsync(CallOutcome.Succeed);
        refusal.Should().BeOfType<IsolatedCircuitException>().Which.RetryAfter.Should().BeNull();
        await twin.ResetAsync();
        twin.State.Should().Be(CircuitState.Closed);
        (await twin.CallAsync(CallOutcome.Succeed)).Should().BeNull();
    }

    // Polly: CloseCircuit_NeedsLock reports OnClosed only when the prior state was not closed. (A second Isolate is where
    // we differ, documented: Polly reports a second opening, we report nothing.)
    [Fact]
    public async Task Reset_of_a_closed_circuit_and_Isolate_of_an_isolated_one_report_no_change()
    {
        var clock = new ManualTimeProvider();
        var changes = new List<(CircuitState From, CircuitState To)>();
        var breaker = Create(clock, o => o.OnStateChanged = c => { changes.Add((c.PreviousState, c.NewState)); return default; });
        await breaker.FailTimesAsync(2);

        breaker.Reset();
        breaker.Isolate();
        breaker.Isolate();
        breaker.Reset();
        breaker.Reset();

        changes.Should().Equal((CircuitState.Closed, CircuitState.Isolated), (CircuitState.Isolated, CircuitState.Closed));
        breaker.GetStatistics().ConsecutiveFailures.Should().Be(0, "Reset of a closed circuit still clears its count");
    }

    // Polly: RollingHealthMetricsTests.GetHealthInfo_EnsureWindowRespected and AdvancedCircuitBehavior: the ratio is
    // evaluated only when a failure is recorded while closed.
    [Fact]
    public async Task The_ratio_is_checked_only_when_a_failure_is_recorded_even_after_successes_age_out_of_the_sample()
    {
        var twin = new Twin(failureRatio: 0.6, minimumThroughput: 4);
        for (var i = 0; i < 4; i++)
        {
            await twin.CallAsync(CallOutcome.Succeed);
        }

        twin.Advance(TimeSpan.FromSeconds(1));
        for (var i = 0; i < 5; i++)
        {
            await twin.CallAsync(CallOutcome.Fail); // 5 of 9 < 0.6
        }

        twin.State.Should().Be(CircuitState.Closed);
        twin.Advance(TimeSpan.FromSeconds(9)); // the successes' window is now a full period old: the sample is 5 of 5
        twin.State.Should().Be(CircuitState.Closed, "time alone does not evaluate the ratio");
        await twin.CallAsync(CallOutcome.Succeed);
        twin.State.Should().Be(CircuitState.Closed, "a success does not evaluate the ratio");

        await twin.CallAsync(CallOutcome.Fail);

        twin.State.Should().Be(CircuitState.Open);
    }

    // Polly: RollingHealthMetricsTests.GetHealthInfo_SamplingDurationRespected.
    [Fact]
    public async Task Outcomes_a_full_sampling_period_old_are_forgotten()
    {
        var twin = new Twin(failureRatio: 0.5, minimumThroughput: 3);
        await twin.CallAsync(CallOutcome.Fail);
        await twin.CallAsync(CallOutcome.Fail);
        twin.Advance(TimeSpan.FromSeconds(10));

        await twin.CallAsync(CallOutcome.Fail);

        twin.State.Should().Be(CircuitState.Closed, "the first two failures left the sample exactly at SamplingDuration");
        await twin.CallAsync(CallOutcome.Fail);
        await twin.CallAsync(CallOutcome.Fail);
        twin.State.Should().Be(CircuitState.Open);
    }

    // Polly: CircuitStateControllerTests.OnActionPreExecute_CircuitOpened_EnsureExceptionStackTraceDoesNotGrow.
    [Fact]
    public async Task Each_refusal_is_a_fresh_exception_whose_stack_trace_does_not_grow()
    {
        var clock = new ManualTimeProvider();
        var breaker = Create(clock);
        await breaker.FailTimesAsync(3);
        var refusals = new List<BrokenCircuitException>();

        for (var i = 0; i < 50; i++)
        {
            try
            {
                await breaker.ExecuteAsync(Ok);
            }
            catch (BrokenCircuitException ex)
            {
                refusals.Add(ex);
            }
        }

        refusals.Should().HaveCount(50).And.OnlyHaveUniqueItems();
        refusals.Select(r => r.StackTrace).Distinct().Should().ContainSingle();
    }

    // DESIGN: "The closed-state success path takes no lock and allocates nothing."
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_synchronous_success_through_a_closed_circuit_allocates_nothing(bool ratioMode)
    {
        var breaker = new CircuitBreaker(new CircuitBreakerOptions { FailureRatio = ratioMode ? 0.5 : null });
        Func<CancellationToken, ValueTask<int>> action = static _ => new ValueTask<int>(1);
        var sum = RunMany(breaker, action, 100);

        // A metrics listener enabled by a test running in parallel would allocate in its callback, on this thread: measure
        // while the breaker's instruments are off, and keep the best of a few runs.
        var best = long.MaxValue;
        for (var attempt = 0; attempt < 20 && best != 0; attempt++)
        {
            if (CircuitBreakerMetrics.Calls.Enabled)
            {
                Thread.Yield();
                continue;
            }

            var before = GC.GetAllocatedBytesForCurrentThread();
            sum += RunMany(breaker, action, 1000);
            var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (!CircuitBreakerMetrics.Calls.Enabled)
            {
                best = Math.Min(best, allocated);
            }
        }

        best.Should().Be(0);
        breaker.GetStatistics().Successes.Should().Be(sum);

        static int RunMany(CircuitBreaker breaker, Func<CancellationToken, ValueTask<int>> action, int count)
        {
            var sum = 0;
            for (var i = 0; i < count; i++)
            {
                var pending = breaker.ExecuteAsync(action);
                if (!pending.IsCompletedSuccessfully)
                {
                    throw new InvalidOperationException("a synchronous action must complete synchronously");
                }

                sum += pending.Result;
            }

            return sum;
        }
    }

    // Seeds (000 and 002): threshold failures open; while open the function is not called; after the timeout one call
    // goes through as half-open; its failure re-opens for a full timeout, its success closes and the count restarts.
    // The action's own exception is re-raised unchanged ("raise e"). The boundary follows seed 002 and Polly: at exactly
    // the timeout the call is a trial (seed 000's strict '>' would still refuse it).
    [Fact]
    public async Task The_seeds_breaker_scenario()
    {
        var clock = new ManualTimeProvider();
        var breaker = new CircuitBreaker(new CircuitBreakerOptions { TimeProvider = clock, FailureThreshold = 3, BreakDuration = TimeSpan.FromSeconds(60) });
        var calls = 0;
        var error = new InvalidOperationException("Operation failed");
        ValueTask<string> Risky(CancellationToken _) { calls++; return ValueTask.FromException<string>(error); }
        ValueTask<string> Fine(CancellationToken _) { calls++; return new ValueTask<string>("Processed"); }

        for (var i = 0; i < 3; i++)
        {
            (await breaker.Invoking(b => b.ExecuteAsync(Risky).AsTask()).Should().ThrowAsync<InvalidOperationException>())
                .Which.Should().BeSameAs(error);
        }

        breaker.State.Should().Be(CircuitState.Open);
        await breaker.Invoking(b => b.ExecuteAsync(Fine).AsTask()).Should().ThrowAsync<BrokenCircuitException>();
        calls.Should().Be(3, "an open breaker does not call the function");

        clock.Advance(TimeSpan.FromSeconds(60) - TimeSpan.FromTicks(1));
        await breaker.Invoking(b => b.ExecuteAsync(Fine).AsTask()).Should().ThrowAsync<BrokenCircuitException>();
        clock.Advance(TimeSpan.FromTicks(1));
        await breaker.Invoking(b => b.ExecuteAsync(Risky).AsTask()).Should().ThrowAsync<InvalidOperationException>();
        breaker.State.Should().Be(CircuitState.Open, "a half-open failure re-opens");
        calls.Should().Be(4);

        clock.Advance(TimeSpan.FromSeconds(59));
        await breaker.Invoking(b => b.ExecuteAsync(Fine).AsTask()).Should().ThrowAsync<BrokenCircuitException>("the timeout restarted at the trial's failure");
        clock.Advance(TimeSpan.FromSeconds(1));
        (await breaker.ExecuteAsync(Fine)).Should().Be("Processed");
        breaker.State.Should().Be(CircuitState.Closed);

        await breaker.Invoking(b => b.ExecuteAsync(Risky).AsTask()).Should().ThrowAsync<InvalidOperationException>();
        await breaker.Invoking(b => b.ExecuteAsync(Risky).AsTask()).Should().ThrowAsync<InvalidOperationException>();
        breaker.State.Should().Be(CircuitState.Closed, "the failure count restarted from 0 when the circuit closed");
    }

    public enum CallOutcome
    {
        Succeed,
        Fail,
        Declined,
    }

    /// <summary>
    /// Our breaker (ratio mode) and Polly 8.9.1's, configured alike, on twin clocks. Every operation runs on both and the
    /// states (and any refusal) must match after it.
    /// </summary>
    private sealed class Twin
    {
        private readonly ManualTimeProvider _ourClock = new();
        private readonly ManualTimeProvider _pollyClock = new();
        private readonly CircuitBreakerStateProvider _pollyState = new();
        private readonly CircuitBreakerManualControl _pollyControl = new();
        private readonly ResiliencePipeline _polly;
        private TaskCompletionSource? _ourGate;
        private TaskCompletionSource? _pollyGate;
        private Task<Exception?>? _ourHeld;
        private Task<Exception?>? _pollyHeld;

        public Twin(double failureRatio = 0.5, int minimumThroughput = 2)
        {
            Ours = new CircuitBreaker(new CircuitBreakerOptions
            {
                TimeProvider = _ourClock,
                FailureRatio = failureRatio,
                MinimumThroughput = minimumThroughput,
                SamplingDuration = TimeSpan.FromSeconds(10),
                BreakDuration = PeerBreak,
                ShouldHandle = ex => ex is InvalidOperationException,
            });
            _polly = new ResiliencePipelineBuilder { TimeProvider = _pollyClock }
                .AddCircuitBreaker(new CircuitBreakerStrategyOptions
                {
                    FailureRatio = failureRatio,
                    MinimumThroughput = minimumThroughput,
                    SamplingDuration = TimeSpan.FromSeconds(10),
                    BreakDuration = PeerBreak,
                    ShouldHandle = args => new ValueTask<bool>(args.Outcome.Exception is InvalidOperationException),
                    StateProvider = _pollyState,
                    ManualControl = _pollyControl,
                })
                .Build();
        }

        public CircuitBreaker Ours { get; }

        public CircuitState State
        {
            get
            {
                Ours.State.Should().Be(_pollyState.CircuitState, "our breaker and Polly's must be in the same state");
                return Ours.State;
            }
        }

        public void Advance(TimeSpan delta)
        {
            _ourClock.Advance(delta);
            _pollyClock.Advance(delta);
        }

        /// <summary>Runs one call through both; returns the refusal, or null when the call ran.</summary>
        public async Task<BrokenCircuitException?> CallAsync(CallOutcome outcome)
        {
            var ours = await CaughtAsync(Ours.ExecuteAsync(_ => Act(outcome)).AsTask());
            var polly = await CaughtAsync(_polly.ExecuteAsync(_ => Act(outcome)).AsTask());
            return Compare(ours, polly);
        }

        /// <summary>Starts a call in both that runs until <see cref="FinishHeldAsync"/>; a refusal is compared at once.</summary>
        public async Task StartHeldAsync()
        {
            _ourGate = new(TaskCreationOptions.RunContinuationsAsynchronously);
            _pollyGate = new(TaskCreationOptions.RunContinuationsAsynchronously);
            var ourGate = _ourGate.Task;
            var pollyGate = _pollyGate.Task;
            _ourHeld = CaughtAsync(Ours.ExecuteAsync(async _ => await ourGate).AsTask());
            _pollyHeld = CaughtAsync(_polly.ExecuteAsync(async _ => await pollyGate).AsTask());
            if (_ourHeld.IsCompleted || _pollyHeld.IsCompleted)
            {
                _ourHeld.IsCompleted.Should().Be(_pollyHeld.IsCompleted, "both must admit or refuse the held call");
                Compare(await _ourHeld, await _pollyHeld).Should().NotBeNull();
                _ourHeld = _pollyHeld = null;
            }

            _ = State;
        }

        public async Task FinishHeldAsync(CallOutcome outcome)
        {
            _ourHeld.Should().NotBeNull("a call must be held");
            if (outcome == CallOutcome.Succeed)
            {
                _ourGate!.SetResult();
                _pollyGate!.SetResult();
            }
            else
            {
                _ourGate!.SetException(Error(outcome));
                _pollyGate!.SetException(Error(outcome));
            }

            (await _ourHeld!)?.GetType().Should().Be((await _pollyHeld!)?.GetType());
            _ourHeld = _pollyHeld = null;
            _ = State;
        }

        public async Task IsolateAsync()
        {
            Ours.Isolate();
            await _pollyControl.IsolateAsync();
            _ = State;
        }

        public async Task ResetAsync()
        {
            Ours.Reset();
            await _pollyControl.CloseAsync();
            _ = State;
        }

        private BrokenCircuitException? Compare(Exception? ours, Exception? polly)
        {
            ours?.GetType().Should().Be(polly?.GetType(), "both must end the call the same way");
            if (polly is null)
            {
                ours.Should().BeNull();
            }

            if (ours is BrokenCircuitException refusal)
            {
                refusal.RetryAfter.Should().Be(((BrokenCircuitException)polly!).RetryAfter);
                refusal.InnerException?.GetType().Should().Be(polly.InnerException?.GetType());
            }

            _ = State;
            return ours as BrokenCircuitException;
        }

        private static ValueTask Act(CallOutcome outcome) =>
            outcome == CallOutcome.Succeed ? ValueTask.CompletedTask : ValueTask.FromException(Error(outcome));

        private static Exception Error(CallOutcome outcome) =>
            outcome == CallOutcome.Fail ? new InvalidOperationException("boom") : new ArgumentException("declined");

        private static async Task<Exception?> CaughtAsync(Task call)
        {
            try
            {
                await call.WithTimeout();
                return null;
            }
            catch (Exception ex)
            {
                return ex;
            }
        }
    }
}
