using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <summary>
/// A rate limiter that spaces permits evenly with the generic cell rate algorithm (GCRA): exact at any rate,
/// from one permit an hour to millions a second, with no replenishment timer.
/// </summary>
/// <remarks>
/// <para>
/// <b>Algorithm.</b> GCRA as redis-cell computes it. The emission interval is <c>T = 1 s / PermitsPerSecond</c>
/// and the tolerance <c>τ = T × Burst</c>. The whole state is one <see cref="long"/>, the theoretical arrival time
/// (TAT). A request for <c>n</c> permits at time <c>now</c> computes <c>newTat = max(tat, now) + n·T</c>; it is
/// granted when <c>newTat − τ ≤ now</c> (and the TAT becomes <c>newTat</c> by compare-and-swap), otherwise refused
/// with <c>RetryAfter = newTat − τ − now</c>. So at most <c>Burst</c> permits go at one instant and, over any
/// span <c>t</c>, at most <c>PermitsPerSecond × t + Burst</c>.
/// </para>
/// <para>
/// <b>Time.</b> The TAT is kept in <see cref="System.TimeProvider"/> timestamp units (relative to the limiter's
/// creation, and multiplied by a power of two where the clock is coarse, so that <c>T</c> has at least millions
/// of steps at ordinary rates); a limiter keeps working for more than 100 years.
/// </para>
/// <para>
/// <b>Waiting.</b> <see cref="RateLimiter.AcquireAsync"/> queues a request that cannot be granted now, up to
/// <see cref="GcraRateLimiterOptions.QueueLimit"/> permits, in <see cref="GcraRateLimiterOptions.QueueProcessingOrder"/>
/// with the same semantics as <see cref="TokenBucketRateLimiter"/>. The limiter owns one timer, armed for the
/// instant the next waiter's permits fall due; each wake-up grants every waiter whose instant has come, and
/// counts each one's permits at that instant, not at the wake-up: when the operating system's timer (about 1 ms
/// resolution) wakes late, the waiters that fell due meanwhile are released together and the long-run rate stays
/// exact. A cancelled waiter leaves the queue at once and frees its place.
/// </para>
/// <para>
/// <b>Cost.</b> <see cref="RateLimiter.AttemptAcquire"/> is lock-free (one compare-and-swap) and a successful
/// acquire allocates nothing: every granted lease is one cached instance, and disposing it does nothing, because a
/// rate permit is used up, never returned. Refused leases carry <see cref="MetadataName.RetryAfter"/>.
/// </para>
/// <para>
/// <b>Leases, metadata and statistics</b> follow <see cref="TokenBucketRateLimiter"/>. Every lease's
/// <see cref="RateLimitLease.MetadataNames"/> lists <see cref="MetadataName.RetryAfter"/> (the one name its leases may
/// carry); an acquired lease has no value for it. A request refused at once gets <c>RetryAfter</c> = the time until its
/// permits, after those already queued, fall due (the token bucket's rule with one token per emission interval). Two
/// deliberate differences: a waiter evicted by <see cref="QueueProcessingOrder.NewestFirst"/> also gets a
/// <c>RetryAfter</c> (one emission interval; the token bucket gives none), and with <c>NewestFirst</c> the queued
/// permits are not added to a refusal's <c>RetryAfter</c>, since a new request goes before them. Waiters failed by
/// dispose get no <c>RetryAfter</c>. Statistics count a zero-permit request as a lease, an evicted waiter as a failed
/// lease, and a cancelled waiter as neither.
/// </para>
/// <para>Thread-safety: every member is safe to call from any number of threads at once.</para>
/// </remarks>
public sealed partial class GcraRateLimiter : RateLimiter, IRateLimiterWaiterOwner
{
    // 100 years of timestamps (scaled) must fit in a long with room for the tolerance on top.
    private const double MaxUnitsPerSecond = (1L << 62) / (100 * 365.25 * 24 * 3600);
    private const long MaxTolerance = 1L << 61;
    private const long NotArmed = long.MaxValue;

