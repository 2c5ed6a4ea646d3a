using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Polly.CircuitBreaker;

namespace AsyncPatterns;

// The state machine: admitting calls, counting their outcomes, moving between states.
//
// A call holds a permit: 0 for a call admitted while closed, otherwise the half-open trial generation it was admitted
// in. Only permits of the current generation drive a half-open circuit, so trials abandoned as hung, or admitted before
// an Isolate/Reset, never close or re-open it. As in Polly, an outcome that arrives while the circuit is closed counts as
// a closed-state outcome whoever admitted it (a trial that outlived a Reset, or a sibling trial of the one that closed it).
public sealed partial class CircuitBreaker
{
    private const long MaxTimestampSpan = long.MaxValue / 4;

    private readonly PrimitiveContext _context;
    private readonly TimeProvider _timeProvider;
    private readonly Lock _lock = new();
    private readonly int _failureThreshold;
    private readonly double _failureRatio;
    private readonly int _minimumThroughput;
    private readonly TimeSpan _breakDuration;
    private readonly long _breakTicks;
    private readonly int _halfOpenMaxCalls;
    private readonly Func<Exception, bool>? _shouldHandle;
    private readonly CircuitHealthWindow? _health;
    private readonly PerCoreCounter _successes = new();
    private readonly string _openMessage;
    private readonly string _halfOpenMessage;
    private readonly string _isolatedMessage;

    // Read without the lock on the hot path, written only under it.
    private volatile int _state = (int)CircuitState.Closed;
    private long _blockedUntil;
    private Exception? _breakingException;

    // Consecutive mode: incremented with Interlocked by failures, zeroed by successes (only when not already 0).
    private int _consecutiveFailures;

    // Half-open, under the lock.
    private int _trialGeneration;
    private int _trialsInFlight;

    private long _failures;
    private long _ignored;
    private long _rejections;
    private long _timesOpened;

    /// <summary>Admits a call or says why not. <paramref name="publish"/>: this call made a state change and must publish it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool TryEnter(out int permit, out bool publish, out Exception? rejection)
    {
        if (_state == (int)CircuitState.Closed)
        {
            permit = 0;
            publish = false;
            rejection = null;
            return true;
        }

        return TryEnterSlow(out permit, out publish, out rejection);
    }

    /// <summary>Counts a success. Returns whether this call made a state change it must publish.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool OnSuccess(int permit)
    {
        _successes.Increment();
        if (CircuitBreakerMetrics.Calls.Enabled)
        {
            CircuitBreakerMetrics.Calls.Add(1, _context.NameTag, CircuitBreakerMetrics.Success);
        }

        if (permit != 0 && TryFinishTrial(permit, TrialOutcome.Success, exception: null, out var publish))
        {
            return publish;
        }

        if (_health is null)
        {
            // The seeds' rule: a success resets the run. Skip the write (and its cache-line traffic) when already 0.
            if (Volatile.Read(ref _consecutiveFailures) != 0)
            {
                Volatile.Write(ref _consecutiveFailures, 0);
            }
        }
        else
        {
            RecordRatioSuccess();
        }

        return false;
    }

    /// <summary>Classifies an exception the action threw and counts it. Returns whether a state change must be published.</summary>
    internal bool OnException(int permit, Exception exception, CancellationToken cancellationToken)
    {
        if (exception is OperationCanceledException && cancellationToken.IsCancellationRequested)
        {
            return OnIgnored(permit);
        }

        bool handled;
        try
        {
            handled = _shouldHandle?.Invoke(exception) ?? true;
        }
#pragma warning disable CA1031 // A throwing predicate must not leak a trial slot; counting the call as failed is the safe side.
        catch (Exception)
#pragma warning restore CA1031
        {
            handled = true;
        }

        // As in Polly v8: an exception ShouldHandle declines is a success (the dependency answered), in both
        // modes; it resets the consecutive count, counts toward the ratio and closes a half-open circuit.
        return handled ? OnFailure(permit, exception) : OnSuccess(permit);
    }

