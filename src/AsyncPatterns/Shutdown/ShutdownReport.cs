namespace AsyncPatterns;

/// <summary>
/// What a <see cref="GracefulShutdown"/> did: why it ran, how long it took, whether the deadline hit, how the tracked
/// work ended and every error seen on the way.
/// </summary>
/// <param name="Reason">Why the shutdown ran: the reason given to the first
/// <see cref="GracefulShutdown.ShutdownAsync"/> call, the signal's name (<c>SIGTERM</c>), or <c>disposed</c>.</param>
/// <param name="Elapsed">From the moment <see cref="GracefulShutdown.StoppingToken"/> fired until the report was made,
/// measured on the options' <see cref="AsyncPatternsOptions.TimeProvider"/>.</param>
/// <param name="TimedOut"><see langword="true"/> when <see cref="GracefulShutdown.AbortToken"/> fired before the tracked
/// work had ended and every component had drained: the <see cref="GracefulShutdownOptions.DrainTimeout"/> passed, a
/// second signal arrived or <see cref="GracefulShutdown.Abort"/> was called.</param>
/// <param name="TasksCompleted">Work started with <see cref="GracefulShutdown.Run"/> that ran to completion.</param>
/// <param name="TasksCancelled">Tracked work that ended cancelled (an <see cref="OperationCanceledException"/>).</param>
/// <param name="TasksFaulted">Tracked work that failed; each exception is in <paramref name="Errors"/>.</param>
/// <param name="TasksAbandoned">Tracked work still running when the report was made.</param>
/// <param name="Errors">Every failure seen: tracked work that faulted, drains that threw something other than the
/// expected cancellation of a cut-short drain, cleanups that threw or overran
/// <see cref="GracefulShutdownOptions.CleanupTimeout"/> (a <see cref="TimeoutException"/>), and exceptions thrown by
/// callbacks registered on <see cref="GracefulShutdown.StoppingToken"/> or <see cref="GracefulShutdown.AbortToken"/>.</param>
/// <remarks>
/// The four task counts cover every call to <see cref="GracefulShutdown.Run"/> over the instance's life, so their sum
/// is the number of tracked tasks ever started: nothing tracked goes unreported. What the registered components
/// accepted is accounted for by the components' own statistics (for example
/// <c>WorkQueueStatistics</c>); a drain cut short reports its dropped items there.
/// </remarks>
public sealed record ShutdownReport(
    string Reason,
    TimeSpan Elapsed,
    bool TimedOut,
    int TasksCompleted,
    int TasksCancelled,
    int TasksFaulted,
    int TasksAbandoned,
    IReadOnlyList<Exception> Errors);
