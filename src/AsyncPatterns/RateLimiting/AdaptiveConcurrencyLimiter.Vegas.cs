using Microsoft.Extensions.Logging;

namespace AsyncPatterns;

// The Vegas side: releasing a lease turns its latency (or drop) into a sample that moves the limit.
public sealed partial class AdaptiveConcurrencyLimiter
{
    /// <summary>Releases a lease's permits, feeds its latency sample to the algorithm and serves waiters.</summary>
    internal void Release(AdaptiveConcurrencyLease lease)
    {
        long now = _timeProvider.GetTimestamp();
        RateLimiterWaiterBatch granted = default;
        int oldLimit;
        int newLimit;
        lock (_lock)
        {
            oldLimit = _limit;
            int inFlightAtEnd = _inFlight;
            _inFlight -= lease.PermitCount;
            if (!_disposed)
            {
                if (!lease.IsIgnored)
                {
                    OnSampleLocked(lease, Math.Max(lease.InFlightAtStart, inFlightAtEnd), now);
                }

                GrantWaitersLocked(now, ref granted);
            }

            if (_inFlight == 0 && _queue.Count == 0)
            {
                _isIdle = true;
                _idleSince = now;
            }

            newLimit = _limit;
        }

        long grantedPermits = CompleteGranted(granted);
        RateLimitingMetrics.RecordQueueChange(-grantedPermits, _context.NameTag);
        if (newLimit != oldLimit)
        {
            RateLimitingMetrics.RecordLimitChange(newLimit - oldLimit, _context.NameTag);
            if (_context.Logger.IsEnabled(LogLevel.Debug))
            {
                var latency = ToTimeSpan(now - lease.StartTimestamp);
                var noLoadLatency = ToTimeSpan(Volatile.Read(ref _noLoadLatency));
                RateLimitingLog.LimitChanged(_context.Logger, _context.Name, oldLimit, newLimit, latency, noLoadLatency, lease.IsDropped);
            }
        }
    }

    /// <summary>Netflix's <c>Log10RootFunction</c>: max(1, floor(log10(limit))) below 1000, floor(sqrt(limit)) from there.</summary>
    private static int Log10Root(int limit) => limit < 1000 ? Math.Max(1, (int)Math.Log10(limit)) : (int)Math.Sqrt(limit);

    /// <summary>
    /// Takes one latency sample: every sample may lower the no-load latency; samples of requests that started after the
    /// last change form the next window, which closes (and runs the Vegas step) once it holds enough samples, or at
    /// once on a drop.
    /// </summary>
    /// <param name="lease">The lease released.</param>
    /// <param name="inFlight">The permits in flight while it ran: the larger of the counts at its start and its end.</param>
    /// <param name="now">The release's timestamp.</param>
    private void OnSampleLocked(AdaptiveConcurrencyLease lease, int inFlight, long now)
    {
        _lock.AssertHeld();
        long latency = now - lease.StartTimestamp;
        if (latency <= 0)
        {
            // Nothing measurable (a clock that did not move): no sample.
            return;
        }

        if (_noLoadLatency == 0 || latency < _noLoadLatency)
        {
            _noLoadLatency = latency;
        }

        if (lease.StartTimestamp < _windowStart)
        {
            // Started before the last change: says nothing about the current limit.
            return;
        }

        _windowCount++;
        _windowLatencySum += latency;
        _windowMaxInFlight = Math.Max(_windowMaxInFlight, inFlight);
        bool dropped = lease.IsDropped;
        if (!dropped && _windowCount < Math.Clamp(_limit / 2, 1, MaxWindowSamples))
        {
            return;
        }

        UpdateLimitLocked((double)_windowLatencySum / _windowCount, _windowMaxInFlight, dropped);
        _windowStart = now;
        _windowCount = 0;
        _windowLatencySum = 0;
        _windowMaxInFlight = 0;
    }

    /// <summary>The Vegas step for one window; see the type's remarks.</summary>
    private void UpdateLimitLocked(double latency, int maxInFlight, bool dropped)
    {
        _lock.AssertHeld();
        double estimate = _estimatedLimit;
        int step = Log10Root((int)estimate);
        double target;
        if (dropped)
        {
            target = estimate - step;
        }
        else if (maxInFlight * 2 < estimate)
        {
            return;
        }
        else
        {
            double queue = Math.Ceiling(estimate * (1 - (_noLoadLatency / latency)));
            if (queue <= step)
            {
                target = estimate + (_beta * step);
            }
            else if (queue < _alpha * step)
            {
                target = estimate + step;
            }
            else if (queue > _beta * step)
            {
                target = estimate - step;
            }
            else
            {
                return;
            }
        }

        target = Math.Clamp(target, _minLimit, _maxLimit);
        _estimatedLimit = ((1 - _smoothing) * estimate) + (_smoothing * target);
        Volatile.Write(ref _limit, Math.Clamp((int)_estimatedLimit, _minLimit, _maxLimit));
    }
}
