using System.Runtime.InteropServices;
using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <summary>
/// Runs asynchronous work with at most <see cref="PrioritySchedulerOptions.MaxConcurrency"/> items at once, the most
/// urgent first: a lower priority number runs first and equal priorities run in submission order. A bounded queue
/// sheds the least important work first, and optional aging keeps low priorities from starving.
/// </summary>
/// <remarks>
/// <para>
/// <b>Ordering.</b> Each queued item gets a fixed key when it is submitted: its priority, or with
/// <see cref="PrioritySchedulerOptions.AgingInterval"/> set, <c>priority + submittedAt / AgingInterval</c> (computed
/// exactly, in <see cref="TimeProvider"/> timestamp units). Items run in key order, ties in submission order. Because
/// the key never changes, aging needs no re-sorting: an item that has waited <c>k × AgingInterval</c> ranks with items
/// <c>k</c> levels more urgent submitted now. Priority order and first-in-first-out among equals hold with or without aging.
/// </para>
/// <para>
/// <b>Dispatch.</b> While fewer than <c>MaxConcurrency</c> items run, a new item starts at once; otherwise it is
/// queued, and each slot that frees takes the most urgent queued item. Work always starts on the thread pool, never on
/// the submitting thread and never under the scheduler's lock. The submitter's <see cref="ExecutionContext"/> flows to
/// the work, as with <see cref="Task.Run(Func{Task})"/>.
/// </para>
/// <para>
/// <b>Load shedding.</b> When <see cref="PrioritySchedulerOptions.Capacity"/> items are queued, a new item whose key is
/// more urgent than the least urgent queued item evicts that item (its task faults with
/// <see cref="WorkRejectedException"/>); otherwise the new item's task faults with <see cref="WorkRejectedException"/>.
/// </para>
/// <para>
/// <b>Cancellation.</b> The token given to <c>RunAsync</c> removes a queued item at once (<see cref="QueuedCount"/>
/// drops, its task is cancelled, its work never runs). Once the item has started, the token reaches the work, together
/// with the scheduler's own token that fires when a drain is cut short.
/// </para>
/// <para>
/// <b>Rate limiting.</b> With <see cref="PrioritySchedulerOptions.RateLimiter"/> set, an item acquires one permit after
/// it leaves the queue and before its work starts, holding its concurrency slot while it waits (so permits go out in
/// priority order). The permit's lease is disposed when the work ends. Work is paced, not failed: a refused lease that
/// says when to retry (<c>RetryAfter</c>, as a <see cref="GcraRateLimiter"/> with no queue gives) is waited out and the
/// permit asked for again; only a lease refused without <c>RetryAfter</c> faults the item's task with
/// <see cref="RateLimitRejectedException"/>.
/// </para>
/// <para>
/// <b>Cost.</b> Queuing an item allocates its task and task source only (plus a cancellation link when its token can be
/// cancelled). Without aging the queue is one first-in-first-out ring buffer per priority, so queuing and taking an item
/// are O(1); with aging it is a min-max heap over one array.
/// </para>
/// <para>Thread-safety: every member is safe to call concurrently from any thread.</para>
/// </remarks>
public sealed partial class PriorityScheduler : IDrainable, IAsyncDisposable
{
    private const string Kind = "PriorityScheduler";

    private readonly Lock _lock = new();
    private readonly PrimitiveContext _context;
    private readonly int _maxConcurrency;
    private readonly int _capacity;
    private readonly bool _aging;
    private readonly Int128 _agingStamps;
    private readonly long _origin;
    private readonly RateLimiter? _rateLimiter;
    private readonly PriorityWorkQueue _queue;
    private readonly Stack<Runner> _idleRunners = new();
    private readonly CancellationTokenSource _abort = new();
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private int _queuedCount;
    private int _deadCount;
    private int _running;
    private long _sequence;
    private bool _closed;
    private bool _aborted;

    private long _accepted;
    private EndCounters _ends;
    private long _canceled;
    private long _evicted;
    private long _dropped;
    private long _rejected;

