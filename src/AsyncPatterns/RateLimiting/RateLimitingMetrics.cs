using System.Diagnostics.Metrics;

namespace AsyncPatterns;

/// <summary>The rate limiters' instruments, created once on the library's one meter.</summary>
/// <remarks>
/// Every measurement is tagged with the limiter's <c>asyncpatterns.name</c>. Counts are in permits, not leases,
/// because a permit is what a rate is measured in.
/// </remarks>
internal static class RateLimitingMetrics
{
    /// <summary>Permits granted, immediately or after waiting.</summary>
    public static readonly Counter<long> Granted = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.ratelimiter.granted", "{permit}", "Permits granted by a rate limiter.");

    /// <summary>Permits refused: a failed lease, an eviction from the queue or a dispose.</summary>
    public static readonly Counter<long> Refused = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.ratelimiter.refused", "{permit}", "Permits refused by a rate limiter (failed leases).");

    /// <summary>Permits waiting in <c>AcquireAsync</c> queues.</summary>
    public static readonly UpDownCounter<long> QueueLength = AsyncPatternsDiagnostics.Meter.CreateUpDownCounter<long>(
        "asyncpatterns.ratelimiter.queue.length", "{permit}", "Permits waiting in a rate limiter's queue.");

    /// <summary>The current limit of adaptive concurrency limiters (the sum per name).</summary>
    public static readonly UpDownCounter<long> AdaptiveLimit = AsyncPatternsDiagnostics.Meter.CreateUpDownCounter<long>(
        "asyncpatterns.ratelimiter.adaptive.limit", "{permit}", "The current concurrency limit of an adaptive concurrency limiter.");

    public static void RecordGranted(long permits, in KeyValuePair<string, object?> nameTag)
    {
        if (permits > 0 && Granted.Enabled)
        {
            Granted.Add(permits, nameTag);
        }
    }

    public static void RecordRefused(long permits, in KeyValuePair<string, object?> nameTag)
    {
        if (Refused.Enabled)
        {
            Refused.Add(permits, nameTag);
        }
    }

    public static void RecordQueueChange(long delta, in KeyValuePair<string, object?> nameTag)
    {
        if (delta != 0 && QueueLength.Enabled)
        {
            QueueLength.Add(delta, nameTag);
        }
    }

    public static void RecordLimitChange(long delta, in KeyValuePair<string, object?> nameTag)
    {
        if (delta != 0 && AdaptiveLimit.Enabled)
        {
            AdaptiveLimit.Add(delta, nameTag);
        }
    }
}
