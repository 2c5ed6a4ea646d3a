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
/// are both found in O(1) and removed in O(log n), with no per-item node allocation.
/// </summary>
/// <remarks>
/// <para>
/// Even levels (the root's) hold minima of their subtrees, odd levels maxima (Atkinson et al., 1986). The heap
/// itself moves only small <see cref="Node"/>s (key, sequence, slot: 32 bytes); the entries stay put in a slot
/// array, so a sift copies and compares dense memory. Moves use a hole instead of swaps.
/// </para>
/// <para>
/// Entries cancelled while queued are not removed here at once (that would need every entry to track its index);
/// the owner skips them when they surface and calls <see cref="RemoveDead"/> when they pile up. Not thread-safe:
/// the owner guards it with its lock.
/// </para>
/// </remarks>
internal sealed class PriorityWorkHeap : PriorityWorkQueue
{
    private Node[] _nodes = [];
    private PriorityWorkEntry[] _entries = [];
    private int[] _freeSlots = [];
    private int _freeCount;
    private int _usedSlots;
    private int _count;

    /// <inheritdoc/>
    public override int Count => _count;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool Less(in Node a, in Node b) =>
        a.Key < b.Key || (a.Key == b.Key && a.Sequence < b.Sequence);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsMinLevel(int index) => (BitOperations.Log2((uint)index + 1) & 1) == 0;

    /// <inheritdoc/>
    public override void Push(in PriorityWorkEntry entry)
    {
        if (_count == _nodes.Length)
        {
            var size = Math.Max(16, _nodes.Length * 2);
            Array.Resize(ref _nodes, size);
            Array.Resize(ref _entries, size);
            Array.Resize(ref _freeSlots, size);
        }

        var slot = _freeCount > 0 ? _freeSlots[--_freeCount] : _usedSlots++;
        _entries[slot] = entry;
        var node = new Node(entry.Key, entry.Sequence, slot);

        var index = _count++;
        if (index == 0)
        {
            _nodes[0] = node;
            return;
        }

        var nodes = _nodes;
        var parent = (index - 1) >> 1;
        if (IsMinLevel(index))
        {
            if (Less(nodes[parent], node))
            {
                nodes[index] = nodes[parent];
                BubbleUpMax(parent, node);
            }
            else
            {
                BubbleUpMin(index, node);
            }
        }
        else if (Less(node, nodes[parent]))
        {
            nodes[index] = nodes[parent];
            BubbleUpMin(parent, node);
        }
        else
        {
            BubbleUpMax(index, node);
        }
    }

    /// <inheritdoc/>
    public override void PopMin(out PriorityWorkEntry entry)
    {
        var nodes = _nodes;
        TakeEntry(nodes[0].Slot, out entry);
        var last = --_count;
        var moved = nodes[last];
        if (last > 0)
        {
            TrickleDownMin(0, moved);
        }
    }

    /// <inheritdoc/>
    public override ref readonly PriorityWorkEntry PeekMax() => ref _entries[_nodes[MaxIndex()].Slot];

    /// <inheritdoc/>
    public override void PopMax(out PriorityWorkEntry entry)
    {
        var nodes = _nodes;
        var index = MaxIndex();
        TakeEntry(nodes[index].Slot, out entry);
        var last = --_count;
        var moved = nodes[last];
        if (index < last)
        {
            TrickleDownMax(index, moved);
        }
    }

    /// <inheritdoc/>
    public override void Clear(List<PriorityWorkEntry> into)
    {
        for (var i = 0; i < _count; i++)
        {
            into.Add(_entries[_nodes[i].Slot]);
        }

        Array.Clear(_entries, 0, _usedSlots);
        _count = 0;
        _usedSlots = 0;
        _freeCount = 0;
    }

