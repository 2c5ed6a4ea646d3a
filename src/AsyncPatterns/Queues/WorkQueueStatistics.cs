namespace AsyncPatterns;

/// <summary>
/// A snapshot of a <see cref="WorkQueue{T}"/>'s counters, from <see cref="WorkQueue{T}.GetStatistics"/>.
/// </summary>
/// <remarks>
/// Each value is read atomically but not all at the same instant, so while the queue is busy the totals may be
/// off by the few items that move during the read. Once the queue has finished (<see cref="WorkQueue{T}.Completion"/>),
/// <c>Accepted == Handled + Failed + Dropped</c> exactly.
/// </remarks>
public sealed record WorkQueueStatistics
{
    /// <summary>Gets the number of items accepted by <c>EnqueueAsync</c> or <c>TryEnqueue</c> (including items a drop mode then dropped).</summary>
    public long Accepted { get; init; }

    /// <summary>Gets the number of items whose handler completed successfully.</summary>
    public long Handled { get; init; }

    /// <summary>
    /// Gets the number of items that failed: the handler (or the pipeline around it) threw, including an in-flight
    /// handler that ended because a drain was cut short, or the rate limiter refused the item's permit.
    /// </summary>
    public long Failed { get; init; }

    /// <summary>Gets the number of items dropped by the full mode, or abandoned before they started because a drain was cut short.</summary>
    public long Dropped { get; init; }

    /// <summary>Gets the number of items waiting for a worker when the snapshot was taken.</summary>
    public int Count { get; init; }

    /// <summary>Gets the number of items inside the handler when the snapshot was taken.</summary>
    public int InFlight { get; init; }

    /// <summary>Gets the number of <c>EnqueueAsync</c> calls waiting for room when the snapshot was taken (the backpressure being applied now).</summary>
    public int WaitingProducers { get; init; }

    /// <summary>Gets the number of <c>EnqueueAsync</c> calls so far that found the queue full and had to wait.</summary>
    public long EnqueueWaits { get; init; }

    /// <summary>Gets a value indicating whether the queue is closed to new work.</summary>
    public bool IsClosed { get; init; }
}
