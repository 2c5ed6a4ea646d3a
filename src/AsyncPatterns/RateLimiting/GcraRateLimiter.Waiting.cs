using System.Threading.RateLimiting;

namespace AsyncPatterns;

// The waiting side: the queue of AcquireAsync callers, the one timer, and granting waiters at the instant their permits fall due.
public sealed partial class GcraRateLimiter
{
    void IRateLimiterWaiterOwner.OnWaiterCanceled(RateLimiterWaiter waiter)
    {
        RateLimiterWaiterBatch granted = default;
        lock (_lock)
        {
            if (!_queue.TryRemoveCanceled(waiter))
            {
                return;
            }
            if (!_disposed)
            {
                ProcessQueueLocked(Now(), ref granted);
            }

            Volatile.Write(ref _queuedPermits, _queue.PermitCount);
        }

        waiter.TrySetCanceled(waiter.CancellationToken);
        long grantedPermits = CompleteGranted(granted);
        RateLimitingMetrics.RecordQueueChange(-(waiter.PermitCount + grantedPermits), _context.NameTag);
    }

    private ValueTask<RateLimitLease> QueueOrRefuseAsync(int permitCount, long now, CancellationToken cancellationToken)
    {
        RateLimiterWaiterBatch granted = default;
        RateLimiterWaiterBatch evicted = default;
        RateLimiterWaiter? waiter = null;
        RateLimitLease? immediate = null;
        int queueDelta;
        lock (_lock)
        {
            ThrowIfDisposed();
            int before = _queue.PermitCount;

            // The queue may have emptied, or a permit fallen due, since the lock-free attempt.
            bool mayTakeNow = _order == QueueProcessingOrder.NewestFirst || _queue.PermitCount == 0;
            if (mayTakeNow && (permitCount == 0 ? AvailableAt(now) > 0 : TryTake(permitCount, now)))
            {
                immediate = Granted(permitCount);
            }
            else if (!_queue.TryMakeRoom(permitCount, _queueLimit, _order, ref evicted))
            {
                immediate = Refuse(permitCount, now, _queue.PermitCount);
            }

            if (immediate is null)
            {
                waiter = new RateLimiterWaiter(this, permitCount, now, cancellationToken);
                if (waiter.RegisterLocked())
                {
                    _queue.EnqueueTail(waiter);
                    ProcessQueueLocked(now, ref granted);
                }
            }

            queueDelta = _queue.PermitCount - before;
            Volatile.Write(ref _queuedPermits, _queue.PermitCount);
        }

        if (!evicted.IsEmpty)
        {
            long evictedPermits = evicted.CompleteAll(RateLimitingLease.RefusedFor(ToTimeSpan(_interval)));
            Interlocked.Add(ref _failedLeases, evicted.Count);
            RateLimitingMetrics.RecordRefused(evictedPermits, _context.NameTag);
            RateLimitingLog.WaiterEvicted(_context.Logger, _context.Name, (int)evictedPermits);
        }

        CompleteGranted(granted);
        RateLimitingMetrics.RecordQueueChange(queueDelta, _context.NameTag);
        if (immediate is not null)
        {
            return new ValueTask<RateLimitLease>(immediate);
        }

        if (waiter!.CanceledWhileRegistering)
        {
            waiter.DisposeRegistration();
            return ValueTask.FromCanceled<RateLimitLease>(cancellationToken);
        }

        return new ValueTask<RateLimitLease>(waiter.Task);
    }

    private void OnTimer()
    {
        RateLimiterWaiterBatch granted = default;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _timerDue = NotArmed;
            ProcessQueueLocked(Now(), ref granted);
            Volatile.Write(ref _queuedPermits, _queue.PermitCount);
        }

        long permits = CompleteGranted(granted);
        RateLimitingMetrics.RecordQueueChange(-permits, _context.NameTag);
    }

    /// <summary>
    /// Grants, in processing order, every waiter whose permits are due at <paramref name="now"/>, then arms the timer
    /// for the next one (or disarms it when nobody waits).
    /// </summary>
    private void ProcessQueueLocked(long now, ref RateLimiterWaiterBatch granted)
    {
        _lock.AssertHeld();
        while (_queue.PeekNext(_order) is { } next)
        {
            if (!TryGrantWaiterLocked(next, now, out long due))
            {
                if (_timerDue != due)
                {
                    _timerDue = due;

                    // Under the lock so that re-armings stay ordered; a TimeProvider never runs the callback inside Change.
                    _timer.Change(DelayUntil(due - now), Timeout.InfiniteTimeSpan);
                }

                return;
            }

            _queue.Remove(next);
            granted.Add(next);
        }

        if (_timerDue != NotArmed)
        {
            _timerDue = NotArmed;
            _timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        }
    }

    /// <summary>
    /// Grants <paramref name="waiter"/> if its permits are due at <paramref name="now"/>; otherwise says when they
    /// will be. A waiter's permits are counted at the instant they fell due (never before it arrived), not at the
    /// possibly later instant the timer woke, so a late wake-up does not lose rate.
    /// </summary>
    private bool TryGrantWaiterLocked(RateLimiterWaiter waiter, long now, out long due)
    {
        long cost = waiter.PermitCount * _interval;

        // A request for 0 permits waits until one permit is available and takes nothing.
        long needed = Math.Max(cost, _interval);
        while (true)
        {
            long tat = Volatile.Read(ref _tat);
            long conformsAt = Math.Max(waiter.Arrival, tat + needed - _tolerance);
            if (conformsAt > now)
            {
                due = conformsAt;
                return false;
            }

            due = 0;
            if (cost == 0 || Interlocked.CompareExchange(ref _tat, Math.Max(tat, conformsAt) + cost, tat) == tat)
            {
                return true;
            }
        }
    }

    private long CompleteGranted(in RateLimiterWaiterBatch granted)
    {
        if (granted.IsEmpty)
        {
            return 0;
        }

        Interlocked.Add(ref _successfulLeases, granted.Count);
        long permits = granted.CompleteAll(RateLimitingLease.Acquired);
        RateLimitingMetrics.RecordGranted(permits, _context.NameTag);
        return permits;
    }
}
