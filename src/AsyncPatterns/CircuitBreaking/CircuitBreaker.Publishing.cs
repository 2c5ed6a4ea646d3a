using Polly.CircuitBreaker;

namespace AsyncPatterns;

// Publishing state changes: the log line, the transitions counter and OnStateChanged, in order, outside the lock.
//
// A change is queued under the lock by the thread that made it. If no thread is publishing, that thread becomes the
// publisher: after releasing the lock it delivers the queue until it is empty. Changes made meanwhile (by a callback
// calling Reset, or by other threads) join the queue and are delivered by the same publisher, so callbacks never
// overlap and always see changes in the order they happened.
public sealed partial class CircuitBreaker
{
    private readonly Func<CircuitStateChange, ValueTask>? _onStateChanged;
    private readonly Queue<CircuitStateChange> _pendingChanges = new();
    private bool _publishing;

    private bool EnqueueChangeLocked(CircuitStateChange change)
    {
        _lock.AssertHeld();
        _pendingChanges.Enqueue(change);
        if (_publishing)
        {
            return false;
        }

        _publishing = true;
        return true;
    }

    private bool TryDequeueChange(out CircuitStateChange change)
    {
        lock (_lock)
        {
            if (_pendingChanges.TryDequeue(out change!))
            {
                return true;
            }

            _publishing = false;
            return false;
        }
    }

    /// <summary>Delivers every queued change; called only by the thread that became the publisher. Never throws.</summary>
    private ValueTask PublishAsync()
    {
        while (TryDequeueChange(out var change))
        {
            Report(change);
            if (_onStateChanged is null)
            {
                continue;
            }

            ValueTask pending;
            try
            {
                pending = _onStateChanged(change);
            }
#pragma warning disable CA1031 // A user callback must never break the breaker: log and carry on.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                CircuitBreakerLog.StateChangedCallbackFailed(_context.Logger, _context.Name, change.PreviousState, change.NewState, ex);
                continue;
            }

            if (!pending.IsCompleted)
            {
                return PublishSlowAsync(pending, change);
            }

            Observe(pending, change);
        }

        return default;
    }

    private async ValueTask PublishSlowAsync(ValueTask pending, CircuitStateChange change)
    {
        while (true)
        {
            try
            {
                await pending.ConfigureAwait(false);
            }
#pragma warning disable CA1031 // See PublishAsync.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                CircuitBreakerLog.StateChangedCallbackFailed(_context.Logger, _context.Name, change.PreviousState, change.NewState, ex);
            }

            while (true)
            {
                if (!TryDequeueChange(out change))
                {
                    return;
                }

                Report(change);
                try
                {
                    pending = _onStateChanged!(change);
                    break;
                }
#pragma warning disable CA1031 // See PublishAsync.
                catch (Exception ex)
#pragma warning restore CA1031
                {
                    CircuitBreakerLog.StateChangedCallbackFailed(_context.Logger, _context.Name, change.PreviousState, change.NewState, ex);
                }
            }
        }
    }

    private void Observe(ValueTask completed, CircuitStateChange change)
    {
        try
        {
#pragma warning disable CA1849, VSTHRD002 // Already completed: GetResult does not block; it surfaces the callback's exception.
            completed.GetAwaiter().GetResult();
#pragma warning restore CA1849, VSTHRD002
        }
#pragma warning disable CA1031 // See PublishAsync.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            CircuitBreakerLog.StateChangedCallbackFailed(_context.Logger, _context.Name, change.PreviousState, change.NewState, ex);
        }
    }

    /// <summary>For the synchronous Isolate/Reset: publish now; an asynchronous callback finishes in the background.</summary>
    private void PublishInBackground(bool publish)
    {
        if (!publish)
        {
            return;
        }

        var pending = PublishAsync();
        if (!pending.IsCompleted)
        {
            // PublishAsync never throws, so nothing can go unobserved.
            _ = pending.AsTask();
        }
    }

    private void Report(CircuitStateChange change)
    {
        if (CircuitBreakerMetrics.Transitions.Enabled)
        {
            CircuitBreakerMetrics.Transitions.Add(
                1,
                _context.NameTag,
                new(CircuitBreakerMetrics.FromTag, CircuitBreakerMetrics.StateName(change.PreviousState)),
                new(CircuitBreakerMetrics.ToTag, CircuitBreakerMetrics.StateName(change.NewState)));
        }

        var logger = _context.Logger;
        switch (change.NewState)
        {
            case CircuitState.Open:
                CircuitBreakerLog.Opened(logger, _context.Name, change.PreviousState, change.Reason, change.BreakDuration, change.Exception);
                break;
            case CircuitState.HalfOpen:
                CircuitBreakerLog.HalfOpened(logger, _context.Name, _halfOpenMaxCalls);
                break;
            case CircuitState.Closed:
                CircuitBreakerLog.Closed(logger, _context.Name, change.PreviousState, change.Reason);
                break;
            default:
                CircuitBreakerLog.Isolated(logger, _context.Name, change.PreviousState);
                break;
        }
    }
}
