using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;

namespace AsyncPatterns;

/// <summary>The nursery form (<c>RunAsync</c>) and shielded scopes.</summary>
public sealed partial class CancellationScope
{
    /// <summary>
    /// Runs <paramref name="body"/> in a new scope and waits for it and every child it starts (Trio's nursery,
    /// asyncio's <c>TaskGroup</c>): nothing it starts outlives the call.
    /// </summary>
    /// <param name="body">
    /// The scope's body. It runs inline, on the calling thread, until its first await (as the body of
    /// <c>async with TaskGroup()</c> does); children it starts with <c>Run</c> are scheduled.
    /// </param>
    /// <param name="timeout">
    /// The deadline, counted from now on <see cref="TimeProvider.System"/>; <see langword="null"/> or
    /// <see cref="Timeout.InfiniteTimeSpan"/> for none. Use the overload that takes
    /// <see cref="CancellationScopeOptions"/> for another clock or a concurrency limit.
    /// </param>
    /// <param name="cancellationToken">The caller's token; the scope is cancelled with it.</param>
    /// <returns>
    /// A task that completes once the body and every child have ended. The first failure (of the body or a child)
    /// cancels the rest. Then, in this order: one failure is rethrown as itself, with its original stack; several
    /// are thrown as an <see cref="AggregateException"/> with the first cause first; if the deadline passed, a
    /// <see cref="TimeoutException"/>; if <paramref name="cancellationToken"/> was cancelled, an
    /// <see cref="OperationCanceledException"/>. Cancellations the scope caused are never failures, and
    /// <see cref="Cancel"/> is a quiet way to stop: the task then completes normally. A failure is one exception
    /// instance: a body or child that awaits a failed child and lets its exception escape adds nothing new.
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="body"/> is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is zero or negative (other than infinite).</exception>
    /// <exception cref="TimeoutException">The deadline passed before the scope ended (thrown by the returned task).</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled (thrown by the returned task).</exception>
    /// <exception cref="AggregateException">Several failures (thrown by the returned task).</exception>
    /// <remarks>
    /// <para>
    /// A token that is already cancelled returns a cancelled task without running <paramref name="body"/>.
    /// Failures win over a timeout or a cancellation that happened at the same time: a real error is never hidden.
    /// The <see cref="TimeoutException"/>'s <see cref="Exception.InnerException"/> is an
    /// <see cref="OperationCanceledException"/> for the scope's token (asyncio's <c>TimeoutError</c> has the
    /// <c>CancelledError</c> as its cause).
    /// </para>
    /// <para>
    /// An <see cref="InvalidOperationException"/> thrown by this scope's own <c>Run</c> because the scope was already
    /// cancelled (a body or child that kept starting work) is a consequence of that cancellation: it is dropped when
    /// another failure, the deadline or the caller's cancellation is reported, so a single failure still surfaces as
    /// itself whatever the thread timing. It is reported only when nothing else explains it (after a quiet
    /// <see cref="Cancel"/>).
    /// </para>
    /// <para>
    /// Differences from the peers, where the contract decides: one failure is rethrown as itself instead of an
    /// exception group (Trio's <c>strict_exception_groups=False</c>), several are an
    /// <see cref="AggregateException"/> in the order they happened. A child accepted by <see cref="Run"/> always runs,
    /// with the cancelled token if the scope was cancelled before it started (Trio's <c>start_soon</c>; asyncio would
    /// not run it).
    /// </para>
    /// </remarks>
    [OverloadResolutionPriority(1)]
    public static Task RunAsync(Func<CancellationScope, Task> body, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(body);
        var validTimeout = ValidateTimeout(timeout, nameof(timeout));
        return cancellationToken.IsCancellationRequested
            ? Task.FromCanceled(cancellationToken)
            : new CancellationScope(DefaultContext, validTimeout, int.MaxValue, failFast: true, cancellationToken).RunBodyAndWaitAsync(body);
    }

    /// <summary>
    /// Runs <paramref name="body"/> in a new scope, waits for it and every child, and returns the body's result;
    /// see <see cref="RunAsync(Func{CancellationScope, Task}, TimeSpan?, CancellationToken)"/>.
    /// </summary>
    /// <typeparam name="T">The body's result type.</typeparam>
    /// <param name="body">The scope's body; it runs inline until its first await.</param>
    /// <param name="timeout">The deadline, counted from now; <see langword="null"/> for none.</param>
    /// <param name="cancellationToken">The caller's token; the scope is cancelled with it.</param>
    /// <returns>
    /// The body's result once every child has ended. Failures, a timeout and the caller's cancellation are reported
    /// as by the non-generic overload. If <see cref="Cancel"/> cancelled the body itself, there is no result and the
    /// task throws <see cref="OperationCanceledException"/>.
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="body"/> is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is zero or negative (other than infinite).</exception>
    /// <exception cref="TimeoutException">The deadline passed before the scope ended (thrown by the returned task).</exception>
    /// <exception cref="OperationCanceledException">The caller's token was cancelled, or the body was cancelled by <see cref="Cancel"/> (thrown by the returned task).</exception>
    /// <exception cref="AggregateException">Several failures (thrown by the returned task).</exception>
    [OverloadResolutionPriority(1)]
    public static Task<T> RunAsync<T>(Func<CancellationScope, Task<T>> body, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(body);
        var validTimeout = ValidateTimeout(timeout, nameof(timeout));
        return cancellationToken.IsCancellationRequested
            ? Task.FromCanceled<T>(cancellationToken)
            : RunWithResultAsync(new CancellationScope(DefaultContext, validTimeout, int.MaxValue, failFast: true, cancellationToken), body);
    }

