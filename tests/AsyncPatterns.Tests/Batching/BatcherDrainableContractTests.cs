using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Batching;

/// <summary>The <see cref="IDrainable"/> contract for <see cref="Batcher{T}"/>: one item per batch, one batch at a time.</summary>
public sealed class BatcherDrainableContractTests : DrainableContractTests
{
    protected override DrainableHarness Create(Func<int, CancellationToken, Task> work) => new Harness(work);

    private sealed class Harness : DrainableHarness
    {
        private readonly Batcher<int> _batcher;

        public Harness(Func<int, CancellationToken, Task> work) =>
            _batcher = new Batcher<int>(
                async (batch, token) => await work(batch[0], token),
                new BatcherOptions<int> { MaxBatchSize = 1, Capacity = 1000 });

        public override IDrainable Component => _batcher;

        public override long Accepted => _batcher.GetStatistics().ItemsAccepted;

        public override long Handled => _batcher.GetStatistics().ItemsProcessed;

        public override long Failed => _batcher.GetStatistics().ItemsFailed;

        public override long Dropped => _batcher.GetStatistics().ItemsDropped;

        public override Task Completion => _batcher.Completion;

        public override Task SubmitAsync(int item) => _batcher.AddAsync(item).AsTask();

        public override ValueTask DisposeAsync() => _batcher.DisposeAsync();
    }
}

/// <summary>The <see cref="IDrainable"/> contract for <see cref="Batcher{T, TResult}"/>: one item per batch, one batch at a time.</summary>
public sealed class BatcherWithResultsDrainableContractTests : DrainableContractTests
{
    protected override DrainableHarness Create(Func<int, CancellationToken, Task> work) => new Harness(work);

    private sealed class Harness : DrainableHarness
    {
        private readonly Batcher<int, int> _batcher;

        public Harness(Func<int, CancellationToken, Task> work) =>
            _batcher = new Batcher<int, int>(
                async (batch, token) =>
                {
                    await work(batch[0], token);
                    return batch.ToArray();
                },
                new BatcherOptions<int> { MaxBatchSize = 1, Capacity = 1000 });

        public override IDrainable Component => _batcher;

        public override long Accepted => _batcher.GetStatistics().ItemsAccepted;

        public override long Handled => _batcher.GetStatistics().ItemsProcessed;

        public override long Failed => _batcher.GetStatistics().ItemsFailed;

        public override long Dropped => _batcher.GetStatistics().ItemsDropped;

        public override Task Completion => _batcher.Completion;

        public override Task SubmitAsync(int item)
        {
            var result = _batcher.SubmitAsync(item);
            if (result.IsFaulted)
            {
                return result; // refused: closed
            }

            // Accepted: the result arrives later; observe it so failures in these tests are not unobserved.
            _ = result.ContinueWith(static t => t.Exception, TaskScheduler.Default);
            return Task.CompletedTask;
        }

        public override ValueTask DisposeAsync() => _batcher.DisposeAsync();
    }
}
