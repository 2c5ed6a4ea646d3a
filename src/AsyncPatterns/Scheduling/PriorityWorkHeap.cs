using System.Numerics;
using System.Runtime.CompilerServices;

namespace AsyncPatterns;

/// <summary>
/// One queued work item, stored by value in <see cref="PriorityWorkHeap"/>'s array so that queuing an item allocates
/// nothing beyond its task source.
/// </summary>
internal struct PriorityWorkEntry
{
    /// <summary>The fixed ordering key: the priority, or with aging <c>priority × interval + enqueue time</c> in timestamp units.</summary>
    public Int128 Key;

    /// <summary>The submission sequence number, which breaks ties in submission order.</summary>
    public long Sequence;

    /// <summary>The <see cref="TimeProvider"/> timestamp at submission, or <see cref="long.MinValue"/> when not taken.</summary>
    public long EnqueuedAt;

    /// <summary>The priority the caller gave.</summary>
    public int Priority;

    /// <summary>The user's work delegate (typed by <see cref="Operations"/>).</summary>
    public Delegate Work;

    /// <summary>The item's task completion source (typed by <see cref="Operations"/>).</summary>
    public object Source;

    /// <summary>Knows the delegate's and the source's types.</summary>
    public PriorityWorkOperations Operations;

    /// <summary>The submitter's execution context, flowed to the work (null when flow was suppressed).</summary>
    public ExecutionContext? Context;

    /// <summary>Present only when the caller's token can be cancelled; its state marks a lazily deleted entry.</summary>
    public PriorityWorkCancellation? Cancellation;

    /// <summary>Gets whether the entry is still waiting (not cancelled while queued).</summary>
    public readonly bool IsLive
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Cancellation is null || Cancellation.State == PriorityWorkCancellation.Queued;
    }
}

/// <summary>
/// A min-max heap of <see cref="PriorityWorkEntry"/> ordered by (<see cref="PriorityWorkEntry.Key"/>,
/// <see cref="PriorityWorkEntry.Sequence"/>): the most urgent entry (to run) and the least urgent one (to evict)
/// are both found in O(1) and removed in O(log n), in one array with no per-item node.
/// </summary>
/// <remarks>
/// <para>
/// Even levels (the root's) hold minima of their subtrees, odd levels maxima (Atkinson et al., 1986). Moves use a
/// hole instead of swaps, so an entry is copied once per level.
/// </para>
/// <para>
/// Entries cancelled while queued are not removed here at once (that would need every entry to track its index);
/// the owner skips them when they surface and calls <see cref="RemoveDead"/> when they pile up. Not thread-safe:
/// the owner guards it with its lock.
/// </para>
/// </remarks>
internal sealed class PriorityWorkHeap
{
    private PriorityWorkEntry[] _items = [];
    private int _count;

    /// <summary>Gets the number of entries, cancelled ones included.</summary>
    public int Count => _count;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool Less(in PriorityWorkEntry a, in PriorityWorkEntry b) =>
        a.Key < b.Key || (a.Key == b.Key && a.Sequence < b.Sequence);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsMinLevel(int index) => (BitOperations.Log2((uint)index + 1) & 1) == 0;

    /// <summary>Adds an entry.</summary>
    public void Push(in PriorityWorkEntry entry)
    {
        if (_count == _items.Length)
        {
            Array.Resize(ref _items, Math.Max(16, _items.Length * 2));
        }

        var index = _count++;
        if (index == 0)
        {
            _items[0] = entry;
            return;
        }

        var items = _items;
        var parent = (index - 1) >> 1;
        if (IsMinLevel(index))
        {
            if (Less(items[parent], entry))
            {
                items[index] = items[parent];
                BubbleUpMax(parent, entry);
            }
            else
            {
                BubbleUpMin(index, entry);
            }
        }
        else if (Less(entry, items[parent]))
        {
            items[index] = items[parent];
            BubbleUpMin(parent, entry);
        }
        else
        {
            BubbleUpMax(index, entry);
        }
    }

    /// <summary>Removes and returns the most urgent entry; the heap must not be empty.</summary>
    public void PopMin(out PriorityWorkEntry entry)
    {
        var items = _items;
        entry = items[0];
        var last = --_count;
        var moved = items[last];
        items[last] = default;
        if (last > 0)
        {
            TrickleDownMin(0, moved);
        }
    }

    /// <summary>Returns the least urgent entry without removing it; the heap must not be empty.</summary>
    public ref readonly PriorityWorkEntry PeekMax() => ref _items[MaxIndex()];

