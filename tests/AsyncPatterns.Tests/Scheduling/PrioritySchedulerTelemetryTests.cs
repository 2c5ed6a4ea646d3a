using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using AsyncPatterns.Tests.TestSupport;
using Microsoft.Extensions.Logging;

namespace AsyncPatterns.Tests.Scheduling;

public sealed class PrioritySchedulerTelemetryTests
{
    [Fact]
    public async Task Metrics_report_queued_per_priority_wait_time_evictions_rejections_and_running()
    {
        var name = "metrics-" + Guid.NewGuid().ToString("N");
        var measurements = new ConcurrentQueue<(string Instrument, double Value, int? Priority)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == AsyncPatternsDiagnostics.MeterName && instrument.Name.StartsWith("asyncpatterns.priorityscheduler.", StringComparison.Ordinal))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            string? tagName = null;
            int? priority = null;
            foreach (var tag in tags)
            {
                if (tag.Key == AsyncPatternsDiagnostics.NameTag)
                {
                    tagName = (string?)tag.Value;
                }
                else if (tag.Key == "asyncpatterns.priority")
                {
                    priority = (int)tag.Value!;
                }
            }

            if (tagName == name)
            {
                measurements.Enqueue((instrument.Name, value, priority));
            }
        }

        listener.SetMeasurementEventCallback<int>((i, v, t, _) => Record(i, v, t));
        listener.SetMeasurementEventCallback<long>((i, v, t, _) => Record(i, v, t));
        listener.SetMeasurementEventCallback<double>((i, v, t, _) => Record(i, v, t));
        listener.Start();

        var clock = new ManualTimeProvider();
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1, Capacity = 1, Name = name, TimeProvider = clock });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        await AsyncAssert.EventuallyAsync(() => scheduler.RunningCount == 1);
        var victim = scheduler.RunAsync(_ => ValueTask.CompletedTask, 5);
        var urgent = scheduler.RunAsync(_ => ValueTask.CompletedTask, 1);   // evicts the 5
        var refused = scheduler.RunAsync(_ => ValueTask.CompletedTask, 9);  // refused

        listener.RecordObservableInstruments();
        clock.Advance(TimeSpan.FromSeconds(2));
        gate.SetResult();
        await Task.WhenAll(blocker, urgent).WithTimeout();
        await FluentActions.Awaiting(() => victim).Should().ThrowAsync<WorkRejectedException>();
        await FluentActions.Awaiting(() => refused).Should().ThrowAsync<WorkRejectedException>();

        measurements.Should().Contain(("asyncpatterns.priorityscheduler.running", 1, null));
        measurements.Where(m => m.Instrument == "asyncpatterns.priorityscheduler.queued").Should().Equal(
            ("asyncpatterns.priorityscheduler.queued", 1, 5),
            ("asyncpatterns.priorityscheduler.queued", 1, 1),
            ("asyncpatterns.priorityscheduler.queued", -1, 5),
            ("asyncpatterns.priorityscheduler.queued", -1, 1));
        measurements.Should().Contain(("asyncpatterns.priorityscheduler.evictions", 1, 5));
        measurements.Should().Contain(("asyncpatterns.priorityscheduler.rejections", 1, 9));
        measurements.Where(m => m.Instrument == "asyncpatterns.priorityscheduler.queue_wait_time")
            .Should().Contain(("asyncpatterns.priorityscheduler.queue_wait_time", 2.0, 1), "the urgent item waited 2 s on the fake clock");
    }

    [Fact]
    public async Task Shedding_and_draining_are_logged_with_the_schedulers_name()
    {
        var provider = new CapturingLoggerProvider();
        using var factory = LoggerFactory.Create(builder => builder.AddProvider(provider).SetMinimumLevel(LogLevel.Trace));
        var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1, Capacity = 1, Name = "jobs", LoggerFactory = factory });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        var victim = scheduler.RunAsync(_ => ValueTask.CompletedTask, 5);
        var urgent = scheduler.RunAsync(_ => ValueTask.CompletedTask, 1);
        var refused = scheduler.RunAsync(_ => ValueTask.CompletedTask, 9);
        gate.SetResult();
        await scheduler.DisposeAsync();
        await Task.WhenAll(blocker, urgent).WithTimeout();
        await FluentActions.Awaiting(() => victim).Should().ThrowAsync<WorkRejectedException>();
        await FluentActions.Awaiting(() => refused).Should().ThrowAsync<WorkRejectedException>();

        var entries = provider.Entries.ToArray();
        entries.Should().Contain(e => e.EventId.Id == 1300 && e.Level == LogLevel.Warning && e.Message.Contains("'jobs'") && e.Message.Contains("priority 5") && e.Message.Contains("priority 1"));
        entries.Should().Contain(e => e.EventId.Id == 1301 && e.Level == LogLevel.Warning && e.Message.Contains("priority 9"));
        entries.Should().Contain(e => e.EventId.Id == 1302);
        entries.Should().Contain(e => e.EventId.Id == 1304);
        entries.Should().OnlyContain(e => e.EventId.Id >= 1300 && e.EventId.Id <= 1399);
    }

    private sealed class CapturingLoggerProvider : ILoggerProvider
    {
        public ConcurrentQueue<(EventId EventId, LogLevel Level, string Message)> Entries { get; } = new();

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
                owner.Entries.Enqueue((eventId, logLevel, formatter(state, exception)));
        }
    }
}
