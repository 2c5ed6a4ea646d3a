namespace AsyncPatterns;

/// <summary>
/// A consistent snapshot of a batcher's counters, returned by <see cref="Batcher{T}.GetStatistics"/> and
/// <see cref="Batcher{T, TResult}.GetStatistics"/>.
/// </summary>
/// <remarks>
/// Every accepted item ends in exactly one of processed, failed or dropped, so once the batcher has drained
/// <c><see cref="ItemsAccepted"/> == <see cref="ItemsProcessed"/> + <see cref="ItemsFailed"/> + <see cref="ItemsDropped"/></c>;
/// before that the difference is <see cref="ItemsPending"/>. Likewise
/// <c><see cref="BatchesEmitted"/> == BatchesBySize + BatchesByAge + BatchesByWeight + BatchesByFlush + BatchesByDrain</c>.
/// </remarks>
public sealed record BatcherStatistics
{
    /// <summary>Gets the number of items accepted by <c>AddAsync</c>/<c>SubmitAsync</c> (a waiting call is not yet accepted).</summary>
    public long ItemsAccepted { get; init; }

    /// <summary>Gets the number of items in batches that <c>processBatch</c> completed successfully.</summary>
    public long ItemsProcessed { get; init; }

    /// <summary>
    /// Gets the number of items in batches that failed: <c>processBatch</c> threw (cancellation included) or, with
    /// results, returned the wrong number of them.
    /// </summary>
    public long ItemsFailed { get; init; }

    /// <summary>Gets the number of items in batches that never started because a drain was cut short.</summary>
    public long ItemsDropped { get; init; }

    /// <summary>Gets the number of accepted items not yet finished: buffered, in a sealed batch, or being processed.</summary>
    public long ItemsPending { get; init; }

    /// <summary>Gets the number of items in the current, still open batch.</summary>
    public int ItemsBuffered { get; init; }

    /// <summary>Gets the number of <c>AddAsync</c>/<c>SubmitAsync</c> calls waiting for capacity.</summary>
    public int WaitingAdds { get; init; }

    /// <summary>Gets the number of batches emitted (sealed and handed to processing), whatever the trigger.</summary>
    public long BatchesEmitted { get; init; }

    /// <summary>Gets the number of batches that completed successfully.</summary>
    public long BatchesProcessed { get; init; }

    /// <summary>Gets the number of batches that failed.</summary>
    public long BatchesFailed { get; init; }

    /// <summary>Gets the number of batches dropped because a drain was cut short.</summary>
    public long BatchesDropped { get; init; }

    /// <summary>Gets the number of batches being processed now.</summary>
    public int BatchesInFlight { get; init; }

    /// <summary>Gets the number of batches emitted because they reached <see cref="BatcherOptions{T}.MaxBatchSize"/>.</summary>
    public long BatchesBySize { get; init; }

    /// <summary>Gets the number of batches emitted because their first item reached <see cref="BatcherOptions{T}.MaxDelay"/>.</summary>
    public long BatchesByAge { get; init; }

    /// <summary>Gets the number of batches emitted because of <see cref="BatcherOptions{T}.MaxBatchWeight"/>.</summary>
    public long BatchesByWeight { get; init; }

    /// <summary>Gets the number of batches emitted by <c>FlushAsync</c>.</summary>
    public long BatchesByFlush { get; init; }

    /// <summary>Gets the number of batches emitted by <c>DrainAsync</c>/<c>DisposeAsync</c>.</summary>
    public long BatchesByDrain { get; init; }

    /// <summary>Gets <see cref="ItemsAccepted"/>, under the name every primitive's statistics use.</summary>
    public long Accepted => ItemsAccepted;

    /// <summary>Gets <see cref="ItemsProcessed"/>, under the name every primitive's statistics use.</summary>
    public long Handled => ItemsProcessed;

    /// <summary>Gets <see cref="ItemsFailed"/>, under the name every primitive's statistics use.</summary>
    public long Failed => ItemsFailed;

    /// <summary>
    /// Gets <see cref="ItemsDropped"/>, under the name every primitive's statistics use: once drained,
    /// <c>Accepted == Handled + Failed + Dropped</c>.
    /// </summary>
    public long Dropped => ItemsDropped;
}
