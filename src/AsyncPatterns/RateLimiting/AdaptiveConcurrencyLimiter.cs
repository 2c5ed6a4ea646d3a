using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Threading.RateLimiting;
using Microsoft.Extensions.Logging;

namespace AsyncPatterns;

/// <summary>
/// A concurrency limiter whose limit adapts to the latency and drops it observes, in the style of Netflix
/// concurrency-limits' Vegas limit: it grows while latency stays near the no-load minimum and shrinks when latency
/// (queueing at the backend) or drops rise.
/// </summary>
/// <remarks>
/// <para>
/// <b>Use.</b> Acquire a permit before calling a backend, dispose the lease when the call ends. The lease is an
/// <see cref="AdaptiveConcurrencyLease"/>; a successful outcome is the default, call
/// <see cref="AdaptiveConcurrencyLease.ReportDropped"/> for a timeout or a shed request (or use
/// <see cref="RateLimiterExtensions.RunAsync{T}"/>, which does it). Latency is measured with the
/// <see cref="System.TimeProvider"/> from the grant to the dispose. Code that only disposes leases (Polly's
/// rate-limiter strategy, ASP.NET Core's rate-limiting middleware) reports every call as a success with its latency.
/// </para>
/// <para>
/// <b>Algorithm</b> (Netflix <c>VegasLimit</c>, with its defaults). The no-load latency is the smallest latency
/// observed. The backend's queue is estimated as <c>queue = ceil(limit × (1 − noLoad / latency))</c> and, with
/// <c>L = max(1, floor(log10(limit)))</c>: a dropped request shrinks the limit by <c>L</c>; otherwise, when fewer than
/// half the permits were in use (at a request's start or end) the limit holds (the caller, not the backend, is the bottleneck); when
/// <c>queue ≤ L</c> it grows by <c>Beta × L</c>; when <c>queue &lt; Alpha × L</c> by <c>L</c>; when
/// <c>queue &gt; Beta × L</c> it shrinks by <c>L</c>; in between it holds. The result is clamped to
/// [<c>MinLimit</c>, <c>MaxLimit</c>] and smoothed by <c>Smoothing</c>. Against a backend whose latency climbs once
/// concurrency passes a knee, the limit settles a few permits above the knee.
/// </para>
/// <para>
/// <b>Once per round trip</b>, as TCP Vegas adjusts its window (Netflix applies the step to every sample): only
/// requests that started after the last change are evidence about it, so their samples form a window of up to 10
/// (half the limit when smaller) and the step runs once per window on their mean latency, or at once on a drop.
/// Stepping per sample makes the limit grow by <c>Beta × L</c> per request before the first queued latency comes
/// back, and it oscillates between far above and far below the knee; per round trip it converges.
/// </para>
/// <para>
/// <b>Choices.</b> Netflix's periodic re-probe of the no-load latency is not implemented: in a steadily saturated
/// system every sample is queued, so a re-probe reads a queued latency as the new minimum and ratchets the limit up.
/// The minimum therefore only falls; if a backend's latency rises for good, the limit settles lower until the
/// limiter is recreated. A request for more permits than the current limit is granted when nothing is in flight,
/// so it cannot starve; more than <c>MaxLimit</c> throws.
/// </para>
/// <para>
/// <b>Queueing</b> is that of <see cref="ConcurrencyLimiter"/>: <c>QueueLimit</c> counts permits,
/// <see cref="QueueProcessingOrder.OldestFirst"/> never lets a new request overtake a waiter,
/// <see cref="QueueProcessingOrder.NewestFirst"/> evicts the oldest waiter (failed lease) when full; a cancelled
/// waiter leaves at once; dispose gives waiters a failed lease.
/// </para>
/// <para>
/// <b>Leases and metadata</b> are those of <see cref="ConcurrencyLimiter"/> too: a request refused because the queue
/// is full gets a lease whose <see cref="MetadataName.ReasonPhrase"/> is <c>"Queue limit reached"</c>; other refused
/// leases (no slot free and no queue, evicted, disposed) carry no metadata, and none carries
/// <see cref="MetadataName.RetryAfter"/> (a concurrency limiter cannot know when a slot frees). Every lease's
/// <see cref="RateLimitLease.MetadataNames"/> lists <see cref="MetadataName.ReasonPhrase"/>, the one name its leases
/// may carry. Statistics count as <see cref="ConcurrencyLimiter"/>'s do: a zero-permit request is a lease, an evicted
/// waiter a failed one, a cancelled waiter neither.
/// </para>
/// <para>Thread-safety: every member is safe to call from any number of threads at once.</para>
/// </remarks>
public sealed partial class AdaptiveConcurrencyLimiter : RateLimiter, IRateLimiterWaiterOwner
{
    private readonly PrimitiveContext _context;
    private readonly TimeProvider _timeProvider;
    private readonly int _minLimit;
    private readonly int _maxLimit;
    private readonly int _queueLimit;
    private readonly QueueProcessingOrder _order;
    private readonly double _alpha;
    private readonly double _beta;
    private readonly double _smoothing;
    // Samples per window, at most: enough to average out one slow request, few enough to react within a round trip.
    private const int MaxWindowSamples = 10;

