namespace AsyncPatterns;

/// <summary>
/// The failure-ratio sample of a <see cref="CircuitBreaker"/> in ratio mode: Polly v8's health metrics, made to take
/// successes without a lock.
/// </summary>
/// <remarks>
/// <para>
/// The rule is Polly v8's (<c>HealthMetrics.Create</c>, <c>RollingHealthMetrics</c>, <c>SingleHealthMetrics</c>), so
/// that the same sequence of outcomes and clock readings opens both breakers at the same call:
/// a sampling period of 200 ms or more is split into 10 windows of <c>period.Ticks / 10</c>; a window starts at the first
/// outcome recorded after the current one is a window long, and leaves the sample once it started a full period ago.
/// A shorter period is one window that starts when the sample is reset and restarts at the first outcome after it
/// expired.
/// </para>
/// <para>
/// Windows live in a fixed ring, so nothing is allocated. A success lands in the current window with one
/// <see cref="Interlocked.Increment(ref int)"/> while the clock is before <c>_fastUntil</c> (the end of the current window
/// or the expiry of the oldest, whichever is first); otherwise, and for every failure, the owner takes its lock and calls
/// the <c>...Locked</c> methods. A success racing a window roll on another thread may land in the window next to the
/// one Polly would pick; sequential use is exact.
/// </para>
/// </remarks>
internal sealed class CircuitHealthWindow
{
    private const int NumberOfWindows = 10;

    // A sample holds at most 11 windows after expiry (10 when the period divides by 10 ticks); 12 leaves a spare.
    private const int RingSize = 12;

    private static readonly TimeSpan SingleWindowBelow = TimeSpan.FromTicks(TimeSpan.FromMilliseconds(20).Ticks * NumberOfWindows);

    private readonly Bucket[] _ring;
    private readonly long _samplingDuration;
    private readonly long _windowDuration;
    private readonly bool _single;

    private int _oldest;
    private int _count;
    private int _current = -1;
    private long _fastUntil = long.MinValue;

    /// <param name="samplingDuration">The period, already validated as positive.</param>
    /// <param name="toTimestampTicks">Converts a duration to the clock's timestamp units.</param>
    /// <param name="now">The clock's timestamp now: a single window starts here.</param>
    public CircuitHealthWindow(TimeSpan samplingDuration, Func<TimeSpan, long> toTimestampTicks, long now)
    {
        _single = samplingDuration < SingleWindowBelow;
        _samplingDuration = toTimestampTicks(samplingDuration);
        _windowDuration = toTimestampTicks(TimeSpan.FromTicks(samplingDuration.Ticks / NumberOfWindows));
        _ring = new Bucket[_single ? 1 : RingSize];
        ResetLocked(now);
    }

    /// <summary>Records a success without a lock when the current window takes it; false means call <see cref="RecordLocked"/>.</summary>
    public bool TryRecordSuccess(long now)
    {
        var current = Volatile.Read(ref _current);
        if (current >= 0 && now < Volatile.Read(ref _fastUntil))
        {
            Interlocked.Increment(ref _ring[current].Successes);
            return true;
        }

        return false;
    }

    /// <summary>Records an outcome; the owner holds its lock.</summary>
    public void RecordLocked(long now, bool failure)
    {
        var current = UpdateLocked(now);
        if (failure)
        {
            Interlocked.Increment(ref _ring[current].Failures);
        }
        else
        {
            Interlocked.Increment(ref _ring[current].Successes);
        }
    }

    /// <summary>Whether the sample now says to break, by Polly's <c>HealthInfo</c> arithmetic.</summary>
    public bool ShouldBreakLocked(long now, int minimumThroughput, double failureRatio, out int throughput)
    {
        UpdateLocked(now);
        int successes = 0, failures = 0;
        for (int i = 0, index = _oldest; i < _count; i++, index = Next(index))
        {
            successes += Volatile.Read(ref _ring[index].Successes);
            failures += Volatile.Read(ref _ring[index].Failures);
        }

        throughput = successes + failures;
        return throughput != 0 && throughput >= minimumThroughput && failures / (double)throughput >= failureRatio;
    }

    /// <summary>Empties the sample (the circuit closed); a single window restarts at <paramref name="now"/>.</summary>
    public void ResetLocked(long now)
    {
        if (_single)
        {
            StartWindowLocked(0, now);
            _oldest = 0;
            _count = 1;
            Volatile.Write(ref _current, 0);
            Volatile.Write(ref _fastUntil, now + _samplingDuration);
        }
        else
        {
            // Publish "no current window" first so a racing success takes the slow path.
            Volatile.Write(ref _current, -1);
            Volatile.Write(ref _fastUntil, long.MinValue);
            _oldest = 0;
            _count = 0;
        }
    }

    private int UpdateLocked(long now)
    {
        if (_single)
        {
            if (now - _ring[0].StartedAt >= _samplingDuration)
            {
                ResetLocked(now);
            }

            return 0;
        }

        // Expire first, then start a window: the same surviving set as Polly's start-then-expire, in fewer slots.
        while (_count > 0 && now - _ring[_oldest].StartedAt >= _samplingDuration)
        {
            _oldest = Next(_oldest);
            _count--;
        }

        var current = _count == 0 ? -1 : _current;
        if (current < 0 || now - _ring[current].StartedAt >= _windowDuration)
        {
            current = _count == 0 ? _oldest : Next(_current);
            Volatile.Write(ref _current, -1);
            StartWindowLocked(current, now);
            _count++;
            Volatile.Write(ref _current, current);
        }

        Volatile.Write(ref _fastUntil, Math.Min(_ring[current].StartedAt + _windowDuration, _ring[_oldest].StartedAt + _samplingDuration));
        return current;
    }

    private void StartWindowLocked(int index, long now)
    {
        ref var bucket = ref _ring[index];
        bucket.StartedAt = now;
        Volatile.Write(ref bucket.Successes, 0);
        Volatile.Write(ref bucket.Failures, 0);
    }

    private int Next(int index) => index + 1 == _ring.Length ? 0 : index + 1;

    private struct Bucket
    {
        public long StartedAt;
        public int Successes;
        public int Failures;
    }
}
