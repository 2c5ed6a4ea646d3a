using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Batching;

/// <summary>
/// Behaviours a user carries over from TPL Dataflow's BatchBlock (dotnet/runtime BatchBlockTests: TriggerBatch,
/// completion with buffered items, ordering) and from the seeds' BatchProcessor, restated for Batcher: FlushAsync is
/// TriggerBatch, DrainAsync is Complete + Completion.
/// </summary>
public sealed class BatcherPeerTests
{
    private static readonly TimeSpan Delay = TimeSpan.FromSeconds(10);

    private readonly ManualTimeProvider _time = new();

    // BatchBlockTests.TestTriggerBatch_Nop: triggering with nothing buffered, or after completion, emits nothing.
    [Fact]
    public async Task FlushAsync_with_nothing_buffered_or_after_the_drain_emits_no_batch()
    {
        var batches = new ConcurrentQueue<int[]>();
        var batcher = Recording(batches, Options());

        await batcher.FlushAsync().WithTimeout();
        await batcher.FlushAsync().WithTimeout();
        await batcher.DrainAsync().WithTimeout();
        await batcher.FlushAsync().WithTimeout();
        await batcher.FlushAsync().WithTimeout();

        batches.Should().BeEmpty();
        batcher.GetStatistics().BatchesEmitted.Should().Be(0);
    }

