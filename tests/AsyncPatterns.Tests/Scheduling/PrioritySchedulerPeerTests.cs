using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Scheduling;

/// <summary>
/// The ordering a user expects from <see cref="PriorityQueue{TElement, TPriority}"/> (lower number first) with the
/// tie-break DESIGN.md adds (equal priorities in submission order), checked against PriorityQueue itself.
/// </summary>
public sealed class PrioritySchedulerPeerTests
{
    [Theory]
    [InlineData(false, 1)]
    [InlineData(false, 2)]
    [InlineData(true, 3)]
    [InlineData(true, 4)]
    public async Task Queued_items_run_in_the_order_a_PriorityQueue_keyed_by_priority_then_submission_gives(bool aging, int seed)
    {
        var time = new ManualTimeProvider();
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions
        {
            TimeProvider = time,
            AgingInterval = aging ? TimeSpan.FromSeconds(1) : null,
        });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        await AsyncAssert.EventuallyAsync(() => scheduler.RunningCount == 1);

        var random = new Random(seed);
        var expected = new PriorityQueue<int, (int Priority, int Sequence)>();
        var order = new ConcurrentQueue<int>();
        var tasks = new List<Task>();
        for (var i = 0; i < 400; i++)
        {
            var id = i;
            var priority = random.Next(-6, 7);
            expected.Enqueue(id, (priority, id));
            tasks.Add(scheduler.RunAsync(_ => { order.Enqueue(id); return ValueTask.CompletedTask; }, priority));
        }

        gate.SetResult();
        await Task.WhenAll(tasks.Append(blocker)).WithTimeout();

        var expectedOrder = new List<int>();
        while (expected.TryDequeue(out var id, out _))
        {
            expectedOrder.Add(id);
        }

        order.Should().Equal(expectedOrder);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task The_whole_int_range_is_a_valid_priority_and_orders_as_PriorityQueue_does(bool aging)
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions
        {
            TimeProvider = new ManualTimeProvider(),
            AgingInterval = aging ? TimeSpan.FromMilliseconds(1) : null,
        });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        await AsyncAssert.EventuallyAsync(() => scheduler.RunningCount == 1);

        var priorities = new[] { int.MaxValue, 0, int.MinValue, -1, int.MaxValue - 1, 1, int.MinValue + 1, int.MaxValue, int.MinValue };
        var order = new ConcurrentQueue<string>();
        var tasks = priorities
            .Select((p, i) => scheduler.RunAsync(_ => { order.Enqueue($"{p}#{i}"); return ValueTask.CompletedTask; }, p))
            .ToArray();

        gate.SetResult();
        await Task.WhenAll(tasks.Append(blocker)).WithTimeout();

        order.Should().Equal(
            $"{int.MinValue}#2",
            $"{int.MinValue}#8",
            $"{int.MinValue + 1}#6",
            "-1#3",
            "0#1",
            "1#5",
            $"{int.MaxValue - 1}#4",
            $"{int.MaxValue}#0",
            $"{int.MaxValue}#7");
    }

    [Fact]
    public async Task Shedding_at_the_extremes_of_the_int_range_evicts_the_least_urgent()
    {
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { Capacity = 2 });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        await AsyncAssert.EventuallyAsync(() => scheduler.RunningCount == 1);

        var max = scheduler.RunAsync(_ => ValueTask.CompletedTask, int.MaxValue);
        var zero = scheduler.RunAsync(_ => ValueTask.CompletedTask, 0);
        var min = scheduler.RunAsync(_ => ValueTask.CompletedTask, int.MinValue);

        await FluentActions.Awaiting(() => max.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();
        var refused = scheduler.RunAsync(_ => ValueTask.CompletedTask, int.MaxValue);
        await FluentActions.Awaiting(() => refused.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();

        gate.SetResult();
        await Task.WhenAll(blocker, zero, min).WithTimeout();
        var stats = scheduler.GetStatistics();
        stats.Evicted.Should().Be(1);
        stats.Rejected.Should().Be(1);
    }
    // ChannelTestBase.Precancellation_Writing_ReturnsImmediately: the token is checked before anything else, so an
    // already-cancelled submission is a cancelled task even on a closed scheduler, like WorkQueue and Batcher.
    [Fact]
    public async Task An_already_cancelled_token_wins_over_a_closed_scheduler_and_open_ones_still_refuse_with_InvalidOperationException()
    {
        var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { Name = "api" });
        await scheduler.DrainAsync().WithTimeout();

        scheduler.RunAsync(_ => ValueTask.FromResult(1), 0, new CancellationToken(canceled: true)).IsCanceled.Should().BeTrue();
        scheduler.RunAsync(_ => ValueTask.CompletedTask, 0, new CancellationToken(canceled: true)).IsCanceled.Should().BeTrue();

        var error = await FluentActions.Awaiting(() => scheduler.RunAsync(_ => ValueTask.CompletedTask)).Should().ThrowAsync<InvalidOperationException>();
        error.Which.Message.Should().Contain("PriorityScheduler").And.Contain("api");
        scheduler.GetStatistics().Accepted.Should().Be(0);
    }
}