    /// <summary>Removes and returns the least urgent entry; the heap must not be empty.</summary>
    public void PopMax(out PriorityWorkEntry entry)
    {
        var items = _items;
        var index = MaxIndex();
        entry = items[index];
        var last = --_count;
        var moved = items[last];
        items[last] = default;
        if (index < last)
        {
            TrickleDownMax(index, moved);
        }
    }

    /// <summary>Removes every entry, handing each to <paramref name="into"/>.</summary>
    public void Clear(List<PriorityWorkEntry> into)
    {
        for (var i = 0; i < _count; i++)
        {
            into.Add(_items[i]);
        }

        Array.Clear(_items, 0, _count);
        _count = 0;
    }

    /// <summary>Removes every entry that is no longer live and restores the heap order in O(n).</summary>
    public void RemoveDead()
    {
        var items = _items;
        var kept = 0;
        for (var i = 0; i < _count; i++)
        {
            if (items[i].IsLive)
            {
                items[kept++] = items[i];
            }
        }

        Array.Clear(items, kept, _count - kept);
        _count = kept;
        for (var i = (kept >> 1) - 1; i >= 0; i--)
        {
            var entry = items[i];
            if (IsMinLevel(i))
            {
                TrickleDownMin(i, entry);
            }
            else
            {
                TrickleDownMax(i, entry);
            }
        }
    }

    private int MaxIndex() =>
        _count switch
        {
            1 => 0,
            2 => 1,
            _ => Less(_items[2], _items[1]) ? 1 : 2,
        };

    private void BubbleUpMin(int index, in PriorityWorkEntry entry)
    {
        var items = _items;
        while (index >= 3)
        {
            var grandparent = (((index - 1) >> 1) - 1) >> 1;
            if (!Less(entry, items[grandparent]))
            {
                break;
            }

            items[index] = items[grandparent];
            index = grandparent;
        }

        items[index] = entry;
    }

    private void BubbleUpMax(int index, in PriorityWorkEntry entry)
    {
        var items = _items;
        while (index >= 3)
        {
            var grandparent = (((index - 1) >> 1) - 1) >> 1;
            if (!Less(items[grandparent], entry))
            {
                break;
            }

            items[index] = items[grandparent];
            index = grandparent;
        }

        items[index] = entry;
    }

    // Places `entry` into the hole at `index` (a min level), moving it down as needed.
    private void TrickleDownMin(int index, PriorityWorkEntry entry)
    {
        var items = _items;
        var count = _count;
        while (true)
        {
            var child = (index << 1) + 1;
            if (child >= count)
            {
                break;
            }

            var smallest = child;
            if (child + 1 < count && Less(items[child + 1], items[smallest]))
            {
                smallest = child + 1;
            }

            var grandchild = (child << 1) + 1;
            var end = Math.Min(grandchild + 4, count);
            for (var g = grandchild; g < end; g++)
            {
                if (Less(items[g], items[smallest]))
                {
                    smallest = g;
                }
            }

            if (!Less(items[smallest], entry))
            {
                break;
            }

            items[index] = items[smallest];
            index = smallest;
            if (smallest < grandchild)
            {
                break;
            }

            // A grandchild moved up; `entry` now sits under a max-level parent it may exceed.
            var parent = (smallest - 1) >> 1;
            if (Less(items[parent], entry))
            {
                (items[parent], entry) = (entry, items[parent]);
            }
        }

        items[index] = entry;
    }

    // Places `entry` into the hole at `index` (a max level), moving it down as needed.
    private void TrickleDownMax(int index, PriorityWorkEntry entry)
    {
        var items = _items;
        var count = _count;
        while (true)
        {
            var child = (index << 1) + 1;
            if (child >= count)
            {
                break;
            }

            var largest = child;
            if (child + 1 < count && Less(items[largest], items[child + 1]))
            {
                largest = child + 1;
            }

            var grandchild = (child << 1) + 1;
            var end = Math.Min(grandchild + 4, count);
            for (var g = grandchild; g < end; g++)
            {
                if (Less(items[largest], items[g]))
                {
                    largest = g;
                }
            }

            if (!Less(entry, items[largest]))
            {
                break;
            }

            items[index] = items[largest];
            index = largest;
            if (largest < grandchild)
            {
                break;
            }

            var parent = (largest - 1) >> 1;
            if (Less(entry, items[parent]))
            {
                (items[parent], entry) = (entry, items[parent]);
            }
        }

        items[index] = entry;
    }
}
