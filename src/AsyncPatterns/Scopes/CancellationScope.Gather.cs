using Polly;

namespace AsyncPatterns;

/// <summary>Gather helpers built on scopes: a bounded-concurrency map and its settled variant.</summary>
public sealed partial class CancellationScope
{
    /// <summary>
    /// Applies <paramref name="selector"/> to every element of <paramref name="source"/> with at most
    /// <paramref name="maxConcurrency"/> calls running at once, and returns the results in input order (asyncio's
    /// <c>gather</c> behind a semaphore). Fail-fast, like a task group: the first failure cancels the calls still
    /// running, starts no more, and is rethrown.
    /// </summary>
    /// <typeparam name="TSource">The element type.</typeparam>
    /// <typeparam name="TResult">The result type.</typeparam>
    /// <param name="source">
    /// The elements. An <see cref="IReadOnlyList{T}"/> (arrays, <see cref="List{T}"/>) is read in place; any
    /// other sequence is enumerated once, up front, inside the returned task.
    /// </param>
    /// <param name="selector">The call for one element; it receives a token cancelled when a sibling fails or the caller cancels.</param>
    /// <param name="maxConcurrency">The largest number of calls running at once; greater than 0.</param>
    /// <param name="cancellationToken">The caller's token.</param>
    /// <returns>
    /// The results, <c>results[i]</c> for <c>source[i]</c>. Failures are thrown as by
    /// <see cref="RunAsync(Func{CancellationScope, Task}, TimeSpan?, CancellationToken)"/>: one as itself, several
    /// (calls that failed concurrently) as an <see cref="AggregateException"/>; the caller's cancellation as
    /// <see cref="OperationCanceledException"/>.
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="source"/> or <paramref name="selector"/> is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxConcurrency"/> is not greater than 0.</exception>
    /// <remarks>
    /// <paramref name="maxConcurrency"/> workers (fewer for short inputs) run as children of one scope and take the
    /// next index with one interlocked increment, so a call that completes synchronously costs no scheduling, no lock
    /// and no allocation beyond the result array. Calls start in input order. Thread safety: the method may be called
    /// concurrently; <paramref name="selector"/> is called concurrently.
    /// </remarks>
    public static Task<TResult[]> SelectAsync<TSource, TResult>(
        IEnumerable<TSource> source,
        Func<TSource, CancellationToken, ValueTask<TResult>> selector,
        int maxConcurrency,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(selector);
        Guard.Positive(maxConcurrency, nameof(maxConcurrency));
        return cancellationToken.IsCancellationRequested
            ? Task.FromCanceled<TResult[]>(cancellationToken)
            : GatherAsync(new SelectState<TSource, TResult>(source, selector), maxConcurrency, cancellationToken);
    }

    /// <summary>
    /// Applies <paramref name="selector"/> to every element of <paramref name="source"/> with at most
    /// <paramref name="maxConcurrency"/> calls at once and returns every call's <see cref="Outcome{TResult}"/> in
    /// input order, instead of throwing (asyncio's <c>gather(return_exceptions=True)</c>, JavaScript's
    /// <c>Promise.allSettled</c>). A failure cancels nothing.
    /// </summary>
    /// <typeparam name="TSource">The element type.</typeparam>
    /// <typeparam name="TResult">The result type.</typeparam>
    /// <param name="source">The elements; read as by <see cref="SelectAsync{TSource, TResult}"/>.</param>
    /// <param name="selector">The call for one element; an exception it throws, synchronously or not, becomes that element's outcome.</param>
    /// <param name="maxConcurrency">The largest number of calls running at once; greater than 0.</param>
    /// <param name="cancellationToken">The caller's token.</param>
    /// <returns>
    /// One Polly <see cref="Outcome{TResult}"/> per element: <see cref="Outcome{TResult}.Result"/> or
    /// <see cref="Outcome{TResult}.Exception"/> (use <see cref="Outcome{TResult}.ThrowIfException"/> to rethrow it).
    /// If <paramref name="cancellationToken"/> is cancelled, the calls still running are cancelled and the task
    /// throws <see cref="OperationCanceledException"/>: there is no complete set of outcomes to return.
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="source"/> or <paramref name="selector"/> is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxConcurrency"/> is not greater than 0.</exception>
    /// <remarks>Thread safety: the method may be called concurrently; <paramref name="selector"/> is called concurrently.</remarks>
#pragma warning disable VSTHRD200 // Named after Task.WhenAll and Promise.allSettled.
    public static Task<Outcome<TResult>[]> WhenAllSettled<TSource, TResult>(
        IEnumerable<TSource> source,
        Func<TSource, CancellationToken, ValueTask<TResult>> selector,
        int maxConcurrency,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(selector);
        Guard.Positive(maxConcurrency, nameof(maxConcurrency));
        return cancellationToken.IsCancellationRequested
            ? Task.FromCanceled<Outcome<TResult>[]>(cancellationToken)
            : GatherAsync(new SettleState<TSource, TResult>(source, selector), maxConcurrency, cancellationToken);
    }
#pragma warning restore VSTHRD200

