using Polly;
using Polly.CircuitBreaker;

namespace AsyncPatterns;

/// <summary>
/// A circuit breaker: after enough failures it refuses calls for a while, so a failing dependency gets room to recover
/// and callers fail fast instead of waiting on it.
/// </summary>
/// <remarks>
/// <para>
/// <b>Closed</b>: calls run. In consecutive mode (the default) the circuit opens after
/// <see cref="CircuitBreakerOptions.FailureThreshold"/> handled failures in a row; a success resets the count. In ratio
/// mode (<see cref="CircuitBreakerOptions.FailureRatio"/> set) it opens when, within
/// <see cref="CircuitBreakerOptions.SamplingDuration"/>, at least <see cref="CircuitBreakerOptions.MinimumThroughput"/>
/// calls ran and the failed share is at least the ratio, exactly as Polly v8's <c>AddCircuitBreaker</c> decides (same
/// sampling windows, same arithmetic; checked side by side in the tests).
/// </para>
/// <para>
/// <b>Open</b>: calls are refused without running, with Polly's <see cref="BrokenCircuitException"/> whose
/// <see cref="BrokenCircuitException.RetryAfter"/> is the break time left and whose inner exception is the failure that
/// opened the circuit. As in Polly, the move to half-open happens lazily: <see cref="State"/> reads
/// <see cref="CircuitState.Open"/> until the first call after <see cref="CircuitBreakerOptions.BreakDuration"/> has
/// elapsed, and that call becomes the first trial.
/// </para>
/// <para>
/// <b>Half-open</b>: up to <see cref="CircuitBreakerOptions.HalfOpenMaxCalls"/> trial calls run at once and other calls
/// are refused (<see cref="BrokenCircuitException"/>); a trial success closes the circuit, a trial failure re-opens it
/// for a full <see cref="CircuitBreakerOptions.BreakDuration"/>. An exception <see cref="CircuitBreakerOptions.ShouldHandle"/>
/// declines is a success here too, so it closes the circuit (as in Polly). A trial cancelled through its caller's own token
/// frees its slot for another trial. While every slot is taken, refusals carry
/// <see cref="BrokenCircuitException.RetryAfter"/> = the time left until <see cref="CircuitBreakerOptions.BreakDuration"/>
/// has passed since the circuit went half-open (Polly's value). If the slots are all taken for that whole
/// <see cref="CircuitBreakerOptions.BreakDuration"/> (trials that hang), the next call is admitted as a new trial and the
/// abandoned trials can no longer close or re-open the circuit. Only outcomes of the current trials drive a half-open
/// circuit; a call admitted while the circuit was closed that finishes during half-open is counted in the statistics but
/// changes nothing. An outcome that arrives while the circuit is closed counts as a closed-state outcome whoever admitted
/// it (as in Polly): for example a trial that was still running when <see cref="Reset"/> closed the circuit.
/// </para>
/// <para>
/// <b>Isolated</b>: <see cref="Isolate"/> holds the circuit open (<see cref="IsolatedCircuitException"/>) until
/// <see cref="Reset"/>. Both work from every state.
/// </para>
/// <para>
/// Where this differs from Polly v8, on purpose: consecutive mode (Polly v8 has only the ratio rule);
/// <see cref="CircuitBreakerOptions.HalfOpenMaxCalls"/> greater than 1 (Polly admits one trial); the hung-trial recovery
/// above (Polly stays half-open, refusing every call with a <see cref="BrokenCircuitException.RetryAfter"/> that turns
/// negative, until its one trial returns); late outcomes of non-trial calls are ignored while half-open (Polly lets them
/// close or re-open the circuit); the refusal's <see cref="Exception.InnerException"/> is the failure that opened the
/// circuit (Polly replaces it with any later handled failure of a call that was already running); refusal messages name
/// the breaker; and cancellation, below. Polly's default predicate declines every
/// <see cref="OperationCanceledException"/>, so in Polly a cancelled call counts as a success (it adds to the ratio sample
/// and a cancelled trial closes the circuit), while an <see cref="OperationCanceledException"/> the caller did not ask
/// for (an inner timeout) is never a failure. Here, as DESIGN.md says, only a cancellation through the caller's own token
/// is exempt: it is neither a failure nor a success (it is left out of the ratio sample and a cancelled trial frees its
/// slot), and any other <see cref="OperationCanceledException"/> is a failure by default. With <c>HalfOpenMaxCalls = 1</c>,
/// trials that complete and no caller cancellations, ratio mode makes the same decisions as Polly for the same sequence
/// of calls, <see cref="Isolate"/>/<see cref="Reset"/> calls and clock readings (checked side by side in the tests).
/// </para>
/// <para>
/// Cancellation: an <see cref="OperationCanceledException"/> while the caller's own token is cancelled is neither a
/// failure nor a success. An already-cancelled token returns a cancelled task without running the action or touching
/// the breaker.
/// </para>
/// <para>
/// Thread-safety: every member is safe to call concurrently. A call through a closed circuit that succeeds takes no
/// lock and allocates nothing; in consecutive mode it writes shared state only when it resets a non-zero failure count.
/// Transitions take a short lock; <see cref="CircuitBreakerOptions.OnStateChanged"/>, <see cref="CircuitBreakerOptions.ShouldHandle"/>,
/// logging and metrics never run under it.
/// </para>
/// </remarks>
public sealed partial class CircuitBreaker
{
    private static readonly Func<Func<CancellationToken, ValueTask>, CancellationToken, ValueTask> InvokeAction =
        static (action, cancellationToken) => action(cancellationToken);

