using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using AsyncPatterns.Tests.TestSupport;
using Microsoft.Extensions.Logging;
using Polly.CircuitBreaker;
using static AsyncPatterns.Tests.CircuitBreaking.CircuitBreakerTestKit;

namespace AsyncPatterns.Tests.CircuitBreaking;

/// <summary>OnStateChanged, log lines and metrics.</summary>
public sealed class CircuitBreakerNotificationTests
{
    private readonly ManualTimeProvider _clock = new();

    [Fact]
    public async Task OnStateChanged_receives_every_change_in_order_with_its_cause_and_time()
    {
        var changes = new List<CircuitStateChange>();
        var breaker = Create(_clock, o =>
        {
            o.Name = "orders";
            o.OnStateChanged = c => { changes.Add(c); return ValueTask.CompletedTask; };
        });

        await breaker.FailTimesAsync(3);
        _clock.Advance(Break);
        await breaker.FailAsync();
        _clock.Advance(Break);
        await breaker.SucceedAsync();
        breaker.Isolate();
        breaker.Reset();

        changes.Select(c => (c.PreviousState, c.NewState, c.Reason)).Should().Equal(
            (CircuitState.Closed, CircuitState.Open, CircuitStateChangeReason.ConsecutiveFailures),
            (CircuitState.Open, CircuitState.HalfOpen, CircuitStateChangeReason.BreakElapsed),
            (CircuitState.HalfOpen, CircuitState.Open, CircuitStateChangeReason.TrialFailed),
            (CircuitState.Open, CircuitState.HalfOpen, CircuitStateChangeReason.BreakElapsed),
            (CircuitState.HalfOpen, CircuitState.Closed, CircuitStateChangeReason.TrialSucceeded),
            (CircuitState.Closed, CircuitState.Isolated, CircuitStateChangeReason.Isolated),
            (CircuitState.Isolated, CircuitState.Closed, CircuitStateChangeReason.Reset));
        changes[0].Exception.Should().BeOfType<InvalidOperationException>();
        changes[0].BreakDuration.Should().Be(Break);
        changes[0].Timestamp.Should().Be(_clock.Start);
        changes[0].BreakerName.Should().Be("orders");
        changes[1].Exception.Should().BeNull();
        changes[1].BreakDuration.Should().BeNull();
        changes[4].Timestamp.Should().Be(_clock.Start + Break + Break);
        changes[0].ToString().Should().Contain("orders").And.Contain("Closed -> Open");
    }

    [Fact]
    public async Task OnStateChanged_never_runs_under_the_breakers_lock()
    {
        CircuitBreaker? breaker = null;
        var otherThreadGotThrough = new List<bool>();
        breaker = Create(_clock, o => o.OnStateChanged = change =>
        {
            if (change.NewState != CircuitState.Open)
            {
                return ValueTask.CompletedTask;
            }

            // If the callback held the breaker's lock, another thread's GetStatistics/State/Isolate could not proceed.
            var other = Task.Run(() => { _ = breaker!.GetStatistics(); breaker.Isolate(); breaker.Reset(); });
            otherThreadGotThrough.Add(other.Wait(TimeSpan.FromSeconds(10)));
            return ValueTask.CompletedTask;
        });

        await breaker.FailTimesAsync(3);

        otherThreadGotThrough.Should().Equal(true);
        breaker.State.Should().Be(CircuitState.Closed, "the other thread isolated then reset the breaker");
    }

    [Fact]
    public async Task A_callback_that_changes_the_state_sees_its_own_change_delivered_after_the_current_one()
    {
        var changes = new List<CircuitState>();
        CircuitBreaker? breaker = null;
        breaker = Create(_clock, o => o.OnStateChanged = c =>
        {
            changes.Add(c.NewState);
            if (c.NewState == CircuitState.Open)
            {
                breaker!.Reset(); // re-entrant: queued, delivered after this callback returns
            }

            return ValueTask.CompletedTask;
        });

        await breaker.FailTimesAsync(3);

        changes.Should().Equal(CircuitState.Open, CircuitState.Closed);
        breaker.State.Should().Be(CircuitState.Closed);
    }

    [Fact]
    public async Task An_asynchronous_OnStateChanged_is_awaited_by_the_call_that_caused_the_change()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var delivered = 0;
        var breaker = Create(_clock, o =>
        {
            o.FailureThreshold = 1;
            o.OnStateChanged = async _ => { await release.Task; Interlocked.Increment(ref delivered); };
        });

        var call = breaker.ExecuteAsync(Boom).AsTask();
        await AsyncAssert.StillPendingAsync(call, "the failing call waits for OnStateChanged, as in Polly");
        breaker.State.Should().Be(CircuitState.Open);
        release.SetResult();