    // BatchBlockTests.TestTriggerBatch_VaryingBatchSizes: a triggered partial batch goes alone, and the next
    // MaxBatchSize items form one full batch.
    [Theory]
    [InlineData(2, 1)]
    [InlineData(5, 1)]
    [InlineData(5, 4)]
    public async Task A_flushed_partial_batch_goes_alone_and_the_next_MaxBatchSize_items_form_one_full_batch(int batchSize, int beforeFlush)
    {
        var batches = new ConcurrentQueue<int[]>();
        await using var batcher = Recording(batches, Options(o => o.MaxBatchSize = batchSize));

        for (var i = 0; i < beforeFlush; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await batcher.FlushAsync().WithTimeout();
        batches.Should().ContainSingle().Which.Should().Equal(Enumerable.Range(0, beforeFlush));

        for (var i = 0; i < batchSize; i++)
        {
            batcher.GetStatistics().BatchesEmitted.Should().Be(1);
            await batcher.AddAsync(100 + i).WithTimeout();
        }

        batcher.GetStatistics().BatchesEmitted.Should().Be(2, "the batch went by size");
        batcher.GetStatistics().BatchesBySize.Should().Be(1);
        await AsyncAssert.EventuallyAsync(() => batches.Count == 2);
        batches.Last().Should().Equal(Enumerable.Range(100, batchSize));
    }

    // The seeds' BatchProcessor restarts its interval after a flush; ours counts MaxDelay from each batch's own first
    // item, so a batch started after a flush is not cut short by the flushed batch's timer.
    [Fact]
    public async Task A_batch_started_after_a_flush_goes_MaxDelay_after_its_own_first_item()
    {
        var batches = new ConcurrentQueue<(int[] Items, TimeSpan At)>();
        await using var batcher = new Batcher<int>(
            (batch, _) =>
            {
                batches.Enqueue((batch.ToArray(), _time.Elapsed));
                return default;
            },
            Options());

        await batcher.AddAsync(1).WithTimeout();          // t = 0: the timer is armed for t = 10 s
        _time.Advance(TimeSpan.FromSeconds(3));
        await batcher.FlushAsync().WithTimeout();          // [1] goes by flush at t = 3 s
        _time.Advance(TimeSpan.FromSeconds(2));
        await batcher.AddAsync(2).WithTimeout();          // t = 5 s: this batch is due at t = 15 s

        _time.Advance(TimeSpan.FromSeconds(5));            // t = 10 s: the old arming fires, finds a 5 s old batch
        batcher.GetStatistics().BatchesEmitted.Should().Be(1);
        _time.Advance(TimeSpan.FromSeconds(5) - TimeSpan.FromTicks(1));
        batcher.GetStatistics().BatchesEmitted.Should().Be(1);
        _time.Advance(TimeSpan.FromTicks(1));              // t = 15 s
        batcher.GetStatistics().BatchesByAge.Should().Be(1);

        await AsyncAssert.EventuallyAsync(() => batches.Count == 2);
        batches.Select(b => b.At).Should().Equal(TimeSpan.FromSeconds(3), TimeSpan.FromSeconds(15));
    }

    // BatchBlockTests.TestCompletionWithBufferedItems: completing with a partial batch emits it, then completes.
    [Fact]
    public async Task Draining_with_a_partial_batch_emits_it_once_then_Completion_completes_with_everything_accounted()
    {
        var batches = new ConcurrentQueue<int[]>();
        var batcher = Recording(batches, Options(o => o.MaxBatchSize = 5));
        for (var i = 0; i < 3; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        batcher.Completion.IsCompleted.Should().BeFalse();
        await batcher.DrainAsync().WithTimeout();
        await batcher.Completion.WithTimeout();

        batches.Should().ContainSingle().Which.Should().Equal(0, 1, 2);
        var stats = batcher.GetStatistics();
        stats.BatchesByDrain.Should().Be(1);
        stats.Accepted.Should().Be(3);
        stats.Accepted.Should().Be(stats.Handled + stats.Failed + stats.Dropped);
    }

    // BatchBlockTests.TestProducerConsumer / TestGreedyFromPosts: full batches in order under a concurrent producer.
    [Fact]
    public async Task A_producer_racing_a_slow_consumer_gets_full_batches_in_order_and_one_partial_at_the_end()
    {
        var batches = new ConcurrentQueue<int[]>();
        var batcher = new Batcher<int>(
            async (batch, _) =>
            {
                batches.Enqueue(batch.ToArray());
                await Task.Yield();
            },
            new BatcherOptions<int> { MaxBatchSize = 7, Capacity = 14, MaxDelay = TimeSpan.FromHours(1) });

        await Task.Run(async () =>
        {
            for (var i = 0; i < 500; i++)
            {
                await batcher.AddAsync(i);
            }
        }).WithTimeout();
        await batcher.DrainAsync().WithTimeout();

        var all = batches.ToArray();
        all[..^1].Should().OnlyContain(b => b.Length == 7);
        all[^1].Length.Should().Be(500 % 7);
        all.SelectMany(b => b).Should().Equal(Enumerable.Range(0, 500));
    }

    // DESIGN "Shared rules": an already-cancelled token returns a cancelled task without side effects.
    [Fact]
    public async Task Already_cancelled_tokens_cancel_SubmitAsync_and_FlushAsync_without_side_effects()
    {
        var batches = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int, int>(
            (batch, _) =>
            {
                batches.Enqueue(batch.ToArray());
                return new ValueTask<IReadOnlyList<int>>(batch.Select(i => i * 2).ToArray());
            },
            Options());
        var token = new CancellationToken(canceled: true);

        var pending = batcher.SubmitAsync(1);
        var canceled = batcher.SubmitAsync(2, token);
        canceled.IsCanceled.Should().BeTrue();

        var flush = batcher.FlushAsync(token);
        flush.IsCanceled.Should().BeTrue();
        batcher.GetStatistics().BatchesEmitted.Should().Be(0, "a cancelled flush does not emit the batch");
        batcher.GetStatistics().Accepted.Should().Be(1);

        await batcher.FlushAsync().WithTimeout();
        (await pending.WithTimeout()).Should().Be(2);
        batches.Should().ContainSingle().Which.Should().Equal(1);
    }

    // DESIGN "Shared rules": refused after close, InvalidOperationException naming the primitive (and its name).
    [Fact]
    public async Task After_DisposeAsync_AddAsync_SubmitAsync_refuse_with_InvalidOperationException_naming_the_batcher()
    {
        var plain = new Batcher<int>((_, _) => default, Options(o => o.Name = "writes"));
        var withResults = new Batcher<int, int>((b, _) => new ValueTask<IReadOnlyList<int>>(b.ToArray()), Options(o => o.Name = "lookups"));
        await plain.DisposeAsync();
        await withResults.DisposeAsync();

        var add = await FluentActions.Awaiting(async () => await plain.AddAsync(1)).Should().ThrowAsync<InvalidOperationException>();
        add.Which.Message.Should().Contain("Batcher").And.Contain("writes");
        var submit = await FluentActions.Awaiting(() => withResults.SubmitAsync(1)).Should().ThrowAsync<InvalidOperationException>();
        submit.Which.Message.Should().Contain("Batcher").And.Contain("lookups");
        plain.GetStatistics().Accepted.Should().Be(0);
        withResults.GetStatistics().Accepted.Should().Be(0);
    }

    private Batcher<int> Recording(ConcurrentQueue<int[]> batches, BatcherOptions<int> options) =>
        new(
            (batch, _) =>
            {
                batches.Enqueue(batch.ToArray());
                return default;
            },
            options);

    private BatcherOptions<int> Options(Action<BatcherOptions<int>>? configure = null)
    {
        var options = new BatcherOptions<int> { MaxBatchSize = 100, MaxDelay = Delay, TimeProvider = _time };
        configure?.Invoke(options);
        return options;
    }
}
