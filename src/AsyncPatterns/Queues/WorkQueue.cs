using System.Diagnostics.CodeAnalysis;
using System.Threading.Channels;
using System.Threading.RateLimiting;
using Microsoft.Extensions.Logging;
using Polly;

namespace AsyncPatterns;

/// <summary>
/// A bounded queue with a fixed number of workers: producers wait while it is full (backpressure), workers run
/// the handler for each item, and every accepted item ends handled, failed or dropped, never lost.
/// </summary>
/// <typeparam name="T">The type of the work items.</typeparam>
/// <remarks>
/// <para>
/// Built on a bounded <see cref="Channel{T}"/>: <see cref="WorkQueueOptions{T}.Capacity"/> items wait at most, and
/// <see cref="WorkQueueOptions{T}.MaxConcurrency"/> workers, started by the constructor and owned by the queue,
/// take them in order. A handler that throws fails only its own item (counted, logged and passed to
/// <see cref="WorkQueueOptions{T}.OnError"/>); its worker goes on with the next one. Each item may first take a
/// permit from <see cref="WorkQueueOptions{T}.RateLimiter"/> and run inside
/// <see cref="WorkQueueOptions{T}.Pipeline"/>.
/// </para>
/// <para>
/// The token given to the handler is cancelled only when a drain is cut short (by the token passed to
/// <see cref="DrainAsync"/>, or by <see cref="WorkQueueOptions{T}.DrainTimeout"/> in <see cref="DisposeAsync"/>).
/// </para>
/// <para>
/// Accounting: once <see cref="Completion"/> has completed,
/// <c>Accepted == Handled + Failed + Dropped</c> (see <see cref="GetStatistics"/>). A handler that ends with an
/// exception because its drain was cut short counts as failed; an item that never reached the handler because its
/// drain was cut short counts as dropped and goes to <see cref="WorkQueueOptions{T}.OnDropped"/>.
/// </para>
/// <para>
/// Differences from the peers, on purpose (DESIGN.md: nothing is lost silently; a failing handler never stops its
/// worker): unlike an <c>ActionBlock</c>, a handler exception, including an <see cref="OperationCanceledException"/>
/// the handler throws on its own (which an <c>ActionBlock</c> silently ignores), fails only its item and never faults
/// <see cref="Completion"/>; <see cref="WorkQueueOptions{T}.Capacity"/> counts waiting items only (an
/// <c>ActionBlock</c>'s <c>BoundedCapacity</c> includes the items being processed); closed-queue refusals are
/// <see cref="InvalidOperationException"/> rather than a <see langword="false"/> from <c>SendAsync</c>; and
/// <see cref="Complete"/> may be called any number of times (<c>ChannelWriter.Complete</c> throws the second time).
/// </para>
/// <para>
/// Thread safety: every member is safe to call from any thread, concurrently. The hot path takes no lock of its
/// own and allocates nothing: an item costs one channel write and one channel read, and the workers count with
/// per-worker counters instead of interlocked operations.
/// </para>
/// </remarks>
[SuppressMessage("Naming", "CA1711:Identifiers should not have incorrect suffix", Justification = "WorkQueue is the contract name (DESIGN.md) and says what it is.")]
public sealed partial class WorkQueue<T> : IDrainable, IAsyncDisposable, IWorkQueueGaugeSource
{
    private const string Kind = "WorkQueue";
    private const string AbandonedReason = "the drain was cut short before it started";

    private readonly Func<T, CancellationToken, ValueTask> _handler;
    private readonly ChannelReader<T> _reader;
    private readonly ChannelWriter<T> _writer;
    private readonly PrimitiveContext _context;
    private readonly ILogger _logger;
    private readonly TimeProvider _timeProvider;
    private readonly RateLimiter? _rateLimiter;
    private readonly ResiliencePipeline? _pipeline;
    private readonly Action<T, Exception>? _onError;
    private readonly Action<T>? _onDropped;
    private readonly TimeSpan _drainTimeout;
    private readonly string _fullModeReason;