    private bool TryEnterSlow(out int permit, out bool publish, out Exception? rejection)
    {
        permit = 0;
        publish = false;
        rejection = null;
        var now = _timeProvider.GetTimestamp();

        // An open circuit inside its break refuses without the lock: the common case while open.
        if (_state == (int)CircuitState.Open)
        {
            var until = Interlocked.Read(ref _blockedUntil);
            if (now < until)
            {
                rejection = Refuse(CircuitState.Open, until - now, Volatile.Read(ref _breakingException));
                return false;
            }
        }

        var abandoned = 0;
        CircuitState refusedIn;
        long retryAfter = 0;
        Exception? inner = null;
        lock (_lock)
        {
            switch ((CircuitState)_state)
            {
                case CircuitState.Closed:
                    return true;

                case CircuitState.Open when now >= _blockedUntil:
                    // Polly's lazy transition: the first call after the break becomes the first trial.
                    publish = MoveToLocked(CircuitState.HalfOpen, CircuitStateChangeReason.BreakElapsed, exception: null, now);
                    _trialsInFlight = 1;
                    permit = _trialGeneration;
                    return true;

                case CircuitState.HalfOpen when _trialsInFlight < _halfOpenMaxCalls:
                    _trialsInFlight++;
                    permit = _trialGeneration;
                    return true;

                case CircuitState.HalfOpen when now >= _blockedUntil:
                    // Every slot has been taken for a whole break: treat those trials as hung, start a new generation.
                    abandoned = _trialsInFlight;
                    _trialGeneration = NextGeneration(_trialGeneration);
                    _trialsInFlight = 1;
                    Interlocked.Exchange(ref _blockedUntil, SaturatingAdd(now, _breakTicks));
                    permit = _trialGeneration;
                    break;

                case CircuitState.Isolated:
                    refusedIn = CircuitState.Isolated;
                    goto Refused;

                default: // open within its break, or half-open with every slot taken
                    refusedIn = (CircuitState)_state;

                    // `now` was read before the lock: another caller may have opened the circuit at a later instant,
                    // so the time left is capped at one break.
                    retryAfter = Math.Min(_blockedUntil - now, _breakTicks);
                    inner = _breakingException;
                    goto Refused;
            }
        }

        CircuitBreakerLog.TrialsAbandoned(_context.Logger, _context.Name, abandoned, _breakDuration);
        return true;

    Refused:
        rejection = Refuse(refusedIn, retryAfter, inner);
        return false;
    }

    private Exception Refuse(CircuitState refusedIn, long retryAfterTicks, Exception? inner)
    {
        Interlocked.Increment(ref _rejections);
        if (CircuitBreakerMetrics.Rejections.Enabled)
        {
            CircuitBreakerMetrics.Rejections.Add(1, _context.NameTag, new(CircuitBreakerMetrics.StateTag, CircuitBreakerMetrics.StateName(refusedIn)));
        }

        if (refusedIn == CircuitState.Isolated)
        {
            return new IsolatedCircuitException(_isolatedMessage);
        }

        // The messages are built once: formatting RetryAfter into each refusal would cost more than the refusal itself.
        var retryAfter = ToTimeSpan(retryAfterTicks);
        var message = refusedIn == CircuitState.Open ? _openMessage : _halfOpenMessage;
        return inner is null
            ? new BrokenCircuitException(message, retryAfter)
            : new BrokenCircuitException(message, retryAfter, inner);
    }

    private bool OnFailure(int permit, Exception exception)
    {
        Interlocked.Increment(ref _failures);
        if (CircuitBreakerMetrics.Calls.Enabled)
        {
            CircuitBreakerMetrics.Calls.Add(1, _context.NameTag, CircuitBreakerMetrics.Failure);
        }

        if (permit != 0 && TryFinishTrial(permit, TrialOutcome.Failure, exception, out var publish))
        {
            return publish;
        }

        if (_health is null)
        {
            var run = Interlocked.Increment(ref _consecutiveFailures);
            if (run < _failureThreshold || _state != (int)CircuitState.Closed)
            {
                return false;
            }

            lock (_lock)
            {
                return _state == (int)CircuitState.Closed &&
                       Volatile.Read(ref _consecutiveFailures) >= _failureThreshold &&
                       MoveToLocked(CircuitState.Open, CircuitStateChangeReason.ConsecutiveFailures, exception, _timeProvider.GetTimestamp());
            }
        }

        // Ratio mode. Polly also records failures that arrive while the circuit is not closed, but it empties the sample
        // whenever the circuit closes, so they can never count: skipping them is the same rule.
        if (_state != (int)CircuitState.Closed)
        {
            return false;
        }

        lock (_lock)
        {
            if (_state != (int)CircuitState.Closed)
            {
                return false;
            }

            var now = _timeProvider.GetTimestamp();
            _health.RecordLocked(now, failure: true);
            return _health.ShouldBreakLocked(now, _minimumThroughput, _failureRatio, out _) &&
                   MoveToLocked(CircuitState.Open, CircuitStateChangeReason.FailureRatio, exception, now);
        }
    }

    private bool OnIgnored(int permit)
    {
        Interlocked.Increment(ref _ignored);
        if (CircuitBreakerMetrics.Calls.Enabled)
        {
            CircuitBreakerMetrics.Calls.Add(1, _context.NameTag, CircuitBreakerMetrics.Ignored);
        }

        return permit != 0 && TryFinishTrial(permit, TrialOutcome.Ignored, exception: null, out var publish) && publish;
    }

    private void RecordRatioSuccess()
    {
        Debug.Assert(_health is not null, "Ratio mode only.");
        var now = _timeProvider.GetTimestamp();
        if (_health.TryRecordSuccess(now))
        {
            return;
        }

        lock (_lock)
        {
            _health.RecordLocked(now, failure: false);
        }
    }

