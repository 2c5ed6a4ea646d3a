using Polly.CircuitBreaker;

namespace AsyncPatterns;

/// <summary>
/// Why a <see cref="CircuitBreaker"/> changed state.
/// </summary>
public enum CircuitStateChangeReason
{
    /// <summary>Closed to open: <see cref="CircuitBreakerOptions.FailureThreshold"/> handled failures in a row.</summary>
    ConsecutiveFailures,

    /// <summary>Closed to open: the failed share within the sampling period reached <see cref="CircuitBreakerOptions.FailureRatio"/>.</summary>
    FailureRatio,

    /// <summary>Open to half-open: the break elapsed and a call arrived, becoming the first trial.</summary>
    BreakElapsed,

    /// <summary>Half-open to closed: a trial call succeeded.</summary>
    TrialSucceeded,

    /// <summary>Half-open to open: a trial call failed; the circuit is open for another full break.</summary>
    TrialFailed,

    /// <summary>Any state to isolated: <see cref="CircuitBreaker.Isolate"/> was called.</summary>
    Isolated,

    /// <summary>Any state to closed: <see cref="CircuitBreaker.Reset"/> was called.</summary>
    Reset,
}

/// <summary>
/// Describes one change of a <see cref="CircuitBreaker"/>'s state; the argument of
/// <see cref="CircuitBreakerOptions.OnStateChanged"/>.
/// </summary>
/// <remarks>Immutable; safe to keep and to read from any thread.</remarks>
public sealed class CircuitStateChange
{
    internal CircuitStateChange(
        string breakerName,
        CircuitState previousState,
        CircuitState newState,
        CircuitStateChangeReason reason,
        Exception? exception,
        TimeSpan? breakDuration,
        DateTimeOffset timestamp)
    {
        BreakerName = breakerName;
        PreviousState = previousState;
        NewState = newState;
        Reason = reason;
        Exception = exception;
        BreakDuration = breakDuration;
        Timestamp = timestamp;
    }

    /// <summary>Gets the name of the breaker that changed (its <see cref="AsyncPatternsOptions.Name"/>, or <c>CircuitBreaker</c>).</summary>
    public string BreakerName { get; }

    /// <summary>Gets the state before the change.</summary>
    public CircuitState PreviousState { get; }

    /// <summary>Gets the state after the change.</summary>
    public CircuitState NewState { get; }

    /// <summary>Gets why the state changed.</summary>
    public CircuitStateChangeReason Reason { get; }

    /// <summary>
    /// Gets the handled failure that caused the change (the last of the failures that opened the circuit, or the
    /// failed trial), or <see langword="null"/> when no exception did (time, a trial success, a manual change).
    /// </summary>
    public Exception? Exception { get; }

    /// <summary>
    /// Gets how long the circuit stays open when <see cref="NewState"/> is <see cref="CircuitState.Open"/>;
    /// otherwise <see langword="null"/>.
    /// </summary>
    public TimeSpan? BreakDuration { get; }

    /// <summary>Gets when the change happened, by the breaker's <see cref="AsyncPatternsOptions.TimeProvider"/>.</summary>
    public DateTimeOffset Timestamp { get; }

    /// <inheritdoc />
    public override string ToString() =>
        Exception is null
            ? $"{BreakerName}: {PreviousState} -> {NewState} ({Reason}) at {Timestamp:O}"
            : $"{BreakerName}: {PreviousState} -> {NewState} ({Reason}: {Exception.GetType().Name}) at {Timestamp:O}";
}
