namespace AsyncPatterns;

/// <summary>
/// The scheduler's queue, ordered by (<see cref="PriorityWorkEntry.Key"/>, <see cref="PriorityWorkEntry.Sequence"/>):
/// the most urgent entry is taken to run, the least urgent one to evict. Entries are pushed with increasing
/// sequence numbers. Not thread-safe: the owner guards it with its lock.
/// </summary>
/// <remarks>
/// <see cref="PriorityWorkLanes"/> serves fixed priorities (no aging) in O(1) per item; <see cref="PriorityWorkHeap"/>
/// serves aging keys, which are distinct per item.
/// </remarks>
internal abstract class PriorityWorkQueue
{
    /// <summary>Gets the number of entries, cancelled ones included.</summary>
    public abstract int Count { get; }

    /// <summary>Adds an entry; its sequence number must be greater than every earlier one's.</summary>
    public abstract void Push(in PriorityWorkEntry entry);

    /// <summary>Removes and returns the most urgent entry; the queue must not be empty.</summary>
    public abstract void PopMin(out PriorityWorkEntry entry);

    /// <summary>Returns the least urgent entry without removing it; the queue must not be empty.</summary>
    public abstract ref readonly PriorityWorkEntry PeekMax();

    /// <summary>Removes and returns the least urgent entry; the queue must not be empty.</summary>
    public abstract void PopMax(out PriorityWorkEntry entry);

    /// <summary>Removes every entry, handing each to <paramref name="into"/>.</summary>
    public abstract void Clear(List<PriorityWorkEntry> into);

    /// <summary>Removes every entry that is no longer live, keeping the order of the others.</summary>
    public abstract void RemoveDead();
}
