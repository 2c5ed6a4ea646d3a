namespace AsyncPatterns;

/// <summary>
/// Options for <see cref="GracefulShutdown"/>.
/// </summary>
/// <remarks>
/// Read, validated and copied once by the <see cref="GracefulShutdown"/> constructor; later changes have no effect.
/// </remarks>
public sealed class GracefulShutdownOptions : AsyncPatternsOptions
{
    /// <summary>
    /// Gets or sets how long the drain phase may take: from the moment <see cref="GracefulShutdown.StoppingToken"/>
    /// fires until <see cref="GracefulShutdown.AbortToken"/> fires and the drains are cut short.
    /// </summary>
    /// <value>
    /// The default is 30 seconds (the default grace period of Kubernetes and of the .NET Generic Host). Must be greater
    /// than <see cref="TimeSpan.Zero"/>, or <see cref="Timeout.InfiniteTimeSpan"/> to wait for as long as the work
    /// takes (then only <see cref="GracefulShutdown.Abort"/> or a second signal cut the drain short).
    /// </value>
    public TimeSpan DrainTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Gets or sets how long each cleanup registered with
    /// <see cref="GracefulShutdown.Register(Func{CancellationToken, Task})"/> may run.
    /// </summary>
    /// <value>
    /// The default is 5 seconds. Must be greater than <see cref="TimeSpan.Zero"/>, or
    /// <see cref="Timeout.InfiniteTimeSpan"/>.
    /// </value>
    /// <remarks>
    /// Each cleanup gets a token of its own that fires after this long; cleanups run after the drain phase, so the
    /// drain deadline does not apply to them. A cleanup still running when its token fires is abandoned (a
    /// <see cref="TimeoutException"/> is recorded in <see cref="ShutdownReport.Errors"/>) and the next one starts, so a
    /// whole shutdown takes at most <see cref="DrainTimeout"/> plus this value times the number of cleanups.
    /// </remarks>
    public TimeSpan CleanupTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Gets or sets whether SIGINT, SIGTERM and SIGQUIT start the shutdown instead of ending the process.
    /// </summary>
    /// <value>The default is <see langword="false"/>.</value>
    /// <remarks>
    /// <para>
    /// Handled through <see cref="System.Runtime.InteropServices.PosixSignalRegistration"/> (on Windows, SIGINT is
    /// Ctrl+C, SIGQUIT is Ctrl+Break and SIGTERM is the console being closed or the system shutting down). The first
    /// signal starts the shutdown and keeps the process alive (<c>Cancel = true</c>), so the program can finish,
    /// print its report and return from <c>Main</c>. A second signal fires
    /// <see cref="GracefulShutdown.AbortToken"/> at once. A third lets the platform's default action happen (the
    /// process ends), an escape hatch for a shutdown stuck in user code.
    /// </para>
    /// <para>
    /// Leave it off under the .NET Generic Host, which handles these signals itself; use the
    /// <c>AsyncPatterns.Hosting</c> adapter there instead. The registrations end when the
    /// <see cref="GracefulShutdown"/> is disposed.
    /// </para>
    /// </remarks>
    public bool HandleSignals { get; set; }
}
