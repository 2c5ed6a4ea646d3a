namespace AsyncPatterns.Tests.TestSupport;

/// <summary>
/// A <see cref="TimeProvider"/> whose time moves only when a test says so.
/// </summary>
/// <remarks>
/// <para>
/// <see cref="Advance"/> moves the clock forward and fires every timer that falls due, one at a time, in due
/// order (ties in creation order), on the calling thread, with the clock set to each timer's due time while its
/// callback runs. Periodic timers fire once per period crossed. Timers created or changed by a callback are
/// honoured within the same <see cref="Advance"/> call if they fall due before its target.
/// </para>
/// <para>
/// Continuations that callbacks schedule (for example a <c>Task.Delay</c> completing) run on the thread pool
/// afterwards; use <see cref="AsyncAssert.EventuallyAsync"/> to wait for their effects.
/// </para>
/// </remarks>
public sealed class ManualTimeProvider : TimeProvider
{
    private readonly object _gate = new();
    private readonly List<ManualTimer> _timers = [];
    private DateTimeOffset _now;
    private long _sequence;

    /// <summary>Starts the clock at 2026-01-01T00:00:00Z, or at <paramref name="start"/>.</summary>
    public ManualTimeProvider(DateTimeOffset? start = null)
    {
        _now = start ?? new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
        Start = _now;
    }

    /// <summary>The instant the clock started at.</summary>
    public DateTimeOffset Start { get; }

    /// <summary>How far the clock has moved since it started.</summary>
    public TimeSpan Elapsed
    {
        get
        {
            lock (_gate)
            {
                return _now - Start;
            }
        }
    }

    /// <summary>The number of timers that are scheduled to fire.</summary>
    public int ActiveTimerCount
    {
        get
        {
            lock (_gate)
            {
                return _timers.Count(t => t.DueAt is not null);
            }
        }
    }

    /// <summary>The next instant a timer is due, if any is scheduled.</summary>
    public DateTimeOffset? NextDue
    {
        get
        {
            lock (_gate)
            {
                return _timers.Where(t => t.DueAt is not null).Select(t => t.DueAt).Min();
            }
        }
    }

    /// <inheritdoc />
    public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;

    /// <inheritdoc />
    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    /// <inheritdoc />
    public override DateTimeOffset GetUtcNow()
    {
        lock (_gate)
        {
            return _now;
        }
    }

    /// <inheritdoc />
    public override long GetTimestamp()
    {
        lock (_gate)
        {
            return _now.UtcTicks;
        }
    }

    /// <inheritdoc />
    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        ArgumentNullException.ThrowIfNull(callback);
        var timer = new ManualTimer(this, callback, state);
        lock (_gate)
        {
            _timers.Add(timer);
        }

        timer.Change(dueTime, period);
        return timer;
    }

    /// <summary>Moves the clock forward by <paramref name="delta"/>, firing every timer that falls due.</summary>
    public void Advance(TimeSpan delta)
    {
        if (delta < TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(delta), delta, "Time only moves forward.");
        }

        DateTimeOffset target;
        lock (_gate)
        {
            target = _now + delta;
        }

        AdvanceTo(target);
    }

    /// <summary>Moves the clock forward by <paramref name="milliseconds"/> milliseconds.</summary>
    public void AdvanceMilliseconds(double milliseconds) => Advance(TimeSpan.FromMilliseconds(milliseconds));

    /// <summary>Moves the clock to <paramref name="target"/>, firing every timer that falls due on the way.</summary>
    public void AdvanceTo(DateTimeOffset target)
    {
        while (true)
        {
            ManualTimer? due = null;
            lock (_gate)
            {
                if (target < _now)
                {
                    throw new ArgumentOutOfRangeException(nameof(target), target, "Time only moves forward.");
                }

                foreach (var timer in _timers)
                {
                    if (timer.DueAt is { } at && at <= target &&
                        (due is null || at < due.DueAt || (at == due.DueAt && timer.Sequence < due.Sequence)))
                    {
                        due = timer;
                    }
                }

                if (due is null)
                {
                    _now = target;
                    return;
                }

                _now = due.DueAt!.Value;
                due.DueAt = due.Period is { } p ? _now + p : null;
            }

            // Outside the lock: a callback may create, change or dispose timers.
            due.Callback(due.State);
        }
    }

    /// <summary>Fires every timer that is already due without moving the clock.</summary>
    public void FireDueTimers() => Advance(TimeSpan.Zero);

    private long NextSequence() => Interlocked.Increment(ref _sequence);

    private sealed class ManualTimer(ManualTimeProvider owner, TimerCallback callback, object? state) : ITimer
    {
        public TimerCallback Callback { get; } = callback;

        public object? State { get; } = state;

        public DateTimeOffset? DueAt { get; set; }

        public TimeSpan? Period { get; private set; }

        public long Sequence { get; private set; }

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            lock (owner._gate)
            {
                if (!owner._timers.Contains(this))
                {
                    return false;
                }

                Sequence = owner.NextSequence();
                Period = period == Timeout.InfiniteTimeSpan || period == TimeSpan.Zero ? null : period;
                DueAt = dueTime == Timeout.InfiniteTimeSpan ? null : owner._now + (dueTime < TimeSpan.Zero ? TimeSpan.Zero : dueTime);
                return true;
            }
        }

        public void Dispose()
        {
            lock (owner._gate)
            {
                owner._timers.Remove(this);
                DueAt = null;
            }
        }

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
