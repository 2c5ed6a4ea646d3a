using Polly.CircuitBreaker;

namespace AsyncPatterns;

/// <summary>
/// A snapshot of a <see cref="CircuitBreaker"/>'s counters, from <see cref="CircuitBreaker.GetStatistics"/>.
/// </summary>
/// <remarks>
/// <para>
/// Every call that reached the breaker with a token not already cancelled ends in exactly one of
/// <see cref="Successes"/>, <see cref="Failures"/>, <see cref="IgnoredOutcomes"/> or <see cref="Rejections"/>; once no
/// call is in flight their sum is the number of calls made. Counters are read one by one without a lock, so a snapshot
/// taken while calls run may be slightly out of step between properties.
/// </para>
/// <para>Immutable; safe to keep and to read from any thread.</para>
/// </remarks>
public sealed class CircuitBreakerStatistics
{
    internal CircuitBreakerStatistics(
        CircuitState state,
        long successes,
        long failures,
        long ignoredOutcomes,
        long rejections,
        long timesOpened,
        int consecutiveFailures,
        int halfOpenTrialsInFlight)
    {
        State = state;
        Successes = successes;
        Failures = failures;
        IgnoredOutcomes = ignoredOutcomes;
        Rejections = rejections;
        TimesOpened = timesOpened;
        ConsecutiveFailures = consecutiveFailures;
        HalfOpenTrialsInFlight = halfOpenTrialsInFlight;
    }

    /// <summary>Gets the state when the snapshot was taken (see <see cref="CircuitBreaker.State"/>).</summary>
    public CircuitState State { get; }

    /// <summary>Gets the number of calls that ran and completed without an exception, or with one that
    /// <see cref="CircuitBreakerOptions.ShouldHandle"/> declined.</summary>
    public long Successes { get; }

    /// <summary>Gets the number of calls that ran and threw an exception counted as a failure.</summary>
    public long Failures { get; }

    /// <summary>
    /// Gets the number of calls that ran and ended neither in success nor in failure: cancelled through the caller's
    /// own token. (An exception <see cref="CircuitBreakerOptions.ShouldHandle"/> declines is counted in
    /// <see cref="Successes"/>, as in Polly v8.)
    /// </summary>
    public long IgnoredOutcomes { get; }

    /// <summary>
    /// Gets the number of calls refused without running: <see cref="BrokenCircuitException"/> while open or half-open
    /// with every trial slot taken, <see cref="IsolatedCircuitException"/> while isolated.
    /// </summary>
    public long Rejections { get; }

    /// <summary>Gets the number of times the circuit moved to <see cref="CircuitState.Open"/> (not counting isolation).</summary>
    public long TimesOpened { get; }

    /// <summary>
    /// Gets the current run of handled failures in a row (consecutive mode); 0 in ratio mode.
    /// </summary>
    public int ConsecutiveFailures { get; }

    /// <summary>Gets the number of trial calls running now, when the circuit is half-open; otherwise 0.</summary>
    public int HalfOpenTrialsInFlight { get; }
}
