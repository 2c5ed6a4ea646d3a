using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using AsyncPatterns.Tests.TestSupport;
using Microsoft.Extensions.Logging;

namespace AsyncPatterns.Tests.Shutdown;

public class GracefulShutdownTelemetryTests
{
    [Fact]
    public async Task Each_phase_is_logged_with_event_ids_in_the_shutdown_range()
    {
        var clock = new ManualTimeProvider();
        var provider = new CapturingLoggerProvider();
        using var factory = LoggerFactory.Create(b => b.SetMinimumLevel(LogLevel.Trace).AddProvider(provider));
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions
        {
            Name = "logged",
            TimeProvider = clock,
            LoggerFactory = factory,
            DrainTimeout = TimeSpan.FromSeconds(1),
        });
        _ = shutdown.Run(_ => Task.Delay(Timeout.Infinite));
        shutdown.Register(new ScriptedDrainable("component", new EventLog()));
        shutdown.Register(_ => throw new InvalidOperationException("cleanup"));

        var pending = shutdown.ShutdownAsync("logging test");
        clock.Advance(TimeSpan.FromSeconds(1));
        await pending.WithTimeout();

        var ids = provider.Entries.Select(e => e.Id).ToList();
        ids.Should().OnlyContain(id => id >= 1600 && id <= 1699);
        ids.Should().ContainInOrder(1600, 1615, 1611, 1612, 1616, 1630, 1632, 1640);
        provider.Entries.Should().Contain(e => e.Id == 1600 && e.Message.Contains("logging test") && e.Message.Contains("'logged'"));
        provider.Entries.Single(e => e.Id == 1640).Message.Should().Contain("abandoned 1");
    }

    [Fact]
    public async Task Phase_durations_and_task_outcomes_are_measured_and_tagged_with_the_name()
    {
        var name = "metrics-" + Guid.NewGuid().ToString("N");
        var measurements = new ConcurrentQueue<(string Instrument, double Value, Dictionary<string, object?> Tags)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == AsyncPatternsDiagnostics.MeterName && instrument.Name.StartsWith("asyncpatterns.shutdown.", StringComparison.Ordinal))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var map = new Dictionary<string, object?>();
            foreach (var tag in tags)
            {
                map[tag.Key] = tag.Value;
            }

            if (Equals(map.GetValueOrDefault(AsyncPatternsDiagnostics.NameTag), name))
            {
                measurements.Enqueue((instrument.Name, value, map));
            }
        }

        listener.SetMeasurementEventCallback<double>((i, v, t, _) => Record(i, v, t));
        listener.SetMeasurementEventCallback<long>((i, v, t, _) => Record(i, v, t));
        listener.Start();

        var clock = new ManualTimeProvider();
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions { Name = name, TimeProvider = clock });
        _ = shutdown.Run(_ => Task.CompletedTask);
        _ = shutdown.Run(_ => Task.FromException(new InvalidOperationException("x")));
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        shutdown.Register(new ScriptedDrainable("slow", new EventLog(), _ => gate.Task));
        var pending = shutdown.ShutdownAsync();
        clock.Advance(TimeSpan.FromSeconds(2));
        gate.SetResult();
        await pending.WithTimeout();

        var all = measurements.ToList();
        all.Should().Contain(m => m.Instrument == "asyncpatterns.shutdown.phase.duration" && Equals(m.Tags["asyncpatterns.shutdown.phase"], "drain") && m.Value == 2.0);
        all.Should().Contain(m => m.Instrument == "asyncpatterns.shutdown.phase.duration" && Equals(m.Tags["asyncpatterns.shutdown.phase"], "total"));
        all.Should().Contain(m => m.Instrument == "asyncpatterns.shutdown.phase.duration" && Equals(m.Tags["asyncpatterns.shutdown.phase"], "cleanup"));
        all.Should().Contain(m => m.Instrument == "asyncpatterns.shutdown.tasks" && Equals(m.Tags["asyncpatterns.shutdown.outcome"], "completed") && m.Value == 1);
        all.Should().Contain(m => m.Instrument == "asyncpatterns.shutdown.tasks" && Equals(m.Tags["asyncpatterns.shutdown.outcome"], "faulted") && m.Value == 1);
        all.Should().Contain(m => m.Instrument == "asyncpatterns.shutdown.errors" && m.Value == 1);
        all.Should().Contain(m => m.Instrument == "asyncpatterns.shutdown.completed" && Equals(m.Tags["asyncpatterns.shutdown.timed_out"], false));
        all.Where(m => m.Instrument == "asyncpatterns.shutdown.tasks.running").Sum(m => m.Value).Should().Be(0, "every tracked task started and ended");
    }

    private sealed class CapturingLoggerProvider : ILoggerProvider
    {
        public ConcurrentQueue<(int Id, LogLevel Level, string Message)> Entries { get; } = new();

        public ILogger CreateLogger(string categoryName) => new Logger(this);

        public void Dispose()
        {
        }

        private sealed class Logger(CapturingLoggerProvider owner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                owner.Entries.Enqueue((eventId.Id, logLevel, formatter(state, exception)));
        }
    }
}
