using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <summary>
/// The metadata-only leases of this folder's limiters: one cached successful lease per limiter kind (a rate permit
/// needs no release, so a successful acquire allocates nothing) and refused leases that say when to retry or why.
/// </summary>
/// <remarks>
/// As the BCL's leases do, <see cref="RateLimitLease.MetadataNames"/> lists every name a lease of its limiter kind
/// may carry (<see cref="TokenBucketRateLimiter"/>'s list <see cref="MetadataName.RetryAfter"/>,
/// <see cref="ConcurrencyLimiter"/>'s <see cref="MetadataName.ReasonPhrase"/>), whether or not this lease has a value
/// for it; <see cref="RateLimitLease.TryGetMetadata(string, out object?)"/> and
/// <see cref="RateLimitLease.GetAllMetadata"/> give only the values it has.
/// </remarks>
internal sealed class RateLimitingLease : RateLimitLease
{
    /// <summary>The names a <see cref="GcraRateLimiter"/> lease may carry.</summary>
    internal static readonly string[] RateMetadataNames = [MetadataName.RetryAfter.Name];

    /// <summary>The names an <see cref="AdaptiveConcurrencyLimiter"/> lease may carry.</summary>
    internal static readonly string[] ConcurrencyMetadataNames = [MetadataName.ReasonPhrase.Name];

    /// <summary><see cref="ConcurrencyLimiter"/>'s reason for a refusal because the queue was full.</summary>
    internal const string QueueLimitReached = "Queue limit reached";

    private readonly TimeSpan? _retryAfter;
    private readonly string? _reason;
    private readonly string[] _metadataNames;

    private RateLimitingLease(bool isAcquired, string[] metadataNames, TimeSpan? retryAfter = null, string? reason = null)
    {
        IsAcquired = isAcquired;
        _metadataNames = metadataNames;
        _retryAfter = retryAfter;
        _reason = reason;
    }

    /// <summary>The one successful <see cref="GcraRateLimiter"/> lease, shared by every successful acquire.</summary>
    public static RateLimitLease Acquired { get; } = new RateLimitingLease(isAcquired: true, RateMetadataNames);

    /// <summary>A refused <see cref="GcraRateLimiter"/> lease without a retry hint: the limiter was disposed.</summary>
    public static RateLimitLease Refused { get; } = new RateLimitingLease(isAcquired: false, RateMetadataNames);

    /// <summary>The successful <see cref="AdaptiveConcurrencyLimiter"/> lease for zero permits (it holds nothing).</summary>
    public static RateLimitLease ConcurrencyAcquiredNothing { get; } = new RateLimitingLease(isAcquired: true, ConcurrencyMetadataNames);

    /// <summary>A refused <see cref="AdaptiveConcurrencyLimiter"/> lease: no slot free, evicted, or disposed.</summary>
    public static RateLimitLease ConcurrencyRefused { get; } = new RateLimitingLease(isAcquired: false, ConcurrencyMetadataNames);

    /// <summary>A refused <see cref="AdaptiveConcurrencyLimiter"/> lease because the queue had no room, with <see cref="ConcurrencyLimiter"/>'s reason.</summary>
    public static RateLimitLease ConcurrencyQueueFull { get; } = new RateLimitingLease(isAcquired: false, ConcurrencyMetadataNames, reason: QueueLimitReached);

    /// <inheritdoc />
    public override bool IsAcquired { get; }

    /// <inheritdoc />
    public override IEnumerable<string> MetadataNames => _metadataNames;

    /// <summary>A refused <see cref="GcraRateLimiter"/> lease whose <see cref="MetadataName.RetryAfter"/> is <paramref name="retryAfter"/>.</summary>
    public static RateLimitLease RefusedFor(TimeSpan retryAfter) => new RateLimitingLease(isAcquired: false, RateMetadataNames, retryAfter);

    /// <inheritdoc />
    public override bool TryGetMetadata(string metadataName, out object? metadata)
    {
        if (_retryAfter is { } retryAfter && metadataName == MetadataName.RetryAfter.Name)
        {
            metadata = retryAfter;
            return true;
        }

        if (_reason is not null && metadataName == MetadataName.ReasonPhrase.Name)
        {
            metadata = _reason;
            return true;
        }

        metadata = null;
        return false;
    }
}
