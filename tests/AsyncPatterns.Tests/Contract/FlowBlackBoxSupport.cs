using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;

namespace AsyncPatterns.Tests.Contract;

/// <summary>Small helpers shared by the black-box sweep's tests (written from DESIGN.md only).</summary>
internal static class FlowBlackBox
{
    public static TaskCompletionSource Gate() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    public static string UniqueName(string prefix) => prefix + "-" + Guid.NewGuid().ToString("N")[..12];

    /// <summary>
    /// Runs <paramref name="body"/> on a dedicated thread whose <see cref="SynchronizationContext"/> never runs what is
    /// posted to it: library code that forgets <c>ConfigureAwait(false)</c> would post its continuation there and hang.
    /// </summary>
    public static Task RunOnNonPumpingContext(Action<NonPumpingContext> body)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            var context = new NonPumpingContext();
            SynchronizationContext.SetSynchronizationContext(context);
            try
            {
                body(context);
                done.SetResult();
            }
            catch (Exception ex)
            {
                done.SetException(ex);
            }
        })
        { IsBackground = true };
        thread.Start();
        return done.Task;
    }

    public sealed class NonPumpingContext : SynchronizationContext
    {
        private int _posts;

        public int Posts => Volatile.Read(ref _posts);

        public override void Post(SendOrPostCallback d, object? state) => Interlocked.Increment(ref _posts);

        public override void Send(SendOrPostCallback d, object? state) => throw new NotSupportedException("Send on the non-pumping context");
    }

    /// <summary>Collects measurements of the <c>AsyncPatterns</c> meter whose instrument starts with a prefix and whose name tag matches.</summary>
    public sealed class MetricsCollector : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly string _name;

        public MetricsCollector(string instrumentPrefix, string name)
        {
            _name = name;
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == "AsyncPatterns" && instrument.Name.StartsWith(instrumentPrefix, StringComparison.Ordinal))
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((i, v, t, _) => Record(i, v, t));
            _listener.SetMeasurementEventCallback<int>((i, v, t, _) => Record(i, v, t));
            _listener.SetMeasurementEventCallback<double>((i, v, t, _) => Record(i, v, t));
            _listener.Start();
        }

        public ConcurrentQueue<(string Instrument, double Value)> Measurements { get; } = new();

        public double Sum(string instrument) => Measurements.Where(m => m.Instrument == instrument).Sum(m => m.Value);

        public void Dispose() => _listener.Dispose();

        private void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "asyncpatterns.name" && Equals(tag.Value, _name))
                {
                    Measurements.Enqueue((instrument.Name, value));
                    return;
                }
            }
        }
    }

    /// <summary>A logger provider that keeps every entry.</summary>
    public sealed class CapturingLoggerProvider : ILoggerProvider
    {
        public ConcurrentQueue<(LogLevel Level, EventId EventId, string Message)> Entries { get; } = new();

        public ILogger CreateLogger(string categoryName) => new CapturingLogger(this);

        public void Dispose()
        {
        }

        public ILoggerFactory CreateFactory() => LoggerFactory.Create(b => b.AddProvider(this).SetMinimumLevel(LogLevel.Trace));

        private sealed class CapturingLogger(CapturingLoggerProvider owner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                owner.Entries.Enqueue((logLevel, eventId, formatter(state, exception)));
        }
    }
}
