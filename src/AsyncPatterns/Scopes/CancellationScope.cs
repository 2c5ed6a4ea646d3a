using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;

namespace AsyncPatterns;

/// <summary>
/// Structured concurrency for .NET: a scope owns the child tasks started through it, gives them one
/// <see cref="Token"/>, can carry a deadline, and never ends while a child still runs.
/// </summary>
/// <remarks>
/// <para>Two forms, as in the DESIGN contract:</para>
/// <list type="bullet">
/// <item><description>
/// <c>await using var scope = new CancellationScope(timeout)</c> — leaving the block cancels children still running
/// and waits for every one of them (Java's <c>StructuredTaskScope.close</c>, the seeds' <c>CancellationScope</c>). A
/// deadline ends the children quietly (<see cref="TimedOut"/> says so, like Trio's <c>move_on_after</c>).
/// <see cref="DisposeAsync"/> never throws; child failures are observed (never an <c>UnobservedTaskException</c>),
/// logged and listed by <see cref="GetFailures"/>. A failure does not cancel the siblings in this form.
/// </description></item>
/// <item><description>
/// <c>await CancellationScope.RunAsync(async scope =&gt; …)</c> — the nursery form (Trio, asyncio <c>TaskGroup</c>):
/// waits for the body and every child; the first failure cancels the rest and is rethrown. See
/// <see cref="RunAsync(Func{CancellationScope, Task}, TimeSpan?, CancellationToken)"/>.
/// </description></item>
/// </list>
/// <para>
/// <b>How a child starts.</b> <see cref="Run(Func{CancellationToken, Task})"/> schedules the child on the thread
/// pool and returns at once, like <see cref="Task.Run(Func{Task})"/>, asyncio's <c>create_task</c> and Trio's
/// <c>start_soon</c>: the caller never runs child code, so a child that blocks before its first await cannot stall
/// the code that starts its siblings, and an exception the delegate throws synchronously becomes that child's
/// failure instead of escaping <c>Run</c>. The <see cref="ExecutionContext"/> (AsyncLocal values, the current
/// <c>Activity</c>) flows to the child. Every child <c>Run</c> accepted is invoked, even when the scope is
/// cancelled before the thread pool gets to it (as Trio's <c>start_soon</c>): it then receives a cancelled token,
/// so what it does on cancellation (logging, cleanup) always happens, whatever the timing. Only children still
/// waiting for a <see cref="CancellationScopeOptions.MaxConcurrency"/> slot when the scope is cancelled are never
/// invoked; their tasks end cancelled.
/// </para>
/// <para>
/// <b>Outcomes.</b> A child that throws an <see cref="OperationCanceledException"/> while the scope's token (or the
/// caller's token) is cancelled ended <i>cancelled</i>, never <i>failed</i>. Any other exception, including an
/// <see cref="OperationCanceledException"/> from an unrelated token, is a failure. The task returned by <c>Run</c>
/// reflects the child's outcome; failures are marked observed, so a task nobody awaits raises no
/// <see cref="TaskScheduler.UnobservedTaskException"/>.
/// </para>
/// <para>
/// <b>Lifetime.</b> The deadline counts from the scope's creation. When the scope ends (every child and, for the
/// nursery form, the body have finished), its <see cref="Token"/> is cancelled too, so nothing stays tied to it;
/// <see cref="Run(Func{CancellationToken, Task})"/> then throws. Scopes nest: a scope made with another scope's
/// <see cref="Token"/> is cancelled with it. <see cref="Shielded(TimeSpan)"/> makes a scope that ignores outer
/// cancellation, for cleanup that must finish under its own short deadline.
/// </para>
/// <para>Thread safety: every member may be called from any thread, concurrently.</para>
/// </remarks>
public sealed partial class CancellationScope : IAsyncDisposable
{
    private const string PrimitiveName = "CancellationScope";

    /// <summary>One success in the high half of <see cref="_state"/>.</summary>
    private const long SucceededOne = 1L << 32;

    private static readonly PrimitiveContext DefaultContext =
        PrimitiveContext.Create(null, PrimitiveName, typeof(CancellationScope).FullName!);

