using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <summary>
/// The leases of <see cref="GcraRateLimiter"/>: one cached successful lease (a rate permit needs no release,
/// so a successful acquire allocates nothing) and refused leases that say when to retry.
/// </summary>
internal sealed class RateLimitingLease : RateLimitLease
{
    private static readonly string[] RetryAfterNames = [MetadataName.RetryAfter.Name];

    private readonly TimeSpan? _retryAfter;

    private RateLimitingLease(bool isAcquired, TimeSpan? retryAfter)
    {
        IsAcquired = isAcquired;
        _retryAfter = retryAfter;
    }

    /// <summary>The one successful lease, shared by every successful acquire.</summary>
    public static RateLimitLease Acquired { get; } = new RateLimitingLease(isAcquired: true, retryAfter: null);

    /// <summary>A refused lease without a retry hint: the limiter was disposed.</summary>
    public static RateLimitLease Refused { get; } = new RateLimitingLease(isAcquired: false, retryAfter: null);

    /// <inheritdoc />
    public override bool IsAcquired { get; }

    /// <inheritdoc />
    public override IEnumerable<string> MetadataNames => _retryAfter is null ? [] : RetryAfterNames;

    /// <summary>A refused lease whose <see cref="MetadataName.RetryAfter"/> is <paramref name="retryAfter"/>.</summary>
    public static RateLimitLease RefusedFor(TimeSpan retryAfter) => new RateLimitingLease(isAcquired: false, retryAfter);

    /// <inheritdoc />
    public override bool TryGetMetadata(string metadataName, out object? metadata)
    {
        if (_retryAfter is { } retryAfter && metadataName == MetadataName.RetryAfter.Name)
        {
            metadata = retryAfter;
            return true;
        }

        metadata = null;
        return false;
    }
}
