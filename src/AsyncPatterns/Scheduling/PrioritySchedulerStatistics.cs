namespace AsyncPatterns;

/// <summary>
/// A snapshot of a <see cref="PriorityScheduler"/>'s counters, returned by <see cref="PriorityScheduler.GetStatistics"/>.
/// </summary>
/// <remarks>
/// <para>
/// Every accepted item ends in exactly one outcome: handled, failed, or dropped — and <see cref="Dropped"/> breaks
/// down into <see cref="Canceled"/> (by the caller before it started), <see cref="Evicted"/> (by a more urgent item)
/// and <see cref="Abandoned"/> (a drain was cut short). So at any moment
/// <c>Accepted == Handled + Failed + Dropped + QueuedCount + RunningCount</c> (up to the moment an item moves between
/// two of them while the snapshot is taken), and once the scheduler is drained
/// <c>Accepted == Handled + Failed + Dropped</c>, as for every primitive. <see cref="Rejected"/> items were never
/// accepted.
/// </para>
/// <para>The counters are read one by one without a lock: a snapshot taken while work runs is not atomic.</para>
/// </remarks>
public sealed class PrioritySchedulerStatistics
{
    internal PrioritySchedulerStatistics(
        long accepted,
        long handled,
        long failed,
        long canceled,
        long evicted,
        long dropped,
        long rejected,
        int queuedCount,
        int runningCount)
    {
        Accepted = accepted;
        Handled = handled;
        Failed = failed;
        Canceled = canceled;
        Evicted = evicted;
        Abandoned = dropped;
        Dropped = canceled + evicted + dropped;
        Rejected = rejected;
        QueuedCount = queuedCount;
        RunningCount = runningCount;
    }

    /// <summary>Gets the number of items the scheduler accepted (started at once or queued).</summary>
    public long Accepted { get; }

    /// <summary>Gets the number of items whose work ran to completion.</summary>
    public long Handled { get; }

    /// <summary>
    /// Gets the number of items whose work threw (including an <see cref="OperationCanceledException"/> after it
    /// started), or whose rate-limiter permit was refused.
    /// </summary>
    public long Failed { get; }

    /// <summary>Gets the number of items cancelled through their own token before their work started.</summary>
    public long Canceled { get; }

    /// <summary>Gets the number of queued items evicted by a more urgent item while the queue was full.</summary>
    public long Evicted { get; }

    /// <summary>
    /// Gets the number of accepted items that never ran: <see cref="Canceled"/> + <see cref="Evicted"/> +
    /// <see cref="Abandoned"/>.
    /// </summary>
    public long Dropped { get; }

    /// <summary>Gets the number of accepted items that never started because a drain was cut short.</summary>
    public long Abandoned { get; }

    /// <summary>Gets the number of submissions refused because the queue was full of more urgent work (not accepted).</summary>
    public long Rejected { get; }

    /// <summary>Gets the number of items waiting in the queue when the snapshot was taken.</summary>
    public int QueuedCount { get; }

    /// <summary>
    /// Gets the number of items that held a concurrency slot when the snapshot was taken: running, or waiting for a
    /// rate-limiter permit.
    /// </summary>
    public int RunningCount { get; }
}