    private readonly PrimitiveContext _context;
    private readonly CancellationTokenSource _cts = new();
    private readonly CancellationToken _token;
    private readonly CancellationToken _callerToken;
    private readonly TimeSpan? _timeout;
    private readonly int _maxConcurrency;
    private readonly bool _failFast;
    private readonly long _startTimestamp;
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Lock _lock = new();
    private readonly ITimer? _timer;
    private readonly CancellationTokenRegistration _callerRegistration;

    // One word, so the hot path pays one atomic per child on each side (Run: a CAS; a child that succeeds: one Add):
    // low 32 bits  = live children + 1 while the owner (the await-using block or RunAsync's body) holds the scope
    //                open; 0 means finished: Run is refused. Children may start siblings while the owner waits, as in Trio.
    // high 32 bits = children that succeeded, modulo 2^32 (_succeededWraps counts the wraps).
    // Accepted is derived (Succeeded + Failed + Cancelled + live) instead of being a second counter Run increments.
    private long _state = 1;
    private long _succeededWraps;
    private int _ownerReleased;
    private int _reason;

    // Under _lock (limited scopes only): running children and those waiting for a slot, in Run order.
    private int _running;
    private Queue<IScopeChild>? _waiting;

    // Under _lock: failures in the order they happened.
    private List<Exception>? _failures;

    // The same instances as _failures, for a constant-time duplicate check (a rethrown child exception is one failure).
    private HashSet<Exception>? _failureSet;

    private long _started;
    private long _failed;
    private long _cancelled;

    /// <summary>
    /// Creates a scope whose children are cancelled when <paramref name="timeout"/> has passed since now, when
    /// <paramref name="cancellationToken"/> is cancelled, when <see cref="Cancel"/> is called, or when the scope is
    /// disposed.
    /// </summary>
    /// <param name="timeout">
    /// The scope's deadline, counted from now on <see cref="TimeProvider.System"/>; <see langword="null"/> or
    /// <see cref="Timeout.InfiniteTimeSpan"/> for none. Use
    /// <see cref="CancellationScope(CancellationScopeOptions, CancellationToken)"/> to measure it on another clock.
    /// </param>
    /// <param name="cancellationToken">
    /// An outer token; the scope is cancelled with it. A token that is already cancelled makes a scope that is
    /// cancelled from the start (its <c>Run</c> throws).
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is zero or negative (other than infinite).</exception>
    /// <remarks>
    /// A zero or negative timeout is bad input here, as the contract says; asyncio's <c>timeout(0)</c> and Trio's
    /// <c>move_on_after(0)</c> accept it and expire at once. The deadline counts from the scope's creation, as
    /// Trio's <c>move_on_after</c> did before its <c>timeout_from_enter</c> option.
    /// </remarks>
    // `new CancellationScope(null, token)` must keep meaning the contract constructor.
    [OverloadResolutionPriority(1)]
    public CancellationScope(TimeSpan? timeout = null, CancellationToken cancellationToken = default)
        : this(DefaultContext, ValidateTimeout(timeout, nameof(timeout)), int.MaxValue, failFast: false, cancellationToken)
    {
    }

    /// <summary>Creates a scope from <paramref name="options"/> (deadline, concurrency limit, name, clock, logger).</summary>
    /// <param name="options">The scope's settings; validated and copied now.</param>
    /// <param name="cancellationToken">An outer token; the scope is cancelled with it.</param>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <see cref="CancellationScopeOptions.Timeout"/> is zero or negative, or
    /// <see cref="CancellationScopeOptions.MaxConcurrency"/> is not greater than 0.
    /// </exception>
    public CancellationScope(CancellationScopeOptions options, CancellationToken cancellationToken = default)
        : this(options, failFast: false, cancellationToken)
    {
    }

    private CancellationScope(CancellationScopeOptions options, bool failFast, CancellationToken cancellationToken)
        : this(
            ContextFor(ValidateOptions(options)),
            ValidateTimeout(options.Timeout, nameof(options.Timeout)),
            options.MaxConcurrency,
            failFast,
            cancellationToken)
    {
    }

