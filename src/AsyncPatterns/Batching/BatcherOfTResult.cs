namespace AsyncPatterns;

/// <summary>
/// Groups callers' items into batches, hands each batch to <c>processBatch</c> and gives every caller the result at
/// its own item's index (the DataLoader pattern): many single lookups or writes become one bulk call.
/// </summary>
/// <typeparam name="T">The type of the items.</typeparam>
/// <typeparam name="TResult">The type of each item's result.</typeparam>
/// <remarks>
/// <para>
/// Batching, triggers, capacity, ordering, draining and statistics behave exactly as in <see cref="Batcher{T}"/>.
/// <c>processBatch</c> must return one result per item, in the batch's order. If it throws, every caller of that batch
/// gets the exception (and <see cref="BatcherOptions{T}.OnError"/> gets the batch); if it returns the wrong number of
/// results, every caller of that batch gets an <see cref="InvalidOperationException"/> that gives the expected and
/// actual counts. Other batches are unaffected.
/// </para>
/// <para>Thread safety: every member is safe to call from any number of threads at once.</para>
/// </remarks>
public sealed class Batcher<T, TResult> : IDrainable, IAsyncDisposable
{
    private readonly Engine _engine;

    /// <summary>Creates a batcher that hands each batch to <paramref name="processBatch"/> and returns each item's result.</summary>
    /// <param name="processBatch">
    /// Processes one batch and returns one result per item, in order; the list is valid until the returned task completes.
    /// </param>
    /// <param name="options">The options; <see langword="null"/> means every default.</param>
    /// <exception cref="ArgumentNullException"><paramref name="processBatch"/> is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range; the message names it and says what is allowed.</exception>
    /// <exception cref="ArgumentException">Only one of <see cref="BatcherOptions{T}.MaxBatchWeight"/> and <see cref="BatcherOptions{T}.WeightSelector"/> is set.</exception>
    public Batcher(Func<IReadOnlyList<T>, CancellationToken, ValueTask<IReadOnlyList<TResult>>> processBatch, BatcherOptions<T>? options = null)
    {
        ArgumentNullException.ThrowIfNull(processBatch);
        _engine = new Engine(processBatch, options);
    }

    /// <inheritdoc cref="Batcher{T}.Completion"/>
    public Task Completion => _engine.Completion;

    /// <summary>
    /// Adds an item to the current batch and returns its own result once its batch is processed. While
    /// <see cref="BatcherOptions{T}.Capacity"/> items are pending, the item first waits for capacity.
    /// </summary>
    /// <param name="item">The item.</param>
    /// <param name="cancellationToken">
    /// Abandons the wait for capacity (the task is cancelled). Once the item is accepted the token has no effect: the
    /// item is part of a batch that other callers share.
    /// </param>
    /// <returns>A task with the result <c>processBatch</c> returned at this item's index.</returns>
    /// <exception cref="InvalidOperationException">
    /// The batcher is draining or disposed, or <c>processBatch</c> returned the wrong number of results (from the task).
    /// </exception>
    /// <exception cref="OperationCanceledException">
    /// The token fired before the item was accepted, or the item was dropped by a drain cut short (from the task).
    /// </exception>
    /// <exception cref="ArgumentOutOfRangeException">The <see cref="BatcherOptions{T}.WeightSelector"/> returned a negative weight.</exception>
    public Task<TResult> SubmitAsync(T item, CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return Task.FromCanceled<TResult>(cancellationToken);
        }

        // The caller's task is the item's completion: it carries the result, or the refusal while it waited.
        var result = new TaskCompletionSource<TResult>(TaskCreationOptions.RunContinuationsAsynchronously);
        return _engine.TryAdd(item, result, cancellationToken, out _) == BatchAddOutcome.Closed
            ? Task.FromException<TResult>(_engine.ClosedException())
            : result.Task;
    }

    /// <inheritdoc cref="Batcher{T}.FlushAsync"/>
    public Task FlushAsync(CancellationToken cancellationToken = default) => _engine.FlushAsync(cancellationToken);

    /// <inheritdoc cref="Batcher{T}.DrainAsync"/>
    public Task DrainAsync(CancellationToken cancellationToken = default) => _engine.DrainAsync(cancellationToken);

    /// <inheritdoc cref="Batcher{T}.GetStatistics"/>
    public BatcherStatistics GetStatistics() => _engine.GetStatistics();

    /// <inheritdoc cref="Batcher{T}.DisposeAsync"/>
    public ValueTask DisposeAsync() => _engine.DisposeAsync();

    private sealed class Engine(Func<IReadOnlyList<T>, CancellationToken, ValueTask<IReadOnlyList<TResult>>> processBatch, BatcherOptions<T>? options)
        : BatchEngine<T>(options, typeof(Batcher<T, TResult>).FullName!, withCompletions: true)
    {
        protected override async ValueTask ProcessAsync(BatchBuffer<T> batch, CancellationToken cancellationToken)
        {
            var results = Pipeline is null
                ? await processBatch(batch, cancellationToken).ConfigureAwait(false)
                : await Pipeline.ExecuteAsync(static (state, token) => state.ProcessBatch(state.Batch, token), (ProcessBatch: processBatch, Batch: (IReadOnlyList<T>)batch), cancellationToken).ConfigureAwait(false);

            // Checked outside the pipeline: a wrong count is a bug in processBatch, retrying it would not help.
            var actual = results?.Count ?? 0;
            if (results is null || actual != batch.Count)
            {
                throw new InvalidOperationException(
                    $"processBatch must return exactly one result per item, in order: the batch had {batch.Count} items (expected {batch.Count} results) but it returned {(results is null ? "null" : actual.ToString(System.Globalization.CultureInfo.InvariantCulture) + " results")}.");
            }

            batch.Results = results;
        }

        protected override void CompleteSucceeded(BatchBuffer<T> batch)
        {
            var results = (IReadOnlyList<TResult>)batch.Results!;
            for (var i = 0; i < batch.Count; i++)
            {
                Result(batch, i).TrySetResult(results[i]);
            }
        }

        protected override void CompleteFailed(BatchBuffer<T> batch, Exception error)
        {
            for (var i = 0; i < batch.Count; i++)
            {
                Result(batch, i).TrySetException(error);
            }
        }

        protected override void CompleteDropped(BatchBuffer<T> batch)
        {
            for (var i = 0; i < batch.Count; i++)
            {
                Result(batch, i).TrySetCanceled();
            }
        }

        protected override void CompleteRefused(object completion, Exception error)
        {
            var result = (TaskCompletionSource<TResult>)completion;
            if (error is OperationCanceledException canceled)
            {
                result.TrySetCanceled(canceled.CancellationToken);
            }
            else
            {
                result.TrySetException(error);
            }
        }

        private static TaskCompletionSource<TResult> Result(BatchBuffer<T> batch, int index) =>
            (TaskCompletionSource<TResult>)batch.CompletionAt(index)!;
    }
}
