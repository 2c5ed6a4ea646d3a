using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Scheduling;

public sealed class PrioritySchedulerDrainableContractTests : DrainableContractTests
{
    protected override DrainableHarness Create(Func<int, CancellationToken, Task> work) => new Harness(work);

    private sealed class Harness(Func<int, CancellationToken, Task> work) : DrainableHarness
    {
        private readonly PriorityScheduler _scheduler = new(new PrioritySchedulerOptions { MaxConcurrency = 1, Name = "contract" });
        private readonly ConcurrentQueue<Task> _tasks = new();

        public override IDrainable Component => _scheduler;

        public override long Accepted => _scheduler.GetStatistics().Accepted;

        public override long Handled => _scheduler.GetStatistics().Handled;

        public override long Failed => _scheduler.GetStatistics().Failed;

        public override long Dropped
        {
            get
            {
                var statistics = _scheduler.GetStatistics();
                return statistics.Dropped;
            }
        }

        public override Task Completion => _scheduler.Completion;

        public override Task SubmitAsync(int item)
        {
            _tasks.Enqueue(_scheduler.RunAsync(token => new ValueTask(work(item, token))));
            return Task.CompletedTask;
        }

        public override async ValueTask DisposeAsync()
        {
            await _scheduler.DisposeAsync();
            // Observe every item's outcome so that none is left unobserved.
            await Task.WhenAll(_tasks.Select(t => t.ContinueWith(static _ => { }, TaskScheduler.Default))).WithTimeout();
            foreach (var task in _tasks)
            {
                _ = task.Exception;
            }
        }
    }
}
