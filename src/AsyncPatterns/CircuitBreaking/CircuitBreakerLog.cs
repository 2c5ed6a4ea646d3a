using Microsoft.Extensions.Logging;
using Polly.CircuitBreaker;

namespace AsyncPatterns;

/// <summary>The circuit breaker's log messages (EventIds 1100–1199).</summary>
internal static partial class CircuitBreakerLog
{
    [LoggerMessage(EventId = 1100, EventName = "CircuitOpened", Level = LogLevel.Warning,
        Message = "Circuit breaker '{BreakerName}' opened ({PreviousState} -> Open, {Reason}); calls are refused for {BreakDuration}.")]
    public static partial void Opened(ILogger logger, string breakerName, CircuitState previousState, CircuitStateChangeReason reason, TimeSpan? breakDuration, Exception? exception);

    [LoggerMessage(EventId = 1101, EventName = "CircuitHalfOpened", Level = LogLevel.Information,
        Message = "Circuit breaker '{BreakerName}' is half-open; admitting up to {HalfOpenMaxCalls} trial call(s).")]
    public static partial void HalfOpened(ILogger logger, string breakerName, int halfOpenMaxCalls);

    [LoggerMessage(EventId = 1102, EventName = "CircuitClosed", Level = LogLevel.Information,
        Message = "Circuit breaker '{BreakerName}' closed ({PreviousState} -> Closed, {Reason}).")]
    public static partial void Closed(ILogger logger, string breakerName, CircuitState previousState, CircuitStateChangeReason reason);

    [LoggerMessage(EventId = 1103, EventName = "CircuitIsolated", Level = LogLevel.Warning,
        Message = "Circuit breaker '{BreakerName}' isolated ({PreviousState} -> Isolated); calls are refused until Reset is called.")]
    public static partial void Isolated(ILogger logger, string breakerName, CircuitState previousState);

    [LoggerMessage(EventId = 1104, EventName = "HalfOpenTrialsAbandoned", Level = LogLevel.Warning,
        Message = "Circuit breaker '{BreakerName}': {Abandoned} half-open trial call(s) did not finish within {BreakDuration}; their outcomes will be ignored and a new trial is admitted.")]
    public static partial void TrialsAbandoned(ILogger logger, string breakerName, int abandoned, TimeSpan breakDuration);

    [LoggerMessage(EventId = 1105, EventName = "StateChangedCallbackFailed", Level = LogLevel.Error,
        Message = "The OnStateChanged callback of circuit breaker '{BreakerName}' threw for {PreviousState} -> {NewState}; the breaker is unaffected.")]
    public static partial void StateChangedCallbackFailed(ILogger logger, string breakerName, CircuitState previousState, CircuitState newState, Exception exception);
}
