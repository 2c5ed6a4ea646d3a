namespace AsyncPatterns;

/// <summary>
/// Groups items into batches and hands each batch to <c>processBatch</c>: a batch goes when it holds
/// <see cref="BatcherOptions{T}.MaxBatchSize"/> items, when its first item is <see cref="BatcherOptions{T}.MaxDelay"/>
/// old, when it reaches <see cref="BatcherOptions{T}.MaxBatchWeight"/>, or on <see cref="FlushAsync"/> and
/// <see cref="DrainAsync"/>. For writes that are cheaper in bulk: database inserts, message-broker produces, bulk HTTP calls.
/// </summary>
/// <typeparam name="T">The type of the items.</typeparam>
/// <remarks>
/// <para>
/// <see cref="AddAsync"/> completes synchronously, without allocating, while fewer than
/// <see cref="BatcherOptions{T}.Capacity"/> accepted items are pending; at capacity it waits (backpressure) until a
/// batch finishes. A batch is never empty. With <see cref="BatcherOptions{T}.MaxConcurrentBatches"/> 1 (the default)
/// batches run one at a time, so items keep their order within and across batches.
/// </para>
/// <para>
/// The list given to <c>processBatch</c> is the batcher's pooled buffer: it is valid until the returned task
/// completes. Copy it (for example with <c>ToArray()</c>) to keep items longer. A batch whose
/// <c>processBatch</c> throws (after <see cref="BatcherOptions{T}.Pipeline"/> gave up) is passed to
/// <see cref="BatcherOptions{T}.OnError"/> and counted as failed items; later batches are unaffected.
/// </para>
/// <para>
/// <c>processBatch</c> runs on the thread pool, never on the thread that called <see cref="AddAsync"/>. Its
/// <see cref="CancellationToken"/> fires only when a drain is cut short. The execution context of the adding
/// callers does not flow to it (batches mix items of many callers).
/// </para>
/// <para>Thread safety: every member is safe to call from any number of threads at once.</para>
/// </remarks>
public sealed class Batcher<T> : IDrainable, IAsyncDisposable
{
    private readonly Engine _engine;

    /// <summary>Creates a batcher that hands each batch to <paramref name="processBatch"/>.</summary>
    /// <param name="processBatch">Processes one batch; the list is valid until the returned task completes.</param>
    /// <param name="options">The options; <see langword="null"/> means every default.</param>
    /// <exception cref="ArgumentNullException"><paramref name="processBatch"/> is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range; the message names it and says what is allowed.</exception>
    /// <exception cref="ArgumentException">Only one of <see cref="BatcherOptions{T}.MaxBatchWeight"/> and <see cref="BatcherOptions{T}.WeightSelector"/> is set.</exception>
    public Batcher(Func<IReadOnlyList<T>, CancellationToken, ValueTask> processBatch, BatcherOptions<T>? options = null)
    {
        ArgumentNullException.ThrowIfNull(processBatch);
        _engine = new Engine(processBatch, options);
    }

    /// <summary>Gets a task that completes once the batcher is closed and every accepted item is processed, failed or dropped.</summary>
    public Task Completion => _engine.Completion;

    /// <summary>Adds an item to the current batch; waits while <see cref="BatcherOptions{T}.Capacity"/> items are pending.</summary>
    /// <param name="item">The item.</param>
    /// <param name="cancellationToken">Abandons the wait for capacity; an item already accepted stays accepted.</param>
    /// <returns>A task that completes when the item is accepted (not when it is processed).</returns>
    /// <exception cref="InvalidOperationException">The batcher is draining or disposed (from the returned task).</exception>
    /// <exception cref="OperationCanceledException">The token fired before the item was accepted (from the returned task).</exception>
    /// <exception cref="ArgumentOutOfRangeException">The <see cref="BatcherOptions{T}.WeightSelector"/> returned a negative weight.</exception>
    public ValueTask AddAsync(T item, CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled(cancellationToken);
        }

        return _engine.TryAdd(item, completion: null, cancellationToken, out var waiter) switch
        {
            BatchAddOutcome.Accepted => default,
            BatchAddOutcome.Waiting => new ValueTask(waiter!.Task),
            _ => ValueTask.FromException(_engine.ClosedException()),
        };
    }

    /// <summary>
    /// Emits the current batch now, whatever its size and age, and waits until every item added before this call
    /// has been processed (or has failed or been dropped).
    /// </summary>
    /// <param name="cancellationToken">Abandons the wait; the batch is emitted regardless.</param>
    /// <returns>A task that completes when every earlier item has reached its end.</returns>
    /// <exception cref="OperationCanceledException">The token fired before the earlier items finished (from the returned task).</exception>
    public Task FlushAsync(CancellationToken cancellationToken = default) => _engine.FlushAsync(cancellationToken);

    /// <inheritdoc cref="IDrainable.DrainAsync"/>
    /// <remarks>
    /// Closes the batcher at once (adds that were waiting for capacity fail with <see cref="InvalidOperationException"/>),
    /// emits the current batch and waits for every accepted item. If <paramref name="cancellationToken"/> fires first,
    /// the token passed to running batches is cancelled, batches not started go to <see cref="BatcherOptions{T}.OnDropped"/>,
    /// and the call throws <see cref="OperationCanceledException"/> without waiting for batches that ignore cancellation.
    /// </remarks>
    /// <exception cref="OperationCanceledException">The token fired before every accepted item finished.</exception>
    public Task DrainAsync(CancellationToken cancellationToken = default) => _engine.DrainAsync(cancellationToken);

    /// <summary>Returns a consistent snapshot of the batcher's counters.</summary>
    /// <returns>The counters at the time of the call.</returns>
    public BatcherStatistics GetStatistics() => _engine.GetStatistics();

    /// <summary>Drains the batcher (bounded by <see cref="BatcherOptions{T}.DrainTimeout"/>); never throws.</summary>
    /// <returns>A task that completes when the drain has finished or its bound has passed.</returns>
    public ValueTask DisposeAsync() => _engine.DisposeAsync();

    private sealed class Engine(Func<IReadOnlyList<T>, CancellationToken, ValueTask> processBatch, BatcherOptions<T>? options)
        : BatchEngine<T>(options, typeof(Batcher<T>).FullName!, withCompletions: false)
    {
        protected override ValueTask ProcessAsync(BatchBuffer<T> batch, CancellationToken cancellationToken) =>
            Pipeline is null
                ? processBatch(batch, cancellationToken)
                : Pipeline.ExecuteAsync(static (state, token) => state.ProcessBatch(state.Batch, token), (ProcessBatch: processBatch, Batch: (IReadOnlyList<T>)batch), cancellationToken);
    }
}
