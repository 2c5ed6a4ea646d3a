using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Queues;

public sealed class WorkQueueDrainableContractTests : DrainableContractTests
{
    protected override DrainableHarness Create(Func<int, CancellationToken, Task> work) => new Harness(work);

    private sealed class Harness : DrainableHarness
    {
        private readonly WorkQueue<int> _queue;

        public Harness(Func<int, CancellationToken, Task> work) =>
            _queue = new WorkQueue<int>((item, token) => new ValueTask(work(item, token)), new WorkQueueOptions<int>
            {
                Name = "contract",
                Capacity = 128,
                MaxConcurrency = 1,
            });

        public override IDrainable Component => _queue;

        public override long Accepted => _queue.GetStatistics().Accepted;

        public override long Handled => _queue.GetStatistics().Handled;

        public override long Failed => _queue.GetStatistics().Failed;

        public override long Dropped => _queue.GetStatistics().Dropped;

        public override Task Completion => _queue.Completion;

        public override Task SubmitAsync(int item) => _queue.EnqueueAsync(item).AsTask();

        public override ValueTask DisposeAsync() => _queue.DisposeAsync();
    }
}
