namespace AsyncPatterns;

/// <summary>
/// Stops a process in two phases without losing accepted work: first <see cref="StoppingToken"/> tells everything
/// to stop taking work while tracked tasks finish and registered components drain; at the deadline
/// <see cref="AbortToken"/> tells whatever is left to give up. Then cleanups run and a <see cref="ShutdownReport"/>
/// says what happened.
/// </summary>
/// <remarks>
/// <para>The sequence, started by the first of <see cref="ShutdownAsync"/>, a signal (with
/// <see cref="GracefulShutdownOptions.HandleSignals"/>), <see cref="Abort"/> or <see cref="DisposeAsync"/>:</para>
/// <list type="number">
/// <item><see cref="StoppingToken"/> fires (synchronously, before <see cref="ShutdownAsync"/> returns) and the
/// <see cref="GracefulShutdownOptions.DrainTimeout"/> deadline starts, on the options' <see cref="TimeProvider"/>.</item>
/// <item>The drain phase. First the work started with <see cref="Run"/> is awaited (it usually produces the work the
/// components consume, so it stops first); then every <see cref="IDrainable"/> is drained, one at a time, in reverse
/// order of registration (register a consumer before the component that feeds it). Each
/// <see cref="IDrainable.DrainAsync"/> receives <see cref="AbortToken"/>.</item>
/// <item>If the deadline passes first (or a second signal arrives, or <see cref="Abort"/> is called),
/// <see cref="AbortToken"/> fires: the drain in progress is cut short (its <see cref="OperationCanceledException"/> is
/// expected and not an error), components not yet drained are drained with the already-cancelled token (so they
/// close and report what they drop at once), and tracked work still running is no longer waited for.</item>
/// <item>Cleanups registered with <see cref="Register(Func{CancellationToken, Task})"/> run one at a time in reverse
/// order of registration, each with its own token bounded by <see cref="GracefulShutdownOptions.CleanupTimeout"/>;
/// one that throws or overruns is recorded in <see cref="ShutdownReport.Errors"/> and the others still run.</item>
/// <item><see cref="Completion"/> (and every <see cref="ShutdownAsync"/> call) gets the report. It never faults and
/// never waits past the deadline for work that ignores cancellation.</item>
/// </list>
/// <para>Every member is thread-safe. Callbacks registered on <see cref="StoppingToken"/> run on the thread that
/// starts the shutdown; callbacks on <see cref="AbortToken"/> on the thread that fires it (a timer thread at the
/// deadline).</para>
/// </remarks>
public sealed partial class GracefulShutdown : IAsyncDisposable
{
    private const string Kind = "GracefulShutdown";

    private readonly PrimitiveContext _context;
    private readonly TimeSpan _drainTimeout;
    private readonly TimeSpan _cleanupTimeout;
    private readonly Lock _lock = new();

    // Never disposed: their tokens are handed out and must stay usable after the shutdown; neither owns a timer.
    private readonly CancellationTokenSource _stopping = new();
    private readonly CancellationTokenSource _abort = new();

    private readonly TaskCompletionSource<ShutdownReport> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _tasksEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Completes once every AbortToken callback has run (and its failure, if any, was recorded): the report waits for it.
    private readonly TaskCompletionSource _abortFired = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<IDrainable> _components = [];
    private readonly List<Func<CancellationToken, Task>> _cleanups = [];
    private readonly List<Exception> _errors = [];

    private string? _reason;          // set once, under the lock, when the shutdown starts
    private long _startedAt;
    private string? _abortCause;      // set once, under the lock, when AbortToken fires
    private bool _drainPhaseOver;     // after it, the deadline no longer aborts anything
    private bool _reportMade;         // after it, late outcomes are logged but no longer counted
    private int _running;
    private int _completed;
    private int _cancelled;
    private int _faulted;
    private ITimer? _deadline;

    /// <summary>
    /// Creates a shutdown coordinator and, with <see cref="GracefulShutdownOptions.HandleSignals"/>, starts handling
    /// SIGINT, SIGTERM and SIGQUIT.
    /// </summary>
    /// <param name="options">The options; <see langword="null"/> means every default.</param>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <see cref="GracefulShutdownOptions.DrainTimeout"/> or <see cref="GracefulShutdownOptions.CleanupTimeout"/> is
    /// not greater than <see cref="TimeSpan.Zero"/> nor <see cref="Timeout.InfiniteTimeSpan"/>.
    /// </exception>
    public GracefulShutdown(GracefulShutdownOptions? options = null)
    {
        options ??= new GracefulShutdownOptions();
        Guard.PositiveOrInfinite(options.DrainTimeout, nameof(options.DrainTimeout));
        Guard.PositiveOrInfinite(options.CleanupTimeout, nameof(options.CleanupTimeout));
        _drainTimeout = options.DrainTimeout;
        _cleanupTimeout = options.CleanupTimeout;
        _context = PrimitiveContext.Create(options, Kind, typeof(GracefulShutdown).FullName!);
        if (options.HandleSignals)
        {
            _signals = RegisterSignals();
        }
    }

