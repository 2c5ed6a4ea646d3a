using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <summary>
/// Options for <see cref="AdaptiveConcurrencyLimiter"/>: the bounds of the adaptive limit, the queue, and the
/// knobs of the Vegas algorithm (whose defaults are Netflix concurrency-limits' own).
/// </summary>
/// <remarks>
/// Read once, validated and copied by the <see cref="AdaptiveConcurrencyLimiter"/> constructor; later changes have
/// no effect.
/// </remarks>
public sealed class AdaptiveConcurrencyLimiterOptions : AsyncPatternsOptions
{
    /// <summary>Gets or sets the concurrency limit to start from.</summary>
    /// <value>The default is 20. Must be between <see cref="MinLimit"/> and <see cref="MaxLimit"/>.</value>
    public int InitialLimit { get; set; } = 20;

    /// <summary>Gets or sets the lowest the limit may fall, however bad latency or drops get.</summary>
    /// <value>The default is 1. Must be greater than 0.</value>
    public int MinLimit { get; set; } = 1;

    /// <summary>
    /// Gets or sets the highest the limit may grow. Also the largest <c>permitCount</c> one request may ask for.
    /// </summary>
    /// <value>The default is 1000. Must be at least <see cref="MinLimit"/>.</value>
    public int MaxLimit { get; set; } = 1000;

    /// <summary>Gets or sets how many permits may wait in <see cref="RateLimiter.AcquireAsync"/> for a free slot.</summary>
    /// <value>The default is 0: <c>AcquireAsync</c> never waits. Must be 0 or greater.</value>
    public int QueueLimit { get; set; }

    /// <summary>
    /// Gets or sets which waiter is served first, with the semantics of <see cref="ConcurrencyLimiter"/>.
    /// </summary>
    /// <value>The default is <see cref="QueueProcessingOrder.OldestFirst"/>.</value>
    public QueueProcessingOrder QueueProcessingOrder { get; set; } = QueueProcessingOrder.OldestFirst;

    /// <summary>
    /// Gets or sets Vegas' alpha: while the estimated queue at the backend
    /// (<c>limit × (1 − noLoadLatency / latency)</c>) is below <c>Alpha × log10(limit)</c> the limit grows.
    /// </summary>
    /// <value>The default is 3. Must be greater than 0 and less than <see cref="Beta"/>.</value>
    public double Alpha { get; set; } = 3;

    /// <summary>
    /// Gets or sets Vegas' beta: when the estimated queue at the backend exceeds <c>Beta × log10(limit)</c> the limit
    /// shrinks; between alpha and beta it holds. Beta is also the step of the fast growth while there is no queue at all.
    /// </summary>
    /// <value>The default is 6. Must be greater than <see cref="Alpha"/>.</value>
    public double Beta { get; set; } = 6;

    /// <summary>
    /// Gets or sets how far each sample moves the limit toward its new estimate: 1 applies it in full, smaller values
    /// smooth changes over several samples.
    /// </summary>
    /// <value>The default is 1. Must be greater than 0 and at most 1.</value>
    public double Smoothing { get; set; } = 1;
}