    private CancellationScope(PrimitiveContext context, TimeSpan? timeout, int maxConcurrency, bool failFast, CancellationToken cancellationToken)
    {
        _context = context;
        _timeout = timeout;
        _maxConcurrency = maxConcurrency;
        _failFast = failFast;
        _token = _cts.Token;
        _callerToken = cancellationToken;
        _startTimestamp = context.TimeProvider.GetTimestamp();

        if (cancellationToken.IsCancellationRequested)
        {
            CancelInternal(CancelReason.Caller);
            return;
        }

        if (cancellationToken.CanBeCanceled)
        {
            _callerRegistration = cancellationToken.UnsafeRegister(
                static state => ((CancellationScope)state!).CancelInternal(CancelReason.Caller), this);
        }

        if (timeout is { } due)
        {
            _timer = context.TimeProvider.CreateTimer(
                static state => ((CancellationScope)state!).CancelInternal(CancelReason.Deadline), this, due, Timeout.InfiniteTimeSpan);
        }
    }

    /// <summary>Why the scope's token was cancelled; the first reason wins.</summary>
    private enum CancelReason
    {
        None = 0,
        Explicit,
        Caller,
        Deadline,
        Failure,
        Exit,
        Ended,
    }

    /// <summary>Gets the token every child receives; it is cancelled when the scope is cancelled or ends.</summary>
    public CancellationToken Token => _token;

    /// <summary>
    /// Gets a value indicating whether the scope's token has been cancelled: by <see cref="Cancel"/>, the deadline,
    /// the outer token, a failure (nursery form), leaving the <c>await using</c> block, or the scope's end.
    /// </summary>
    public bool IsCancellationRequested => _token.IsCancellationRequested;

    /// <summary>
    /// Gets a value indicating whether the scope was cancelled because its deadline passed (before anything else
    /// cancelled it and before it ended).
    /// </summary>
    public bool TimedOut => Volatile.Read(ref _reason) == (int)CancelReason.Deadline;

    /// <summary>Gets a task that completes (never faults) once the scope and every child have ended.</summary>
    public Task Completion => _completion.Task;

    /// <summary>Starts a child now: schedules <paramref name="work"/> on the thread pool with <see cref="Token"/>.</summary>
    /// <param name="work">The child. An exception it throws, synchronously or not, is that child's outcome.</param>
    /// <returns>
    /// A task for the child's outcome: completed, faulted with its failure, or cancelled if the scope cancelled it
    /// (or cancelled the scope before the child started). It never raises an <c>UnobservedTaskException</c>.
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="work"/> is <see langword="null"/>.</exception>
    /// <exception cref="InvalidOperationException">The scope is cancelled or has ended.</exception>
    /// <remarks>
    /// <para>
    /// Refusing a cancelled scope follows the contract and asyncio's <c>TaskGroup.create_task</c> ("TaskGroup is
    /// shutting down"); Trio's <c>start_soon</c> differs: it starts the task in a cancelled nursery, which then
    /// sees <c>Cancelled</c> at its first checkpoint. Code that may race with a cancellation (a body or child that
    /// keeps starting work) can check <see cref="IsCancellationRequested"/> or catch the exception. If the refusal
    /// escapes into the nursery form anyway, <c>RunAsync</c> does not report it when it only echoes a cause it
    /// reports itself (another failure, the deadline, the caller's cancellation): see
    /// <see cref="RunAsync(Func{CancellationScope, Task}, TimeSpan?, CancellationToken)"/>.
    /// </para>
    /// <para>
    /// A child accepted just before the scope was cancelled is still invoked, with the cancelled token (as Trio's
    /// <c>start_soon</c>; an asyncio task cancelled before its first step would never run), so its cancellation
    /// handling always runs. Only a child still waiting for a <see cref="CancellationScopeOptions.MaxConcurrency"/>
    /// slot is never invoked.
    /// </para>
    /// </remarks>
#pragma warning disable VSTHRD200 // Run is the contract's name (Task.Run, asyncio create_task): it starts work, it does not await it.
    public Task Run(Func<CancellationToken, Task> work)
    {
        ArgumentNullException.ThrowIfNull(work);
        var child = new ScopeChild(this, work);
        Accept(child);
        return child.Task;
    }

