using Microsoft.Extensions.Logging;

namespace AsyncPatterns;

/// <summary>The <see cref="PriorityScheduler"/>'s log messages; event ids 1300–1399.</summary>
internal static partial class PrioritySchedulerLog
{
    [LoggerMessage(EventId = 1300, EventName = "WorkEvicted", Level = LogLevel.Warning,
        Message = "PriorityScheduler '{SchedulerName}' is full ({Capacity} queued): evicted a priority {EvictedPriority} item to admit a priority {Priority} item.")]
    public static partial void WorkEvicted(ILogger logger, string schedulerName, int capacity, int evictedPriority, int priority);

    [LoggerMessage(EventId = 1301, EventName = "WorkRejected", Level = LogLevel.Warning,
        Message = "PriorityScheduler '{SchedulerName}' is full ({Capacity} queued, none less urgent): refused a priority {Priority} item.")]
    public static partial void WorkRejected(ILogger logger, string schedulerName, int capacity, int priority);

    [LoggerMessage(EventId = 1302, EventName = "Draining", Level = LogLevel.Information,
        Message = "PriorityScheduler '{SchedulerName}' is draining: {Queued} queued and {Running} running items to finish.")]
    public static partial void Draining(ILogger logger, string schedulerName, int queued, int running);

    [LoggerMessage(EventId = 1303, EventName = "DrainCutShort", Level = LogLevel.Warning,
        Message = "PriorityScheduler '{SchedulerName}' drain was cut short: dropped {Dropped} queued items and cancelled the tokens of {Running} running items.")]
    public static partial void DrainCutShort(ILogger logger, string schedulerName, int dropped, int running);

    [LoggerMessage(EventId = 1304, EventName = "Drained", Level = LogLevel.Information,
        Message = "PriorityScheduler '{SchedulerName}' is drained: every accepted item has finished.")]
    public static partial void Drained(ILogger logger, string schedulerName);

    [LoggerMessage(EventId = 1305, EventName = "WorkFailed", Level = LogLevel.Debug,
        Message = "PriorityScheduler '{SchedulerName}': a work item failed; its task carries the exception.")]
    public static partial void WorkFailed(ILogger logger, string schedulerName, Exception exception);

    [LoggerMessage(EventId = 1306, EventName = "CancellationCallbackFailed", Level = LogLevel.Warning,
        Message = "PriorityScheduler '{SchedulerName}': a cancellation callback registered by running work threw while the drain was cut short.")]
    public static partial void CancellationCallbackFailed(ILogger logger, string schedulerName, Exception exception);
}
