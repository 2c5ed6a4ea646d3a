using System.Diagnostics.Metrics;

namespace AsyncPatterns;

/// <summary>
/// The work queue's instruments on <see cref="AsyncPatternsDiagnostics.Meter"/>, created once.
/// </summary>
/// <remarks>
/// Counters and the duration histogram are recorded by the queue only when a listener is subscribed
/// (<see cref="Instrument.Enabled"/>), so an unobserved queue pays one field read per item. Depth and in-flight
/// are observed: they are read from the live queues in <see cref="WorkQueueGaugeRegistry"/> when a collector asks,
/// so they cost nothing per item.
/// </remarks>
internal static class WorkQueueMetrics
{
    public static readonly Counter<long> Accepted = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.workqueue.accepted", "{item}", "Items accepted by a work queue.");

    public static readonly Counter<long> Handled = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.workqueue.handled", "{item}", "Items whose handler completed successfully.");

    public static readonly Counter<long> Failed = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.workqueue.failed", "{item}", "Items whose handler threw (or whose rate-limiter permit was refused).");

    public static readonly Counter<long> Dropped = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.workqueue.dropped", "{item}", "Items dropped by the full mode or abandoned by a drain that was cut short.");

    public static readonly Histogram<double> HandlerDuration = AsyncPatternsDiagnostics.Meter.CreateHistogram<double>(
        "asyncpatterns.workqueue.handler.duration", "s", "Time spent in the handler (including the resilience pipeline) per item.");

    public static readonly ObservableUpDownCounter<int> Depth = AsyncPatternsDiagnostics.Meter.CreateObservableUpDownCounter(
        "asyncpatterns.workqueue.depth", static () => WorkQueueGaugeRegistry.Observe(static q => q.Count), "{item}",
        "Items waiting in a work queue, not yet taken by a worker.");

    public static readonly ObservableUpDownCounter<int> InFlight = AsyncPatternsDiagnostics.Meter.CreateObservableUpDownCounter(
        "asyncpatterns.workqueue.in_flight", static () => WorkQueueGaugeRegistry.Observe(static q => q.InFlight), "{item}",
        "Items inside a work queue's handler now.");
}

/// <summary>What the observable work-queue instruments read from a live queue.</summary>
internal interface IWorkQueueGaugeSource
{
    int Count { get; }

    int InFlight { get; }

    KeyValuePair<string, object?> NameTag { get; }
}

/// <summary>
/// The live work queues, weakly held so that a queue nobody disposes can still be collected. A queue adds itself
/// when built and removes itself once it has finished (or is disposed).
/// </summary>
internal static class WorkQueueGaugeRegistry
{
    private static readonly Lock Gate = new();
    private static readonly List<WeakReference<IWorkQueueGaugeSource>> Live = [];

    public static void Add(IWorkQueueGaugeSource queue)
    {
        lock (Gate)
        {
            Live.Add(new WeakReference<IWorkQueueGaugeSource>(queue));
        }
    }

    public static void Remove(IWorkQueueGaugeSource queue)
    {
        lock (Gate)
        {
            Live.RemoveAll(w => !w.TryGetTarget(out var q) || ReferenceEquals(q, queue));
        }
    }

    public static IEnumerable<Measurement<int>> Observe(Func<IWorkQueueGaugeSource, int> read)
    {
        List<IWorkQueueGaugeSource> queues;
        lock (Gate)
        {
            Live.RemoveAll(static w => !w.TryGetTarget(out _));
            queues = new List<IWorkQueueGaugeSource>(Live.Count);
            foreach (var weak in Live)
            {
                if (weak.TryGetTarget(out var queue))
                {
                    queues.Add(queue);
                }
            }
        }

        // Read outside the lock: Count takes the channel's own lock.
        var measurements = new Measurement<int>[queues.Count];
        for (var i = 0; i < queues.Count; i++)
        {
            measurements[i] = new Measurement<int>(read(queues[i]), queues[i].NameTag);
        }

        return measurements;
    }
}
