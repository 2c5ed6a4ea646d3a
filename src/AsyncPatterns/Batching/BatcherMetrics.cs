using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;

namespace AsyncPatterns;

/// <summary>A batcher's view for the pending-items gauge, which is read without the batcher's lock.</summary>
internal interface IBatcherGaugeSource
{
    long PendingItems { get; }

    KeyValuePair<string, object?> NameTag { get; }
}

/// <summary>The batchers' instruments, created once on the library's meter.</summary>
/// <remarks>
/// Everything is recorded per batch, never per item, and only when an instrument has a listener, so metrics cost the
/// hot path nothing. The pending gauge is observed over a weak registry of live batchers.
/// </remarks>
internal static class BatcherMetrics
{
    /// <summary>The tag that says why a batch went: <c>size</c>, <c>age</c>, <c>weight</c>, <c>flush</c> or <c>drain</c>.</summary>
    public const string TriggerTag = "asyncpatterns.batcher.trigger";

    /// <summary>The tag on batch durations: <c>processed</c> or <c>failed</c>.</summary>
    public const string OutcomeTag = "asyncpatterns.batcher.outcome";

    public static readonly Histogram<int> BatchSize = AsyncPatternsDiagnostics.Meter.CreateHistogram<int>(
        "asyncpatterns.batcher.batch.size", "{item}", "Items per emitted batch.");

    public static readonly Histogram<double> BatchDuration = Seconds(
        "asyncpatterns.batcher.batch.duration", "Time processBatch took per batch, its pipeline included.");

    public static readonly Histogram<double> BatchLatency = Seconds(
        "asyncpatterns.batcher.batch.latency", "Time from a batch's first item being accepted to the batch finishing.");

    public static readonly Counter<long> Batches = Counter(
        "asyncpatterns.batcher.batches", "{batch}", "Batches emitted, tagged with the trigger that sent them.");

    public static readonly Counter<long> ItemsFailed = Counter(
        "asyncpatterns.batcher.items.failed", "{item}", "Items in batches that failed.");

    public static readonly Counter<long> ItemsDropped = Counter(
        "asyncpatterns.batcher.items.dropped", "{item}", "Items dropped because a drain was cut short.");

    private static readonly ConditionalWeakTable<IBatcherGaugeSource, object?> Live = new();

    private static readonly string[] TriggerNames = ["size", "age", "weight", "flush", "drain"];

    private static readonly ObservableUpDownCounter<long> ItemsPending = AsyncPatternsDiagnostics.Meter.CreateObservableUpDownCounter(
        "asyncpatterns.batcher.items.pending", ObservePending, "{item}", "Accepted items not yet finished: buffered, queued or being processed.");

    private static Histogram<double> Seconds(string name, string description) =>
        AsyncPatternsDiagnostics.Meter.CreateHistogram<double>(name, "s", description);

    private static Counter<long> Counter(string name, string unit, string description) =>
        AsyncPatternsDiagnostics.Meter.CreateCounter<long>(name, unit, description);

    public static string TriggerName(BatchTrigger trigger) => TriggerNames[(int)trigger];

    public static void Track(IBatcherGaugeSource source)
    {
        GC.KeepAlive(ItemsPending);
        Live.AddOrUpdate(source, null);
    }

    public static void Untrack(IBatcherGaugeSource source) => Live.Remove(source);

    public static void RecordEmitted(int size, BatchTrigger trigger, KeyValuePair<string, object?> nameTag)
    {
        if (BatchSize.Enabled)
        {
            BatchSize.Record(size, nameTag);
        }

        if (Batches.Enabled)
        {
            Batches.Add(1, nameTag, new KeyValuePair<string, object?>(TriggerTag, TriggerName(trigger)));
        }
    }

    private static IEnumerable<Measurement<long>> ObservePending()
    {
        foreach (var pair in (IEnumerable<KeyValuePair<IBatcherGaugeSource, object?>>)Live)
        {
            yield return new Measurement<long>(pair.Key.PendingItems, pair.Key.NameTag);
        }
    }
}
