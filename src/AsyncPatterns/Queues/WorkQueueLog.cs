using Microsoft.Extensions.Logging;

namespace AsyncPatterns;

/// <summary>The work queue's log messages; event ids 1000–1099.</summary>
internal static partial class WorkQueueLog
{
    [LoggerMessage(EventId = 1000, EventName = "WorkQueueHandlerFailed", Level = LogLevel.Warning,
        Message = "Work queue '{QueueName}': the handler failed for an item; the worker goes on with the next one.")]
    public static partial void HandlerFailed(ILogger logger, string queueName, Exception exception);

    [LoggerMessage(EventId = 1001, EventName = "WorkQueueItemDropped", Level = LogLevel.Debug,
        Message = "Work queue '{QueueName}' dropped an item ({Reason}).")]
    public static partial void ItemDropped(ILogger logger, string queueName, string reason);

    [LoggerMessage(EventId = 1002, EventName = "WorkQueueClosed", Level = LogLevel.Information,
        Message = "Work queue '{QueueName}' is closed and accepts no new work; {Waiting} items are waiting and {InFlight} are in flight.")]
    public static partial void Closed(ILogger logger, string queueName, int waiting, int inFlight);

    [LoggerMessage(EventId = 1003, EventName = "WorkQueueCompleted", Level = LogLevel.Information,
        Message = "Work queue '{QueueName}' finished: accepted {Accepted} = handled {Handled} + failed {Failed} + dropped {Dropped}.")]
    public static partial void Completed(ILogger logger, string queueName, long accepted, long handled, long failed, long dropped);

    [LoggerMessage(EventId = 1004, EventName = "WorkQueueDrainCutShort", Level = LogLevel.Warning,
        Message = "Work queue '{QueueName}': the drain was cut short; {InFlight} in-flight items were cancelled and {Dropped} items that never started were dropped.")]
    public static partial void DrainCutShort(ILogger logger, string queueName, int inFlight, int dropped);

    [LoggerMessage(EventId = 1005, EventName = "WorkQueueCallbackFailed", Level = LogLevel.Error,
        Message = "Work queue '{QueueName}': the {Callback} callback threw; the exception was ignored.")]
    public static partial void CallbackFailed(ILogger logger, string queueName, string callback, Exception exception);

    [LoggerMessage(EventId = 1006, EventName = "WorkQueuePermitRefused", Level = LogLevel.Warning,
        Message = "Work queue '{QueueName}': the rate limiter refused a permit; the item failed with RateLimitRejectedException.")]
    public static partial void PermitRefused(ILogger logger, string queueName);
}