    /// <summary>Initializes a circuit breaker with the given options, or every default when <paramref name="options"/> is null.</summary>
    /// <param name="options">The settings; validated and copied, so later changes have no effect.</param>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <see cref="CircuitBreakerOptions.FailureThreshold"/> ≤ 0, <see cref="CircuitBreakerOptions.FailureRatio"/> outside
    /// (0, 1], <see cref="CircuitBreakerOptions.MinimumThroughput"/> &lt; 2, <see cref="CircuitBreakerOptions.SamplingDuration"/>
    /// or <see cref="CircuitBreakerOptions.BreakDuration"/> ≤ 0, or <see cref="CircuitBreakerOptions.HalfOpenMaxCalls"/> ≤ 0.
    /// </exception>
    public CircuitBreaker(CircuitBreakerOptions? options = null)
    {
        options ??= new CircuitBreakerOptions();
        Guard.Positive(options.FailureThreshold, nameof(options.FailureThreshold));
        if (options.FailureRatio is { } ratio && !(ratio > 0 && ratio <= 1))
        {
            Guard.ThrowOutOfRange(nameof(options.FailureRatio), ratio, "greater than 0 and at most 1, or null for consecutive mode");
        }

        if (options.MinimumThroughput < 2)
        {
            Guard.ThrowOutOfRange(nameof(options.MinimumThroughput), options.MinimumThroughput, "2 or greater");
        }

        Guard.Positive(options.SamplingDuration, nameof(options.SamplingDuration));
        Guard.Positive(options.BreakDuration, nameof(options.BreakDuration));
        Guard.Positive(options.HalfOpenMaxCalls, nameof(options.HalfOpenMaxCalls));

        _context = PrimitiveContext.Create(options, "CircuitBreaker", typeof(CircuitBreaker).FullName!);
        _timeProvider = _context.TimeProvider;
        _failureThreshold = options.FailureThreshold;
        _failureRatio = options.FailureRatio ?? double.NaN;
        _minimumThroughput = options.MinimumThroughput;
        _breakDuration = options.BreakDuration;
        _breakTicks = ToTimestampTicks(options.BreakDuration);
        _halfOpenMaxCalls = options.HalfOpenMaxCalls;
        _shouldHandle = options.ShouldHandle;
        _onStateChanged = options.OnStateChanged;
        _openMessage = $"The circuit breaker '{_context.Name}' is open and refuses calls until its break ends (see RetryAfter).";
        _halfOpenMessage = $"The circuit breaker '{_context.Name}' is half-open and every trial slot is taken; retry after RetryAfter.";
        _isolatedMessage = $"The circuit breaker '{_context.Name}' is isolated and refuses every call until it is reset.";
        if (options.FailureRatio is not null)
        {
            _health = new CircuitHealthWindow(options.SamplingDuration, ToTimestampTicks, _timeProvider.GetTimestamp());
        }

        CircuitBreakerMetrics.Register(this);
    }