    /// <summary>Initializes a new scheduler.</summary>
    /// <param name="options">The settings; <see langword="null"/> means every default (one item at a time, unbounded queue, no aging).</param>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <see cref="PrioritySchedulerOptions.MaxConcurrency"/> or <see cref="PrioritySchedulerOptions.Capacity"/> is not
    /// greater than 0, or <see cref="PrioritySchedulerOptions.AgingInterval"/> is not greater than <see cref="TimeSpan.Zero"/>.
    /// </exception>
    public PriorityScheduler(PrioritySchedulerOptions? options = null)
    {
        options ??= new PrioritySchedulerOptions();
        Guard.Positive(options.MaxConcurrency, nameof(options.MaxConcurrency));
        Guard.Positive(options.Capacity, nameof(options.Capacity));
        Guard.PositiveOrNull(options.AgingInterval, nameof(options.AgingInterval));

        _context = PrimitiveContext.Create(options, Kind, typeof(PriorityScheduler).FullName!);
        _maxConcurrency = options.MaxConcurrency;
        _capacity = options.Capacity;
        _rateLimiter = options.RateLimiter;
        if (options.AgingInterval is { } interval)
        {
            _aging = true;
            var stamps = (Int128)interval.Ticks * _context.TimeProvider.TimestampFrequency / TimeSpan.TicksPerSecond;
            _agingStamps = stamps > 0 ? stamps : 1;
            _origin = _context.TimeProvider.GetTimestamp();
        }

        // Aging gives every item its own key; without it each priority is one first-in-first-out lane.
        _queue = _aging ? new PriorityWorkHeap() : new PriorityWorkLanes();

        PrioritySchedulerMetrics.Register(this);
    }

    /// <summary>Gets the number of items waiting in the queue (cancelled, evicted and started items excluded).</summary>
    public int QueuedCount => Volatile.Read(ref _queuedCount);

    /// <summary>Gets the number of items holding a concurrency slot: running, or waiting for a rate-limiter permit.</summary>
    public int RunningCount => Volatile.Read(ref _running);

    /// <summary>
    /// Gets a task that completes when the scheduler has been closed (by <see cref="DrainAsync"/> or
    /// <see cref="DisposeAsync"/>) and every accepted item has finished, including work still running after a drain
    /// was cut short. It never faults.
    /// </summary>
    public Task Completion => _completion.Task;

    internal KeyValuePair<string, object?> NameTag => _context.NameTag;

    /// <summary>Queues <paramref name="work"/> and returns a task for its result.</summary>
    /// <typeparam name="T">The work's result type.</typeparam>
    /// <param name="work">The work; it receives a token that fires when <paramref name="cancellationToken"/> does or a drain is cut short.</param>
    /// <param name="priority">The priority: a lower number runs first; equal numbers run in submission order. The default is 0.</param>
    /// <param name="cancellationToken">Removes the item from the queue if it fires before the work starts; reaches the work after.</param>
    /// <returns>
    /// A task with the work's result. It is cancelled if the item is cancelled before it starts (or dropped by a
    /// cut-short drain), faults with <see cref="WorkRejectedException"/> if the item is refused or evicted because the
    /// queue is full, faults with <see cref="RateLimitRejectedException"/> if the rate limiter refuses its permit for good, and
    /// otherwise ends as the work ends (an <see cref="OperationCanceledException"/> from the work cancels it).
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="work"/> is <see langword="null"/>.</exception>
    /// <exception cref="InvalidOperationException">
    /// The scheduler is closed: <see cref="DrainAsync"/> or <see cref="DisposeAsync"/> was called. An
    /// already-cancelled <paramref name="cancellationToken"/> is checked first and returns a cancelled task instead.
    /// </exception>
    public Task<T> RunAsync<T>(Func<CancellationToken, ValueTask<T>> work, int priority = 0, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(work);
        if (cancellationToken.IsCancellationRequested)
        {
            // Checked first, as ChannelWriter.WriteAsync and the other primitives do: a cancelled task, no side effects.
            return Task.FromCanceled<T>(cancellationToken);
        }

        ThrowIfClosed();

        var source = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        Submit(work, source, PriorityWorkOperations<T>.Instance, priority, cancellationToken);
        return source.Task;
    }

