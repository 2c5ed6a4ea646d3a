using System.Numerics;
using System.Runtime.CompilerServices;

namespace AsyncPatterns;

/// <summary>
/// The queue when keys are fixed priorities (no aging): one first-in-first-out lane per priority, and a min-max heap
/// of the non-empty lanes. The most urgent entry is the head of the lowest lane and the least urgent one the tail of
/// the highest, so queuing and taking an item cost O(1) plus O(log L) only when a lane (of L) starts or empties.
/// </summary>
/// <remarks>
/// <para>
/// It keeps the exact order of <see cref="PriorityWorkHeap"/>, (<see cref="PriorityWorkEntry.Key"/>,
/// <see cref="PriorityWorkEntry.Sequence"/>), because entries arrive with increasing sequence numbers, so each lane
/// is already in order. Entries stay by value in each lane's ring buffer: no per-item allocation.
/// </para>
/// <para>
/// Cancelled entries are skipped by the owner as with the heap, and <see cref="RemoveDead"/> compacts the lanes.
/// Empty lanes are kept for reuse (those of priorities 0–63 always, others up to <see cref="MaxIdleLanes"/>). Not thread-safe: the owner guards it with its lock.
/// </para>
/// </remarks>
internal sealed class PriorityWorkLanes : PriorityWorkQueue
{
    private const int MaxIdleLanes = 256;

    // Priorities 0 to DirectLanes - 1, the usual ones, find their lane by index; others through the dictionary.
    private const int DirectLanes = 64;

    private readonly Lane?[] _direct = new Lane?[DirectLanes];
    private readonly Dictionary<long, Lane> _lanes = [];
    private Lane?[] _heap = new Lane?[8];
    private int _heapCount;
    private Lane? _lastLane;
    private int _count;

    /// <inheritdoc/>
    public override int Count => _count;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsMinLevel(int index) => (BitOperations.Log2((uint)index + 1) & 1) == 0;

    /// <inheritdoc/>
    public override void Push(in PriorityWorkEntry entry)
    {
        var key = (long)entry.Key;
        Lane? lane;
        if ((ulong)key < DirectLanes)
        {
            lane = _direct[key] ??= new Lane(key);
        }
        else
        {
            lane = _lastLane;
            if (lane is null || lane.Key != key)
            {
                if (!_lanes.TryGetValue(key, out lane))
                {
                    lane = new Lane(key);
                    _lanes.Add(key, lane);
                }

                _lastLane = lane;
            }
        }

        if (lane.Count == 0)
        {
            HeapPush(lane);
        }

        lane.Append(in entry);
        _count++;
    }

    /// <inheritdoc/>
    public override void PopMin(out PriorityWorkEntry entry)
    {
        var lane = _heap[0]!;
        lane.TakeFirst(out entry);
        _count--;
        if (lane.Count == 0)
        {
            HeapPopMin();
            Retire(lane);
        }
    }

    /// <inheritdoc/>
    public override ref readonly PriorityWorkEntry PeekMax() => ref _heap[MaxIndex()]!.PeekLast();

    /// <inheritdoc/>
    public override void PopMax(out PriorityWorkEntry entry)
    {
        var index = MaxIndex();
        var lane = _heap[index]!;
        lane.TakeLast(out entry);
        _count--;
        if (lane.Count == 0)
        {
            HeapRemoveMax(index);
            Retire(lane);
        }
    }

    /// <inheritdoc/>
    public override void Clear(List<PriorityWorkEntry> into)
    {
        for (var i = 0; i < _heapCount; i++)
        {
            var lane = _heap[i]!;
            lane.DrainInto(into);
            _heap[i] = null;
        }

        _heapCount = 0;
        _count = 0;
    }

    /// <inheritdoc/>
    public override void RemoveDead()
    {
        var kept = 0;
        for (var i = 0; i < _heapCount; i++)
        {
            var lane = _heap[i]!;
            _count -= lane.RemoveDead();
            if (lane.Count > 0)
            {
                _heap[kept++] = lane;
            }
        }

        Array.Clear(_heap, kept, _heapCount - kept);
        _heapCount = kept;
        for (var i = (kept >> 1) - 1; i >= 0; i--)
        {
            var lane = _heap[i]!;
            if (IsMinLevel(i))
            {
                TrickleDownMin(i, lane);
            }
            else
            {
                TrickleDownMax(i, lane);
            }
        }
    }

    // An emptied lane stays for reuse unless too many distinct priorities have been seen.
    private void Retire(Lane lane)
    {
        if ((ulong)lane.Key >= DirectLanes && _lanes.Count > MaxIdleLanes)
        {
            _lanes.Remove(lane.Key);
            if (ReferenceEquals(_lastLane, lane))
            {
                _lastLane = null;
            }
        }
    }

    private int MaxIndex() =>
        _heapCount switch
        {
            1 => 0,
            2 => 1,
            _ => _heap[2]!.Key < _heap[1]!.Key ? 1 : 2,
        };

    private void HeapPush(Lane lane)
    {
        if (_heapCount == _heap.Length)
        {
            Array.Resize(ref _heap, _heap.Length * 2);
        }

        var heap = _heap;
        var index = _heapCount++;
        if (index == 0)
        {
            heap[0] = lane;
            return;
        }

        var parent = (index - 1) >> 1;
        if (IsMinLevel(index))
        {
            if (heap[parent]!.Key < lane.Key)
            {
                heap[index] = heap[parent];
                BubbleUpMax(parent, lane);
            }
            else
            {
                BubbleUpMin(index, lane);
            }
        }
        else if (lane.Key < heap[parent]!.Key)
        {
            heap[index] = heap[parent];
            BubbleUpMin(parent, lane);
        }
        else
        {
            BubbleUpMax(index, lane);
        }
    }

