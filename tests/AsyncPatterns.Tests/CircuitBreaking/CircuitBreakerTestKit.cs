using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;
using Microsoft.Extensions.Logging;

namespace AsyncPatterns.Tests.CircuitBreaking;

/// <summary>Actions, builders and a capturing logger shared by the circuit breaker tests.</summary>
internal static class CircuitBreakerTestKit
{
    public static readonly TimeSpan Break = TimeSpan.FromSeconds(60);

    public static CircuitBreaker Create(ManualTimeProvider clock, Action<CircuitBreakerOptions>? configure = null)
    {
        var options = new CircuitBreakerOptions { TimeProvider = clock, BreakDuration = Break, FailureThreshold = 3 };
        configure?.Invoke(options);
        return new CircuitBreaker(options);
    }

    public static ValueTask<int> Ok(CancellationToken cancellationToken) => new(42);

    public static ValueTask<int> Boom(CancellationToken cancellationToken) =>
        ValueTask.FromException<int>(new InvalidOperationException("boom"));

    public static async Task SucceedAsync(this CircuitBreaker breaker) =>
        (await breaker.ExecuteAsync(Ok).AsTask().WithTimeout()).Should().Be(42);

    public static async Task FailAsync(this CircuitBreaker breaker) =>
        await breaker.Invoking(b => b.ExecuteAsync(Boom).AsTask().WithTimeout())
            .Should().ThrowAsync<InvalidOperationException>().WithMessage("boom");

    public static async Task FailTimesAsync(this CircuitBreaker breaker, int times)
    {
        for (var i = 0; i < times; i++)
        {
            await breaker.FailAsync();
        }
    }
}

/// <summary>An <see cref="ILoggerProvider"/> that keeps every entry, for asserting log lines and EventIds.</summary>
internal sealed class CapturingLoggerProvider : ILoggerProvider
{
    public ConcurrentQueue<(LogLevel Level, EventId EventId, string Message, Exception? Exception)> Entries { get; } = new();

    public ILoggerFactory CreateFactory() => LoggerFactory.Create(b => b.SetMinimumLevel(LogLevel.Trace).AddProvider(this));

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
            owner.Entries.Enqueue((logLevel, eventId, formatter(state, exception), exception));
    }
}
