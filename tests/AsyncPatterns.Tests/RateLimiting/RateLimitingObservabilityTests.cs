using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;
using Microsoft.Extensions.Logging;

namespace AsyncPatterns.Tests.RateLimiting;

public sealed class RateLimitingObservabilityTests
{
    private readonly ManualTimeProvider _clock = new();

    [Fact]
    public async Task Metrics_count_granted_and_refused_permits_and_the_queue_length()
    {
        using var metrics = new RateLimitingMetricsRecorder();
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions
        {
            Name = "gcra-metrics",
            PermitsPerSecond = 10,
            Burst = 3,
            QueueLimit = 3,
            TimeProvider = _clock,
        });

        limiter.AttemptAcquire(3).IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire().IsAcquired.Should().BeFalse();
        var waiter = limiter.AcquireAsync(3).AsTask();
        metrics.Sum("asyncpatterns.ratelimiter.queue.length", "gcra-metrics").Should().Be(3);

        _clock.Advance(TimeSpan.FromMilliseconds(300));
        (await waiter.WithTimeout()).IsAcquired.Should().BeTrue();

        metrics.Sum("asyncpatterns.ratelimiter.granted", "gcra-metrics").Should().Be(6);
        metrics.Sum("asyncpatterns.ratelimiter.refused", "gcra-metrics").Should().Be(1);
        metrics.Sum("asyncpatterns.ratelimiter.queue.length", "gcra-metrics").Should().Be(0);
    }

    [Fact]
    public async Task Refusals_evictions_and_dispose_are_logged_with_event_ids_in_the_rate_limiting_range()
    {
        var provider = new ListLoggerProvider();
        using var factory = LoggerFactory.Create(b => b.SetMinimumLevel(LogLevel.Debug).AddProvider(provider));
        var limiter = new GcraRateLimiter(new GcraRateLimiterOptions
        {
            Name = "gcra-logs",
            PermitsPerSecond = 10,
            QueueLimit = 1,
            QueueProcessingOrder = System.Threading.RateLimiting.QueueProcessingOrder.NewestFirst,
            TimeProvider = _clock,
            LoggerFactory = factory,
        });

        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire().IsAcquired.Should().BeFalse();
        var evicted = limiter.AcquireAsync().AsTask();
        var kept = limiter.AcquireAsync().AsTask();
        (await evicted.WithTimeout()).IsAcquired.Should().BeFalse();
        limiter.Dispose();
        (await kept.WithTimeout()).IsAcquired.Should().BeFalse();

        provider.Events.Select(e => e.Id).Should().Contain([1200, 1201, 1202]);
        provider.Events.Should().OnlyContain(e => e.Id >= 1200 && e.Id <= 1299);
        provider.Events.Should().Contain(e => e.Id == 1202 && e.Message.Contains("gcra-logs") && e.Message.Contains("1 queued waiter"));
    }

    private sealed class ListLoggerProvider : ILoggerProvider
    {
        public ConcurrentQueue<(int Id, string Message)> Events { get; } = new();

        public ILogger CreateLogger(string categoryName) => new ListLogger(Events);

        public void Dispose()
        {
        }

        private sealed class ListLogger(ConcurrentQueue<(int Id, string Message)> events) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                events.Enqueue((eventId.Id, formatter(state, exception)));
        }
    }
}