    /// <summary>Gets the breaker's name: <see cref="AsyncPatternsOptions.Name"/>, or <c>CircuitBreaker</c>.</summary>
    public string Name => _context.Name;

    /// <summary>Gets the circuit's current state (Polly's <see cref="CircuitState"/>).</summary>
    /// <remarks>
    /// Read without a lock. As in Polly, an open circuit reads <see cref="CircuitState.Open"/> until a call arrives after
    /// the break has elapsed; that call moves it to <see cref="CircuitState.HalfOpen"/>.
    /// </remarks>
    public CircuitState State => (CircuitState)_state;

    internal KeyValuePair<string, object?> NameTag => _context.NameTag;

    /// <summary>Runs <paramref name="action"/> through the circuit and returns its result.</summary>
    /// <typeparam name="TResult">The action's result type.</typeparam>
    /// <param name="action">The protected call; receives <paramref name="cancellationToken"/>.</param>
    /// <param name="cancellationToken">The caller's token; a cancellation through it is not a failure.</param>
    /// <returns>The action's result; completes synchronously when the action does.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="action"/> is null (thrown at once).</exception>
    /// <exception cref="BrokenCircuitException">The circuit is open, or half-open with every trial slot taken; the action did not run.</exception>
    /// <exception cref="IsolatedCircuitException">The circuit is isolated; the action did not run.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was already cancelled.</exception>
    /// <remarks>Any exception the action throws is rethrown unchanged, after the breaker has counted it. Refusals are
    /// returned as faulted tasks; for a path that never throws, use <see cref="ExecuteOutcomeAsync{TResult}(Func{CancellationToken, ValueTask{TResult}}, CancellationToken)"/>.</remarks>
    public ValueTask<TResult> ExecuteAsync<TResult>(Func<CancellationToken, ValueTask<TResult>> action, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(action);
        return ExecuteAsync(ResultInvoker<TResult>.Instance, action, cancellationToken);
    }

    /// <summary>Runs <paramref name="action"/> with <paramref name="state"/> through the circuit; a lambda that captures nothing allocates nothing.</summary>
    /// <typeparam name="TResult">The action's result type.</typeparam>
    /// <typeparam name="TState">The state's type.</typeparam>
    /// <param name="action">The protected call; receives <paramref name="state"/> and <paramref name="cancellationToken"/>.</param>
    /// <param name="state">Passed to <paramref name="action"/>.</param>
    /// <param name="cancellationToken">The caller's token; a cancellation through it is not a failure.</param>
    /// <returns>The action's result; completes synchronously when the action does.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="action"/> is null (thrown at once).</exception>
    /// <exception cref="BrokenCircuitException">The circuit is open, or half-open with every trial slot taken; the action did not run.</exception>
    /// <exception cref="IsolatedCircuitException">The circuit is isolated; the action did not run.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was already cancelled.</exception>
    public ValueTask<TResult> ExecuteAsync<TResult, TState>(Func<TState, CancellationToken, ValueTask<TResult>> action, TState state, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(action);
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled<TResult>(cancellationToken);
        }

        if (!TryEnter(out var permit, out var publish, out var rejection))
        {
            return ValueTask.FromException<TResult>(rejection!);
        }

        if (publish)
        {
            return PublishThenExecuteAsync(action, state, permit, cancellationToken);
        }

        ValueTask<TResult> pending;
        try
        {
            pending = action(state, cancellationToken);
        }
        catch (Exception ex)
        {
            pending = ValueTask.FromException<TResult>(ex);
        }

        if (pending.IsCompletedSuccessfully)
        {
            var result = pending.Result;
            return OnSuccess(permit) ? PublishThenReturnAsync(result) : new ValueTask<TResult>(result);
        }

