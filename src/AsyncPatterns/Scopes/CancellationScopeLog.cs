using Microsoft.Extensions.Logging;

namespace AsyncPatterns;

/// <summary>Log messages of <see cref="CancellationScope"/>; event ids 1500–1599.</summary>
internal static partial class CancellationScopeLog
{
    [LoggerMessage(EventId = 1500, EventName = "ChildFailed", Level = LogLevel.Error,
        Message = "A child of cancellation scope '{ScopeName}' failed; the failure is recorded and its siblings keep running.")]
    public static partial void ChildFailed(ILogger logger, string scopeName, Exception exception);

    [LoggerMessage(EventId = 1501, EventName = "ChildFailedRethrown", Level = LogLevel.Debug,
        Message = "A child of cancellation scope '{ScopeName}' failed; its siblings are cancelled and the failure is rethrown by RunAsync.")]
    public static partial void ChildFailedRethrown(ILogger logger, string scopeName, Exception exception);

    [LoggerMessage(EventId = 1502, EventName = "TimedOut", Level = LogLevel.Warning,
        Message = "Cancellation scope '{ScopeName}' reached its deadline of {Timeout}; its children are being cancelled.")]
    public static partial void TimedOut(ILogger logger, string scopeName, TimeSpan timeout);

    [LoggerMessage(EventId = 1503, EventName = "Cancelled", Level = LogLevel.Debug,
        Message = "Cancellation scope '{ScopeName}' was cancelled ({Reason}); its children are being cancelled.")]
    public static partial void Cancelled(ILogger logger, string scopeName, string reason);

    [LoggerMessage(EventId = 1504, EventName = "Ended", Level = LogLevel.Debug,
        Message = "Cancellation scope '{ScopeName}' ended ({Outcome}) after {Duration}: {Succeeded} children succeeded, {Failed} failed, {Cancelled} cancelled.")]
    public static partial void Ended(ILogger logger, string scopeName, string outcome, TimeSpan duration, long succeeded, long failed, long cancelled);

    [LoggerMessage(EventId = 1505, EventName = "CancellationCallbackFailed", Level = LogLevel.Error,
        Message = "A callback registered on the token of cancellation scope '{ScopeName}' threw while the scope was being cancelled.")]
    public static partial void CancellationCallbackFailed(ILogger logger, string scopeName, Exception exception);
}
