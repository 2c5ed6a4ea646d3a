using System.Diagnostics;
using Polly;

namespace AsyncPatterns;

/// <summary>What happened to an item offered to <see cref="BatchEngine{T}.TryAdd"/>.</summary>
internal enum BatchAddOutcome
{
    /// <summary>The item is in the current batch.</summary>
    Accepted,

    /// <summary>The batcher was full: the item waits for capacity in the returned waiter.</summary>
    Waiting,

    /// <summary>The batcher is closed; nothing happened.</summary>
    Closed,
}

/// <summary>
/// The engine both batchers share: the current batch, the size/age/weight/flush/drain triggers, capacity (backpressure),
/// the bounded set of workers that run batches, flush and drain bookkeeping, statistics, metrics and logs.
/// </summary>
/// <remarks>
/// <para>
/// Design, chosen by measurement against <c>BatchBlock</c>→<c>ActionBlock</c>: an accepted item is appended to a
/// pooled buffer under one short lock; no channel, no per-item signal, no per-item allocation. A batch is sealed
/// when a trigger fires, queued, and run by at most <c>MaxConcurrentBatches</c> thread-pool workers; a worker keeps
/// taking sealed batches until none is left, so a busy batcher pays one thread-pool dispatch per burst, not per batch.
/// </para>
/// <para>
/// One <see cref="ITimer"/> per engine enforces <c>MaxDelay</c>. When a batch gets its first item and the timer is
/// not armed, it is armed for that batch's deadline (the first item's timestamp plus <c>MaxDelay</c>, never restarted
/// by later items). Deadlines only move later, so a timer armed for a batch that has gone since fires early; the
/// callback then re-arms it for what is left of the current batch. One arming is outstanding at a time (decided
/// under the lock), so the timer costs nothing per item and usually nothing per batch.
/// </para>
/// <para>
/// Subclasses supply how a batch is processed and how per-item completions (callers' result tasks) are finished.
/// No user code, task completion or timer call runs under the lock.
/// </para>
/// </remarks>
internal abstract partial class BatchEngine<T> : IThreadPoolWorkItem, IBatcherGaugeSource, IAsyncDisposable
{
    /// <summary>The longest due time a timer accepts (about 49.7 days).</summary>
    private static readonly TimeSpan MaxTimerDueTime = TimeSpan.FromMilliseconds(uint.MaxValue - 1);

    private readonly Lock _lock = new();
    private readonly int _maxBatchSize;
    private readonly int _capacity;
    private readonly int _maxConcurrentBatches;
    private readonly TimeSpan _maxDelay;
    private readonly long _maxBatchWeight;
    private readonly Func<T, long>? _weightSelector;
    private readonly Action<IReadOnlyList<T>, Exception>? _onError;
    private readonly Action<IReadOnlyList<T>>? _onDropped;
    private readonly TimeSpan _drainTimeout;
    private readonly bool _withCompletions;
    private readonly ITimer _timer;
    private readonly CancellationTokenSource _abort = new();
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Queue<BatchBuffer<T>> _ready = new();
    private readonly List<BatchBuffer<T>> _inFlight;
    private readonly Stack<BatchBuffer<T>> _pool = new();
    private readonly int _poolLimit;
    private readonly Queue<CapacityWaiter> _waiters = new();
    private readonly Queue<FlushWaiter> _flushWaiters = new();
    private readonly long[] _batchesByTrigger = new long[5];

    private BatchBuffer<T>? _current;
    private long _lastSequence;
    private int _runningWorkers;
    private bool _closed;
    private bool _aborted;
    private bool _finished;
    private bool _timerArmed;
    private long _pending;
    private long _processed;
    private long _failed;
    private long _dropped;
    private long _batchesProcessed;
    private long _batchesFailed;
    private long _batchesDropped;