    /// <summary>
    /// Runs <paramref name="body"/> in a new scope built from <paramref name="options"/> (deadline on its clock,
    /// concurrency limit, name, logger); see <see cref="RunAsync(Func{CancellationScope, Task}, TimeSpan?, CancellationToken)"/>.
    /// </summary>
    /// <param name="body">The scope's body; it runs inline until its first await.</param>
    /// <param name="options">The scope's settings; validated and copied now.</param>
    /// <param name="cancellationToken">The caller's token; the scope is cancelled with it.</param>
    /// <returns>A task that completes once the body and every child have ended; see the contract overload.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="body"/> or <paramref name="options"/> is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range.</exception>
    /// <exception cref="TimeoutException">The deadline passed before the scope ended (thrown by the returned task).</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled (thrown by the returned task).</exception>
    /// <exception cref="AggregateException">Several failures (thrown by the returned task).</exception>
    public static Task RunAsync(Func<CancellationScope, Task> body, CancellationScopeOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(body);
        ValidateOptions(options);
        ValidateTimeout(options.Timeout, nameof(options.Timeout));
        return cancellationToken.IsCancellationRequested
            ? Task.FromCanceled(cancellationToken)
            : new CancellationScope(options, failFast: true, cancellationToken).RunBodyAndWaitAsync(body);
    }

    /// <summary>
    /// Runs <paramref name="body"/> in a new scope built from <paramref name="options"/> and returns its result;
    /// see <see cref="RunAsync{T}(Func{CancellationScope, Task{T}}, TimeSpan?, CancellationToken)"/>.
    /// </summary>
    /// <typeparam name="T">The body's result type.</typeparam>
    /// <param name="body">The scope's body; it runs inline until its first await.</param>
    /// <param name="options">The scope's settings; validated and copied now.</param>
    /// <param name="cancellationToken">The caller's token; the scope is cancelled with it.</param>
    /// <returns>The body's result once every child has ended; see the contract overload.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="body"/> or <paramref name="options"/> is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range.</exception>
    /// <exception cref="TimeoutException">The deadline passed before the scope ended (thrown by the returned task).</exception>
    /// <exception cref="OperationCanceledException">The caller's token was cancelled, or the body was cancelled by <see cref="Cancel"/> (thrown by the returned task).</exception>
    /// <exception cref="AggregateException">Several failures (thrown by the returned task).</exception>
    public static Task<T> RunAsync<T>(Func<CancellationScope, Task<T>> body, CancellationScopeOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(body);
        ValidateOptions(options);
        ValidateTimeout(options.Timeout, nameof(options.Timeout));
        return cancellationToken.IsCancellationRequested
            ? Task.FromCanceled<T>(cancellationToken)
            : RunWithResultAsync(new CancellationScope(options, failFast: true, cancellationToken), body);
    }

    /// <summary>
    /// Creates a scope that ignores every outer cancellation and ends only by its own <paramref name="budget"/>
    /// (Trio's <c>CancelScope(shield=True)</c> with a deadline, Kotlin's <c>withContext(NonCancellable)</c> plus
    /// <c>withTimeout</c>): for cleanup that must run after the work it cleans up after was cancelled.
    /// </summary>
    /// <param name="budget">How long the cleanup may take, counted from now on <see cref="TimeProvider.System"/>.</param>
    /// <returns>A new scope with no outer token; dispose it (<c>await using</c>) like any scope.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="budget"/> is not a positive, finite time.</exception>
    /// <remarks>
    /// .NET has no ambient cancellation, so shielding means not being linked: pass the shield's <see cref="Token"/>
    /// (never the cancelled outer one) to the cleanup. A shield always has a deadline, so a cleanup that hangs
    /// cannot hold shutdown forever. Example:
    /// <code>
    /// catch (OperationCanceledException)
    /// {
    ///     await using var shield = CancellationScope.Shielded(TimeSpan.FromSeconds(5));
    ///     await connection.RollbackAsync(shield.Token);
    ///     throw;
    /// }
    /// </code>
    /// </remarks>
    public static CancellationScope Shielded(TimeSpan budget) => Shielded(budget, TimeProvider.System);

