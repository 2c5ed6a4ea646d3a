using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;

namespace AsyncPatterns;

/// <summary>
/// The <see cref="PriorityScheduler"/>'s instruments, created once on <see cref="AsyncPatternsDiagnostics.Meter"/>.
/// </summary>
/// <remarks>
/// Every measurement carries <c>asyncpatterns.name</c>; the per-item ones also carry <see cref="PriorityTag"/>.
/// Priorities are tag values, so keep the set of priorities in use small (as any metric dimension).
/// </remarks>
internal static class PrioritySchedulerMetrics
{
    /// <summary>The tag that carries an item's priority.</summary>
    public const string PriorityTag = "asyncpatterns.priority";

    /// <summary>Items waiting in the queue, by priority (+1 when queued, −1 when the item leaves the queue for any reason).</summary>
    public static readonly UpDownCounter<int> Queued = AsyncPatternsDiagnostics.Meter.CreateUpDownCounter<int>(
        "asyncpatterns.priorityscheduler.queued", "{item}", "Work items waiting in the priority scheduler's queue, by priority.");

    /// <summary>How long items waited between submission and start, by priority.</summary>
    public static readonly Histogram<double> QueueWaitTime = AsyncPatternsDiagnostics.Meter.CreateHistogram<double>(
        "asyncpatterns.priorityscheduler.queue_wait_time", "s", "Time a work item waited between submission and the start of its work, by priority.");

    /// <summary>Submissions refused because the queue was full of more urgent work.</summary>
    public static readonly Counter<long> Rejected = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.priorityscheduler.rejections", "{item}", "Work items refused because the queue was full of more urgent work, by priority.");

    /// <summary>Queued items evicted by a more urgent submission.</summary>
    public static readonly Counter<long> Evicted = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.priorityscheduler.evictions", "{item}", "Queued work items evicted by a more urgent item while the queue was full, by priority of the evicted item.");

    /// <summary>Queued items dropped because a drain was cut short.</summary>
    public static readonly Counter<long> Dropped = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.priorityscheduler.dropped", "{item}", "Queued work items dropped because a drain was cut short.");

    /// <summary>Items holding a concurrency slot now, observed from every live scheduler.</summary>
    public static readonly ObservableUpDownCounter<int> Running = AsyncPatternsDiagnostics.Meter.CreateObservableUpDownCounter(
        "asyncpatterns.priorityscheduler.running", ObserveRunning, "{item}", "Work items running (or waiting for a rate-limiter permit) in the priority scheduler.");

    // Weak, so a scheduler that is never drained is still collected; removed once drained.
    private static readonly ConditionalWeakTable<PriorityScheduler, object?> Live = new();

    // Boxed priorities for the usual small range, so recording a tag does not allocate.
    private static readonly object[] BoxedPriorities = CreateBoxes(-8, 64);

    public static void Register(PriorityScheduler scheduler) => Live.AddOrUpdate(scheduler, null);

    public static void Unregister(PriorityScheduler scheduler) => Live.Remove(scheduler);

    public static TagList Tags(in KeyValuePair<string, object?> nameTag, int priority) =>
        new() { nameTag, new KeyValuePair<string, object?>(PriorityTag, Box(priority)) };

    private static object Box(int priority)
    {
        var index = priority + 8;
        return (uint)index < (uint)BoxedPriorities.Length ? BoxedPriorities[index] : priority;
    }

    private static object[] CreateBoxes(int from, int count)
    {
        var boxes = new object[count];
        for (var i = 0; i < count; i++)
        {
            boxes[i] = from + i;
        }

        return boxes;
    }

    private static IEnumerable<Measurement<int>> ObserveRunning()
    {
        foreach (var pair in Live)
        {
            yield return new Measurement<int>(pair.Key.RunningCount, pair.Key.NameTag);
        }
    }
}
