using Microsoft.Extensions.Logging;

namespace AsyncPatterns;

/// <summary>Log messages of the rate limiters (event ids 1200–1299).</summary>
internal static partial class RateLimitingLog
{
    [LoggerMessage(EventId = 1200, EventName = "RateLimiterRefused", Level = LogLevel.Debug,
        Message = "Rate limiter '{Name}' refused {PermitCount} permit(s); retry after {RetryAfter}.")]
    public static partial void Refused(ILogger logger, string name, int permitCount, TimeSpan? retryAfter);

    [LoggerMessage(EventId = 1201, EventName = "RateLimiterWaiterEvicted", Level = LogLevel.Debug,
        Message = "Rate limiter '{Name}' evicted the oldest waiter ({PermitCount} permit(s)) to queue a newer one (NewestFirst, queue full).")]
    public static partial void WaiterEvicted(ILogger logger, string name, int permitCount);

    [LoggerMessage(EventId = 1202, EventName = "RateLimiterDisposed", Level = LogLevel.Information,
        Message = "Rate limiter '{Name}' was disposed; {WaiterCount} queued waiter(s) received a failed lease.")]
    public static partial void Disposed(ILogger logger, string name, int waiterCount);

    [LoggerMessage(EventId = 1210, EventName = "AdaptiveLimitChanged", Level = LogLevel.Debug,
        Message = "Adaptive concurrency limiter '{Name}' changed its limit from {OldLimit} to {NewLimit} (latency {Latency}, no-load latency {NoLoadLatency}, dropped {Dropped}).")]
    public static partial void LimitChanged(ILogger logger, string name, int oldLimit, int newLimit, TimeSpan latency, TimeSpan noLoadLatency, bool dropped);
}
