using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Scheduling;

public sealed class PrioritySchedulerStressTests
{
    private const int Submitters = 4;
    private const int PerSubmitter = 50_000;
    private const int MaxConcurrency = 4;

    [Fact]
    public async Task Four_submitters_with_random_priorities_and_cancellations_account_for_every_item()
    {
        var total = Submitters * PerSubmitter;
        var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = MaxConcurrency, Capacity = 2_000 });
        var runs = new int[total];
        var tasks = new Task<int>[total];
        var running = 0;
        var peak = 0;

        async Task SubmitAllAsync(int submitter)
        {
            await Task.Yield();
            var random = new Random(submitter);
            for (var i = 0; i < PerSubmitter; i++)
            {
                var id = (submitter * PerSubmitter) + i;
                var kind = random.Next(100);
                CancellationTokenSource? cts = kind < 20 ? new CancellationTokenSource() : null;
                tasks[id] = scheduler.RunAsync(
                    async _ =>
                    {
                        Interlocked.Increment(ref runs[id]);
                        PrioritySchedulerTests.InterlockedMax(ref peak, Interlocked.Increment(ref running));
                        try
                        {
                            if (kind % 10 == 0)
                            {
                                await Task.Yield();
                            }

                            if (kind >= 97)
                            {
                                throw new InvalidOperationException("boom");
                            }

                            return id;
                        }
                        finally
                        {
                            Interlocked.Decrement(ref running);
                        }
                    },
                    random.Next(-3, 20),
                    cts?.Token ?? default);
                if (cts is not null)
                {
                    if (kind < 10)
                    {
                        cts.Cancel();
                    }
                    else
                    {
                        cts.CancelAfter(random.Next(0, 3));
                    }
                }

                if (i % 1_000 == 0)
                {
                    await Task.Yield();
                }
            }
        }

        var work = Task.WhenAll(Enumerable.Range(0, Submitters).Select(SubmitAllAsync));
        await work.WithTimeout(TimeSpan.FromSeconds(60));
        await scheduler.DrainAsync().WithTimeout(TimeSpan.FromSeconds(60));
        await Task.WhenAll(tasks.Select(t => t.ContinueWith(static _ => { }, TaskScheduler.Default))).WithTimeout();

        var statistics = scheduler.GetStatistics();
        int succeeded = 0, failed = 0, canceled = 0, shed = 0;
        for (var id = 0; id < total; id++)
        {
            var task = tasks[id];
            runs[id].Should().BeLessThanOrEqualTo(1, "no work runs twice");
            switch (task.Status)
            {
                case TaskStatus.RanToCompletion:
                    (await task).Should().Be(id);
                    runs[id].Should().Be(1);
                    succeeded++;
                    break;
                case TaskStatus.Canceled:
                    runs[id].Should().Be(0, "these items were cancelled before they started");
                    canceled++;
                    break;
                case TaskStatus.Faulted when task.Exception!.InnerException is WorkRejectedException:
                    runs[id].Should().Be(0);
                    shed++;
                    break;
                case TaskStatus.Faulted:
                    task.Exception!.InnerException.Should().BeOfType<InvalidOperationException>();
                    runs[id].Should().Be(1);
                    failed++;
                    break;
                default:
                    throw new Xunit.Sdk.XunitException($"Task {id} never completed: {task.Status}.");
            }
        }

        Volatile.Read(ref peak).Should().BeLessThanOrEqualTo(MaxConcurrency);
        (succeeded + failed + canceled + shed).Should().Be(total);
        statistics.Handled.Should().Be(succeeded);
        statistics.Failed.Should().Be(failed);
        statistics.Canceled.Should().Be(canceled);
        (statistics.Evicted + statistics.Rejected).Should().Be(shed);
        statistics.Abandoned.Should().Be(0);
        (statistics.Accepted + statistics.Rejected).Should().Be(total);
        (statistics.Handled + statistics.Failed + statistics.Canceled + statistics.Evicted).Should().Be(statistics.Accepted);
        statistics.QueuedCount.Should().Be(0);
        statistics.RunningCount.Should().Be(0);
        runs.Sum().Should().Be(succeeded + failed);
        canceled.Should().BeGreaterThan(0, "the stress exercises cancellation");
    }
}
