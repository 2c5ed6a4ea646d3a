using Polly;

namespace AsyncPatterns;

/// <summary>
/// Options for <see cref="Batcher{T}"/> and <see cref="Batcher{T, TResult}"/>: when a batch goes, how many items may
/// wait, how many batches run at once, and what happens to batches that fail or are dropped.
/// </summary>
/// <typeparam name="T">The type of the items that are batched.</typeparam>
/// <remarks>
/// A batch goes when the first of its triggers fires: it holds <see cref="MaxBatchSize"/> items, its first item is
/// <see cref="MaxDelay"/> old, its weight reaches <see cref="MaxBatchWeight"/>, or <c>FlushAsync</c>/<c>DrainAsync</c>
/// is called. The options are validated and copied by the batcher's constructor; later changes have no effect.
/// </remarks>
public sealed class BatcherOptions<T> : AsyncPatternsOptions
{
    /// <summary>Gets or sets the largest number of items in one batch.</summary>
    /// <value>The default is 100. Must be greater than 0.</value>
    public int MaxBatchSize { get; set; } = 100;

    /// <summary>
    /// Gets or sets the maximum age of a batch: the time from its first item to its emission.
    /// </summary>
    /// <value>The default is 1 second. Must be greater than <see cref="TimeSpan.Zero"/>.</value>
    /// <remarks>
    /// The delay is counted from the batch's first item and is not restarted by later items, so no item waits longer
    /// than this for its batch to go (plus the time the batch waits for a free <see cref="MaxConcurrentBatches"/> slot).
    /// One timer per batcher is armed per batch, never per item.
    /// </remarks>
    public TimeSpan MaxDelay { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Gets or sets how many accepted items may be pending (buffered, waiting in a sealed batch or being processed)
    /// before <c>AddAsync</c>/<c>SubmitAsync</c> waits for a batch to finish.
    /// </summary>
    /// <value>
    /// The default is 10 × <see cref="MaxBatchSize"/> (it follows <see cref="MaxBatchSize"/> until set; setting 0
    /// restores that default). Must be at least <see cref="MaxBatchSize"/>, so that a full batch always fits.
    /// </value>
    public int Capacity
    {
        get => _capacity == 0 ? (int)Math.Min(10L * MaxBatchSize, int.MaxValue) : _capacity;
        set => _capacity = value;
    }

    private int _capacity;

    /// <summary>Gets or sets how many batches may be processed at the same time.</summary>
    /// <value>The default is 1, which also keeps items in order within and across batches. Must be greater than 0.</value>
    public int MaxConcurrentBatches { get; set; } = 1;

    /// <summary>
    /// Gets or sets an optional Polly pipeline (retry, timeout, circuit breaker...) that wraps each call of
    /// <c>processBatch</c>.
    /// </summary>
    /// <value>The default is <see langword="null"/>: <c>processBatch</c> is called directly.</value>
    /// <remarks>A retried batch is the same list, with the same items in the same order.</remarks>
    public ResiliencePipeline? Pipeline { get; set; }

    /// <summary>
    /// Gets or sets the callback that receives a batch whose processing failed, with the exception
    /// (after <see cref="Pipeline"/> gave up).
    /// </summary>
    /// <value>The default is <see langword="null"/>: failures are only logged and counted.</value>
    /// <remarks>
    /// Called once per failed batch, after the batch's items are counted as failed; with
    /// <see cref="Batcher{T, TResult}"/> each caller's task is faulted with the same exception too. An exception thrown
    /// by the callback is logged and otherwise ignored. The list is valid only during the call.
    /// </remarks>
    public Action<IReadOnlyList<T>, Exception>? OnError { get; set; }

    /// <summary>
    /// Gets or sets the callback that receives a batch that was never processed because a drain was cut short.
    /// </summary>
    /// <value>The default is <see langword="null"/>: dropped items are only logged and counted.</value>
    /// <remarks>
    /// With <see cref="Batcher{T, TResult}"/> each dropped caller's task is cancelled too. An exception thrown by the
    /// callback is logged and otherwise ignored. The list is valid only during the call.
    /// </remarks>
    public Action<IReadOnlyList<T>>? OnDropped { get; set; }

    /// <summary>
    /// Gets or sets the largest total weight of one batch, for sinks limited in bytes (Kafka, Kinesis, HTTP bodies).
    /// Set together with <see cref="WeightSelector"/>.
    /// </summary>
    /// <value>The default is <see langword="null"/>: batches are limited by count and age only. Must be greater than 0.</value>
    /// <remarks>
    /// An item that would push the current batch over the limit closes that batch (trigger <c>weight</c>) and starts
    /// the next one. A batch whose weight reaches the limit goes at once. An item heavier than the limit on its own
    /// goes alone, in a batch of one: it is never refused and never split.
    /// </remarks>
    public long? MaxBatchWeight { get; set; }

    /// <summary>
    /// Gets or sets the function that gives an item's weight (for example its size in bytes). Set together with
    /// <see cref="MaxBatchWeight"/>.
    /// </summary>
    /// <value>The default is <see langword="null"/>.</value>
    /// <remarks>
    /// Called once per item, on the adding thread, outside the batcher's lock. It must return 0 or more; a negative
    /// weight makes <c>AddAsync</c>/<c>SubmitAsync</c> throw <see cref="ArgumentOutOfRangeException"/>.
    /// </remarks>
    public Func<T, long>? WeightSelector { get; set; }

    /// <summary>Gets or sets the bound <c>DisposeAsync</c> puts on its drain.</summary>
    /// <value>
    /// The default is <see cref="Timeout.InfiniteTimeSpan"/>: dispose waits for every accepted item. Otherwise it must
    /// be greater than <see cref="TimeSpan.Zero"/>; when it passes, in-flight batches are cancelled and batches that
    /// never started are dropped.
    /// </value>
    public TimeSpan DrainTimeout { get; set; } = Timeout.InfiniteTimeSpan;
}