    /// <summary>
    /// Applies a trial's outcome. Returns false when the circuit has closed meanwhile (Reset, or a sibling trial's
    /// success): the caller then counts the outcome as a closed-state one, as Polly counts every outcome that arrives while
    /// closed. <paramref name="publish"/>: a state change must be published.
    /// </summary>
    private bool TryFinishTrial(int permit, TrialOutcome outcome, Exception? exception, out bool publish)
    {
        publish = false;
        lock (_lock)
        {
            if (_state != (int)CircuitState.HalfOpen || permit != _trialGeneration)
            {
                // Abandoned, or the circuit moved on: a stale trial never moves a half-open, open or isolated circuit.
                return _state != (int)CircuitState.Closed;
            }

            var now = _timeProvider.GetTimestamp();
            switch (outcome)
            {
                case TrialOutcome.Success:
                    publish = MoveToLocked(CircuitState.Closed, CircuitStateChangeReason.TrialSucceeded, exception: null, now);
                    break;

                case TrialOutcome.Failure:
                    publish = MoveToLocked(CircuitState.Open, CircuitStateChangeReason.TrialFailed, exception, now);
                    break;

                default:
                    _trialsInFlight--; // frees the slot for another trial
                    break;
            }

            return true;
        }
    }

    /// <summary>
    /// Moves to <paramref name="to"/> and queues the change for publishing. Returns whether the caller must publish
    /// (no other thread is publishing already).
    /// </summary>
    private bool MoveToLocked(CircuitState to, CircuitStateChangeReason reason, Exception? exception, long now)
    {
        _lock.AssertHeld();
        var from = (CircuitState)_state;
        TimeSpan? breakDuration = null;
        _trialsInFlight = 0;
        switch (to)
        {
            case CircuitState.Open:
                Interlocked.Exchange(ref _blockedUntil, SaturatingAdd(now, _breakTicks));
                Volatile.Write(ref _breakingException, exception);
                _timesOpened++;
                breakDuration = _breakDuration;
                break;

            case CircuitState.HalfOpen:
                _trialGeneration = NextGeneration(_trialGeneration);
                Interlocked.Exchange(ref _blockedUntil, SaturatingAdd(now, _breakTicks));
                break;

            case CircuitState.Isolated:
                Interlocked.Exchange(ref _blockedUntil, long.MaxValue);
                break;

            default: // Closed: clear the counts before the hot path can see the state
                Volatile.Write(ref _consecutiveFailures, 0);
                _health?.ResetLocked(now);
                Volatile.Write(ref _breakingException, null);
                Interlocked.Exchange(ref _blockedUntil, 0);
                break;
        }

        _state = (int)to;
        return EnqueueChangeLocked(new CircuitStateChange(_context.Name, from, to, reason, exception, breakDuration, _timeProvider.GetUtcNow()));
    }

    private static int NextGeneration(int generation) => generation == int.MaxValue ? 1 : generation + 1;

    private static long SaturatingAdd(long timestamp, long span) =>
        timestamp > long.MaxValue - span ? long.MaxValue : timestamp + span;

    private long ToTimestampTicks(TimeSpan duration)
    {
        var frequency = _timeProvider.TimestampFrequency;
        var ticks = frequency == TimeSpan.TicksPerSecond
            ? (Int128)duration.Ticks
            : (Int128)duration.Ticks * frequency / TimeSpan.TicksPerSecond;
        return ticks > MaxTimestampSpan ? MaxTimestampSpan : (long)ticks;
    }

    private TimeSpan ToTimeSpan(long timestampTicks)
    {
        var frequency = _timeProvider.TimestampFrequency;
        return frequency == TimeSpan.TicksPerSecond
            ? TimeSpan.FromTicks(timestampTicks)
            : TimeSpan.FromTicks((long)((Int128)timestampTicks * TimeSpan.TicksPerSecond / frequency));
    }

    private enum TrialOutcome
    {
        Success,
        Failure,
        Ignored,
    }

    /// <summary>
    /// A count kept in one cell per processor, so that concurrent successes never write the same cache line: each adds
    /// to its own core's cell (an uncontended interlocked add), and reading sums the cells.
    /// </summary>
    private sealed class PerCoreCounter
    {
        private readonly Cell[] _cells = new Cell[CellCount()];

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Increment() =>
            Interlocked.Increment(ref _cells[Thread.GetCurrentProcessorId() & (_cells.Length - 1)].Value);

        public long Sum()
        {
            long sum = 0;
            for (var i = 0; i < _cells.Length; i++)
            {
                sum += Interlocked.Read(ref _cells[i].Value);
            }

            return sum;
        }

        private static int CellCount()
        {
            var count = 1;
            while (count < Environment.ProcessorCount && count < 64)
            {
                count <<= 1;
            }

            return count;
        }

        // 128 bytes: the value sits alone on its cache line (and its adjacent-line prefetch pair).
        [StructLayout(LayoutKind.Explicit, Size = 128)]
        private struct Cell
        {
            [FieldOffset(64)]
            public long Value;
        }
    }
}