    private void HeapPopMin()
    {
        var last = --_heapCount;
        var moved = _heap[last]!;
        _heap[last] = null;
        if (last > 0)
        {
            TrickleDownMin(0, moved);
        }
    }

    private void HeapRemoveMax(int index)
    {
        var last = --_heapCount;
        var moved = _heap[last]!;
        _heap[last] = null;
        if (index < last)
        {
            TrickleDownMax(index, moved);
        }
    }

    private void BubbleUpMin(int index, Lane lane)
    {
        var heap = _heap;
        while (index >= 3)
        {
            var grandparent = (((index - 1) >> 1) - 1) >> 1;
            if (lane.Key >= heap[grandparent]!.Key)
            {
                break;
            }

            heap[index] = heap[grandparent];
            index = grandparent;
        }

        heap[index] = lane;
    }

    private void BubbleUpMax(int index, Lane lane)
    {
        var heap = _heap;
        while (index >= 3)
        {
            var grandparent = (((index - 1) >> 1) - 1) >> 1;
            if (heap[grandparent]!.Key >= lane.Key)
            {
                break;
            }

            heap[index] = heap[grandparent];
            index = grandparent;
        }

        heap[index] = lane;
    }

    private void TrickleDownMin(int index, Lane lane)
    {
        var heap = _heap;
        var count = _heapCount;
        while (true)
        {
            var child = (index << 1) + 1;
            if (child >= count)
            {
                break;
            }

            var smallest = child;
            if (child + 1 < count && heap[child + 1]!.Key < heap[smallest]!.Key)
            {
                smallest = child + 1;
            }

            var grandchild = (child << 1) + 1;
            var end = Math.Min(grandchild + 4, count);
            for (var g = grandchild; g < end; g++)
            {
                if (heap[g]!.Key < heap[smallest]!.Key)
                {
                    smallest = g;
                }
            }

            if (heap[smallest]!.Key >= lane.Key)
            {
                break;
            }

            heap[index] = heap[smallest];
            index = smallest;
            if (smallest < grandchild)
            {
                break;
            }

            var parent = (smallest - 1) >> 1;
            if (heap[parent]!.Key < lane.Key)
            {
                (heap[parent], lane) = (lane, heap[parent]!);
            }
        }

        heap[index] = lane;
    }

    private void TrickleDownMax(int index, Lane lane)
    {
        var heap = _heap;
        var count = _heapCount;
        while (true)
        {
            var child = (index << 1) + 1;
            if (child >= count)
            {
                break;
            }

            var largest = child;
            if (child + 1 < count && heap[largest]!.Key < heap[child + 1]!.Key)
            {
                largest = child + 1;
            }

            var grandchild = (child << 1) + 1;
            var end = Math.Min(grandchild + 4, count);
            for (var g = grandchild; g < end; g++)
            {
                if (heap[largest]!.Key < heap[g]!.Key)
                {
                    largest = g;
                }
            }

            if (lane.Key >= heap[largest]!.Key)
            {
                break;
            }

            heap[index] = heap[largest];
            index = largest;
            if (largest < grandchild)
            {
                break;
            }

            var parent = (largest - 1) >> 1;
            if (lane.Key < heap[parent]!.Key)
            {
                (heap[parent], lane) = (lane, heap[parent]!);
            }
        }

        heap[index] = lane;
    }

    /// <summary>The entries of one key, oldest first, in a ring buffer whose size is a power of two.</summary>
    private sealed class Lane(long key)
    {
        private PriorityWorkEntry[] _items = new PriorityWorkEntry[4];
        private int _head;

        public long Key { get; } = key;

        public int Count { get; private set; }

        public void Append(in PriorityWorkEntry entry)
        {
            if (Count == _items.Length)
            {
                Grow();
            }

            _items[(_head + Count) & (_items.Length - 1)] = entry;
            Count++;
        }

        public void TakeFirst(out PriorityWorkEntry entry)
        {
            ref var slot = ref _items[_head];
            entry = slot;
            slot = default;
            _head = (_head + 1) & (_items.Length - 1);
            Count--;
        }

        public ref readonly PriorityWorkEntry PeekLast() => ref _items[(_head + Count - 1) & (_items.Length - 1)];

        public void TakeLast(out PriorityWorkEntry entry)
        {
            ref var slot = ref _items[(_head + Count - 1) & (_items.Length - 1)];
            entry = slot;
            slot = default;
            Count--;
        }

        public void DrainInto(List<PriorityWorkEntry> into)
        {
            while (Count > 0)
            {
                TakeFirst(out var entry);
                into.Add(entry);
            }

            _head = 0;
        }

        // Drops entries that are no longer live, keeping order; returns how many were dropped.
        public int RemoveDead()
        {
            var mask = _items.Length - 1;
            var kept = 0;
            for (var i = 0; i < Count; i++)
            {
                ref var item = ref _items[(_head + i) & mask];
                if (item.IsLive)
                {
                    _items[(_head + kept) & mask] = item;
                    kept++;
                }
            }

            for (var i = kept; i < Count; i++)
            {
                _items[(_head + i) & mask] = default;
            }

            var removed = Count - kept;
            Count = kept;
            return removed;
        }

        private void Grow()
        {
            var items = new PriorityWorkEntry[_items.Length * 2];
            var firstPart = _items.Length - _head;
            Array.Copy(_items, _head, items, 0, firstPart);
            Array.Copy(_items, 0, items, firstPart, _head);
            _items = items;
            _head = 0;
        }
    }
}