        await call.Invoking(c => c.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        delivered.Should().Be(1);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_throwing_OnStateChanged_is_logged_and_does_not_break_the_breaker(bool throwSynchronously)
    {
        using var logs = new CapturingLoggerProvider();
        using var factory = logs.CreateFactory();
        var breaker = Create(_clock, o =>
        {
            o.LoggerFactory = factory;
            o.OnStateChanged = async c =>
            {
                if (!throwSynchronously)
                {
                    await Task.Yield();
                }

                throw new InvalidTimeZoneException("callback bug");
            };
        });

        await breaker.FailTimesAsync(3);
        breaker.State.Should().Be(CircuitState.Open);
        _clock.Advance(Break);
        await breaker.SucceedAsync();
        breaker.State.Should().Be(CircuitState.Closed);

        logs.Entries.Where(e => e.EventId.Id == 1105).Should().HaveCount(3)
            .And.OnlyContain(e => e.Level == LogLevel.Error && e.Exception is InvalidTimeZoneException);
    }

    [Fact]
    public async Task Every_transition_writes_one_log_line_with_an_EventId_in_the_breakers_range()
    {
        using var logs = new CapturingLoggerProvider();
        using var factory = logs.CreateFactory();
        var breaker = Create(_clock, o => { o.LoggerFactory = factory; o.Name = "payments"; });

        await breaker.FailTimesAsync(3);
        _clock.Advance(Break);
        await breaker.SucceedAsync();
        breaker.Isolate();
        breaker.Reset();

        var entries = logs.Entries.ToList();
        entries.Select(e => e.EventId.Id).Should().Equal(1100, 1101, 1102, 1103, 1102);
        entries.Should().OnlyContain(e => e.EventId.Id >= 1100 && e.EventId.Id <= 1199 && e.Message.Contains("payments"));
        entries[0].Level.Should().Be(LogLevel.Warning);
        entries[0].Exception.Should().BeOfType<InvalidOperationException>();
    }

    [Fact]
    public async Task Abandoning_a_hung_trial_is_logged()
    {
        using var logs = new CapturingLoggerProvider();
        using var factory = logs.CreateFactory();
        var breaker = Create(_clock, o => o.LoggerFactory = factory);
        await breaker.FailTimesAsync(3);
        _clock.Advance(Break);
        var hung = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var trial = breaker.ExecuteAsync(_ => new ValueTask<int>(hung.Task)).AsTask();

        _clock.Advance(Break);
        await breaker.SucceedAsync();

        logs.Entries.Should().ContainSingle(e => e.EventId.Id == 1104);
        hung.SetResult(0);
        await trial.WithTimeout();
    }

    [Fact]
    public async Task Metrics_count_calls_rejections_and_transitions_and_gauge_the_state()
    {
        var name = "metrics-" + Guid.NewGuid().ToString("N");
        var measurements = new ConcurrentQueue<(string Instrument, long Value, Dictionary<string, object?> Tags)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == AsyncPatternsDiagnostics.MeterName && instrument.Name.StartsWith("asyncpatterns.circuitbreaker.", StringComparison.Ordinal))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        void Record(Instrument instrument, long value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var dictionary = new Dictionary<string, object?>();
            foreach (var tag in tags)
            {
                dictionary[tag.Key] = tag.Value;
            }

            if (Equals(dictionary.GetValueOrDefault(AsyncPatternsDiagnostics.NameTag), name))
            {
                measurements.Enqueue((instrument.Name, value, dictionary));
            }
        }

        listener.SetMeasurementEventCallback<long>((i, v, t, _) => Record(i, v, t));
        listener.SetMeasurementEventCallback<int>((i, v, t, _) => Record(i, v, t));
        listener.Start();
        var breaker = Create(_clock, o => o.Name = name);

        await breaker.SucceedAsync();
        await breaker.FailTimesAsync(3);
        await breaker.Invoking(b => b.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>();
        listener.RecordObservableInstruments();

        var calls = measurements.Where(m => m.Instrument == "asyncpatterns.circuitbreaker.calls").ToList();
        calls.Count(m => Equals(m.Tags["outcome"], "success")).Should().Be(1);
        calls.Count(m => Equals(m.Tags["outcome"], "failure")).Should().Be(3);
        measurements.Should().ContainSingle(m => m.Instrument == "asyncpatterns.circuitbreaker.rejections")
            .Which.Tags["state"].Should().Be("open");
        measurements.Should().ContainSingle(m => m.Instrument == "asyncpatterns.circuitbreaker.transitions")
            .Which.Tags.Should().Contain(new KeyValuePair<string, object?>("from", "closed")).And.Contain(new KeyValuePair<string, object?>("to", "open"));
        measurements.Where(m => m.Instrument == "asyncpatterns.circuitbreaker.state").Should().ContainSingle()
            .Which.Value.Should().Be((int)CircuitState.Open);
        GC.KeepAlive(breaker);
    }
}
