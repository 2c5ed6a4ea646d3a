using System.Diagnostics.Metrics;

namespace AsyncPatterns;

/// <summary>The cancellation scope's instruments on <see cref="AsyncPatternsDiagnostics.Meter"/>.</summary>
internal static class CancellationScopeMetrics
{
    /// <summary>The tag that says how a scope ended: completed, cancelled, caller_cancelled, timed_out or failed.</summary>
    public const string OutcomeTag = "asyncpatterns.cancellationscope.outcome";

    public static readonly Counter<long> ChildrenStarted = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.cancellationscope.children.started", "{child}", "Children whose delegate was invoked.");

    public static readonly Counter<long> ChildrenFailed = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.cancellationscope.children.failed", "{child}", "Children that ended with an exception other than the scope's own cancellation.");

    public static readonly Counter<long> ChildrenCancelled = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.cancellationscope.children.cancelled", "{child}", "Children that ended cancelled by their scope, including those never started.");

    public static readonly Histogram<double> Duration = AsyncPatternsDiagnostics.Meter.CreateHistogram<double>(
        "asyncpatterns.cancellationscope.duration", "s", "Time from a scope's creation until it and every child had ended.");
}
