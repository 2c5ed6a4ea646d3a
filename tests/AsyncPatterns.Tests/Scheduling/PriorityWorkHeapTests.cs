namespace AsyncPatterns.Tests.Scheduling;

public sealed class PriorityWorkHeapTests
{
    public static TheoryData<string, int> Queues => new()
    {
        { nameof(PriorityWorkHeap), 1 },
        { nameof(PriorityWorkHeap), 2 },
        { nameof(PriorityWorkHeap), 3 },
        { nameof(PriorityWorkLanes), 1 },
        { nameof(PriorityWorkLanes), 2 },
        { nameof(PriorityWorkLanes), 3 },
    };

    [Theory]
    [MemberData(nameof(Queues))]
    public void Min_and_max_come_out_in_key_then_sequence_order_under_random_operations(string kind, int seed)
    {
        var random = new Random(seed);
        var heap = Create(kind);
        var reference = new SortedSet<(long Key, long Sequence)>();
        long sequence = 0;
        for (var op = 0; op < 20_000; op++)
        {
            var choice = random.Next(10);
            if (choice < 5 || reference.Count == 0)
            {
                var key = random.Next(-5, 15);
                heap.Push(new PriorityWorkEntry { Key = key, Sequence = ++sequence, Work = null!, Source = null!, Operations = null! });
                reference.Add((key, sequence));
            }
            else if (choice < 8)
            {
                heap.PopMin(out var entry);
                var expected = reference.Min;
                reference.Remove(expected);
                ((long)entry.Key, entry.Sequence).Should().Be(expected);
            }
            else
            {
                ((long)heap.PeekMax().Key, heap.PeekMax().Sequence).Should().Be(reference.Max);
                heap.PopMax(out var entry);
                var expected = reference.Max;
                reference.Remove(expected);
                ((long)entry.Key, entry.Sequence).Should().Be(expected);
            }

            heap.Count.Should().Be(reference.Count);
        }
    }

    [Theory]
    [InlineData(nameof(PriorityWorkHeap))]
    [InlineData(nameof(PriorityWorkLanes))]
    public void RemoveDead_keeps_only_live_entries_in_order(string kind)
    {
        var heap = Create(kind);
        var random = new Random(5);
        var live = new List<(long Key, long Sequence)>();
        for (var i = 1; i <= 1_000; i++)
        {
            var key = random.Next(50);
            var cancellation = new PriorityWorkCancellation(null!, new object(), null!, 0, default)
            {
                State = i % 3 == 0 ? PriorityWorkCancellation.Canceled : PriorityWorkCancellation.Queued,
            };
            heap.Push(new PriorityWorkEntry { Key = key, Sequence = i, Cancellation = cancellation, Work = null!, Source = null!, Operations = null! });
            if (cancellation.State == PriorityWorkCancellation.Queued)
            {
                live.Add((key, i));
            }
        }

        heap.RemoveDead();

        heap.Count.Should().Be(live.Count);
        var drained = new List<(long, long)>();
        while (heap.Count > 0)
        {
            heap.PopMin(out var entry);
            drained.Add(((long)entry.Key, entry.Sequence));
        }

        drained.Should().Equal(live.OrderBy(e => e.Key).ThenBy(e => e.Sequence));
    }

    [Fact]
    public void Lanes_keep_order_across_many_distinct_keys_and_idle_lane_recycling()
    {
        // More distinct keys than the lanes keep idle, emptied and refilled at both ends, with ring buffers wrapping.
        var lanes = new PriorityWorkLanes();
        var reference = new SortedSet<(long Key, long Sequence)>();
        var random = new Random(9);
        long sequence = 0;
        for (var op = 0; op < 30_000; op++)
        {
            if (random.Next(2) == 0 || reference.Count == 0)
            {
                var key = random.Next(2) == 0 ? random.Next(1_000) : random.Next(3);
                lanes.Push(new PriorityWorkEntry { Key = key, Sequence = ++sequence, Work = null!, Source = null!, Operations = null! });
                reference.Add((key, sequence));
            }
            else if (random.Next(4) == 0)
            {
                lanes.PopMax(out var entry);
                ((long)entry.Key, entry.Sequence).Should().Be(reference.Max);
                reference.Remove(reference.Max);
            }
            else
            {
                lanes.PopMin(out var entry);
                ((long)entry.Key, entry.Sequence).Should().Be(reference.Min);
                reference.Remove(reference.Min);
            }

            lanes.Count.Should().Be(reference.Count);
        }

        var cleared = new List<PriorityWorkEntry>();
        lanes.Clear(cleared);
        cleared.Select(e => ((long)e.Key, e.Sequence)).Should().BeEquivalentTo(reference);
        lanes.Count.Should().Be(0);
    }

    private static PriorityWorkQueue Create(string kind) =>
        kind == nameof(PriorityWorkLanes) ? new PriorityWorkLanes() : new PriorityWorkHeap();
}