    // True when neither a rate limiter nor a pipeline is set: the worker then calls the handler inline.
    private readonly bool _plain;
    private readonly WorkQueueWorkerSlot[] _workers;
    private readonly CancellationTokenSource _abort = new();
    private readonly CancellationToken _handlerToken;
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Rare events only (drops, waits, drains): interlocked is fine here.
    private long _fullModeDropped;
    private long _abandonedDropped;
    private long _drainTaken;
    private long _enqueueWaits;
    private int _waitingProducers;

    // Workers still running plus drains still dropping abandoned items; Completion fires when it reaches 0.
    private int _participants;
    private int _closed;
    private int _finished;
    private volatile bool _abandoned;

    /// <summary>Creates the queue and starts its workers.</summary>
    /// <param name="handler">
    /// Handles one item. It receives a token that is cancelled only when a drain is cut short. It may complete
    /// synchronously (no allocation then) or asynchronously.
    /// </param>
    /// <param name="options">The settings; <see langword="null"/> means every default.</param>
    /// <exception cref="ArgumentNullException"><paramref name="handler"/> is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <see cref="WorkQueueOptions{T}.Capacity"/> or <see cref="WorkQueueOptions{T}.MaxConcurrency"/> is not greater
    /// than 0, <see cref="WorkQueueOptions{T}.FullMode"/> is not a defined <see cref="BoundedChannelFullMode"/>, or
    /// <see cref="WorkQueueOptions{T}.DrainTimeout"/> is negative and not <see cref="Timeout.InfiniteTimeSpan"/>.
    /// </exception>
    public WorkQueue(Func<T, CancellationToken, ValueTask> handler, WorkQueueOptions<T>? options = null)
    {
        ArgumentNullException.ThrowIfNull(handler);
        options ??= new WorkQueueOptions<T>();
        Guard.Positive(options.Capacity, nameof(options.Capacity));
        Guard.Positive(options.MaxConcurrency, nameof(options.MaxConcurrency));
        Guard.Defined(options.FullMode, nameof(options.FullMode));
        if (options.DrainTimeout < TimeSpan.Zero && options.DrainTimeout != Timeout.InfiniteTimeSpan)
        {
            Guard.ThrowOutOfRange(nameof(options.DrainTimeout), options.DrainTimeout, "TimeSpan.Zero or greater, or Timeout.InfiniteTimeSpan");
        }

        _handler = handler;
        _context = PrimitiveContext.Create(options, Kind, "AsyncPatterns.WorkQueue");
        _logger = _context.Logger;
        _timeProvider = _context.TimeProvider;
        _rateLimiter = options.RateLimiter;
        _pipeline = options.Pipeline;
        _onError = options.OnError;
        _onDropped = options.OnDropped;
        _drainTimeout = options.DrainTimeout;
        _fullModeReason = "full mode " + options.FullMode;
        _plain = _rateLimiter is null && _pipeline is null;
        _handlerToken = _abort.Token;

        var channel = Channel.CreateBounded<T>(
            new BoundedChannelOptions(options.Capacity)
            {
                FullMode = options.FullMode,
                SingleReader = false, // a drain that is cut short reads alongside the workers
                SingleWriter = false,
                AllowSynchronousContinuations = false, // never run a worker on a producer's stack
            },
            OnFullModeDropped);
        _reader = channel.Reader;
        _writer = channel.Writer;

        var workers = options.MaxConcurrency;
        _workers = new WorkQueueWorkerSlot[workers];
        _participants = workers;
        WorkQueueGaugeRegistry.Add(this);

        // The queue owns its workers: Completion tracks them, DrainAsync and DisposeAsync stop them. They do not
        // inherit the creator's ExecutionContext (its AsyncLocals, its Activity): a queue built inside one request
        // must not make that request the ambient parent of every item it ever handles.
        using (ExecutionContext.SuppressFlow())
        {
            for (var i = 0; i < workers; i++)
            {
                var index = i;
                _ = Task.Run(() => RunWorkerAsync(index));
            }
        }
    }

