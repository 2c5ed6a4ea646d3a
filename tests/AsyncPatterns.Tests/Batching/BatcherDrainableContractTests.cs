using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Batching;

/// <summary>The <see cref="IDrainable"/> contract for <see cref="Batcher{T}"/>: one item per batch, one batch at a time.</summary>
public sealed class BatcherDrainableContractTests : DrainableContractTests
{
    protected override DrainableHarness Create(Func<int, CancellationToken, Task> work)
    {
        var batcher = new Batcher<int>(async (batch, token) => await work(batch[0], token), BatcherHarness.Options());
        return new BatcherHarness(batcher, batcher.GetStatistics, batcher.Completion, item => batcher.AddAsync(item).AsTask());
    }
}

/// <summary>The <see cref="IDrainable"/> contract for <see cref="Batcher{T, TResult}"/>: one item per batch, one batch at a time.</summary>
public sealed class BatcherWithResultsDrainableContractTests : DrainableContractTests
{
    protected override DrainableHarness Create(Func<int, CancellationToken, Task> work)
    {
        var batcher = new Batcher<int, int>(
            async (batch, token) =>
            {
                await work(batch[0], token);
                return batch.ToArray();
            },
            BatcherHarness.Options());
        return new BatcherHarness(batcher, batcher.GetStatistics, batcher.Completion, item => Submit(batcher, item));
    }

    private static Task Submit(Batcher<int, int> batcher, int item)
    {
        var result = batcher.SubmitAsync(item);
        if (result.IsFaulted)
        {
            return result; // refused: closed
        }

        // Accepted: the result arrives later; observe it so failures in these tests are not unobserved.
        _ = result.ContinueWith(static t => t.Exception, TaskScheduler.Default);
        return Task.CompletedTask;
    }
}

/// <summary>Drives either batcher through the contract; the accounting comes from its statistics.</summary>
internal sealed class BatcherHarness(
    IDrainable batcher, Func<BatcherStatistics> statistics, Task completion, Func<int, Task> submit) : DrainableHarness
{
    public override IDrainable Component => batcher;

    public override long Accepted => statistics().ItemsAccepted;

    public override long Handled => statistics().ItemsProcessed;

    public override long Failed => statistics().ItemsFailed;

    public override long Dropped => statistics().ItemsDropped;

    public override Task Completion => completion;

    /// <summary>One item per batch (so each item is its own unit of work), one batch at a time, room for 1,000.</summary>
    public static BatcherOptions<int> Options() => new() { MaxBatchSize = 1, Capacity = 1000 };

    public override Task SubmitAsync(int item) => submit(item);

    public override ValueTask DisposeAsync() => ((IAsyncDisposable)batcher).DisposeAsync();
}