    /// <summary>
    /// Gets the token that fires when the shutdown starts: stop taking new work, finish what you have.
    /// </summary>
    /// <remarks>Work started with <see cref="Run"/> receives this token.</remarks>
    public CancellationToken StoppingToken => _stopping.Token;

    /// <summary>
    /// Gets the token that fires when the drain must end now: the <see cref="GracefulShutdownOptions.DrainTimeout"/>
    /// passed, a second signal arrived or <see cref="Abort"/> was called. Abandon whatever is still running.
    /// </summary>
    /// <remarks>It does not fire when everything finished in time.</remarks>
    public CancellationToken AbortToken => _abort.Token;

    /// <summary>Gets the number of tasks started with <see cref="Run"/> that have not ended yet.</summary>
    /// <remarks>
    /// A task counts as ended once the shutdown has recorded its outcome, which happens on the thread that completed
    /// it, just after its continuations that run asynchronously were scheduled.
    /// </remarks>
    public int RunningCount => Volatile.Read(ref _running);

    /// <summary>Gets a value indicating whether the shutdown has started (it may also have finished).</summary>
    public bool IsShuttingDown => Volatile.Read(ref _reason) is not null;

    /// <summary>
    /// Gets a task that completes with the report when a shutdown, however it was started, has finished.
    /// </summary>
    /// <remarks>It never faults and is never cancelled; it is the same task every <see cref="ShutdownAsync"/> call returns.</remarks>
    public Task<ShutdownReport> Completion => _completion.Task;

    /// <summary>
    /// Starts tracked background work: the shutdown waits for it (until the deadline) and counts how it ended.
    /// </summary>
    /// <param name="work">The work. It receives <see cref="StoppingToken"/>; use <see cref="AbortToken"/> too for
    /// work that should finish its current item after stopping but give up at the deadline.</param>
    /// <returns>The work's own task. Its failure is also observed, logged and recorded by the shutdown, so a caller
    /// that never awaits it leaves no unobserved exception.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="work"/> is <see langword="null"/>.</exception>
    /// <exception cref="InvalidOperationException">The shutdown has started.</exception>
    /// <remarks>
    /// The delegate is invoked at once on the calling thread, like any async method (wrap CPU-bound loops in
    /// <see cref="Task.Run(Func{Task})"/>). A delegate that throws synchronously yields a faulted task rather than
    /// an exception from <see cref="Run"/>. Work ending in an <see cref="OperationCanceledException"/> counts as
    /// cancelled, not faulted.
    /// </remarks>
#pragma warning disable VSTHRD200 // The contract's name: it starts work, like Task.Run, rather than being awaited for a result.
    public Task Run(Func<CancellationToken, Task> work)
#pragma warning restore VSTHRD200
    {
        ArgumentNullException.ThrowIfNull(work);
        lock (_lock)
        {
            if (_reason is not null)
            {
                throw ShuttingDownException(nameof(Run));
            }

            _running++;
        }

        if (ShutdownMetrics.Running.Enabled)
        {
            ShutdownMetrics.Running.Add(1, _context.NameTag);
        }

        Task task;
        try
        {
            task = work(_stopping.Token) ?? Task.FromException(new InvalidOperationException("The work passed to GracefulShutdown.Run returned a null Task."));
        }
#pragma warning disable CA1031 // Any exception from user work becomes the task's fault, counted and reported.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            task = Task.FromException(ex);
        }

        if (task.IsCompleted)
        {
            OnTaskEnded(task);
        }
        else
        {
            _ = task.ContinueWith(
                static (t, state) => ((GracefulShutdown)state!).OnTaskEnded(t),
                this,
                CancellationToken.None,
                TaskContinuationOptions.ExecuteSynchronously,
                TaskScheduler.Default);
        }

