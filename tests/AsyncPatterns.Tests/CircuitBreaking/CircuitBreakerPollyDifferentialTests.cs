using AsyncPatterns.Tests.TestSupport;
using Polly;
using Polly.CircuitBreaker;

namespace AsyncPatterns.Tests.CircuitBreaking;

/// <summary>
/// Ratio mode against Polly v8's own circuit breaker: the same seeded random sequence of successes, failures and clock
/// advances goes through both, and after every step both must be in the same state and must have allowed or refused
/// the same call (with the same <see cref="BrokenCircuitException.RetryAfter"/>).
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

    private static async Task<(Setup Setup, HashSet<(CircuitState, CircuitState)> Transitions)> CompareAsync(int seed, bool viaPipeline)
    {
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
            OnStateChanged = change =>
            {
                transitions.Add((change.PreviousState, change.NewState));
                return ValueTask.CompletedTask;
            },
        });
        var ourPipeline = new ResiliencePipelineBuilder { TimeProvider = ourClock }.AddCircuitBreaker(ours).Build();
        var pollyState = new CircuitBreakerStateProvider();
        var polly = new ResiliencePipelineBuilder { TimeProvider = pollyClock }
            .AddCircuitBreaker(new CircuitBreakerStrategyOptions
            {
                FailureRatio = failureRatio,
                MinimumThroughput = minimumThroughput,
                SamplingDuration = samplingDuration,
                BreakDuration = breakDuration,
                StateProvider = pollyState,
            })
            .Build();

        var callTimes = new List<TimeSpan>();
        for (var step = 0; step < Steps; step++)
        {
            var where = $"{setup}; step {step} at +{ourClock.Elapsed}";
            if (random.Next(100) < 35)
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
                callTimes.Add(ourClock.Elapsed);
                if (callTimes.Count > 40)
                {
                    callTimes.RemoveAt(0);
                }

                var (ourRan, ourRefusal) = viaPipeline
                    ? await CallAsync(ourPipeline, fail)
                    : await CallAsync(ours, fail);
                var (pollyRan, pollyRefusal) = await CallAsync(polly, fail);

                ourRan.Should().Be(pollyRan, "both must allow or refuse the same call ({0})", where);
                ourRefusal?.GetType().Should().Be(pollyRefusal?.GetType(), where);
                ourRefusal?.RetryAfter.Should().Be(pollyRefusal!.RetryAfter, where);
            }

            ours.State.Should().Be(pollyState.CircuitState, "both must be in the same state ({0})", where);
        }

        return (setup, transitions);
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

    private static async Task<(bool Ran, BrokenCircuitException? Refusal)> CallAsync(CircuitBreaker breaker, bool fail)
    {
        var ran = false;
        try
        {
            await breaker.ExecuteAsync(_ => { ran = true; return Act(fail); });
        }
        catch (BrokenCircuitException ex)
        {
            return (ran, ex);
        }
        catch (InvalidOperationException) when (fail)
        {
        }

        return (ran, null);
    }

    private static async Task<(bool Ran, BrokenCircuitException? Refusal)> CallAsync(ResiliencePipeline pipeline, bool fail)
    {
        var ran = false;
        try
        {
            await pipeline.ExecuteAsync(_ => { ran = true; return Act(fail); });
        }
        catch (BrokenCircuitException ex)
        {
            return (ran, ex);
        }
        catch (InvalidOperationException) when (fail)
        {
        }

        return (ran, null);
    }

    private static ValueTask Act(bool fail) => fail ? ValueTask.FromException(new InvalidOperationException("boom")) : ValueTask.CompletedTask;
}
