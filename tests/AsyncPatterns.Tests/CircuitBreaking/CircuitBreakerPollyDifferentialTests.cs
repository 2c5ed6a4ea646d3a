using AsyncPatterns.Tests.TestSupport;
using Polly;
using Polly.CircuitBreaker;

namespace AsyncPatterns.Tests.CircuitBreaking;

/// <summary>
/// Ratio mode against Polly v8's own circuit breaker: the same seeded random sequence of successes, failures and clock
/// advances goes through both, and after every step both must be in the same state and must have allowed or refused
/// the same call (with the same <see cref="BrokenCircuitException.RetryAfter"/>). The extended sequences add
/// <see cref="CircuitBreaker.Isolate"/>/<see cref="CircuitBreaker.Reset"/> (Polly's <see cref="CircuitBreakerManualControl"/>),
/// exceptions <c>ShouldHandle</c> declines, and calls held in flight while the circuit changes (a half-open trial that is
/// still running while other calls are refused, or while the circuit is isolated or reset).
/// </summary>
public sealed class CircuitBreakerPollyDifferentialTests
{
    private const int Steps = 1000;

    public static TheoryData<int, bool> Seeds()
    {
        var data = new TheoryData<int, bool>();
        for (var seed = 1; seed <= 40; seed++)
        {
            data.Add(seed, false);
        }

        for (var seed = 101; seed <= 106; seed++)
        {
            data.Add(seed, true); // our breaker inside a Polly pipeline: the same decisions
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Seeds))]
    public async Task Ratio_mode_makes_the_same_decisions_as_Polly_v8_step_by_step(int seed, bool viaPipeline)
    {
        var (setup, transitions) = await CompareAsync(seed, viaPipeline);

        // A sequence that never moves the circuit would prove little: where failures dominate, it must have opened.
        if (setup.FailureProbability > 0.4 && setup.FailureRatio <= 0.5)
        {
            transitions.Should().Contain((CircuitState.Closed, CircuitState.Open), setup.ToString());
        }
    }

    public static TheoryData<int, bool> ExtendedSeeds()
    {
        var data = new TheoryData<int, bool>();
        for (var seed = 201; seed <= 230; seed++)
        {
            data.Add(seed, false);
        }

        for (var seed = 301; seed <= 304; seed++)
        {
            data.Add(seed, true);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(ExtendedSeeds))]
    public async Task With_isolate_reset_declined_exceptions_and_calls_in_flight_ratio_mode_still_matches_Polly_v8(int seed, bool viaPipeline)
    {
        var (setup, transitions) = await CompareAsync(seed, viaPipeline, extended: true);

        if (setup.FailureProbability > 0.4 && setup.FailureRatio <= 0.5)
        {
            transitions.Should().Contain((CircuitState.Closed, CircuitState.Open), setup.ToString());
        }
    }

    [Fact]
    public async Task The_extended_seeds_exercise_isolate_reset_and_trials_in_flight_from_every_state()
    {
        var seen = new HashSet<(CircuitState, CircuitState)>();
        var coverage = new Coverage();
        for (var seed = 201; seed <= 230; seed++)
        {
            seen.UnionWith((await CompareAsync(seed, viaPipeline: false, extended: true, coverage)).Transitions);
        }

        seen.Should().Contain(
        [
            (CircuitState.Closed, CircuitState.Isolated),
            (CircuitState.Open, CircuitState.Isolated),
            (CircuitState.HalfOpen, CircuitState.Isolated),
            (CircuitState.Isolated, CircuitState.Closed),
            (CircuitState.Open, CircuitState.Closed),
            (CircuitState.HalfOpen, CircuitState.Closed),
            (CircuitState.HalfOpen, CircuitState.Open),
        ]);
        coverage.RefusedWhileTrialInFlight.Should().BeGreaterThan(0);
        coverage.TrialFinishedAfterReset.Should().BeGreaterThan(0);
        coverage.DeclinedTrial.Should().BeGreaterThan(0);
        coverage.IsolatedRefusals.Should().BeGreaterThan(0);
    }

    [Fact]
    public async Task The_seeds_exercise_every_transition_of_the_ratio_breaker()
    {
        var seen = new HashSet<(CircuitState, CircuitState)>();
        for (var seed = 1; seed <= 24; seed++)
        {
            seen.UnionWith((await CompareAsync(seed, viaPipeline: false)).Transitions);
        }

        seen.Should().Contain(
        [
            (CircuitState.Closed, CircuitState.Open),
            (CircuitState.Open, CircuitState.HalfOpen),
            (CircuitState.HalfOpen, CircuitState.Closed),
            (CircuitState.HalfOpen, CircuitState.Open),
        ]);
    }

    private static async Task<(Setup Setup, HashSet<(CircuitState, CircuitState)> Transitions)> CompareAsync(
        int seed, bool viaPipeline, bool extended = false, Coverage? coverage = null)
    {
        coverage ??= new Coverage();
        var random = new Random(seed);
        double[] ratios = [0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 2.0 / 3, 0.75, 0.9, 1.0];
        var failureRatio = random.Next(3) == 0 ? Math.Round(random.NextDouble(), 3) + 0.001 : ratios[random.Next(ratios.Length)];
        failureRatio = Math.Min(failureRatio, 1.0);
        var minimumThroughput = random.Next(2, 12);
        var samplingDuration = TimeSpan.FromMilliseconds(random.Next(500, 60_000)) + TimeSpan.FromTicks(random.Next(0, 10));
        var breakDuration = TimeSpan.FromMilliseconds(random.Next(500, 30_000));
        var failureProbability = 0.05 + (random.NextDouble() * 0.8);
        var windowDuration = TimeSpan.FromTicks(samplingDuration.Ticks / 10);
        var setup = new Setup(seed, failureRatio, minimumThroughput, samplingDuration, breakDuration, failureProbability);

        var transitions = new HashSet<(CircuitState, CircuitState)>();
        var ourClock = new ManualTimeProvider();
        var pollyClock = new ManualTimeProvider();
        var ours = new CircuitBreaker(new CircuitBreakerOptions
        {
            TimeProvider = ourClock,
            FailureRatio = failureRatio,
            MinimumThroughput = minimumThroughput,
            SamplingDuration = samplingDuration,
            BreakDuration = breakDuration,
            ShouldHandle = extended ? ex => ex is InvalidOperationException : null,
            OnStateChanged = change =>
            {
                transitions.Add((change.PreviousState, change.NewState));
                return ValueTask.CompletedTask;
            },
        });
        var ourPipeline = new ResiliencePipelineBuilder { TimeProvider = ourClock }.AddCircuitBreaker(ours).Build();
        var pollyState = new CircuitBreakerStateProvider();
        var pollyControl = new CircuitBreakerManualControl();
        var pollyOptions = new CircuitBreakerStrategyOptions
        {
            FailureRatio = failureRatio,
            MinimumThroughput = minimumThroughput,
            SamplingDuration = samplingDuration,
            BreakDuration = breakDuration,
            StateProvider = pollyState,
            ManualControl = pollyControl,
        };
        if (extended)
        {
            pollyOptions.ShouldHandle = args => new ValueTask<bool>(args.Outcome.Exception is InvalidOperationException);
        }

        var polly = new ResiliencePipelineBuilder { TimeProvider = pollyClock }.AddCircuitBreaker(pollyOptions).Build();
        Pending? pending = null;

        var callTimes = new List<TimeSpan>();
        for (var step = 0; step < Steps; step++)
        {
            var where = $"{setup}; step {step} at +{ourClock.Elapsed}";
            var roll = random.Next(100);
            if (extended && roll >= 35 && roll < 55)
            {
                // Manual control and calls held in flight. The clock stands still while a call is in flight: a trial
                // outliving a whole break is where we differ from Polly on purpose (hung-trial recovery).
                switch (random.Next(5))
                {
                    case 0:
                        coverage.Note(pending);
                        ours.Isolate();
                        await pollyControl.IsolateAsync();
                        break;

                    case 1:
                        coverage.Note(pending, reset: true);
                        ours.Reset();
                        await pollyControl.CloseAsync();
                        break;

                    case 2 or 3 when pending is null:
                        pending = new Pending(viaPipeline ? null : ours, viaPipeline ? ourPipeline : null, polly, ours.State);
                        await pending.StartedAsync();
                        pending.OursRan.Should().Be(pending.PollyRan, "both must admit or refuse the held call ({0})", where);
                        SameRefusal(pending.OurRefusal, pending.PollyRefusal, where, coverage);
                        if (!pending.OursRan)
                        {
                            pending = null;
                        }

                        break;

                    default:
                        if (pending is not null)
                        {
                            var outcome = random.Next(3);
                            coverage.Finished(pending, ours.State, outcome);
                            var (ourError, pollyError) = await pending.FinishAsync(outcome);
                            ourError?.GetType().Should().Be(pollyError?.GetType(), where);
                            pending = null;
                        }

                        break;
                }
            }
            else if (roll < 35 && pending is null)
            {
                var delta = NextAdvance(random, windowDuration, samplingDuration, breakDuration);
                if (random.Next(2) == 0 && callTimes.Count > 0)
                {
                    // Land exactly on a boundary: a window, a sample or a break counted from a recent call.
                    var from = callTimes[random.Next(callTimes.Count)];
                    var target = from + (random.Next(3) switch { 0 => windowDuration, 1 => samplingDuration, _ => breakDuration });
                    delta = target > ourClock.Elapsed ? target - ourClock.Elapsed : delta;
                }

                ourClock.Advance(delta);
                pollyClock.Advance(delta);
            }
            else
            {
                var fail = random.NextDouble() < failureProbability;
                var declined = extended && !fail && random.Next(4) == 0;
                callTimes.Add(ourClock.Elapsed);
                if (callTimes.Count > 40)
                {
                    callTimes.RemoveAt(0);
                }

                var (ourRan, ourRefusal) = viaPipeline
                    ? await CallAsync(ourPipeline, fail, declined)
                    : await CallAsync(ours, fail, declined);
                var (pollyRan, pollyRefusal) = await CallAsync(polly, fail, declined);

                ourRan.Should().Be(pollyRan, "both must allow or refuse the same call ({0})", where);
                SameRefusal(ourRefusal, pollyRefusal, where, coverage);
                if (pending is not null && ourRefusal is not null and not IsolatedCircuitException && ours.State == CircuitState.HalfOpen)
                {
                    pending.RefusalsWhileInFlight++;
                }
            }

            ours.State.Should().Be(pollyState.CircuitState, "both must be in the same state ({0})", where);
        }

        if (pending is not null)
        {
            await pending.FinishAsync(0);
        }

        return (setup, transitions);
    }

    private static void SameRefusal(BrokenCircuitException? ours, BrokenCircuitException? polly, string where, Coverage coverage)
    {
        ours?.GetType().Should().Be(polly?.GetType(), where);
        ours?.RetryAfter.Should().Be(polly!.RetryAfter, where);
        if (ours is IsolatedCircuitException)
        {
            coverage.IsolatedRefusals++;
        }
        else if (ours is not null)
        {
            ours.InnerException?.GetType().Should().Be(polly!.InnerException?.GetType(), where);
        }
    }

    private static TimeSpan NextAdvance(Random random, TimeSpan window, TimeSpan sampling, TimeSpan breakDuration) => random.Next(10) switch
    {
        0 => TimeSpan.FromTicks(random.Next(0, 100)),
        1 => window,
        2 => window - TimeSpan.FromTicks(1),
        3 => breakDuration,
        4 => breakDuration - TimeSpan.FromTicks(1),
        5 => TimeSpan.FromTicks((long)(random.NextDouble() * breakDuration.Ticks * 2)),
        6 => TimeSpan.FromTicks((long)(random.NextDouble() * sampling.Ticks)),
        _ => TimeSpan.FromTicks((long)(random.NextDouble() * window.Ticks * 1.5)),
    };

    private sealed record Setup(int Seed, double FailureRatio, int MinimumThroughput, TimeSpan SamplingDuration, TimeSpan BreakDuration, double FailureProbability);

    private static async Task<(bool Ran, BrokenCircuitException? Refusal)> CallAsync(CircuitBreaker breaker, bool fail, bool declined = false)
    {
        var ran = false;
        try
        {
            await breaker.ExecuteAsync(_ => { ran = true; return Act(fail, declined); });
        }
        catch (BrokenCircuitException ex)
        {
            return (ran, ex);
        }
        catch (InvalidOperationException) when (fail)
        {
        }
        catch (ArgumentException) when (declined)
        {
        }

        return (ran, null);
    }

    private static async Task<(bool Ran, BrokenCircuitException? Refusal)> CallAsync(ResiliencePipeline pipeline, bool fail, bool declined = false)
    {
        var ran = false;
        try
        {
            await pipeline.ExecuteAsync(_ => { ran = true; return Act(fail, declined); });
        }
        catch (BrokenCircuitException ex)
        {
            return (ran, ex);
        }
        catch (InvalidOperationException) when (fail)
        {
        }
        catch (ArgumentException) when (declined)
        {
        }

        return (ran, null);
    }

    private static ValueTask Act(bool fail, bool declined = false) =>
        fail ? ValueTask.FromException(new InvalidOperationException("boom"))
        : declined ? ValueTask.FromException(new ArgumentException("declined"))
        : ValueTask.CompletedTask;

    private static Exception? OutcomeException(int outcome) => outcome switch
    {
        0 => null,
        1 => new InvalidOperationException("late boom"),
        _ => new ArgumentException("late declined"),
    };

    /// <summary>What the extended sequences reached, so the test can prove it exercised the interesting cases.</summary>
    private sealed class Coverage
    {
        public int RefusedWhileTrialInFlight { get; set; }

        public int TrialFinishedAfterReset { get; set; }

        public int DeclinedTrial { get; set; }

        public int IsolatedRefusals { get; set; }

        public void Note(Pending? pending, bool reset = false)
        {
            if (reset && pending is { AdmittedIn: CircuitState.Open or CircuitState.HalfOpen })
            {
                pending.ResetWhileInFlight = true;
            }
        }

        public void Finished(Pending pending, CircuitState state, int outcome)
        {
            if (pending.AdmittedIn is CircuitState.Open or CircuitState.HalfOpen)
            {
                if (pending.ResetWhileInFlight && outcome != 0 && state == CircuitState.Closed)
                {
                    TrialFinishedAfterReset++;
                }

                if (!pending.ResetWhileInFlight && outcome == 2 && state == CircuitState.HalfOpen)
                {
                    DeclinedTrial++;
                }

                RefusedWhileTrialInFlight += pending.RefusalsWhileInFlight;
            }
        }
    }

    /// <summary>One call held in flight in both breakers at once, finished later with the same outcome.</summary>
    private sealed class Pending
    {
        private readonly TaskCompletionSource _ourGate = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _pollyGate = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly CircuitBreaker? _breaker;
        private readonly ResiliencePipeline? _ourPipeline;
        private readonly ResiliencePipeline _polly;
        private Task? _ourCall;
        private Task? _pollyCall;

        public Pending(CircuitBreaker? breaker, ResiliencePipeline? ourPipeline, ResiliencePipeline polly, CircuitState stateBefore)
        {
            _breaker = breaker;
            _ourPipeline = ourPipeline;
            _polly = polly;
            AdmittedIn = stateBefore;
        }

        public CircuitState AdmittedIn { get; }

        public bool ResetWhileInFlight { get; set; }

        public int RefusalsWhileInFlight { get; set; }

        public bool OursRan { get; private set; }

        public bool PollyRan { get; private set; }

        public BrokenCircuitException? OurRefusal { get; private set; }

        public BrokenCircuitException? PollyRefusal { get; private set; }

        public async Task StartedAsync()
        {
            _ourCall = _breaker is not null
                ? _breaker.ExecuteAsync(async _ => { OursRan = true; await _ourGate.Task; }).AsTask()
                : _ourPipeline!.ExecuteAsync(async _ => { OursRan = true; await _ourGate.Task; }).AsTask();
            _pollyCall = _polly.ExecuteAsync(async _ => { PollyRan = true; await _pollyGate.Task; }).AsTask();
            if (_ourCall.IsCompleted)
            {
                OurRefusal = await Refusal(_ourCall);
            }

            if (_pollyCall.IsCompleted)
            {
                PollyRefusal = await Refusal(_pollyCall);
            }
        }

        public async Task<(Exception? Ours, Exception? Polly)> FinishAsync(int outcome)
        {
            if (OutcomeException(outcome) is { } ours)
            {
                _ourGate.SetException(ours);
                _pollyGate.SetException(OutcomeException(outcome)!);
            }
            else
            {
                _ourGate.SetResult();
                _pollyGate.SetResult();
            }

            return (await Caught(_ourCall!), await Caught(_pollyCall!));
        }

        private static async Task<BrokenCircuitException?> Refusal(Task call) => await Caught(call) as BrokenCircuitException;

        private static async Task<Exception?> Caught(Task call)
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
