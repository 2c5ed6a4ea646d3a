using Microsoft.Extensions.Logging;

namespace AsyncPatterns;

/// <summary>Log messages of <see cref="GracefulShutdown"/>, event ids 1600–1699.</summary>
internal static partial class ShutdownLog
{
    [LoggerMessage(EventId = 1600, Level = LogLevel.Information,
        Message = "Graceful shutdown '{Name}' started: {Reason}. Stopping {RunningTasks} tracked task(s) and draining {Components} component(s) within {DrainTimeout}.")]
    public static partial void ShutdownStarted(ILogger logger, string name, string reason, int runningTasks, int components, TimeSpan drainTimeout);

    [LoggerMessage(EventId = 1601, Level = LogLevel.Information,
        Message = "Graceful shutdown '{Name}' received {Signal}; shutting down.")]
    public static partial void SignalReceived(ILogger logger, string name, string signal);

    [LoggerMessage(EventId = 1602, Level = LogLevel.Warning,
        Message = "Graceful shutdown '{Name}' received {Signal} again; aborting the drain now.")]
    public static partial void SecondSignal(ILogger logger, string name, string signal);

    [LoggerMessage(EventId = 1603, Level = LogLevel.Warning,
        Message = "Graceful shutdown '{Name}' received {Signal} a third time; letting the platform end the process.")]
    public static partial void ThirdSignal(ILogger logger, string name, string signal);

    [LoggerMessage(EventId = 1604, Level = LogLevel.Warning,
        Message = "Graceful shutdown '{Name}' cannot handle {Signal} on this platform.")]
    public static partial void SignalUnsupported(ILogger logger, string name, string signal, Exception exception);

    [LoggerMessage(EventId = 1610, Level = LogLevel.Information,
        Message = "Graceful shutdown '{Name}': tracked tasks finished in {Elapsed}.")]
    public static partial void TasksStopped(ILogger logger, string name, TimeSpan elapsed);

    [LoggerMessage(EventId = 1611, Level = LogLevel.Debug,
        Message = "Graceful shutdown '{Name}': draining {Component}.")]
    public static partial void Draining(ILogger logger, string name, string component);

    [LoggerMessage(EventId = 1612, Level = LogLevel.Information,
        Message = "Graceful shutdown '{Name}': {Component} drained in {Elapsed}.")]
    public static partial void Drained(ILogger logger, string name, string component, TimeSpan elapsed);

    [LoggerMessage(EventId = 1613, Level = LogLevel.Warning,
        Message = "Graceful shutdown '{Name}': the drain of {Component} was cut short after {Elapsed}; its unfinished work is reported by its own statistics.")]
    public static partial void DrainCutShort(ILogger logger, string name, string component, TimeSpan elapsed);

    [LoggerMessage(EventId = 1614, Level = LogLevel.Error,
        Message = "Graceful shutdown '{Name}': draining {Component} failed.")]
    public static partial void DrainFailed(ILogger logger, string name, string component, Exception exception);

    [LoggerMessage(EventId = 1615, Level = LogLevel.Warning,
        Message = "Graceful shutdown '{Name}': aborting ({Cause}) after {Elapsed}; the drains are cut short.")]
    public static partial void Aborting(ILogger logger, string name, string cause, TimeSpan elapsed);

    [LoggerMessage(EventId = 1616, Level = LogLevel.Information,
        Message = "Graceful shutdown '{Name}': drain phase finished in {Elapsed} (timed out: {TimedOut}).")]
    public static partial void DrainPhaseFinished(ILogger logger, string name, TimeSpan elapsed, bool timedOut);

    [LoggerMessage(EventId = 1620, Level = LogLevel.Error,
        Message = "Graceful shutdown '{Name}': tracked task failed.")]
    public static partial void TaskFaulted(ILogger logger, string name, Exception exception);

    [LoggerMessage(EventId = 1621, Level = LogLevel.Error,
        Message = "Graceful shutdown '{Name}': a callback registered on StoppingToken threw.")]
    public static partial void StoppingCallbackFailed(ILogger logger, string name, Exception exception);

    [LoggerMessage(EventId = 1622, Level = LogLevel.Warning,
        Message = "Graceful shutdown '{Name}': abandoned work failed after the shutdown gave up on it.")]
    public static partial void AbandonedWorkFailed(ILogger logger, string name, Exception exception);

    [LoggerMessage(EventId = 1630, Level = LogLevel.Error,
        Message = "Graceful shutdown '{Name}': cleanup {Index} failed.")]
    public static partial void CleanupFailed(ILogger logger, string name, int index, Exception exception);

    [LoggerMessage(EventId = 1631, Level = LogLevel.Warning,
        Message = "Graceful shutdown '{Name}': cleanup {Index} did not finish within {CleanupTimeout}; abandoned.")]
    public static partial void CleanupTimedOut(ILogger logger, string name, int index, TimeSpan cleanupTimeout);

    [LoggerMessage(EventId = 1632, Level = LogLevel.Information,
        Message = "Graceful shutdown '{Name}': {Count} cleanup(s) ran in {Elapsed}.")]
    public static partial void CleanupPhaseFinished(ILogger logger, string name, int count, TimeSpan elapsed);

    [LoggerMessage(EventId = 1640, Level = LogLevel.Information,
        Message = "Graceful shutdown '{Name}' finished in {Elapsed}: {Reason}; timed out: {TimedOut}; tasks completed {Completed}, cancelled {Cancelled}, faulted {Faulted}, abandoned {Abandoned}; {Errors} error(s).")]
    public static partial void ShutdownFinished(ILogger logger, string name, TimeSpan elapsed, string reason, bool timedOut,
        int completed, int cancelled, int faulted, int abandoned, int errors);
}
