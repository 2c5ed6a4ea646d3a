using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <summary>
/// Options for <see cref="GcraRateLimiter"/>: the rate, the burst, and how many permits may wait.
/// </summary>
/// <remarks>
/// Read once, validated and copied by the <see cref="GcraRateLimiter"/> constructor; later changes have no effect.
/// </remarks>
public sealed class GcraRateLimiterOptions : AsyncPatternsOptions
{
    /// <summary>
    /// Gets or sets the sustained rate: permits granted per second, evenly spaced (one every
    /// <c>1 s / PermitsPerSecond</c>). Fractions are fine: 0.5 is one permit every two seconds.
    /// </summary>
    /// <value>Required: a finite number greater than 0. The default, 0, is rejected by the constructor.</value>
    public double PermitsPerSecond { get; set; }

    /// <summary>
    /// Gets or sets how many permits may be granted at one instant, after the limiter has been idle long enough to
    /// save them up (the GCRA tolerance is <c>Burst</c> emission intervals). It is also the largest
    /// <c>permitCount</c> one request may ask for.
    /// </summary>
    /// <value>The default is 1: permits are strictly spaced. Must be greater than 0.</value>
    public int Burst { get; set; } = 1;

    /// <summary>
    /// Gets or sets how many permits may wait in <see cref="RateLimiter.AcquireAsync"/> for their turn.
    /// Counts permits, not requests, as the BCL limiters do.
    /// </summary>
    /// <value>The default is 0: <c>AcquireAsync</c> never waits, it refuses at once when no permit is due.</value>
    public int QueueLimit { get; set; }

    /// <summary>
    /// Gets or sets which waiter is served first, with the BCL limiters' semantics: <see
    /// cref="QueueProcessingOrder.OldestFirst"/> is FIFO and a new request never overtakes a waiting one;
    /// <see cref="QueueProcessingOrder.NewestFirst"/> serves the newest, lets a new request take a permit that is
    /// due even when others wait, and evicts the oldest waiter (with a failed lease) when the queue is full.
    /// </summary>
    /// <value>The default is <see cref="QueueProcessingOrder.OldestFirst"/>.</value>
    public QueueProcessingOrder QueueProcessingOrder { get; set; } = QueueProcessingOrder.OldestFirst;
}
