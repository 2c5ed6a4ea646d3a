using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Batching;

public sealed class BatcherStressTests
{
    private static readonly TimeSpan HardTimeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Four_producers_of_250000_items_every_item_lands_in_exactly_one_batch()
    {
        const int Producers = 4;
        const int PerProducer = 250_000;
        var seen = new int[Producers * PerProducer];
        var batchSizes = new ConcurrentQueue<int>();
        var failedItems = 0L;
        var batcher = new Batcher<int>(
            async (batch, _) =>
            {
                batchSizes.Enqueue(batch.Count);
                foreach (var item in batch)
                {
                    Interlocked.Increment(ref seen[item]);
                }

                if (batch[0] % 50 == 7)
                {
                    await Task.Yield();
                    throw new InvalidDataException("random fault");
                }
            },
            new BatcherOptions<int>
            {
                MaxBatchSize = 100,
                MaxDelay = TimeSpan.FromMilliseconds(2),
                MaxConcurrentBatches = 3,
                OnError = (batch, _) => Interlocked.Add(ref failedItems, batch.Count),
            });

        var producers = Enumerable.Range(0, Producers).Select(p => Task.Run(async () =>
        {
            for (var i = 0; i < PerProducer; i++)
            {
                await batcher.AddAsync((p * PerProducer) + i);
                if (i % 20_000 == 0)
                {
                    await batcher.FlushAsync();
                }
            }
        }));
        await Task.WhenAll(producers).WithTimeout(HardTimeout);
        await batcher.DrainAsync().WithTimeout(HardTimeout);

        seen.Should().OnlyContain(count => count == 1, "every item is in exactly one batch");
        batchSizes.Should().OnlyContain(size => size >= 1 && size <= 100);
        batchSizes.Sum().Should().Be(Producers * PerProducer);
        var statistics = batcher.GetStatistics();
        statistics.ItemsAccepted.Should().Be(Producers * PerProducer);
        (statistics.ItemsProcessed + statistics.ItemsFailed + statistics.ItemsDropped).Should().Be(statistics.ItemsAccepted);
        statistics.ItemsFailed.Should().Be(Interlocked.Read(ref failedItems)).And.BePositive();
        statistics.BatchesEmitted.Should().Be(batchSizes.Count);
        (statistics.BatchesBySize + statistics.BatchesByAge + statistics.BatchesByFlush + statistics.BatchesByDrain).Should().Be(statistics.BatchesEmitted);
        statistics.ItemsPending.Should().Be(0);
    }

    [Fact]
    public async Task Concurrent_submits_with_random_cancellations_all_end_and_counts_add_up()
    {
        const int Producers = 4;
        const int PerProducer = 20_000;
        var batcher = new Batcher<int, int>(
            async (batch, _) =>
            {
                await Task.Yield();
                return batch[0] % 13 == 0 ? throw new InvalidDataException() : batch.Select(i => i + 1).ToArray();
            },
            new BatcherOptions<int> { MaxBatchSize = 50, Capacity = 100, MaxConcurrentBatches = 2, MaxDelay = TimeSpan.FromMilliseconds(1) });

        long ok = 0, failed = 0, cancelled = 0;
        var producers = Enumerable.Range(0, Producers).Select(p => Task.Run(async () =>
        {
            var random = new Random(p);
            var pending = new List<Task>();
            for (var i = 0; i < PerProducer; i++)
            {
                var item = (p * PerProducer) + i;
                using var cts = random.Next(10) == 0 ? new CancellationTokenSource(TimeSpan.FromTicks(random.Next(1, 2000))) : null;
                var submit = batcher.SubmitAsync(item, cts?.Token ?? default);
                pending.Add(Observe(submit, item));
                if (pending.Count == 200)
                {
                    await Task.WhenAll(pending);
                    pending.Clear();
                }
            }

            await Task.WhenAll(pending);
        }));

        await Task.WhenAll(producers).WithTimeout(HardTimeout);
        await batcher.DrainAsync().WithTimeout(HardTimeout);

        var statistics = batcher.GetStatistics();
        (ok + failed + cancelled).Should().Be(Producers * PerProducer);
        statistics.ItemsAccepted.Should().Be(Producers * PerProducer - cancelled, "only cancelled waits were not accepted");
        statistics.ItemsProcessed.Should().Be(ok);
        statistics.ItemsFailed.Should().Be(failed);
        statistics.ItemsDropped.Should().Be(0);

        async Task Observe(Task<int> submit, int item)
        {
            try
            {
                (await submit).Should().Be(item + 1);
                Interlocked.Increment(ref ok);
            }
            catch (InvalidDataException)
            {
                Interlocked.Increment(ref failed);
            }
            catch (OperationCanceledException)
            {
                Interlocked.Increment(ref cancelled);
            }
        }
    }
}