    private readonly Lock _lock = new();
    private readonly RateLimiterWaiterQueue _queue = new();

    // Guarded by _lock; _limit and _inFlight are also read without it (estimates).
    private double _estimatedLimit;
    private int _limit;
    private int _inFlight;
    private long _noLoadLatency;
    private long _windowStart;
    private int _windowCount;
    private long _windowLatencySum;
    private int _windowMaxInFlight;
    private long _idleSince;
    private bool _isIdle = true;
    private long _successfulLeases;
    private long _failedLeases;
    private volatile bool _disposed;

    /// <summary>Initializes a new limiter from <paramref name="options"/>, or with every default.</summary>
    /// <param name="options">The limit bounds, queue and algorithm settings; validated and copied.</param>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <see cref="AdaptiveConcurrencyLimiterOptions.MinLimit"/> is not greater than 0,
    /// <see cref="AdaptiveConcurrencyLimiterOptions.MaxLimit"/> is less than <c>MinLimit</c>,
    /// <see cref="AdaptiveConcurrencyLimiterOptions.InitialLimit"/> is outside [<c>MinLimit</c>, <c>MaxLimit</c>],
    /// <see cref="AdaptiveConcurrencyLimiterOptions.QueueLimit"/> is negative,
    /// <see cref="AdaptiveConcurrencyLimiterOptions.QueueProcessingOrder"/> is not defined,
    /// <see cref="AdaptiveConcurrencyLimiterOptions.Alpha"/> is not in (0, <c>Beta</c>),
    /// <see cref="AdaptiveConcurrencyLimiterOptions.Beta"/> is not finite, or
    /// <see cref="AdaptiveConcurrencyLimiterOptions.Smoothing"/> is not in (0, 1].
    /// </exception>
    /// <remarks>
    /// A bad option throws <see cref="ArgumentOutOfRangeException"/> whose <see cref="ArgumentException.ParamName"/> is
    /// the option's name (for example <c>"QueueLimit"</c>), as every primitive of this library does; the BCL limiters
    /// throw an <see cref="ArgumentException"/> whose <c>ParamName</c> is <c>"options"</c> instead.
    /// </remarks>
    public AdaptiveConcurrencyLimiter(AdaptiveConcurrencyLimiterOptions? options = null)
    {
        options ??= new AdaptiveConcurrencyLimiterOptions();
        Guard.Positive(options.MinLimit, nameof(options.MinLimit));
        Guard.InRange(options.MaxLimit, options.MinLimit, int.MaxValue, nameof(options.MaxLimit));
        Guard.InRange(options.InitialLimit, options.MinLimit, options.MaxLimit, nameof(options.InitialLimit));
        Guard.NotNegative(options.QueueLimit, nameof(options.QueueLimit));
        Guard.Defined(options.QueueProcessingOrder, nameof(options.QueueProcessingOrder));
        Guard.PositiveFinite(options.Beta, nameof(options.Beta));
        if (!(options.Alpha > 0 && options.Alpha < options.Beta))
        {
            Guard.ThrowOutOfRange(nameof(options.Alpha), options.Alpha,
                string.Create(CultureInfo.InvariantCulture, $"greater than 0 and less than Beta ({options.Beta})"));
        }

        if (!(options.Smoothing > 0 && options.Smoothing <= 1))
        {
            Guard.ThrowOutOfRange(nameof(options.Smoothing), options.Smoothing, "greater than 0 and at most 1");
        }

        _context = PrimitiveContext.Create(options, nameof(AdaptiveConcurrencyLimiter), typeof(AdaptiveConcurrencyLimiter).FullName!);
        _timeProvider = _context.TimeProvider;
        _minLimit = options.MinLimit;
        _maxLimit = options.MaxLimit;
        _queueLimit = options.QueueLimit;
        _order = options.QueueProcessingOrder;
        _alpha = options.Alpha;
        _beta = options.Beta;
        _smoothing = options.Smoothing;
        _estimatedLimit = options.InitialLimit;
        _limit = options.InitialLimit;
        _idleSince = _timeProvider.GetTimestamp();
        _windowStart = _idleSince;
        RateLimitingMetrics.RecordLimitChange(_limit, _context.NameTag);
    }

