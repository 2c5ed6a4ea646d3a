using System.Collections.Concurrent;
using System.Diagnostics.Metrics;

namespace AsyncPatterns.Tests.RateLimiting;

/// <summary>Listens to the <c>asyncpatterns.ratelimiter.*</c> instruments and sums measurements per instrument and name.</summary>
internal sealed class RateLimitingMetricsRecorder : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly ConcurrentDictionary<(string Instrument, string Name), long> _sums = new();

    public RateLimitingMetricsRecorder()
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == AsyncPatternsDiagnostics.MeterName && instrument.Name.StartsWith("asyncpatterns.ratelimiter.", StringComparison.Ordinal))
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == AsyncPatternsDiagnostics.NameTag && tag.Value is string name)
                {
                    _sums.AddOrUpdate((instrument.Name, name), value, (_, sum) => sum + value);
                }
            }
        });
        _listener.Start();
    }

    public long Sum(string instrument, string name) => _sums.GetValueOrDefault((instrument, name));

    public void Dispose() => _listener.Dispose();
}
