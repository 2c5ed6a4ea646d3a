using System.Threading.Channels;
using System.Threading.RateLimiting;
using Polly;

namespace AsyncPatterns;

/// <summary>
/// Settings for a <see cref="WorkQueue{T}"/>. Generic so that the callbacks receive the item typed.
/// </summary>
/// <typeparam name="T">The type of the work items.</typeparam>
/// <remarks>
/// The queue validates and copies these values in its constructor; changing the options afterwards has no effect
/// on a queue already built from them. This type is not thread-safe; configure it before building the queue.
/// </remarks>
public sealed class WorkQueueOptions<T> : AsyncPatternsOptions
{
    /// <summary>Gets or sets how many items may wait for a worker.</summary>
    /// <value>Greater than 0. The default is 1024.</value>
    /// <remarks>Items inside a handler do not count: at most <c>Capacity + MaxConcurrency</c> items are held at once.</remarks>
    public int Capacity { get; set; } = 1024;

    /// <summary>Gets or sets how many workers run the handler, that is how many items may be in flight at once.</summary>
    /// <value>Greater than 0. The default is 1.</value>
    public int MaxConcurrency { get; set; } = 1;

    /// <summary>Gets or sets what <see cref="WorkQueue{T}.EnqueueAsync"/> and <see cref="WorkQueue{T}.TryEnqueue"/> do when <see cref="Capacity"/> items are waiting.</summary>
    /// <value>
    /// The default is <see cref="BoundedChannelFullMode.Wait"/>: <c>EnqueueAsync</c> waits for room (backpressure) and
    /// <c>TryEnqueue</c> returns <see langword="false"/>. <see cref="BoundedChannelFullMode.DropOldest"/> and
    /// <see cref="BoundedChannelFullMode.DropNewest"/> accept the new item and drop the oldest or newest waiting one;
    /// <see cref="BoundedChannelFullMode.DropWrite"/> drops the new item itself. Dropped items go to <see cref="OnDropped"/>.
    /// </value>
    /// <remarks>
    /// With <see cref="BoundedChannelFullMode.DropWrite"/> an item refused for lack of room still completes
    /// <c>EnqueueAsync</c> (and <c>TryEnqueue</c> returns <see langword="true"/>), as a
    /// <see cref="System.Threading.Channels.Channel{T}"/> does; it is counted as accepted and then dropped, so
    /// <c>Accepted == Handled + Failed + Dropped</c> holds in every mode.
    /// </remarks>
    public BoundedChannelFullMode FullMode { get; set; } = BoundedChannelFullMode.Wait;

    /// <summary>Gets or sets a rate limiter from which a worker acquires one permit per item before the handler runs.</summary>
    /// <value>The default is <see langword="null"/>: no limit beyond <see cref="MaxConcurrency"/>.</value>
    /// <remarks>
    /// The lease is disposed after the handler (and the pipeline) finish, so a concurrency limiter shared with other
    /// code bounds them together. Work is paced, not failed: a worker waits in the limiter's queue, and a refused lease
    /// that says when to retry (<c>RetryAfter</c>, as a <see cref="GcraRateLimiter"/> with no queue gives) is waited out
    /// on the <see cref="AsyncPatternsOptions.TimeProvider"/> and asked for again. Only a lease refused without
    /// <c>RetryAfter</c> (for example a <see cref="System.Threading.RateLimiting.ConcurrencyLimiter"/> whose queue is
    /// full) fails its item with <see cref="RateLimitRejectedException"/> (passed to <see cref="OnError"/>). The queue
    /// does not dispose the limiter.
    /// </remarks>
    public RateLimiter? RateLimiter { get; set; }

    /// <summary>Gets or sets a Polly pipeline that wraps each handler call (retry, timeout, circuit breaker...).</summary>
    /// <value>The default is <see langword="null"/>: the handler is called directly.</value>
    /// <remarks>An item fails only if the pipeline as a whole throws (for example after its last retry).</remarks>
    public ResiliencePipeline? Pipeline { get; set; }

    /// <summary>Gets or sets the callback that receives each item whose handler threw, with the exception.</summary>
    /// <value>The default is <see langword="null"/>. Failures are counted and logged either way.</value>
    /// <remarks>Runs on the worker; an exception it throws is logged and ignored.</remarks>
    public Action<T, Exception>? OnError { get; set; }

    /// <summary>
    /// Gets or sets the callback that receives each item dropped by <see cref="FullMode"/>, or abandoned unstarted
    /// because a drain was cut short.
    /// </summary>
    /// <value>The default is <see langword="null"/>. Drops are counted either way.</value>
    /// <remarks>Runs on the thread that caused the drop (a producer or the drain); an exception it throws is logged and ignored.</remarks>
    public Action<T>? OnDropped { get; set; }

    /// <summary>Gets or sets how long <see cref="WorkQueue{T}.DisposeAsync"/> lets the drain run before cutting it short.</summary>
    /// <value>
    /// <see cref="TimeSpan.Zero"/> or greater, or <see cref="Timeout.InfiniteTimeSpan"/>. The default is
    /// <see cref="Timeout.InfiniteTimeSpan"/>: dispose waits for every accepted item. <see cref="TimeSpan.Zero"/>
    /// cuts the drain short at once.
    /// </value>
    public TimeSpan DrainTimeout { get; set; } = Timeout.InfiniteTimeSpan;
}