    /// <summary>Validates and copies the options; <paramref name="withCompletions"/> keeps a completion per item.</summary>
    protected BatchEngine(BatcherOptions<T>? options, string category, bool withCompletions)
    {
        options ??= new BatcherOptions<T>();
        Guard.Positive(options.MaxBatchSize, nameof(options.MaxBatchSize));
        Guard.Positive(options.MaxDelay, nameof(options.MaxDelay));
        Guard.Positive(options.MaxConcurrentBatches, nameof(options.MaxConcurrentBatches));
        Guard.PositiveOrInfinite(options.DrainTimeout, nameof(options.DrainTimeout));
        var capacity = options.Capacity; // 10 × MaxBatchSize unless set
        if (capacity < options.MaxBatchSize)
        {
            Guard.ThrowOutOfRange(
                nameof(options.Capacity), options.Capacity, $"at least MaxBatchSize ({options.MaxBatchSize})");
        }

        if (options.MaxBatchWeight.HasValue != (options.WeightSelector is not null))
        {
            // ParamName is the option that is missing, as every other options check names its option.
            var missing = options.MaxBatchWeight.HasValue ? nameof(options.WeightSelector) : nameof(options.MaxBatchWeight);
            throw new ArgumentException(
                $"{nameof(options.MaxBatchWeight)} and {nameof(options.WeightSelector)} must be set together or not at all; {missing} is missing.",
                missing);
        }

        if (options.MaxBatchWeight is { } maxWeight && maxWeight <= 0)
        {
            Guard.ThrowOutOfRange(nameof(options.MaxBatchWeight), maxWeight, "greater than 0, or null");
        }

        Context = PrimitiveContext.Create(options, "Batcher", category);
        _maxBatchSize = options.MaxBatchSize;
        _capacity = capacity;
        _maxConcurrentBatches = options.MaxConcurrentBatches;
        _maxDelay = options.MaxDelay < MaxTimerDueTime ? options.MaxDelay : MaxTimerDueTime;
        _maxBatchWeight = options.MaxBatchWeight ?? long.MaxValue;
        _weightSelector = options.WeightSelector;
        _onError = options.OnError;
        _onDropped = options.OnDropped;
        _drainTimeout = options.DrainTimeout;
        Pipeline = options.Pipeline;
        _withCompletions = withCompletions;
        _inFlight = new List<BatchBuffer<T>>(Math.Min(_maxConcurrentBatches, 64));
        // Enough buffers for every batch that can exist at once (capacity's worth plus the open one), within reason.
        _poolLimit = (int)Math.Min(((long)capacity / _maxBatchSize) + Math.Min(_maxConcurrentBatches, 16) + 1, 64);

        // Created unarmed: nothing runs until a batch gets its first item.
        _timer = Context.TimeProvider.CreateTimer(static state => ((BatchEngine<T>)state!).OnTimer(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        BatcherMetrics.Track(this);
    }

    public PrimitiveContext Context { get; }

    public KeyValuePair<string, object?> NameTag => Context.NameTag;

    public long PendingItems => Volatile.Read(ref _pending);

    /// <summary>Completes once the engine is closed and every accepted item is processed, failed or dropped.</summary>
    public Task Completion => _completion.Task;

    protected ResiliencePipeline? Pipeline { get; }

    /// <summary>
    /// Accepts <paramref name="item"/> into the current batch, or parks it in a <see cref="CapacityWaiter"/> while
    /// the batcher is full. <paramref name="completion"/> is the caller's result source (batchers with results).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The weight selector returned a negative weight.</exception>
    public BatchAddOutcome TryAdd(T item, object? completion, CancellationToken cancellationToken, out CapacityWaiter? waiter)
    {
        var weight = _weightSelector is null ? 0 : WeightOf(item);
        waiter = null;
        lock (_lock)
        {
            // The hot path: room in the batcher and in an open batch that this item neither fills nor tips over
            // its weight limit. Nothing to signal afterwards, so nothing else to pay for. An open batch implies an
            // open batcher: closing seals the current batch and no batch is opened afterwards.
            if (_current is { } open && _pending < _capacity && _waiters.Count == 0 &&
                open.Count < _maxBatchSize - 1 && weight < _maxBatchWeight - open.Weight)
            {
                Debug.Assert(!_closed, "A closed batcher has no open batch.");
                open.Add(item, completion, weight);
                _pending++;
                return BatchAddOutcome.Accepted;
            }
        }

        return TryAddSlow(item, completion, weight, cancellationToken, out waiter);
    }

    /// <summary>The exception new work gets once the engine is closed.</summary>
    public InvalidOperationException ClosedException() => Guard.ClosedException("Batcher", Context.Name);

    /// <summary>Everything but the hot path: closed, full, or an item that opens, fills or overweighs a batch.</summary>
    private BatchAddOutcome TryAddSlow(T item, object? completion, long weight, CancellationToken cancellationToken, out CapacityWaiter? waiter)
    {
        var signals = default(Signals);
        waiter = null;
        lock (_lock)
        {
            if (_closed)
            {
                return BatchAddOutcome.Closed;
            }

            if (_pending < _capacity && (_waiters.Count == 0 || !HasLiveWaiterLocked()))
            {
                AppendLocked(item, completion, weight, ref signals);
            }
            else
            {
                waiter = new CapacityWaiter(this, item, completion, weight);
                _waiters.Enqueue(waiter);
            }
        }

        if (waiter is not null)
        {
            waiter.RegisterCancellation(cancellationToken);
            return BatchAddOutcome.Waiting;
        }

        Apply(ref signals);
        return BatchAddOutcome.Accepted;
    }

    /// <summary>Seals the current batch and returns a task that completes when every batch sealed so far is finished.</summary>
    public Task FlushAsync(CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return Task.FromCanceled(cancellationToken);
        }

        var signals = default(Signals);
        FlushWaiter? waiter = null;
        lock (_lock)
        {
            if (_current is not null)
            {
                SealLocked(BatchTrigger.Flush, ref signals);
            }

            if (MinOutstandingSequenceLocked() <= _lastSequence)
            {
                waiter = new FlushWaiter(_lastSequence);
                _flushWaiters.Enqueue(waiter);
            }
        }

        Apply(ref signals);
        if (waiter is null)
        {
            return Task.CompletedTask;
        }

        return cancellationToken.CanBeCanceled ? waiter.Task.WaitAsync(cancellationToken) : waiter.Task;
    }

    /// <summary>Snapshots the counters under the lock, so the numbers agree with each other.</summary>
    public BatcherStatistics GetStatistics()
    {
        lock (_lock)
        {
            return new BatcherStatistics
            {
                ItemsAccepted = _processed + _failed + _dropped + _pending,
                ItemsProcessed = _processed,
                ItemsFailed = _failed,
                ItemsDropped = _dropped,
                ItemsPending = _pending,
                ItemsBuffered = _current?.Count ?? 0,
                WaitingAdds = CountWaitingLocked(),
                BatchesEmitted = _lastSequence,
                BatchesProcessed = _batchesProcessed,
                BatchesFailed = _batchesFailed,
                BatchesDropped = _batchesDropped,
                BatchesInFlight = _inFlight.Count,
                BatchesBySize = _batchesByTrigger[(int)BatchTrigger.Size],
                BatchesByAge = _batchesByTrigger[(int)BatchTrigger.Age],
                BatchesByWeight = _batchesByTrigger[(int)BatchTrigger.Weight],
                BatchesByFlush = _batchesByTrigger[(int)BatchTrigger.Flush],
                BatchesByDrain = _batchesByTrigger[(int)BatchTrigger.Drain],
            };
        }
    }

    /// <summary>Runs a sealed batch: calls <c>processBatch</c> (through the pipeline) and throws if it failed.</summary>
    protected abstract ValueTask ProcessAsync(BatchBuffer<T> batch, CancellationToken cancellationToken);

    /// <summary>Finishes the callers' completions of a batch that succeeded (batchers with results).</summary>
    protected virtual void CompleteSucceeded(BatchBuffer<T> batch)
    {
    }

    /// <summary>Finishes the callers' completions of a batch that failed (batchers with results).</summary>
    protected virtual void CompleteFailed(BatchBuffer<T> batch, Exception error)
    {
    }

    /// <summary>Finishes the callers' completions of a batch that was dropped (batchers with results).</summary>
    protected virtual void CompleteDropped(BatchBuffer<T> batch)
    {
    }

    /// <summary>Finishes the completion of an item that was refused while it waited for capacity.</summary>
    protected virtual void CompleteRefused(object completion, Exception error)
    {
    }

    private long WeightOf(T item)
    {
        var weight = _weightSelector!(item);
        if (weight < 0)
        {
            Guard.ThrowOutOfRange(nameof(BatcherOptions<T>.WeightSelector), weight, "a weight of 0 or more");
        }

        return weight;
    }

    /// <summary>Appends an accepted item to the current batch, sealing batches as the size and weight limits say.</summary>
    private void AppendLocked(T item, object? completion, long weight, ref Signals signals)
    {
        _lock.AssertHeld();
        var batch = _current;
        if (batch is not null && weight > _maxBatchWeight - batch.Weight)
        {
            SealLocked(BatchTrigger.Weight, ref signals);
            batch = null;
        }

        if (batch is null)
        {
            batch = _pool.Count > 0 ? _pool.Pop() : new BatchBuffer<T>(_maxBatchSize, _withCompletions);
            batch.FirstItemTimestamp = Context.TimeProvider.GetTimestamp();
            _current = batch;
        }

        batch.Add(item, completion, weight);
        _pending++;
        if (batch.Count >= _maxBatchSize)
        {
            SealLocked(BatchTrigger.Size, ref signals);
        }
        else if (batch.Weight >= _maxBatchWeight)
        {
            SealLocked(BatchTrigger.Weight, ref signals);
        }
        else if (!_timerArmed)
        {
            // The batch stays open: its age now counts (a batch sealed at once never needs the timer).
            _timerArmed = true;
            signals.ArmTimerFrom = batch.FirstItemTimestamp;
        }
    }

    /// <summary>Closes the current (non-empty) batch and queues it; books a worker if a slot is free.</summary>
    private void SealLocked(BatchTrigger trigger, ref Signals signals)
    {
        _lock.AssertHeld();
        var batch = _current!;
        Debug.Assert(batch.Count > 0, "A batch is never empty.");
        _current = null;
        batch.Sequence = ++_lastSequence;
        batch.Trigger = trigger;
        _batchesByTrigger[(int)trigger]++;
        _ready.Enqueue(batch);
        if (_runningWorkers < _maxConcurrentBatches)
        {
            _runningWorkers++;
            signals.WorkersToStart++;
        }
    }

    private void OnTimer()
    {
        var signals = default(Signals);
        lock (_lock)
        {
            _timerArmed = false;
            if (_current is { } batch)
            {
                if (Context.TimeProvider.GetElapsedTime(batch.FirstItemTimestamp) >= _maxDelay)
                {
                    SealLocked(BatchTrigger.Age, ref signals);
                }
                else
                {
                    // The timer was armed for an earlier batch that has gone since: wait for what is left of this one.
                    _timerArmed = true;
                    signals.ArmTimerFrom = batch.FirstItemTimestamp;
                }
            }
        }

        Apply(ref signals);
    }

    /// <summary>The lowest sequence of a sealed batch not yet finished, or <see cref="long.MaxValue"/> when none is.</summary>
    private long MinOutstandingSequenceLocked()
    {
        _lock.AssertHeld();
        var min = _ready.TryPeek(out var next) ? next.Sequence : long.MaxValue;
        foreach (var batch in _inFlight)
        {
            min = Math.Min(min, batch.Sequence);
        }

        return min;
    }

    /// <summary>Drops cancelled waiters from the head of the queue; true if a live one remains (it goes first).</summary>
    private bool HasLiveWaiterLocked()
    {
        _lock.AssertHeld();
        while (_waiters.TryPeek(out var head) && head.IsCompleted)
        {
            _waiters.Dequeue();
        }

        return _waiters.Count != 0;
    }

    private int CountWaitingLocked()
    {
        _lock.AssertHeld();
        var count = 0;
        foreach (var waiter in _waiters)
        {
            count += waiter.IsCompleted ? 0 : 1;
        }

        return count;
    }

    /// <summary>Acts, outside the lock, on what a locked section decided.</summary>
    private void Apply(ref Signals signals)
    {
        if (signals.ArmTimerFrom is { } first)
        {
            var due = _maxDelay - Context.TimeProvider.GetElapsedTime(first);
            try
            {
                _timer.Change(due > TimeSpan.Zero ? due : TimeSpan.Zero, Timeout.InfiniteTimeSpan);
            }
            catch (ObjectDisposedException)
            {
                // A late arming raced with the drain finishing: there is no batch left to time.
            }
        }

        for (var i = 0; i < signals.WorkersToStart; i++)
        {
            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
        }

        for (var waiter = signals.Admitted; waiter is not null; waiter = waiter.Next)
        {
            waiter.SetAccepted();
        }

        for (var waiter = signals.Refused; waiter is not null; waiter = waiter.Next)
        {
            waiter.SetRefused(ClosedException());
        }

        for (var flush = signals.Flushed; flush is not null; flush = flush.Next)
        {
            flush.SetResult();
        }

        if (signals.Finished)
        {
            Finish();
        }
    }

    /// <summary>What a locked section leaves to do once the lock is released. Chains (newest first; the order of signals does not matter) avoid allocations.</summary>
    private struct Signals
    {
        public long? ArmTimerFrom;
        public int WorkersToStart;
        public CapacityWaiter? Admitted;
        public CapacityWaiter? Refused;
        public FlushWaiter? Flushed;
        public bool Finished;
    }

    /// <summary>A <c>FlushAsync</c> call waiting for every batch up to <see cref="Sequence"/> to finish.</summary>
    private sealed class FlushWaiter(long sequence) : TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        public long Sequence { get; } = sequence;

        public FlushWaiter? Next { get; set; }
    }
}