        return AwaitResultAsync(pending, permit, cancellationToken);
    }

    /// <summary>Runs <paramref name="action"/> through the circuit.</summary>
    /// <param name="action">The protected call; receives <paramref name="cancellationToken"/>.</param>
    /// <param name="cancellationToken">The caller's token; a cancellation through it is not a failure.</param>
    /// <returns>A task that completes when the action has; synchronously when the action does.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="action"/> is null (thrown at once).</exception>
    /// <exception cref="BrokenCircuitException">The circuit is open, or half-open with every trial slot taken; the action did not run.</exception>
    /// <exception cref="IsolatedCircuitException">The circuit is isolated; the action did not run.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was already cancelled.</exception>
    public ValueTask ExecuteAsync(Func<CancellationToken, ValueTask> action, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(action);
        return ExecuteAsync(InvokeAction, action, cancellationToken);
    }

    /// <summary>Runs <paramref name="action"/> with <paramref name="state"/> through the circuit; a lambda that captures nothing allocates nothing.</summary>
    /// <typeparam name="TState">The state's type.</typeparam>
    /// <param name="action">The protected call; receives <paramref name="state"/> and <paramref name="cancellationToken"/>.</param>
    /// <param name="state">Passed to <paramref name="action"/>.</param>
    /// <param name="cancellationToken">The caller's token; a cancellation through it is not a failure.</param>
    /// <returns>A task that completes when the action has; synchronously when the action does.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="action"/> is null (thrown at once).</exception>
    /// <exception cref="BrokenCircuitException">The circuit is open, or half-open with every trial slot taken; the action did not run.</exception>
    /// <exception cref="IsolatedCircuitException">The circuit is isolated; the action did not run.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was already cancelled.</exception>
    public ValueTask ExecuteAsync<TState>(Func<TState, CancellationToken, ValueTask> action, TState state, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(action);
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled(cancellationToken);
        }

        if (!TryEnter(out var permit, out var publish, out var rejection))
        {
            return ValueTask.FromException(rejection!);
        }

        if (publish)
        {
            return PublishThenExecuteAsync(action, state, permit, cancellationToken);
        }

        ValueTask pending;
        try
        {
            pending = action(state, cancellationToken);
        }
        catch (Exception ex)
        {
            pending = ValueTask.FromException(ex);
        }

        if (pending.IsCompletedSuccessfully)
        {
#pragma warning disable CA1849, VSTHRD002 // Already completed: GetResult does not block; it releases a pooled IValueTaskSource.
            pending.GetAwaiter().GetResult();
#pragma warning restore CA1849, VSTHRD002
            return OnSuccess(permit) ? PublishAsync() : default;
        }

        return AwaitAsync(pending, permit, cancellationToken);
    }

    /// <summary>
    /// Runs <paramref name="action"/> through the circuit and returns its outcome instead of throwing: the no-throw path
    /// for hot callers, where an open circuit costs an allocation rather than an exception throw.
    /// </summary>
    /// <typeparam name="TResult">The action's result type.</typeparam>
    /// <param name="action">The protected call; receives <paramref name="cancellationToken"/>.</param>
    /// <param name="cancellationToken">The caller's token; a cancellation through it is not a failure.</param>
    /// <returns>
    /// Polly's <see cref="Outcome{TResult}"/>: the result, the action's exception, a <see cref="BrokenCircuitException"/>
    /// or <see cref="IsolatedCircuitException"/> when refused, or an <see cref="OperationCanceledException"/> when the
    /// token was already cancelled. Test <c>outcome.Exception is ExecutionRejectedException</c> for a refusal.
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="action"/> is null (thrown at once).</exception>
    public ValueTask<Outcome<TResult>> ExecuteOutcomeAsync<TResult>(Func<CancellationToken, ValueTask<TResult>> action, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(action);
        return ExecuteOutcomeAsync(ResultInvoker<TResult>.Instance, action, cancellationToken);
    }

    /// <summary>
    /// Runs <paramref name="action"/> with <paramref name="state"/> through the circuit and returns its outcome instead
    /// of throwing.
    /// </summary>
    /// <typeparam name="TResult">The action's result type.</typeparam>
    /// <typeparam name="TState">The state's type.</typeparam>
    /// <param name="action">The protected call; receives <paramref name="state"/> and <paramref name="cancellationToken"/>.</param>
    /// <param name="state">Passed to <paramref name="action"/>.</param>
    /// <param name="cancellationToken">The caller's token; a cancellation through it is not a failure.</param>
    /// <returns>The outcome, as for <see cref="ExecuteOutcomeAsync{TResult}(Func{CancellationToken, ValueTask{TResult}}, CancellationToken)"/>.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="action"/> is null (thrown at once).</exception>
    public ValueTask<Outcome<TResult>> ExecuteOutcomeAsync<TResult, TState>(Func<TState, CancellationToken, ValueTask<TResult>> action, TState state, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(action);
        if (cancellationToken.IsCancellationRequested)
        {
            return new(Outcome.FromException<TResult>(new OperationCanceledException(cancellationToken)));
        }

        if (!TryEnter(out var permit, out var publish, out var rejection))
        {
            return new(Outcome.FromException<TResult>(rejection!));
        }

        if (publish)
        {
            return PublishThenExecuteOutcomeAsync(action, state, permit, cancellationToken);
        }

        ValueTask<TResult> pending;
        try
        {
            pending = action(state, cancellationToken);
        }
        catch (Exception ex)
        {
            return CompleteOutcomeAsync(Outcome.FromException<TResult>(ex), permit, cancellationToken);
        }

        if (pending.IsCompletedSuccessfully)
        {
            return CompleteOutcomeAsync(Outcome.FromResult(pending.Result), permit, cancellationToken);
        }

        return AwaitOutcomeAsync(pending, permit, cancellationToken);
    }

    /// <summary>Holds the circuit open until <see cref="Reset"/>: calls are refused with <see cref="IsolatedCircuitException"/>.</summary>
    /// <remarks>
    /// Works from every state; calls already running finish and are counted in the statistics, but their outcomes do not
    /// move the isolated circuit. Isolating an isolated circuit does nothing (Polly reports a second opening).
    /// Refusals while isolated are <see cref="IsolatedCircuitException"/> with no <see cref="BrokenCircuitException.RetryAfter"/>. <see cref="CircuitBreakerOptions.OnStateChanged"/> is invoked before this method
    /// returns when it completes synchronously; an asynchronous callback finishes in the background. Thread-safe.
    /// </remarks>
    public void Isolate()
    {
        bool publish;
        lock (_lock)
        {
            publish = (CircuitState)_state != CircuitState.Isolated &&
                      MoveToLocked(CircuitState.Isolated, CircuitStateChangeReason.Isolated, exception: null, _timeProvider.GetTimestamp());
        }

        PublishInBackground(publish);
    }

    /// <summary>Closes the circuit now, from every state, and clears its failure count or sample.</summary>
    /// <remarks>
    /// Resetting a closed circuit clears its counts without reporting a state change (as Polly's manual close does).
    /// Trials still running are abandoned as trials: their outcomes arrive in a closed circuit and count like any closed-state
    /// outcome (as in Polly), but can never close or re-open a later half-open circuit. <see cref="CircuitBreakerOptions.OnStateChanged"/> is invoked as for <see cref="Isolate"/>.
    /// Thread-safe.
    /// </remarks>
    public void Reset()
    {
        bool publish;
        lock (_lock)
        {
            var now = _timeProvider.GetTimestamp();
            if ((CircuitState)_state == CircuitState.Closed)
            {
                Volatile.Write(ref _consecutiveFailures, 0);
                _health?.ResetLocked(now);
                publish = false;
            }
            else
            {
                publish = MoveToLocked(CircuitState.Closed, CircuitStateChangeReason.Reset, exception: null, now);
            }
        }

        PublishInBackground(publish);
    }

    /// <summary>Returns a snapshot of the breaker's counters.</summary>
    /// <returns>A new, immutable <see cref="CircuitBreakerStatistics"/>.</returns>
    /// <remarks>Takes no lock; thread-safe.</remarks>
    public CircuitBreakerStatistics GetStatistics() => new(
        State,
        _successes.Sum(),
        Interlocked.Read(ref _failures),
        Interlocked.Read(ref _ignored),
        Interlocked.Read(ref _rejections),
        Interlocked.Read(ref _timesOpened),
        _health is null ? Volatile.Read(ref _consecutiveFailures) : 0,
        State == CircuitState.HalfOpen ? Volatile.Read(ref _trialsInFlight) : 0);

    /// <inheritdoc />
    public override string ToString() => $"CircuitBreaker '{Name}' ({State})";

    private static class ResultInvoker<TResult>
    {
        public static readonly Func<Func<CancellationToken, ValueTask<TResult>>, CancellationToken, ValueTask<TResult>> Instance =
            static (action, cancellationToken) => action(cancellationToken);
    }
}
