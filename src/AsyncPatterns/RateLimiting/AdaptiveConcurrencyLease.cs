using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <summary>
/// A permit held from an <see cref="AdaptiveConcurrencyLimiter"/>. Disposing it releases the permit and gives the
/// limiter one latency sample, measured from the acquire to the dispose.
/// </summary>
/// <remarks>
/// <para>
/// The outcome is a success unless the caller says otherwise before disposing: <see cref="ReportDropped"/> for a
/// request the backend shed or that timed out (the limit shrinks), <see cref="ReportIgnored"/> for one whose latency
/// says nothing about the backend (for example cancelled by its own caller, or failed validation before any call).
/// <see cref="RateLimiterExtensions.RunAsync{T}"/> reports the outcome itself.
/// </para>
/// <para>
/// Thread-safety: the report methods and <see cref="RateLimitLease.Dispose()"/> may be called from any thread; the
/// first dispose releases, later ones do nothing.
/// </para>
/// </remarks>
public sealed class AdaptiveConcurrencyLease : RateLimitLease
{
    private const int Success = 0;
    private const int Dropped = 1;
    private const int Ignored = 2;

    private readonly AdaptiveConcurrencyLimiter _limiter;
    private int _outcome;
    private int _released;

    internal AdaptiveConcurrencyLease(AdaptiveConcurrencyLimiter limiter, int permitCount, long startTimestamp, int inFlight)
    {
        _limiter = limiter;
        PermitCount = permitCount;
        StartTimestamp = startTimestamp;
        InFlightAtStart = inFlight;
    }

    /// <inheritdoc />
    /// <value>Always <see langword="true"/>: refused acquisitions get a different lease.</value>
    public override bool IsAcquired => true;

    /// <inheritdoc />
    /// <remarks>
    /// <see cref="MetadataName.ReasonPhrase"/>, the one name a lease of this limiter may carry (as
    /// <see cref="ConcurrencyLimiter"/>'s leases list it); an acquired lease has no value for it.
    /// </remarks>
    public override IEnumerable<string> MetadataNames => RateLimitingLease.ConcurrencyMetadataNames;

    internal int PermitCount { get; }

    internal long StartTimestamp { get; }

    internal int InFlightAtStart { get; }

    internal bool IsDropped => Volatile.Read(ref _outcome) == Dropped;

    internal bool IsIgnored => Volatile.Read(ref _outcome) == Ignored;

    /// <summary>
    /// Marks the request as dropped (shed by the backend, timed out, overloaded): the limiter will shrink its limit
    /// when the lease is disposed. Has no effect after the lease was disposed.
    /// </summary>
    public void ReportDropped() => Volatile.Write(ref _outcome, Dropped);

    /// <summary>
    /// Marks the request as not telling anything about the backend: the permit is released without a sample.
    /// Has no effect after the lease was disposed.
    /// </summary>
    public void ReportIgnored() => Volatile.Write(ref _outcome, Ignored);

    /// <inheritdoc />
    public override bool TryGetMetadata(string metadataName, out object? metadata)
    {
        metadata = null;
        return false;
    }

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (Interlocked.Exchange(ref _released, 1) == 0)
        {
            _limiter.Release(this);
        }

        base.Dispose(disposing);
    }
}