    /// <summary>Queues <paramref name="work"/> and returns a task that completes when it has run.</summary>
    /// <param name="work">The work; it receives a token that fires when <paramref name="cancellationToken"/> does or a drain is cut short.</param>
    /// <param name="priority">The priority: a lower number runs first; equal numbers run in submission order. The default is 0.</param>
    /// <param name="cancellationToken">Removes the item from the queue if it fires before the work starts; reaches the work after.</param>
    /// <returns>
    /// A task that ends as the work ends; cancelled, or faulted with <see cref="WorkRejectedException"/> or
    /// <see cref="RateLimitRejectedException"/>, as described for <see cref="RunAsync{T}"/>.
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="work"/> is <see langword="null"/>.</exception>
    /// <exception cref="InvalidOperationException">
    /// The scheduler is closed: <see cref="DrainAsync"/> or <see cref="DisposeAsync"/> was called. An
    /// already-cancelled <paramref name="cancellationToken"/> is checked first and returns a cancelled task instead.
    /// </exception>
    public Task RunAsync(Func<CancellationToken, ValueTask> work, int priority = 0, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(work);
        if (cancellationToken.IsCancellationRequested)
        {
            // Checked first, as ChannelWriter.WriteAsync and the other primitives do: a cancelled task, no side effects.
            return Task.FromCanceled(cancellationToken);
        }

        ThrowIfClosed();

        var source = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Submit(work, source, PriorityWorkVoidOperations.Instance, priority, cancellationToken);
        return source.Task;
    }

    /// <summary>
    /// Closes the scheduler at once (new work throws <see cref="InvalidOperationException"/>), then waits until every
    /// accepted item has finished: queued items still run, in priority order.
    /// </summary>
    /// <param name="cancellationToken">
    /// Cuts the drain short: queued items are dropped (their tasks cancelled, counted in
    /// <see cref="PrioritySchedulerStatistics.Dropped"/>), the token given to running work fires, and this method throws
    /// without waiting for work that ignores its token (<see cref="Completion"/> tells when that work ends).
    /// </param>
    /// <returns>A task that completes when every accepted item has finished.</returns>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> fired (or was already cancelled) before the drain finished.</exception>
    /// <remarks>Concurrent and repeated calls are allowed; each completes when the one drain has finished.</remarks>
    public Task DrainAsync(CancellationToken cancellationToken = default)
    {
        Close();
        if (_completion.Task.IsCompleted)
        {
            return Task.CompletedTask;
        }

        if (cancellationToken.IsCancellationRequested)
        {
            Abort(cancellationToken);
            return Task.FromCanceled(cancellationToken);
        }

        return WaitForDrainAsync(cancellationToken);
    }

    /// <summary>Drains the scheduler (see <see cref="DrainAsync"/>) with no deadline; never throws.</summary>
    /// <returns>A task that completes when every accepted item has finished.</returns>
    public ValueTask DisposeAsync() => new(DrainAsync(CancellationToken.None));

    /// <summary>Returns a snapshot of the scheduler's counters.</summary>
    /// <returns>The counters; see <see cref="PrioritySchedulerStatistics"/> for how they add up.</returns>
    public PrioritySchedulerStatistics GetStatistics() => new(
        accepted: Interlocked.Read(ref _accepted),
        handled: Interlocked.Read(ref _ends.Handled),
        failed: Interlocked.Read(ref _ends.Failed),
        canceled: Interlocked.Read(ref _canceled),
        evicted: Interlocked.Read(ref _evicted),
        dropped: Interlocked.Read(ref _dropped),
        rejected: Interlocked.Read(ref _rejected),
        queuedCount: QueuedCount,
        runningCount: RunningCount);

    private async Task WaitForDrainAsync(CancellationToken cancellationToken)
    {
        try
        {
            await _completion.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            Abort(cancellationToken);
            throw;
        }
    }

    private void ThrowIfClosed()
    {
        if (Volatile.Read(ref _closed))
        {
            Guard.ThrowClosed(Kind, _context.Name);
        }
    }

    private void Close()
    {
        int queued, running;
        lock (_lock)
        {
            if (_closed)
            {
                return;
            }

            _closed = true;
            queued = _queuedCount;
            running = _running;
        }

        PrioritySchedulerLog.Draining(_context.Logger, _context.Name, queued, running);
        if (running == 0)
        {
            // Nothing runs, so nothing is queued either (items queue only while every slot is busy).
            OnDrained();
        }
    }

    private void OnDrained()
    {
        PrioritySchedulerMetrics.Unregister(this);
        PrioritySchedulerLog.Drained(_context.Logger, _context.Name);
        _completion.TrySetResult();
    }

    /// <summary>
    /// The counters runners bump as items end, padded onto their own cache line so that those increments do not
    /// contend with the submitters' writes to the scheduler's other fields.
    /// </summary>
    [StructLayout(LayoutKind.Explicit, Size = 192)]
    private struct EndCounters
    {
        [FieldOffset(64)]
        public long Handled;

        [FieldOffset(72)]
        public long Failed;
    }
}
