using System.Runtime.InteropServices;

namespace AsyncPatterns;

/// <summary>
/// One worker's counters, written only by that worker (plain volatile stores, no interlocked operations) and
/// summed by <see cref="WorkQueue{T}.GetStatistics"/>.
/// </summary>
/// <remarks>
/// The slot is padded to three cache lines with the counters in the middle one, so workers writing their own
/// counters side by side in the array never share a cache line (no false sharing). Explicit layout is not
/// allowed on generic types, hence a top-level struct.
/// </remarks>
[StructLayout(LayoutKind.Explicit, Size = 192)]
internal struct WorkQueueWorkerSlot
{
    /// <summary>Items this worker took from the channel.</summary>
    [FieldOffset(64)]
    public long Taken;

    /// <summary>Items whose handler completed successfully.</summary>
    [FieldOffset(72)]
    public long Handled;

    /// <summary>Items that failed.</summary>
    [FieldOffset(80)]
    public long Failed;

    /// <summary>1 while this worker is inside the handler.</summary>
    [FieldOffset(88)]
    public int Busy;
}
