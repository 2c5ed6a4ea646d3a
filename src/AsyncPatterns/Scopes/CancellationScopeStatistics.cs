namespace AsyncPatterns;

/// <summary>
/// A snapshot of a <see cref="CancellationScope"/>'s children, returned by <see cref="CancellationScope.GetStatistics"/>.
/// </summary>
/// <remarks>
/// Once the scope has ended, <c>Accepted == Succeeded + Failed + Cancelled</c>: every child ends in exactly one of
/// those. While it runs, the counters are read one by one and may be a moment apart.
/// </remarks>
public sealed record CancellationScopeStatistics
{
    /// <summary>Gets the number of children accepted by <c>Run</c>.</summary>
    public long Accepted { get; init; }

    /// <summary>Gets the number of children whose delegate was invoked.</summary>
    public long Started { get; init; }

    /// <summary>Gets the number of children that completed successfully.</summary>
    public long Succeeded { get; init; }

    /// <summary>
    /// Gets the number of children that failed: they threw (synchronously or asynchronously) an exception that is
    /// not a cancellation the scope or its caller caused.
    /// </summary>
    public long Failed { get; init; }

    /// <summary>
    /// Gets the number of children that ended cancelled because the scope (or the caller's token) was cancelled,
    /// including children still waiting for a MaxConcurrency slot when the scope was cancelled, which never start.
    /// </summary>
    public long Cancelled { get; init; }

    /// <summary>Gets the number of children accepted and not yet ended (running or waiting for a slot).</summary>
    public long Pending { get; init; }

    /// <summary>Gets the number of children waiting for a slot under <see cref="CancellationScopeOptions.MaxConcurrency"/>.</summary>
    public int Waiting { get; init; }
}