    /// <summary>Gets the number of items waiting for a worker (not yet handed to one).</summary>
    /// <remarks>Reads the channel's count under its lock; cheap, but not meant for a per-item hot path.</remarks>
    public int Count => _reader.Count;

    /// <summary>Gets the number of items inside the handler now.</summary>
    public int InFlight
    {
        get
        {
            var busy = 0;
            var workers = _workers;
            for (var i = 0; i < workers.Length; i++)
            {
                busy += Volatile.Read(ref workers[i].Busy);
            }

            return busy;
        }
    }

    /// <summary>
    /// Gets a task that completes once the queue is closed (<see cref="Complete"/>, <see cref="DrainAsync"/> or
    /// <see cref="DisposeAsync"/>) and every accepted item is handled, failed or dropped.
    /// </summary>
    /// <remarks>It never faults: failures are reported per item through <see cref="WorkQueueOptions{T}.OnError"/>.</remarks>
    public Task Completion => _completion.Task;

    /// <summary>Gets the name from the options (or <c>WorkQueue</c>), used in logs, metrics and errors.</summary>
    public string Name => _context.Name;

    KeyValuePair<string, object?> IWorkQueueGaugeSource.NameTag => _context.NameTag;

    private bool IsClosed => Volatile.Read(ref _closed) != 0;

    /// <summary>
    /// Adds an item, waiting while <see cref="WorkQueueOptions{T}.Capacity"/> items are waiting
    /// (with <see cref="BoundedChannelFullMode.Wait"/>); the other full modes never wait.
    /// </summary>
    /// <param name="item">The item.</param>
    /// <param name="cancellationToken">Abandons the wait for room; the item is then not accepted.</param>
    /// <returns>A task that completes when the item is accepted; synchronously when there is room.</returns>
    /// <exception cref="InvalidOperationException">The queue is closed (the message names it); also when it closes during the wait.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> fired before the item was accepted.</exception>
    /// <remarks>
    /// <para>
    /// Producers that wait for room are admitted first in first out, as a bounded channel serves its blocked writers
    /// (and an <c>ActionBlock</c> its postponed <c>SendAsync</c> calls): each freed slot goes to the producer that has
    /// waited longest, and while any producer waits a new one queues behind it. The token only ever abandons the
    /// wait: when this method throws <see cref="OperationCanceledException"/> (carrying
    /// <paramref name="cancellationToken"/>), the item was not accepted; a token that fires at the very moment the
    /// item is admitted may lose that race, and the call then completes normally with the item accepted.
    /// </para>
    /// <para>
    /// An already-cancelled token returns a cancelled task without adding the item, even on a closed queue (checked
    /// first, as <c>ChannelWriter.WriteAsync</c> does). With a drop mode, the item a full queue drops goes to
    /// <see cref="WorkQueueOptions{T}.OnDropped"/> (with <see cref="BoundedChannelFullMode.DropWrite"/> that is this
    /// item, and the call still completes).
    /// </para>
    /// </remarks>
    public ValueTask EnqueueAsync(T item, CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled(cancellationToken);
        }

        // Producers already waiting for room go first: while they do, a new one joins their line.
        if (!_lineActive && _writer.TryWrite(item))
        {
            RecordAccepted();
            return default;
        }