    /// <summary>Starts a child that produces a result; see <see cref="Run(Func{CancellationToken, Task})"/>.</summary>
    /// <typeparam name="T">The child's result type.</typeparam>
    /// <param name="work">The child. An exception it throws, synchronously or not, is that child's outcome.</param>
    /// <returns>A task for the child's result or outcome.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="work"/> is <see langword="null"/>.</exception>
    /// <exception cref="InvalidOperationException">The scope is cancelled or has ended.</exception>
    public Task<T> Run<T>(Func<CancellationToken, Task<T>> work)
    {
        ArgumentNullException.ThrowIfNull(work);
        var child = new ScopeChild<T>(this, work);
        Accept(child);
        return child.Task;
    }
#pragma warning restore VSTHRD200

    /// <summary>
    /// Cancels the scope: its token fires, children still waiting for a slot end cancelled without running, and
    /// <c>Run</c> is refused from now on. Idempotent. In the nursery form this is not a failure: if the body returns
    /// normally, <c>RunAsync</c> does too (Trio's <c>cancel_scope.cancel()</c>).
    /// </summary>
    /// <remarks>
    /// Callbacks registered on <see cref="Token"/> run on the calling thread; an exception one of them throws is
    /// recorded as a failure of the scope (logged, listed by <see cref="GetFailures"/>, rethrown by <c>RunAsync</c>)
    /// instead of escaping here.
    /// </remarks>
    public void Cancel() => CancelInternal(CancelReason.Explicit);

    /// <summary>
    /// Leaves the scope: cancels children still running (and those waiting for a slot), then waits for every one of
    /// them, including children that ignore cancellation. Never throws.
    /// </summary>
    /// <returns>A task that completes once every child has ended. Calling it again returns the same wait.</returns>
    public ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _ownerReleased, 1) == 0)
        {
            CancelInternal(CancelReason.Exit);
            ReleaseActive();
        }

        var completion = _completion.Task;
        return completion.IsCompleted ? default : new ValueTask(completion);
    }

    /// <summary>Returns the failures recorded so far, in the order they happened.</summary>
    /// <returns>A copy; empty when nothing failed.</returns>
    public IReadOnlyList<Exception> GetFailures()
    {
        lock (_lock)
        {
            return _failures is null ? [] : _failures.ToArray();
        }
    }

    /// <summary>Returns a snapshot of the scope's children; see <see cref="CancellationScopeStatistics"/>.</summary>
    /// <returns>The counters now.</returns>
    public CancellationScopeStatistics GetStatistics()
    {
        int waiting;
        lock (_lock)
        {
            waiting = _waiting?.Count ?? 0;
        }

        // The state before the owner flag: a hold released in between is then counted once (as live), never missed.
        var state = Interlocked.Read(ref _state);
        var ownerHold = Volatile.Read(ref _ownerReleased) == 0 ? 1 : 0;
        var live = Math.Max(0, LiveOf(state) - ownerHold);
        var succeeded = SucceededOf(state);
        var failed = Interlocked.Read(ref _failed);
        var cancelled = Interlocked.Read(ref _cancelled);
        return new CancellationScopeStatistics
        {
            Accepted = succeeded + failed + cancelled + live,
            Started = Interlocked.Read(ref _started),
            Succeeded = succeeded,
            Failed = failed,
            Cancelled = cancelled,
            Pending = live,
            Waiting = waiting,
        };
    }

    private static TimeSpan? ValidateTimeout(TimeSpan? timeout, string name)
    {
        if (timeout is not { } value || value == Timeout.InfiniteTimeSpan)
        {
            return null;
        }

        Guard.PositiveOrNull(value, name);
        return value;
    }

    private static CancellationScopeOptions ValidateOptions(CancellationScopeOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        Guard.Positive(options.MaxConcurrency, nameof(options.MaxConcurrency));
        return options;
    }

    private static PrimitiveContext ContextFor(CancellationScopeOptions options) =>
        options.Name is null && options.TimeProvider is null && options.LoggerFactory is null
            ? DefaultContext
            : PrimitiveContext.Create(options, PrimitiveName, typeof(CancellationScope).FullName!);
}
