namespace AsyncPatterns.Tests.Batching;

public class BatcherStatisticsAliasTests
{
    [Fact]
    public async Task The_shared_names_mirror_the_item_counters_and_the_identity_holds_once_drained()
    {
        var batcher = new Batcher<int>(
            (batch, _) => batch[0] == 0 ? throw new InvalidOperationException("first batch fails") : ValueTask.CompletedTask,
            new BatcherOptions<int> { MaxBatchSize = 2, OnError = (_, _) => { } });
        for (var i = 0; i < 5; i++)
        {
            await batcher.AddAsync(i).AsTask().WaitAsync(TimeSpan.FromSeconds(30));
        }

        await batcher.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30));
        var stats = batcher.GetStatistics();

        (stats.Accepted, stats.Handled, stats.Failed, stats.Dropped)
            .Should().Be((stats.ItemsAccepted, stats.ItemsProcessed, stats.ItemsFailed, stats.ItemsDropped));
        (stats.Accepted, stats.Handled, stats.Failed, stats.Dropped).Should().Be((5L, 3L, 2L, 0L));
        (stats.Handled + stats.Failed + stats.Dropped).Should().Be(stats.Accepted);
    }
}
