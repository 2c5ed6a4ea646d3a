namespace AsyncPatterns.Tests.Scheduling;

public sealed class PriorityWorkHeapTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Min_and_max_come_out_in_key_then_sequence_order_under_random_operations(int seed)
    {
        var random = new Random(seed);
        var heap = new PriorityWorkHeap();
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

    [Fact]
    public void RemoveDead_keeps_only_live_entries_in_order()
    {
        var heap = new PriorityWorkHeap();
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
}
