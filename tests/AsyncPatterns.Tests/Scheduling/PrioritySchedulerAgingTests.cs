using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Scheduling;

public sealed class PrioritySchedulerAgingTests
{
    private static readonly TimeSpan AgingInterval = TimeSpan.FromMilliseconds(100);
    private static readonly TimeSpan StreamStep = TimeSpan.FromMilliseconds(10);
    private const int Backlog = 5;
    private const int LowPriority = 10;

    [Fact]
    public async Task A_low_priority_item_starts_within_the_bound_set_by_AgingInterval_under_a_constant_urgent_stream()
    {
        var result = await RunUrgentStreamAsync(AgingInterval, maxSteps: 300);

        // Aging lifts the priority-10 item one level per AgingInterval, so after 10 × AgingInterval its fixed key
        // equals that of priority-0 items submitted then; it runs once the priority-0 items submitted before that
        // instant are done: the backlog present when it arrived, plus one stream item per step (one step = one item).
        // Bound: 10 × AgingInterval + (Backlog + 1) × StreamStep. Exactly: 1000 ms + 5 × 10 ms = 1050 ms.
        var gap = LowPriority - 0;
        result.Should().NotBeNull("aging must let the priority-10 item through");
        result!.Value.Should().BeGreaterThanOrEqualTo(gap * AgingInterval, "it cannot pass urgent items submitted before it was lifted to their level");
        result.Value.Should().BeLessThanOrEqualTo((gap * AgingInterval) + ((Backlog + 1) * StreamStep));
        result.Value.Should().Be(TimeSpan.FromMilliseconds(1050));
    }

    [Fact]
    public async Task Without_aging_the_same_stream_starves_the_low_priority_item()
    {
        var result = await RunUrgentStreamAsync(agingInterval: null, maxSteps: 150);

        result.Should().BeNull("strict priority never runs priority 10 while priority-0 work keeps arriving");
    }

    [Fact]
    public async Task Ties_of_the_aged_key_go_in_submission_order_and_equal_priorities_stay_first_in_first_out()
    {
        var clock = new ManualTimeProvider();
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions
        {
            MaxConcurrency = 1, AgingInterval = AgingInterval, TimeProvider = clock,
        });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        var order = new ConcurrentQueue<string>();
        Task Run(string name, int priority) => scheduler.RunAsync(_ => { order.Enqueue(name); return ValueTask.CompletedTask; }, priority);

        var a = Run("a", 1);       // key 1 × A + 0
        var e = Run("e", 2);       // key 2 × A + 0
        clock.Advance(AgingInterval);
        var b = Run("b", 0);       // key 0 + A: ties with a, submitted later
        var c = Run("c", 0);       // key A: ties with a and b
        var d = Run("d", 1);       // key 2 × A: ties with e, submitted later
        gate.SetResult();
        await Task.WhenAll(blocker, a, b, c, d, e).WithTimeout();

        order.Should().Equal("a", "b", "c", "e", "d");
    }

    [Fact]
    public async Task Aging_reaches_eviction_an_item_that_has_waited_is_not_the_least_urgent()
    {
        var clock = new ManualTimeProvider();
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions
        {
            MaxConcurrency = 1, Capacity = 2, AgingInterval = AgingInterval, TimeProvider = clock,
        });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocker = scheduler.RunAsync(async _ => await gate.Task);
        var old = scheduler.RunAsync(_ => ValueTask.CompletedTask, 5);           // key 5A
        clock.Advance(3 * AgingInterval);
        var fresh = scheduler.RunAsync(_ => ValueTask.CompletedTask, 3);         // key 3A + 3A = 6A: least urgent now

        var urgent = scheduler.RunAsync(_ => ValueTask.CompletedTask, 4);        // key 7A: refused, nothing is less urgent
        await FluentActions.Awaiting(() => urgent.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();
        var moreUrgent = scheduler.RunAsync(_ => ValueTask.CompletedTask, 0);    // key 3A: evicts the fresh priority-3 item

        await FluentActions.Awaiting(() => fresh.WithTimeout()).Should().ThrowAsync<WorkRejectedException>();
        gate.SetResult();
        await Task.WhenAll(blocker, old, moreUrgent).WithTimeout();
    }

    // Priority 0 keeps arriving, one per step, while one item runs at a time; returns how long the priority-10 item
    // waited before it started, or null if it never started within maxSteps.
    private static async Task<TimeSpan?> RunUrgentStreamAsync(TimeSpan? agingInterval, int maxSteps)
    {
        var clock = new ManualTimeProvider();
        var scheduler = new PriorityScheduler(new PrioritySchedulerOptions
        {
            MaxConcurrency = 1, AgingInterval = agingInterval, TimeProvider = clock,
        });
        using var release = new SemaphoreSlim(0);
        var started = 0;
        long lowStartedAtTicks = -1;
        var tasks = new List<Task>();
        Func<CancellationToken, ValueTask> Urgent() => async _ =>
        {
            Interlocked.Increment(ref started);
            await release.WaitAsync();
        };

        tasks.Add(scheduler.RunAsync(Urgent()));
        await AsyncAssert.EventuallyAsync(() => Volatile.Read(ref started) == 1);
        for (var i = 0; i < Backlog; i++)
        {
            tasks.Add(scheduler.RunAsync(Urgent()));
        }

        var lowSubmittedAt = clock.Elapsed;
        tasks.Add(scheduler.RunAsync(
            async _ =>
            {
                Interlocked.Exchange(ref lowStartedAtTicks, clock.Elapsed.Ticks);
                Interlocked.Increment(ref started);
                await release.WaitAsync();
            },
            LowPriority));

        for (var step = 1; step <= maxSteps && Interlocked.Read(ref lowStartedAtTicks) < 0; step++)
        {
            clock.Advance(StreamStep);
            tasks.Add(scheduler.RunAsync(Urgent()));
            release.Release();
            var expected = step + 1;
            await AsyncAssert.EventuallyAsync(() => Volatile.Read(ref started) == expected, $"step {step} starts the next item");
        }

        var ticks = Interlocked.Read(ref lowStartedAtTicks);
        release.Release(tasks.Count);
        await scheduler.DisposeAsync();
        await Task.WhenAll(tasks).WithTimeout();
        return ticks < 0 ? null : TimeSpan.FromTicks(ticks) - lowSubmittedAt;
    }
}
