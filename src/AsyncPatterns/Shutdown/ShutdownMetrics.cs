using System.Diagnostics.Metrics;

namespace AsyncPatterns;

/// <summary>The instruments of <see cref="GracefulShutdown"/>, created once.</summary>
internal static class ShutdownMetrics
{
    /// <summary>The tag naming a phase: <c>drain</c>, <c>cleanup</c> or <c>total</c>.</summary>
    public const string PhaseTag = "asyncpatterns.shutdown.phase";

    /// <summary>The tag naming how tracked work ended: <c>completed</c>, <c>cancelled</c>, <c>faulted</c>, <c>abandoned</c>.</summary>
    public const string OutcomeTag = "asyncpatterns.shutdown.outcome";

    /// <summary>The tag saying whether the shutdown timed out.</summary>
    public const string TimedOutTag = "asyncpatterns.shutdown.timed_out";

    /// <summary>Duration of each phase of a shutdown (tagged with the phase).</summary>
    public static readonly Histogram<double> PhaseDuration = AsyncPatternsDiagnostics.Meter.CreateHistogram<double>(
        "asyncpatterns.shutdown.phase.duration", "s", "How long each shutdown phase took: drain (tasks and components), cleanup, total.");

    /// <summary>Tracked tasks by how they ended, recorded once per shutdown.</summary>
    public static readonly Counter<long> Tasks = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.shutdown.tasks", "{task}", "Tracked tasks by outcome when a shutdown finished: completed, cancelled, faulted, abandoned.");

    /// <summary>Errors recorded in shutdown reports.</summary>
    public static readonly Counter<long> Errors = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.shutdown.errors", "{error}", "Errors recorded by shutdowns: failed tracked tasks, drains and cleanups.");

    /// <summary>Shutdowns that finished (tagged with whether they timed out).</summary>
    public static readonly Counter<long> Shutdowns = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.shutdown.completed", "{shutdown}", "Shutdowns that finished, tagged with whether the drain deadline hit.");

    /// <summary>Tracked tasks running now.</summary>
    public static readonly UpDownCounter<long> Running = AsyncPatternsDiagnostics.Meter.CreateUpDownCounter<long>(
        "asyncpatterns.shutdown.tasks.running", "{task}", "Tracked tasks started with Run that have not ended yet.");
}
