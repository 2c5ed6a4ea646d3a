using Polly.CircuitBreaker;

namespace AsyncPatterns;

/// <summary>
/// Settings for a <see cref="CircuitBreaker"/>: when it opens, how long it stays open and how it recovers.
/// </summary>
/// <remarks>
/// <para>
/// Two ways to decide that the downstream is unhealthy. By default (<see cref="FailureRatio"/> left
/// <see langword="null"/>) the circuit opens after <see cref="FailureThreshold"/> handled failures in a row, the
/// breaker the seeds describe and Polly v8 no longer offers. Setting <see cref="FailureRatio"/> switches to Polly v8's
/// rule: the circuit opens when, within <see cref="SamplingDuration"/>, at least <see cref="MinimumThroughput"/> calls
/// ran and the failed share is at least <see cref="FailureRatio"/>.
/// </para>
/// <para>
/// Options are validated and copied by the <see cref="CircuitBreaker"/> constructor; later changes to this object have
/// no effect on a breaker already built. Every numeric option is validated whatever the mode, so a mistake in a
/// ratio-mode setting is caught even before the mode is switched on.
/// </para>
/// </remarks>
public sealed class CircuitBreakerOptions : AsyncPatternsOptions
{
    /// <summary>
    /// Gets or sets the number of handled failures in a row that opens the circuit (consecutive mode).
    /// </summary>
    /// <value>The default is 5. Must be greater than 0. Ignored when <see cref="FailureRatio"/> is set.</value>
    /// <remarks>A success (including an exception <see cref="ShouldHandle"/> declines) resets the count; a
    /// cancellation through the caller's own token leaves it unchanged.</remarks>
    public int FailureThreshold { get; set; } = 5;

    /// <summary>
    /// Gets or sets the failed share of calls, within <see cref="SamplingDuration"/>, at which the circuit opens.
    /// Setting it switches the breaker to failure-ratio mode, which follows Polly v8's rule.
    /// </summary>
    /// <value>
    /// The default is <see langword="null"/>: consecutive mode. When set, must be greater than 0 and at most 1
    /// (Polly also accepts 0, which would open on any sample; we refuse it as a mistake).
    /// </value>
    /// <remarks>
    /// As in Polly v8, the rule is checked only when a handled failure is recorded while the circuit is closed: a success
    /// never opens the circuit, and a sample whose share of failures rises because successes aged out of it opens only at
    /// the next failure. Refused calls are not sampled, and the sample is emptied whenever the circuit closes (including
    /// <see cref="CircuitBreaker.Reset"/> of a closed circuit).
    /// </remarks>
    public double? FailureRatio { get; set; }

    /// <summary>
    /// Gets or sets how many calls must have run within <see cref="SamplingDuration"/> before the failure ratio can open
    /// the circuit (ratio mode only).
    /// </summary>
    /// <value>The default is 10 (Polly's is 100). Must be 2 or greater, as in Polly.</value>
    public int MinimumThroughput { get; set; } = 10;

    /// <summary>
    /// Gets or sets the sliding period over which the failure ratio is measured (ratio mode only).
    /// </summary>
    /// <value>The default is 30 seconds (as in Polly). Must be greater than <see cref="TimeSpan.Zero"/>; Polly also requires
    /// 0.5 s to 1 day, we accept any positive period.</value>
    /// <remarks>
    /// As in Polly v8, a period of 200 ms or more is split into 10 windows of a tenth of it each, a window starting at
    /// the first call after the previous one ended and leaving the sample once it started a full period ago; a shorter
    /// period is one window, restarted when it expires.
    /// </remarks>
    public TimeSpan SamplingDuration { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Gets or sets how long the circuit stays open before it admits trial calls; also how long a half-open circuit waits
    /// for its trial calls before it admits new ones.
    /// </summary>
    /// <value>The default is 60 seconds (Polly's is 5 s). Must be greater than <see cref="TimeSpan.Zero"/>; Polly also
    /// requires 0.5 s to 1 day, we accept any positive duration (a huge one saturates instead of overflowing).</value>
    public TimeSpan BreakDuration { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Gets or sets the number of trial calls a half-open circuit runs at once; other calls are refused meanwhile.
    /// </summary>
    /// <value>The default is 1 (Polly's only behaviour). Must be greater than 0.</value>
    public int HalfOpenMaxCalls { get; set; } = 1;

    /// <summary>
    /// Gets or sets the predicate that decides whether an exception thrown by the action counts as a failure.
    /// </summary>
    /// <value>
    /// The default is <see langword="null"/>: every exception is a failure, except an
    /// <see cref="OperationCanceledException"/> while the caller's own token is cancelled.
    /// </value>
    /// <remarks>
    /// A cancellation through the caller's own token is never a failure (nor a success), whatever this predicate says;
    /// the predicate is asked about every other exception. This default differs from Polly v8's, which declines every
    /// <see cref="OperationCanceledException"/> (so an inner timeout's <see cref="TaskCanceledException"/> is a success
    /// there and a failure here, as DESIGN.md specifies); to get Polly's behaviour, set
    /// <c>ShouldHandle = ex =&gt; ex is not OperationCanceledException</c>. An exception it declines counts as a success, as in Polly
    /// v8 (the dependency answered): it resets the consecutive count, counts toward the ratio and closes a half-open
    /// circuit. Should the predicate itself throw, the outcome counts as a failure.
    /// Results are never failures: only exceptions are classified.
    /// </remarks>
    public Func<Exception, bool>? ShouldHandle { get; set; }

    /// <summary>
    /// Gets or sets a callback invoked after every change of <see cref="CircuitBreaker.State"/>.
    /// </summary>
    /// <value>The default is <see langword="null"/>.</value>
    /// <remarks>
    /// Changes are delivered one at a time, in the order they happened, never under the breaker's lock and never
    /// concurrently with each other. The call whose outcome caused a change normally waits for its delivery (as in
    /// Polly); a change made while another delivery is running is delivered by that delivery's caller instead. An
    /// exception thrown by the callback is logged and otherwise ignored: it never reaches the caller or the breaker.
    /// The state may have moved on by the time the callback runs; read <see cref="CircuitBreaker.State"/> for the
    /// current one.
    /// </remarks>
    public Func<CircuitStateChange, ValueTask>? OnStateChanged { get; set; }
}