    private readonly PrimitiveContext _context;
    private readonly KeyValuePair<string, object?> _nameTag;
    private readonly TimeProvider _timeProvider;
    private readonly long _origin;
    private readonly long _scale;
    private readonly double _timeSpanTicksPerUnit;
    private readonly bool _roundDelaysToMilliseconds;
    private readonly long _interval;
    private readonly long _tolerance;
    private readonly int _burst;
    private readonly int _queueLimit;
    private readonly QueueProcessingOrder _order;
    private readonly ITimer _timer;
    private readonly Lock _lock = new();
    private readonly RateLimiterWaiterQueue _queue = new();

    // The theoretical arrival time, in scaled timestamp units since _origin. Written only by compare-and-swap.
    private long _tat;

    // Mirrors _queue.PermitCount for lock-free readers (fairness check, statistics).
    private int _queuedPermits;

    // The due time the timer is armed for; guarded by _lock.
    private long _timerDue = NotArmed;
    private long _successfulLeases;
    private long _failedLeases;
    private volatile bool _disposed;

    /// <summary>Initializes a new limiter from <paramref name="options"/>.</summary>
    /// <param name="options">The rate, burst and queue settings; validated and copied.</param>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <see cref="GcraRateLimiterOptions.PermitsPerSecond"/> is not a finite number greater than 0 (or is beyond
    /// the clock's resolution), <see cref="GcraRateLimiterOptions.Burst"/> is not greater than 0 (or
    /// <c>Burst / PermitsPerSecond</c> exceeds about 70 years), <see cref="GcraRateLimiterOptions.QueueLimit"/> is
    /// negative, or <see cref="GcraRateLimiterOptions.QueueProcessingOrder"/> is not a defined value.
    /// </exception>
    /// <remarks>
    /// A bad option throws <see cref="ArgumentOutOfRangeException"/> whose <see cref="ArgumentException.ParamName"/> is
    /// the option's name (for example <c>"QueueLimit"</c>), as every primitive of this library does; the BCL limiters
    /// throw an <see cref="ArgumentException"/> whose <c>ParamName</c> is <c>"options"</c> instead.
    /// </remarks>
    public GcraRateLimiter(GcraRateLimiterOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        Guard.PositiveFinite(options.PermitsPerSecond, nameof(options.PermitsPerSecond));
        Guard.Positive(options.Burst, nameof(options.Burst));
        Guard.NotNegative(options.QueueLimit, nameof(options.QueueLimit));
        Guard.Defined(options.QueueProcessingOrder, nameof(options.QueueProcessingOrder));

        _context = PrimitiveContext.Create(options, nameof(GcraRateLimiter), typeof(GcraRateLimiter).FullName!);
        _timeProvider = _context.TimeProvider;
        _nameTag = _context.NameTag;
        _burst = options.Burst;
        _queueLimit = options.QueueLimit;
        _order = options.QueueProcessingOrder;
        PermitsPerSecond = options.PermitsPerSecond;

        double frequency = _timeProvider.TimestampFrequency;
        _scale = 1;
        while (_scale < 1 << 16 && frequency * _scale * 2 <= MaxUnitsPerSecond)
        {
            _scale *= 2;
        }

        double unitsPerSecond = frequency * _scale;
        double interval = Math.Round(unitsPerSecond / options.PermitsPerSecond);
        if (interval < 1)
        {
            Guard.ThrowOutOfRange(nameof(options.PermitsPerSecond), options.PermitsPerSecond,
                string.Create(CultureInfo.InvariantCulture, $"a finite number greater than 0 and at most {unitsPerSecond} (the clock's resolution)"));
        }

        if (interval * options.Burst > MaxTolerance)
        {
            Guard.ThrowOutOfRange(nameof(options.Burst), options.Burst,
                "greater than 0, with Burst / PermitsPerSecond at most about 70 years");
        }

        _interval = (long)interval;
        _tolerance = _interval * options.Burst;
        _timeSpanTicksPerUnit = TimeSpan.TicksPerSecond / unitsPerSecond;
        _roundDelaysToMilliseconds = ReferenceEquals(_timeProvider, TimeProvider.System);
        _origin = _timeProvider.GetTimestamp();
        _timer = _timeProvider.CreateTimer(static state => ((GcraRateLimiter)state!).OnTimer(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
    }

    /// <summary>Gets the sustained rate this limiter grants, in permits per second.</summary>
    public double PermitsPerSecond { get; }

    /// <inheritdoc />
    /// <remarks>
    /// The limiter is idle once it could grant a full <see cref="GcraRateLimiterOptions.Burst"/> and no one
    /// waits; the duration counts from the instant the burst was fully saved up again.
    /// </remarks>
    public override TimeSpan? IdleDuration
    {
        get
        {
            if (Volatile.Read(ref _queuedPermits) > 0 || _queue.Count > 0)
            {
                return null;
            }

            long now = Now();
            long tat = Volatile.Read(ref _tat);
            return tat > now ? null : ToTimeSpan(now - tat);
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// <see cref="RateLimiterStatistics.CurrentQueuedCount"/> counts queued permits;
    /// <see cref="RateLimiterStatistics.TotalSuccessfulLeases"/> and <see cref="RateLimiterStatistics.TotalFailedLeases"/>
    /// count leases (including evictions and the failed leases given to waiters at dispose).
    /// </remarks>
    /// <exception cref="ObjectDisposedException">The limiter was disposed.</exception>
    public override RateLimiterStatistics? GetStatistics()
    {
        ThrowIfDisposed();
        return new RateLimiterStatistics
        {
            CurrentAvailablePermits = AvailableAt(Now()),
            CurrentQueuedCount = Volatile.Read(ref _queuedPermits),
            TotalFailedLeases = Interlocked.Read(ref _failedLeases),
            TotalSuccessfulLeases = Interlocked.Read(ref _successfulLeases),
        };
    }

    /// <inheritdoc />
    /// <remarks>
    /// Lock-free. With <see cref="QueueProcessingOrder.OldestFirst"/> a request never overtakes queued waiters: it
    /// is refused while any wait. <paramref name="permitCount"/> 0 succeeds when at least one permit is available.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="permitCount"/> is greater than <c>Burst</c>.</exception>
    /// <exception cref="ObjectDisposedException">The limiter was disposed.</exception>
    protected override RateLimitLease AttemptAcquireCore(int permitCount)
    {
        if (permitCount > _burst)
        {
            ThrowPermitCountExceeded(permitCount);
        }

        ThrowIfDisposed();
        long now = Now();
        if (permitCount == 0)
        {
            return AvailableAt(now) > 0 ? Granted(0) : Refuse(permitCount, now, queuedPermits: 0);
        }

        int queued = Volatile.Read(ref _queuedPermits);
        if (queued > 0 && _order == QueueProcessingOrder.OldestFirst)
        {
            return Refuse(permitCount, now, queued);
        }

        return TryTake(permitCount, now) ? Granted(permitCount) : Refuse(permitCount, now, queuedPermits: 0);
    }

    /// <inheritdoc />
    /// <remarks>
    /// Completes at once when the permits are due now (and, with <see cref="QueueProcessingOrder.OldestFirst"/>,
    /// nobody waits); otherwise waits in the queue, or returns a refused lease with
    /// <see cref="MetadataName.RetryAfter"/> when the queue has no room. The waiter is granted at the exact instant
    /// its permits fall due. Cancelling <paramref name="cancellationToken"/> removes the waiter at once and the
    /// task is cancelled. Disposing the limiter completes waiters with a refused lease.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="permitCount"/> is greater than <c>Burst</c>.</exception>
    /// <exception cref="ObjectDisposedException">The limiter was disposed.</exception>
    protected override ValueTask<RateLimitLease> AcquireAsyncCore(int permitCount, CancellationToken cancellationToken)
    {
        if (permitCount > _burst)
        {
            ThrowPermitCountExceeded(permitCount);
        }

        ThrowIfDisposed();
        long now = Now();
        if (permitCount == 0)
        {
            if (AvailableAt(now) > 0)
            {
                return new ValueTask<RateLimitLease>(Granted(0));
            }
        }
        else if ((_order == QueueProcessingOrder.NewestFirst || Volatile.Read(ref _queuedPermits) == 0) && TryTake(permitCount, now))
        {
            return new ValueTask<RateLimitLease>(Granted(permitCount));
        }

        return QueueOrRefuseAsync(permitCount, now, cancellationToken);
    }

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        base.Dispose(disposing);
        if (disposing)
        {
            DisposeCore();
        }
    }

    /// <inheritdoc />
    protected override ValueTask DisposeAsyncCore()
    {
        DisposeCore();
        return base.DisposeAsyncCore();
    }

    private void DisposeCore()
    {
        List<RateLimiterWaiter> waiters;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            waiters = _queue.RemoveAll(_order);
            Volatile.Write(ref _queuedPermits, 0);
            _timerDue = NotArmed;
        }

        _timer.Dispose();
        long permits = 0;
        foreach (var waiter in waiters)
        {
            waiter.TrySetResult(RateLimitingLease.Refused);
            waiter.DisposeRegistration();
            permits += waiter.PermitCount;
        }

        Interlocked.Add(ref _failedLeases, waiters.Count);
        RateLimitingMetrics.RecordQueueChange(-permits, _context.NameTag);
        if (waiters.Count > 0)
        {
            RateLimitingMetrics.RecordRefused(permits, _context.NameTag);
        }

        RateLimitingLog.Disposed(_context.Logger, _context.Name, waiters.Count);
    }

    /// <summary>The GCRA step: takes <paramref name="permitCount"/> permits if they conform at <paramref name="now"/>.</summary>
    private bool TryTake(int permitCount, long now)
    {
        long cost = permitCount * _interval;
        while (true)
        {
            long tat = Volatile.Read(ref _tat);
            long newTat = Math.Max(tat, now) + cost;
            if (newTat - _tolerance > now)
            {
                return false;
            }

            if (Interlocked.CompareExchange(ref _tat, newTat, tat) == tat)
            {
                return true;
            }
        }
    }

    private RateLimitLease Granted(int permitCount)
    {
        Interlocked.Increment(ref _successfulLeases);
        if (RateLimitingMetrics.Granted.Enabled)
        {
            RateLimitingMetrics.Granted.Add(permitCount, _nameTag);
        }

        return RateLimitingLease.Acquired;
    }

    /// <summary>A refused lease whose RetryAfter is when the permits (after <paramref name="queuedPermits"/> already waiting) fall due.</summary>
    private RateLimitLease Refuse(int permitCount, long now, int queuedPermits)
    {
        Interlocked.Increment(ref _failedLeases);
        long tat = Math.Max(Volatile.Read(ref _tat), now);
        long wait = tat + (Math.Max(permitCount, 1) + (long)queuedPermits) * _interval - _tolerance - now;
        var retryAfter = ToTimeSpan(wait > 0 ? wait : _interval);
        RateLimitingMetrics.RecordRefused(permitCount, _context.NameTag);
        RateLimitingLog.Refused(_context.Logger, _context.Name, permitCount, retryAfter);
        return RateLimitingLease.RefusedFor(retryAfter);
    }

    private int AvailableAt(long now)
    {
        long spare = now + _tolerance - Math.Max(Volatile.Read(ref _tat), now);
        return (int)Math.Clamp(spare / _interval, 0, _burst);
    }

    private long Now() => (_timeProvider.GetTimestamp() - _origin) * _scale;

    private TimeSpan ToTimeSpan(long units) => TimeSpan.FromTicks((long)Math.Ceiling(units * _timeSpanTicksPerUnit));

    /// <summary>
    /// The timer delay for <paramref name="units"/>, rounded up so the timer never fires before the permits are due.
    /// The system timer counts whole milliseconds (and truncates), so for it the delay is rounded up to one.
    /// </summary>
    private TimeSpan DelayUntil(long units)
    {
        double ticks = Math.Ceiling(units * _timeSpanTicksPerUnit);
        if (_roundDelaysToMilliseconds)
        {
            ticks = Math.Ceiling(ticks / TimeSpan.TicksPerMillisecond) * TimeSpan.TicksPerMillisecond;
        }

        return TimeSpan.FromTicks((long)Math.Max(ticks, 0));
    }

    private void ThrowIfDisposed()
    {
        if (_disposed)
        {
            ThrowDisposed();
        }
    }

    [DoesNotReturn]
    private static void ThrowDisposed() => throw new ObjectDisposedException(nameof(GcraRateLimiter));

    [DoesNotReturn]
    private void ThrowPermitCountExceeded(int permitCount) =>
        throw new ArgumentOutOfRangeException(
            nameof(permitCount),
            permitCount,
            string.Create(CultureInfo.InvariantCulture, $"permitCount must be at most Burst ({_burst}); it was {permitCount}. A request for more than Burst permits could never be granted."));
}