    private static async Task<TResults[]> GatherAsync<TResults>(GatherState<TResults> state, int maxConcurrency, CancellationToken cancellationToken)
    {
        var count = state.Prepare();
        if (count == 0)
        {
            return state.Results;
        }

        var workers = Math.Min(maxConcurrency, count);
        var scope = new CancellationScope(DefaultContext, timeout: null, int.MaxValue, failFast: true, cancellationToken);
        await scope.RunBodyAndWaitAsync(s =>
        {
            var worker = state.Worker;
            for (var i = 0; i < workers; i++)
            {
                // A worker started earlier may already have failed (or the caller cancelled), cancelling the scope:
                // then no more workers are needed, and Run's refusal must not become a second failure that turns
                // the real one into an AggregateException (or a cancellation into an InvalidOperationException).
                if (!s.TryAccept(new ScopeChild(s, worker)))
                {
                    break;
                }
            }

            return Task.CompletedTask;
        }).ConfigureAwait(false);
        return state.Results;
    }

    /// <summary>Shared state of one gather: the elements, the results and the next index to take.</summary>
    private abstract class GatherState<TResults>
    {
        private int _next = -1;

        protected GatherState() => Worker = RunWorkerAsync;

        public TResults[] Results { get; protected set; } = [];

        public Func<CancellationToken, Task> Worker { get; }

        /// <summary>Materializes the elements and allocates the results; returns the element count.</summary>
        public abstract int Prepare();

        protected abstract int Count { get; }

        /// <summary>Handles element <paramref name="index"/>; returns a task only when the call went asynchronous.</summary>
        protected abstract ValueTask RunOneAsync(int index, CancellationToken cancellationToken);

        private async Task RunWorkerAsync(CancellationToken cancellationToken)
        {
            while (!cancellationToken.IsCancellationRequested)
            {
                var index = Interlocked.Increment(ref _next);
                if (index >= Count)
                {
                    return;
                }

                await RunOneAsync(index, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    private sealed class SelectState<TSource, TResult>(
        IEnumerable<TSource> source,
        Func<TSource, CancellationToken, ValueTask<TResult>> selector) : GatherState<TResult>
    {
        private IReadOnlyList<TSource> _items = [];

        protected override int Count => _items.Count;

        public override int Prepare()
        {
            _items = source as IReadOnlyList<TSource> ?? source.ToArray();
            Results = new TResult[_items.Count];
            return _items.Count;
        }

        protected override ValueTask RunOneAsync(int index, CancellationToken cancellationToken)
        {
            var pending = selector(_items[index], cancellationToken);
            if (pending.IsCompletedSuccessfully)
            {
                Results[index] = pending.Result;
                return default;
            }

            return AwaitAsync(pending, index);
        }

        private async ValueTask AwaitAsync(ValueTask<TResult> pending, int index) =>
            Results[index] = await pending.ConfigureAwait(false);
    }

    private sealed class SettleState<TSource, TResult>(
        IEnumerable<TSource> source,
        Func<TSource, CancellationToken, ValueTask<TResult>> selector) : GatherState<Outcome<TResult>>
    {
        private IReadOnlyList<TSource> _items = [];

        protected override int Count => _items.Count;

        public override int Prepare()
        {
            _items = source as IReadOnlyList<TSource> ?? source.ToArray();
            Results = new Outcome<TResult>[_items.Count];
            return _items.Count;
        }

        protected override async ValueTask RunOneAsync(int index, CancellationToken cancellationToken)
        {
            try
            {
                Results[index] = Outcome.FromResult(await selector(_items[index], cancellationToken).ConfigureAwait(false));
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                throw; // the caller cancelled: the whole gather ends cancelled, not this one element
            }
            catch (Exception ex)
            {
                Results[index] = Outcome.FromException<TResult>(ex);
            }
        }
    }
}