        return task;
    }

    /// <summary>
    /// Registers a component to drain during the shutdown, in reverse order of registration.
    /// </summary>
    /// <param name="component">The component, for example a <c>WorkQueue&lt;T&gt;</c>, a <c>Batcher&lt;T&gt;</c> or a
    /// <c>PriorityScheduler</c>.</param>
    /// <exception cref="ArgumentNullException"><paramref name="component"/> is <see langword="null"/>.</exception>
    /// <exception cref="InvalidOperationException">The shutdown has started.</exception>
    /// <remarks>
    /// Register a component after the components it feeds: the one registered last drains first, so work flowing
    /// downstream still finds its consumer open. The component's <see cref="IDrainable.DrainAsync"/> receives
    /// <see cref="AbortToken"/>.
    /// </remarks>
    public void Register(IDrainable component)
    {
        ArgumentNullException.ThrowIfNull(component);
        lock (_lock)
        {
            if (_reason is not null)
            {
                throw ShuttingDownException(nameof(Register));
            }

            _components.Add(component);
        }
    }

    /// <summary>
    /// Registers a cleanup that runs after the drain phase, in reverse order of registration.
    /// </summary>
    /// <param name="cleanup">The cleanup (close connections, flush telemetry). Its token fires after
    /// <see cref="GracefulShutdownOptions.CleanupTimeout"/>.</param>
    /// <exception cref="ArgumentNullException"><paramref name="cleanup"/> is <see langword="null"/>.</exception>
    /// <exception cref="InvalidOperationException">The shutdown has started.</exception>
    /// <remarks>
    /// Cleanups run even when the drain timed out. One that throws, or is still running when its token fires, is
    /// recorded in <see cref="ShutdownReport.Errors"/> (an overrun as a <see cref="TimeoutException"/>) and the next
    /// one runs.
    /// </remarks>
    public void Register(Func<CancellationToken, Task> cleanup)
    {
        ArgumentNullException.ThrowIfNull(cleanup);
        lock (_lock)
        {
            if (_reason is not null)
            {
                throw ShuttingDownException(nameof(Register));
            }

            _cleanups.Add(cleanup);
        }
    }

    /// <summary>
    /// Starts the shutdown if it has not started, and returns its report when it has finished.
    /// </summary>
    /// <param name="reason">Why; recorded in the report and the logs. Only the first start's reason is kept.
    /// <see langword="null"/> means <c>ShutdownAsync called</c>.</param>
    /// <returns><see cref="Completion"/>: every caller, concurrent or later, gets the same task and the same report.</returns>
    /// <remarks>
    /// When this method returns, <see cref="StoppingToken"/> has fired and <see cref="IsShuttingDown"/> is true.
    /// The returned task never faults; it completes within <see cref="GracefulShutdownOptions.DrainTimeout"/> plus
    /// the cleanups' bounds, whatever the work does (callbacks registered on <see cref="AbortToken"/> run to their end
    /// before the report, so keep them short and non-blocking, as any cancellation callback should be). Work started with <see cref="Run"/> (or a component's handler)
    /// may call this method to stop the application, but must not await the returned task: the shutdown waits for
    /// that work, so awaiting it there waits until the deadline (as awaiting the seeds' <c>shutdown()</c> from one of
    /// the tasks it gathers would). Discard it and return, or let <see cref="StoppingToken"/> end the work.
    /// </remarks>
    public Task<ShutdownReport> ShutdownAsync(string? reason = null)
    {
        Start(reason ?? "ShutdownAsync called");
        return _completion.Task;
    }

    /// <summary>
    /// Fires <see cref="AbortToken"/> now, starting the shutdown first if it has not started: the drain is cut short
    /// and the report will say <see cref="ShutdownReport.TimedOut"/>. Does nothing once the drain phase is over.
    /// </summary>
    /// <param name="reason">The reason recorded if this call starts the shutdown; <see langword="null"/> means
    /// <c>aborted</c>.</param>
    /// <remarks>What a second signal does. Use it when the platform's grace period is shorter than expected.</remarks>
    public void Abort(string? reason = null)
    {
        if (!Start(reason ?? "aborted", "Abort called"))
        {
            FireAbort("Abort called");
        }
    }

    /// <summary>
    /// Runs the shutdown if it has not started, waits for it to finish, then stops handling signals.
    /// </summary>
    /// <returns>A task that completes when the shutdown has finished. It never throws.</returns>
    public async ValueTask DisposeAsync()
    {
        Start("disposed");
        await ((Task)_completion.Task).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        DisposeSignals();
    }

    private InvalidOperationException ShuttingDownException(string member) =>
        new(_context.Name == Kind
            ? $"The {Kind} is shutting down ({Volatile.Read(ref _reason)}), so {member} accepts nothing new."
            : $"The {Kind} '{_context.Name}' is shutting down ({Volatile.Read(ref _reason)}), so {member} accepts nothing new.");

    private void OnTaskEnded(Task task)
    {
        Exception? fault = null;
        var cancelled = task.IsCanceled;
        if (task.IsFaulted)
        {
            var inner = task.Exception!.InnerExceptions;
            cancelled = inner.All(static e => e is OperationCanceledException);
            if (!cancelled)
            {
                fault = inner.Count == 1 ? inner[0] : task.Exception;
            }
        }

        bool late;
        bool lastOfShutdown;
        lock (_lock)
        {
            _running--;
            late = _reportMade;
            if (!late)
            {
                if (fault is not null)
                {
                    _faulted++;
                    _errors.Add(fault);
                }
                else if (cancelled)
                {
                    _cancelled++;
                }
                else
                {
                    _completed++;
                }
            }

            lastOfShutdown = _reason is not null && _running == 0;
        }

        if (ShutdownMetrics.Running.Enabled)
        {
            ShutdownMetrics.Running.Add(-1, _context.NameTag);
        }

        if (fault is not null)
        {
            if (late)
            {
                ShutdownLog.AbandonedWorkFailed(_context.Logger, _context.Name, fault);
            }
            else
            {
                ShutdownLog.TaskFaulted(_context.Logger, _context.Name, fault);
            }
        }

        if (lastOfShutdown)
        {
            _tasksEnded.TrySetResult();
        }
    }

    private void RecordError(Exception error)
    {
        lock (_lock)
        {
            if (!_reportMade)
            {
                _errors.Add(error);
            }
        }
    }
}
