using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;
using Polly.CircuitBreaker;

namespace AsyncPatterns.Tests.CircuitBreaking;

/// <summary>Many threads, random outcomes, a moving clock, Isolate/Reset thrown in: exact accounting afterwards.</summary>
public sealed class CircuitBreakerStressTests
{
    private const int Workers = 8;
    private const int CallsPerWorker = 3000;
    private const int HalfOpenMaxCalls = 3;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Concurrent_random_calls_keep_counters_consistent_and_throw_only_expected_exceptions(bool ratioMode)
    {
        var clock = new ManualTimeProvider();
        var callbacksRunning = 0;
        var callbackOverlaps = 0;
        var changes = new ConcurrentQueue<CircuitStateChange>();
        var breaker = new CircuitBreaker(new CircuitBreakerOptions
        {
            TimeProvider = clock,
            FailureThreshold = 4,
            FailureRatio = ratioMode ? 0.3 : null,
            MinimumThroughput = 6,
            SamplingDuration = TimeSpan.FromSeconds(1),
            BreakDuration = TimeSpan.FromMilliseconds(100),
            HalfOpenMaxCalls = HalfOpenMaxCalls,
            ShouldHandle = ex => ex is not ArgumentException,
            OnStateChanged = async change =>
            {
                if (Interlocked.Increment(ref callbacksRunning) != 1)
                {
                    Interlocked.Increment(ref callbackOverlaps);
                }

                changes.Enqueue(change);
                if (change.NewState == CircuitState.HalfOpen)
                {
                    await Task.Yield();
                }

                Interlocked.Decrement(ref callbacksRunning);
            },
        });

        long succeeded = 0, failed = 0, declined = 0, cancelled = 0, broken = 0, isolated = 0, snapshots = 0;
        var unexpected = new ConcurrentQueue<Exception>();
        var torn = new ConcurrentQueue<string>();
        using var stop = new CancellationTokenSource();

        var ticker = Task.Run(async () =>
        {
            var random = new Random(7);
            while (!stop.IsCancellationRequested)
            {
                clock.Advance(TimeSpan.FromMilliseconds(random.Next(1, 40)));
                switch (random.Next(200))
                {
                    case 0: breaker.Isolate(); break;
                    case 1: case 2: breaker.Reset(); break;
                }

                await Task.Delay(1);
            }

            breaker.Reset();
        });

        var workers = Enumerable.Range(0, Workers).Select(w => Task.Run(async () =>
        {
            var random = new Random(1000 + w);
            for (var i = 0; i < CallsPerWorker; i++)
            {
                var kind = random.Next(10);
                var yields = random.Next(3) == 0;
                using var cts = new CancellationTokenSource();
                try
                {
                    await breaker.ExecuteAsync(
                        async ct =>
                        {
                            if (yields)
                            {
                                await Task.Yield();
                            }

                            switch (kind)
                            {
                                case <= 4: return 1;
                                case <= 7: throw new InvalidOperationException("boom");
                                case 8: throw new ArgumentException("declined");
                                default:
                                    await cts.CancelAsync();
                                    ct.ThrowIfCancellationRequested();
                                    return 0;
                            }
                        },
                        cts.Token);
                    Interlocked.Increment(ref succeeded);
                }
                catch (InvalidOperationException ex) when (ex.Message == "boom")
                {
                    Interlocked.Increment(ref failed);
                }
                catch (ArgumentException)
                {
                    Interlocked.Increment(ref declined);
                }
                catch (OperationCanceledException) when (kind == 9)
                {
                    Interlocked.Increment(ref cancelled);
                }
                catch (IsolatedCircuitException)
                {
                    Interlocked.Increment(ref isolated);
                }
                catch (BrokenCircuitException ex) when (ex.RetryAfter is { } r && r > TimeSpan.Zero && r <= TimeSpan.FromMilliseconds(100))
                {
                    Interlocked.Increment(ref broken);
                }
                catch (Exception ex)
                {
                    unexpected.Enqueue(ex);
                }

                if (i % 50 == 0)
                {
                    var s = breaker.GetStatistics();
                    Interlocked.Increment(ref snapshots);
                    if (s.HalfOpenTrialsInFlight is < 0 or > HalfOpenMaxCalls || !Enum.IsDefined(s.State) ||
                        (ratioMode && s.ConsecutiveFailures != 0))
                    {
                        torn.Enqueue($"{s.State} trials {s.HalfOpenTrialsInFlight} run {s.ConsecutiveFailures}");
                    }
                }
            }
        })).ToArray();

        await Task.WhenAll(workers).WithTimeout(TimeSpan.FromSeconds(60));
        await stop.CancelAsync();
        await ticker.WithTimeout();

        unexpected.Should().BeEmpty();
        torn.Should().BeEmpty();
        callbackOverlaps.Should().Be(0, "OnStateChanged deliveries never overlap");
        snapshots.Should().BePositive();
        var stats = breaker.GetStatistics();
        (stats.Successes, stats.Failures, stats.IgnoredOutcomes, stats.Rejections)
            .Should().Be((succeeded + declined, failed, cancelled, broken + isolated), "a declined exception counts as a success, as in Polly v8");
        (succeeded + failed + declined + cancelled + broken + isolated).Should().Be(Workers * CallsPerWorker);
        stats.State.Should().Be(CircuitState.Closed, "the ticker reset it last");
        stats.TimesOpened.Should().BePositive("the random failures must have opened the circuit");
        broken.Should().BePositive();

        // The published changes form a chain: each starts where the previous one ended.
        await AsyncAssert.EventuallyAsync(() => Volatile.Read(ref callbacksRunning) == 0);
        var chain = changes.ToArray();
        chain.Should().NotBeEmpty();
        chain[0].PreviousState.Should().Be(CircuitState.Closed);
        for (var i = 1; i < chain.Length; i++)
        {
            chain[i].PreviousState.Should().Be(chain[i - 1].NewState, "change {0} of {1} must follow on from the one before", i, chain.Length);
        }
    }
}
