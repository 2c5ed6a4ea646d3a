using Microsoft.Extensions.Logging;

namespace AsyncPatterns;

/// <summary>The batchers' log messages (event ids 1400–1499).</summary>
internal static partial class BatcherLog
{
    [LoggerMessage(EventId = 1400, Level = LogLevel.Warning, Message = "Batcher '{Name}': a batch of {Count} items failed.")]
    public static partial void BatchFailed(ILogger logger, string name, int count, Exception exception);

    [LoggerMessage(EventId = 1401, Level = LogLevel.Warning, Message = "Batcher '{Name}': {Count} items in {Batches} batches were dropped because the drain was cut short.")]
    public static partial void ItemsDropped(ILogger logger, string name, long count, int batches);

    [LoggerMessage(EventId = 1402, Level = LogLevel.Error, Message = "Batcher '{Name}': the OnError callback threw.")]
    public static partial void OnErrorThrew(ILogger logger, string name, Exception exception);

    [LoggerMessage(EventId = 1403, Level = LogLevel.Error, Message = "Batcher '{Name}': the OnDropped callback threw.")]
    public static partial void OnDroppedThrew(ILogger logger, string name, Exception exception);

    [LoggerMessage(EventId = 1404, Level = LogLevel.Debug, Message = "Batcher '{Name}' is draining: it accepts no new items; {Pending} are pending.")]
    public static partial void Draining(ILogger logger, string name, long pending);

    [LoggerMessage(EventId = 1405, Level = LogLevel.Information, Message = "Batcher '{Name}' drained: {Processed} items processed, {Failed} failed, {Dropped} dropped.")]
    public static partial void Drained(ILogger logger, string name, long processed, long failed, long dropped);

    [LoggerMessage(EventId = 1406, Level = LogLevel.Warning, Message = "Batcher '{Name}': the drain was cut short; in-flight batches are cancelled and batches not started are dropped.")]
    public static partial void DrainCutShort(ILogger logger, string name);

    [LoggerMessage(EventId = 1407, Level = LogLevel.Trace, Message = "Batcher '{Name}' emitted a batch of {Count} items (trigger: {Trigger}).")]
    public static partial void BatchEmitted(ILogger logger, string name, int count, BatchTrigger trigger);
}