    /// <summary>Gets the current concurrency limit.</summary>
    public int CurrentLimit => Volatile.Read(ref _limit);

    /// <summary>Gets the number of permits held now (granted and not yet released).</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>Gets the smallest latency observed so far, the algorithm's no-load latency; null before the first sample.</summary>
    public TimeSpan? NoLoadLatency
    {
        get
        {
            lock (_lock)
            {
                return _noLoadLatency == 0 ? null : ToTimeSpan(_noLoadLatency);
            }
        }
    }

    /// <inheritdoc />
    /// <remarks>Idle while no permit is held and nobody waits; counted from the last release.</remarks>
    public override TimeSpan? IdleDuration
    {
        get
        {
            lock (_lock)
            {
                return _isIdle ? _timeProvider.GetElapsedTime(_idleSince) : null;
            }
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// <see cref="RateLimiterStatistics.CurrentAvailablePermits"/> is the current limit minus the permits in flight
    /// (never below 0); <see cref="RateLimiterStatistics.CurrentQueuedCount"/> counts queued permits.
    /// </remarks>
    /// <exception cref="ObjectDisposedException">The limiter was disposed.</exception>
    public override RateLimiterStatistics? GetStatistics()
    {
        ThrowIfDisposed();
        lock (_lock)
        {
            return new RateLimiterStatistics
            {
                CurrentAvailablePermits = Math.Max(0, _limit - _inFlight),
                CurrentQueuedCount = _queue.PermitCount,
                TotalFailedLeases = Interlocked.Read(ref _failedLeases),
                TotalSuccessfulLeases = Interlocked.Read(ref _successfulLeases),
            };
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// Returns an <see cref="AdaptiveConcurrencyLease"/> when granted (for <paramref name="permitCount"/> 0, a lease that
    /// holds nothing). With <see cref="QueueProcessingOrder.OldestFirst"/> a request is refused while others wait.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="permitCount"/> is greater than <c>MaxLimit</c>.</exception>
    /// <exception cref="ObjectDisposedException">The limiter was disposed.</exception>
    protected override RateLimitLease AttemptAcquireCore(int permitCount)
    {
        if (permitCount > _maxLimit)
        {
            ThrowPermitCountExceeded(permitCount);
        }

        ThrowIfDisposed();
        RateLimitLease? lease = null;
        lock (_lock)
        {
            ThrowIfDisposed();
            if (MayTakeNowLocked(permitCount))
            {
                lease = GrantLocked(permitCount, _timeProvider.GetTimestamp());
            }
        }

        return lease is null ? Refused(permitCount, RateLimitingLease.ConcurrencyRefused) : Granted(lease, permitCount);
    }

    /// <inheritdoc />
    /// <remarks>
    /// Completes at once when a slot is free (and, with <see cref="QueueProcessingOrder.OldestFirst"/>, nobody waits);
    /// otherwise waits in the queue for a release or a higher limit, or returns a refused lease when the queue has no
    /// room. Cancelling <paramref name="cancellationToken"/> removes the waiter at once and cancels the task.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="permitCount"/> is greater than <c>MaxLimit</c>.</exception>
    /// <exception cref="ObjectDisposedException">The limiter was disposed.</exception>
    protected override ValueTask<RateLimitLease> AcquireAsyncCore(int permitCount, CancellationToken cancellationToken)
    {
        if (permitCount > _maxLimit)
        {
            ThrowPermitCountExceeded(permitCount);
        }

        ThrowIfDisposed();
        RateLimiterWaiterBatch evicted = default;
        RateLimiterWaiter? waiter = null;
        RateLimitLease? granted = null;
        bool refused = false;
        int queueDelta;
        lock (_lock)
        {
            ThrowIfDisposed();
            int before = _queue.PermitCount;
            if (MayTakeNowLocked(permitCount))
            {
                granted = GrantLocked(permitCount, _timeProvider.GetTimestamp());
            }
            else if (!_queue.TryMakeRoom(permitCount, _queueLimit, _order, ref evicted))
            {
                refused = true;
            }

            if (granted is null && !refused)
            {
                waiter = new RateLimiterWaiter(this, permitCount, arrival: 0, cancellationToken);
                if (waiter.RegisterLocked())
                {
                    _queue.EnqueueTail(waiter);
                    _isIdle = false;
                }
            }

            queueDelta = _queue.PermitCount - before;
        }

        if (!evicted.IsEmpty)
        {
            long evictedPermits = evicted.CompleteAll(RateLimitingLease.ConcurrencyRefused);
            Interlocked.Add(ref _failedLeases, evicted.Count);
            RateLimitingMetrics.RecordRefused(evictedPermits, _context.NameTag);
            RateLimitingLog.WaiterEvicted(_context.Logger, _context.Name, (int)evictedPermits);
        }

        RateLimitingMetrics.RecordQueueChange(queueDelta, _context.NameTag);
        if (granted is not null)
        {
            return new ValueTask<RateLimitLease>(Granted(granted, permitCount));
        }

        if (refused)
        {
            return new ValueTask<RateLimitLease>(Refused(permitCount, RateLimitingLease.ConcurrencyQueueFull));
        }

        if (waiter!.CanceledWhileRegistering)
        {
            waiter.DisposeRegistration();
            return ValueTask.FromCanceled<RateLimitLease>(cancellationToken);
        }

        return new ValueTask<RateLimitLease>(waiter.Task);
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

    void IRateLimiterWaiterOwner.OnWaiterCanceled(RateLimiterWaiter waiter)
    {
        RateLimiterWaiterBatch granted = default;
        lock (_lock)
        {
            if (!_queue.TryRemoveCanceled(waiter))
            {
                return;
            }

            // With OldestFirst the cancelled waiter may have been the one holding back smaller requests behind it.
            GrantWaitersLocked(_timeProvider.GetTimestamp(), ref granted);
        }

        waiter.TrySetCanceled(waiter.CancellationToken);
        long grantedPermits = CompleteGranted(granted);
        RateLimitingMetrics.RecordQueueChange(-(waiter.PermitCount + grantedPermits), _context.NameTag);
    }

    // A request for zero permits takes nothing, so it overtakes no one: it succeeds whenever a slot is free, queue or not
    // (as ConcurrencyLimiter's does).
    private bool MayTakeNowLocked(int permitCount) =>
        (permitCount == 0 || _order == QueueProcessingOrder.NewestFirst || _queue.PermitCount == 0) && CanGrantLocked(permitCount);

    // Subtraction, not addition: _inFlight + permitCount can overflow when the limit is near int.MaxValue.
    private bool CanGrantLocked(int permitCount) =>
        permitCount == 0 ? _inFlight < _limit : permitCount <= _limit - _inFlight || _inFlight == 0;

    private RateLimitLease GrantLocked(int permitCount, long now)
    {
        _lock.AssertHeld();
        if (permitCount == 0)
        {
            return RateLimitingLease.ConcurrencyAcquiredNothing;
        }

        _inFlight += permitCount;
        _isIdle = false;
        return new AdaptiveConcurrencyLease(this, permitCount, now, _inFlight);
    }

    private void GrantWaitersLocked(long now, ref RateLimiterWaiterBatch granted)
    {
        _lock.AssertHeld();
        while (_queue.PeekNext(_order) is { } next && CanGrantLocked(next.PermitCount))
        {
            _queue.Remove(next);
            next.GrantedLease = GrantLocked(next.PermitCount, now);
            granted.Add(next);
        }
    }

    private long CompleteGranted(in RateLimiterWaiterBatch granted)
    {
        if (granted.IsEmpty)
        {
            return 0;
        }

        Interlocked.Add(ref _successfulLeases, granted.Count);
        long permits = granted.CompleteAll(lease: null);
        RateLimitingMetrics.RecordGranted(permits, _context.NameTag);
        return permits;
    }

    private RateLimitLease Granted(RateLimitLease lease, int permitCount)
    {
        Interlocked.Increment(ref _successfulLeases);
        RateLimitingMetrics.RecordGranted(permitCount, _context.NameTag);
        return lease;
    }

    private RateLimitLease Refused(int permitCount, RateLimitLease lease)
    {
        Interlocked.Increment(ref _failedLeases);
        RateLimitingMetrics.RecordRefused(permitCount, _context.NameTag);
        RateLimitingLog.Refused(_context.Logger, _context.Name, permitCount, retryAfter: null);
        return lease;
    }

    private void DisposeCore()
    {
        List<RateLimiterWaiter> waiters;
        int limit;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            waiters = _queue.RemoveAll(_order);
            limit = _limit;
        }

        long permits = 0;
        foreach (var waiter in waiters)
        {
            waiter.TrySetResult(RateLimitingLease.ConcurrencyRefused);
            waiter.DisposeRegistration();
            permits += waiter.PermitCount;
        }

        Interlocked.Add(ref _failedLeases, waiters.Count);
        RateLimitingMetrics.RecordQueueChange(-permits, _context.NameTag);
        RateLimitingMetrics.RecordLimitChange(-limit, _context.NameTag);
        if (waiters.Count > 0)
        {
            RateLimitingMetrics.RecordRefused(permits, _context.NameTag);
        }

        RateLimitingLog.Disposed(_context.Logger, _context.Name, waiters.Count);
    }

    private TimeSpan ToTimeSpan(long timestampTicks) =>
        TimeSpan.FromTicks((long)(timestampTicks * ((double)TimeSpan.TicksPerSecond / _timeProvider.TimestampFrequency)));

    private void ThrowIfDisposed()
    {
        if (_disposed)
        {
            ThrowDisposed();
        }
    }

    [DoesNotReturn]
    private static void ThrowDisposed() => throw new ObjectDisposedException(nameof(AdaptiveConcurrencyLimiter));

    [DoesNotReturn]
    private void ThrowPermitCountExceeded(int permitCount) =>
        throw new ArgumentOutOfRangeException(
            nameof(permitCount),
            permitCount,
            string.Create(CultureInfo.InvariantCulture, $"permitCount must be at most MaxLimit ({_maxLimit}); it was {permitCount}."));
}
