using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <summary>
/// Settings for a <see cref="PriorityScheduler"/>.
/// </summary>
/// <remarks>
/// Read once, validated and copied by the <see cref="PriorityScheduler"/> constructor; changing the options
/// afterwards has no effect on a scheduler already built from them. Not thread-safe: configure, then build.
/// </remarks>
public sealed class PrioritySchedulerOptions : AsyncPatternsOptions
{
    /// <summary>
    /// Gets or sets how many work items may run at once.
    /// </summary>
    /// <value>The default is 1. Must be greater than 0.</value>
    public int MaxConcurrency { get; set; } = 1;

    /// <summary>
    /// Gets or sets how many work items may wait in the queue (items already running do not count).
    /// </summary>
    /// <value>
    /// The default is <see cref="int.MaxValue"/>, which means unbounded. Must be greater than 0. When the queue is
    /// full, a more urgent item evicts the least urgent queued one and a less (or equally) urgent item is refused;
    /// both get a <see cref="WorkRejectedException"/>.
    /// </value>
    public int Capacity { get; set; } = int.MaxValue;

    /// <summary>
    /// Gets or sets how long an item must wait to be lifted one priority level, so that low priorities do not
    /// starve under a constant stream of urgent work.
    /// </summary>
    /// <value>
    /// The default is <see langword="null"/>, which means no aging (strict priority). When set, it must be greater
    /// than <see cref="TimeSpan.Zero"/>. An item submitted at time <c>t</c> with priority <c>p</c> is ordered by the
    /// fixed key <c>p + t / AgingInterval</c>: an item waits at most about
    /// <c>(p - q) × AgingInterval</c> behind items of a more urgent priority <c>q</c> that arrive after it.
    /// </value>
    public TimeSpan? AgingInterval { get; set; }

    /// <summary>
    /// Gets or sets a rate limiter from which each item acquires one permit before its work starts.
    /// </summary>
    /// <value>
    /// The default is <see langword="null"/>, which means no rate limiting. The scheduler does not own the limiter and
    /// never disposes it. An item waiting for its permit has left the queue and holds one of the
    /// <see cref="MaxConcurrency"/> slots, so permits are handed out in priority order.
    /// </value>
    public RateLimiter? RateLimiter { get; set; }
}