    /// <inheritdoc/>
    public override void RemoveDead()
    {
        var nodes = _nodes;
        var kept = 0;
        for (var i = 0; i < _count; i++)
        {
            var slot = nodes[i].Slot;
            if (_entries[slot].IsLive)
            {
                nodes[kept++] = nodes[i];
            }
            else
            {
                TakeEntry(slot, out _);
            }
        }

        _count = kept;
        for (var i = (kept >> 1) - 1; i >= 0; i--)
        {
            var node = nodes[i];
            if (IsMinLevel(i))
            {
                TrickleDownMin(i, node);
            }
            else
            {
                TrickleDownMax(i, node);
            }
        }
    }

    private void TakeEntry(int slot, out PriorityWorkEntry entry)
    {
        entry = _entries[slot];
        _entries[slot] = default;
        _freeSlots[_freeCount++] = slot;
    }

    private int MaxIndex() =>
        _count switch
        {
            1 => 0,
            2 => 1,
            _ => Less(_nodes[2], _nodes[1]) ? 1 : 2,
        };

    private void BubbleUpMin(int index, Node node)
    {
        var nodes = _nodes;
        while (index >= 3)
        {
            var grandparent = (((index - 1) >> 1) - 1) >> 1;
            if (!Less(node, nodes[grandparent]))
            {
                break;
            }

            nodes[index] = nodes[grandparent];
            index = grandparent;
        }

        nodes[index] = node;
    }

    private void BubbleUpMax(int index, Node node)
    {
        var nodes = _nodes;
        while (index >= 3)
        {
            var grandparent = (((index - 1) >> 1) - 1) >> 1;
            if (!Less(nodes[grandparent], node))
            {
                break;
            }

            nodes[index] = nodes[grandparent];
            index = grandparent;
        }

        nodes[index] = node;
    }

    // Places `node` into the hole at `index` (a min level), moving it down as needed.
    private void TrickleDownMin(int index, Node node)
    {
        var nodes = _nodes;
        var count = _count;
        while (true)
        {
            var child = (index << 1) + 1;
            if (child >= count)
            {
                break;
            }

            var smallest = child;
            if (child + 1 < count && Less(nodes[child + 1], nodes[smallest]))
            {
                smallest = child + 1;
            }

            var grandchild = (child << 1) + 1;
            var end = Math.Min(grandchild + 4, count);
            for (var g = grandchild; g < end; g++)
            {
                if (Less(nodes[g], nodes[smallest]))
                {
                    smallest = g;
                }
            }

            if (!Less(nodes[smallest], node))
            {
                break;
            }

            nodes[index] = nodes[smallest];
            index = smallest;
            if (smallest < grandchild)
            {
                break;
            }

            // A grandchild moved up; `node` now sits under a max-level parent it may exceed.
            var parent = (smallest - 1) >> 1;
            if (Less(nodes[parent], node))
            {
                (nodes[parent], node) = (node, nodes[parent]);
            }
        }

        nodes[index] = node;
    }

    // Places `node` into the hole at `index` (a max level), moving it down as needed.
    private void TrickleDownMax(int index, Node node)
    {
        var nodes = _nodes;
        var count = _count;
        while (true)
        {
            var child = (index << 1) + 1;
            if (child >= count)
            {
                break;
            }

            var largest = child;
            if (child + 1 < count && Less(nodes[largest], nodes[child + 1]))
            {
                largest = child + 1;
            }

            var grandchild = (child << 1) + 1;
            var end = Math.Min(grandchild + 4, count);
            for (var g = grandchild; g < end; g++)
            {
                if (Less(nodes[largest], nodes[g]))
                {
                    largest = g;
                }
            }

            if (!Less(node, nodes[largest]))
            {
                break;
            }

            nodes[index] = nodes[largest];
            index = largest;
            if (largest < grandchild)
            {
                break;
            }

            var parent = (largest - 1) >> 1;
            if (Less(node, nodes[parent]))
            {
                (nodes[parent], node) = (node, nodes[parent]);
            }
        }

        nodes[index] = node;
    }

    /// <summary>What the heap moves: the ordering key, the tie-breaking sequence and where the entry is.</summary>
    private readonly record struct Node(Int128 Key, long Sequence, int Slot);
}