        return EnqueueSlowAsync(item, cancellationToken);
    }

    /// <summary>Adds an item if there is room, without waiting.</summary>
    /// <param name="item">The item.</param>
    /// <returns>
    /// <see langword="true"/> if the item was accepted; <see langword="false"/> if the queue is full (in
    /// <see cref="BoundedChannelFullMode.Wait"/> mode), producers are waiting for room in <see cref="EnqueueAsync"/>
    /// (they go first), or the queue is closed. In the drop modes a full queue still accepts it and drops an item
    /// (see <see cref="WorkQueueOptions{T}.FullMode"/>), as <c>ChannelWriter.TryWrite</c> does.
    /// </returns>
    public bool TryEnqueue(T item)
    {
        if (!_lineActive && _writer.TryWrite(item))
        {
            RecordAccepted();
            return true;
        }

        return false;
    }

    /// <summary>Stops accepting work; the workers finish the backlog and then <see cref="Completion"/> completes.</summary>
    /// <remarks>
    /// Idempotent. Producers waiting in <see cref="EnqueueAsync"/> get <see cref="InvalidOperationException"/> and their
    /// items are not accepted.
    /// </remarks>
    public void Complete()
    {
        var first = Interlocked.Exchange(ref _closed, 1) == 0;

        // Every caller completes the writer before it returns (idempotent), not only the first: a caller that lost the
        // race to another thread still inside Complete must not return while the channel accepts writes (TryEnqueue,
        // a waiting producer's admission, or a cut-short drain that empties the channel and then sees a write land).
        _writer.TryComplete();
        if (first)
        {
            WorkQueueLog.Closed(_logger, _context.Name, Count, InFlight);
        }
    }

    /// <summary>
    /// Closes the queue at once, then waits until every accepted item is handled, failed or dropped.
    /// </summary>
    /// <param name="cancellationToken">
    /// Cuts the drain short: the handlers' token is cancelled, items that never started are passed to
    /// <see cref="WorkQueueOptions{T}.OnDropped"/> and counted as dropped, and this method throws
    /// <see cref="OperationCanceledException"/> at once, without waiting for handlers that ignore cancellation
    /// (<see cref="Completion"/> still waits for them).
    /// </param>
    /// <returns>A task that completes when the queue has finished.</returns>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> fired (or was already cancelled) before the queue finished.</exception>
    /// <remarks>Safe to call repeatedly and concurrently; a queue that has already finished returns a completed task whatever the token.</remarks>
    public Task DrainAsync(CancellationToken cancellationToken = default)
    {
        Complete();
        var completion = _completion.Task;
        if (completion.IsCompleted)
        {
            return completion;
        }

        if (cancellationToken.IsCancellationRequested)
        {
            Abandon();
            return Task.FromCanceled(cancellationToken);
        }

        return cancellationToken.CanBeCanceled ? DrainUntilCancelledAsync(completion, cancellationToken) : completion;
    }

    /// <summary>
    /// Drains the queue (see <see cref="DrainAsync"/>), cut short after <see cref="WorkQueueOptions{T}.DrainTimeout"/>
    /// if one is set. Never throws.
    /// </summary>
    /// <returns>A task that completes when the drain has finished or been cut short.</returns>
    public async ValueTask DisposeAsync()
    {
        try
        {
            if (_drainTimeout == Timeout.InfiniteTimeSpan)
            {
                await DrainAsync().ConfigureAwait(false);
            }
            else if (_drainTimeout == TimeSpan.Zero)
            {
                await DrainAsync(new CancellationToken(canceled: true)).ConfigureAwait(false);
            }
            else
            {
                using var deadline = new CancellationTokenSource(_drainTimeout, _timeProvider);
                await DrainAsync(deadline.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
            // Cut short by DrainTimeout: the abandoned items went to OnDropped and the log says so.
        }

        WorkQueueGaugeRegistry.Remove(this);
    }

    /// <summary>Takes a snapshot of the queue's counters.</summary>
    /// <returns>The counters now; exact (<c>Accepted == Handled + Failed + Dropped</c>) once <see cref="Completion"/> has completed.</returns>
    public WorkQueueStatistics GetStatistics()
    {
        long taken = 0, handled = 0, failed = 0;
        var inFlight = 0;
        var workers = _workers;
        for (var i = 0; i < workers.Length; i++)
        {
            handled += Volatile.Read(ref workers[i].Handled);
            failed += Volatile.Read(ref workers[i].Failed);
            inFlight += Volatile.Read(ref workers[i].Busy);
            taken += Volatile.Read(ref workers[i].Taken);
        }

        var count = _reader.Count;
        var fullModeDropped = Interlocked.Read(ref _fullModeDropped);

        // Accepted is not counted on the producer side (that would cost an interlocked operation per item): every
        // accepted item is still in the channel, was taken by a worker or a cut-short drain, or was dropped by the
        // full mode without ever being taken.
        return new WorkQueueStatistics
        {
            Accepted = taken + Interlocked.Read(ref _drainTaken) + fullModeDropped + count,
            Handled = handled,
            Failed = failed,
            Dropped = fullModeDropped + Interlocked.Read(ref _abandonedDropped),
            Count = count,
            InFlight = inFlight,
            WaitingProducers = Volatile.Read(ref _waitingProducers),
            EnqueueWaits = Interlocked.Read(ref _enqueueWaits),
            IsClosed = IsClosed,
        };
    }

    private void RecordAccepted()
    {
        if (WorkQueueMetrics.Accepted.Enabled)
        {
            WorkQueueMetrics.Accepted.Add(1, _context.NameTag);
        }
    }

    private async Task DrainUntilCancelledAsync(Task completion, CancellationToken cancellationToken)
    {
        try
        {
            await completion.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested && !completion.IsCompleted)
        {
            Abandon();
            throw;
        }
    }

    /// <summary>Cuts the drain short: cancels the handlers' token and drops every item still waiting.</summary>
    private void Abandon()
    {
        // Hold Completion open until the items taken below are counted.
        Interlocked.Increment(ref _participants);
        try
        {
            var first = !_abandoned;
            _abandoned = true;
            if (!_abort.IsCancellationRequested)
            {
                // CancelAsync flags the token now but runs its callbacks (the handlers' continuations) on the thread
                // pool, so this drain returns promptly even if a handler resumes and runs long.
                ObserveCancellation(_abort.CancelAsync());
            }

            var dropped = 0;
            while (_reader.TryRead(out var item))
            {
                Interlocked.Increment(ref _drainTaken);
                DropAbandoned(item);
                dropped++;
            }

            if (first)
            {
                WorkQueueLog.DrainCutShort(_logger, _context.Name, InFlight, dropped);
            }
        }
        finally
        {
            LeaveParticipant();
        }
    }

    private void ObserveCancellation(Task cancellation)
    {
        if (cancellation.IsCompleted)
        {
            if (cancellation.Exception is { } error)
            {
                WorkQueueLog.CallbackFailed(_logger, _context.Name, "cancellation", error);
            }

            return;
        }

        _ = cancellation.ContinueWith(
            static (task, state) => WorkQueueLog.CallbackFailed(((WorkQueue<T>)state!)._logger, ((WorkQueue<T>)state!)._context.Name, "cancellation", task.Exception!),
            this,
            CancellationToken.None,
            TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);
    }

    private void LeaveParticipant()
    {
        if (Interlocked.Decrement(ref _participants) == 0 && Interlocked.Exchange(ref _finished, 1) == 0)
        {
            var stats = GetStatistics();
            WorkQueueLog.Completed(_logger, _context.Name, stats.Accepted, stats.Handled, stats.Failed, stats.Dropped);
            WorkQueueGaugeRegistry.Remove(this);
            _completion.TrySetResult();
        }
    }

    private void OnFullModeDropped(T item)
    {
        Interlocked.Increment(ref _fullModeDropped);
        RecordDropped(item, _fullModeReason);
    }

    private void DropAbandoned(T item)
    {
        Interlocked.Increment(ref _abandonedDropped);
        RecordDropped(item, AbandonedReason);
    }

    private void RecordDropped(T item, string reason)
    {
        if (WorkQueueMetrics.Dropped.Enabled)
        {
            WorkQueueMetrics.Dropped.Add(1, _context.NameTag);
        }

        WorkQueueLog.ItemDropped(_logger, _context.Name, reason);
        if (_onDropped is { } onDropped)
        {
            try
            {
                onDropped(item);
            }
            catch (Exception ex)
            {
                WorkQueueLog.CallbackFailed(_logger, _context.Name, nameof(WorkQueueOptions<T>.OnDropped), ex);
            }
        }
    }
}