    /// <summary>Creates a shielded scope whose <paramref name="budget"/> is measured on <paramref name="timeProvider"/>; see <see cref="Shielded(TimeSpan)"/>.</summary>
    /// <param name="budget">How long the cleanup may take, counted from now.</param>
    /// <param name="timeProvider">The clock that measures the budget.</param>
    /// <returns>A new scope with no outer token.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="budget"/> is not a positive, finite time.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="timeProvider"/> is <see langword="null"/>.</exception>
    public static CancellationScope Shielded(TimeSpan budget, TimeProvider timeProvider)
    {
        Guard.Positive(budget, nameof(budget));
        ArgumentNullException.ThrowIfNull(timeProvider);
        var context = ReferenceEquals(timeProvider, TimeProvider.System)
            ? DefaultContext
            : PrimitiveContext.Create(new CancellationScopeOptions { TimeProvider = timeProvider }, PrimitiveName, typeof(CancellationScope).FullName!);
        return new CancellationScope(context, budget, int.MaxValue, failFast: false, CancellationToken.None);
    }

    private static async Task<T> RunWithResultAsync<T>(CancellationScope scope, Func<CancellationScope, Task<T>> body)
    {
        var bodyTask = (Task<T>)(await scope.RunBodyAndWaitAsync(body).ConfigureAwait(false))!;

        // Completed by now. Awaiting it yields the result, or the OperationCanceledException of a body that
        // Cancel() interrupted (the only outcome left that RunBodyAndWaitAsync does not throw itself).
        return await bodyTask.ConfigureAwait(false);
    }

    /// <summary>Runs the body inline, releases the owner's hold, waits for every child, then reports the outcome.</summary>
    /// <returns>The body's task, completed, when nothing is to be thrown.</returns>
    private async Task<Task?> RunBodyAndWaitAsync(Func<CancellationScope, Task> body)
    {
        Task? bodyTask = null;
        try
        {
            bodyTask = body(this) ?? throw new InvalidOperationException("The scope's body returned null instead of a Task.");
            await bodyTask.ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            OnBodyFaulted(bodyTask, ex);
        }

        // The body may have disposed the scope itself; the owner's hold is released exactly once.
        if (Interlocked.Exchange(ref _ownerReleased, 1) == 0)
        {
            ReleaseActive();
        }

        await _completion.Task.ConfigureAwait(false);
        ThrowOutcome();
        return bodyTask;
    }

    private void OnBodyFaulted(Task? bodyTask, Exception caught)
    {
        // A faulted task may hold several exceptions (a body that returns Task.WhenAll); await rethrew only the first.
        IReadOnlyList<Exception> exceptions = bodyTask is { IsFaulted: true } ? bodyTask.Exception!.InnerExceptions : [caught];
        List<Exception>? failures = null;
        foreach (var exception in exceptions)
        {
            if (!IsScopeCancellation(exception))
            {
                (failures ??= []).Add(exception);
            }
        }

        if (failures is not null)
        {
            RecordFailures(failures);
        }
    }

    private void ThrowOutcome()
    {
        Exception[]? failures;
        lock (_lock)
        {
            failures = _failures?.ToArray();
        }

        var reason = (CancelReason)Volatile.Read(ref _reason);
        if (failures is not null)
        {
            failures = WithoutEchoes(failures, reason);
        }

        if (failures is { Length: 1 })
        {
            ExceptionDispatchInfo.Throw(failures[0]);
        }

        if (failures is { Length: > 1 })
        {
            throw new AggregateException(
                $"{failures.Length} failures in {Describe()}; the first is the one that cancelled the rest.", failures);
        }

        switch (reason)
        {
            case CancelReason.Deadline:
                throw new TimeoutException(
                    $"{Describe()} did not finish within its timeout of {_timeout.GetValueOrDefault()}; its children were cancelled.",
                    new OperationCanceledException("The scope's deadline cancelled its token.", _token));
            case CancelReason.Caller:
                throw new OperationCanceledException("The caller's token was cancelled; the scope's children were cancelled.", _callerToken);
        }
    }

    /// <summary>
    /// Drops the refusals of this scope's own <c>Run</c> (a body or child that started work after the scope was
    /// cancelled and let the <see cref="InvalidOperationException"/> escape) when they only echo a cause that is
    /// reported anyway: another failure, the deadline or the caller's cancellation. On a multi-threaded pool a child
    /// can fail while the body is still starting its siblings, so without this a single failure would surface as an
    /// <see cref="AggregateException"/> holding it and the refusal, depending on timing. After a quiet
    /// <see cref="Cancel"/> the refusal is the only error there is, and it is reported.
    /// </summary>
    private Exception[] WithoutEchoes(Exception[] failures, CancelReason reason)
    {
        var refusals = 0;
        foreach (var failure in failures)
        {
            if (IsOwnRefusal(failure))
            {
                refusals++;
            }
        }

        if (refusals == 0 ||
            (refusals == failures.Length && reason is not (CancelReason.Deadline or CancelReason.Caller)))
        {
            return failures;
        }

        var kept = new Exception[failures.Length - refusals];
        var next = 0;
        foreach (var failure in failures)
        {
            if (!IsOwnRefusal(failure))
            {
                kept[next++] = failure;
            }
        }

        return kept;
    }

    private string Describe() => _context.Name == PrimitiveName ? "The CancellationScope" : $"The CancellationScope '{_context.Name}'";
}
