using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <summary>
/// How the primitives that take a <see cref="RateLimiter"/> (the work queue, the priority scheduler) get a permit:
/// they pace work instead of failing it.
/// </summary>
internal static class RateLimiterPacing
{
    /// <summary>
    /// Acquires one permit, waiting for it. A refused lease that says when to retry (<see cref="MetadataName.RetryAfter"/>,
    /// as a <see cref="GcraRateLimiter"/> or a token bucket with no queue room does) is waited out on
    /// <paramref name="timeProvider"/> and the permit asked for again, so a limiter without a queue paces the work
    /// rather than failing it. A refused lease without <c>RetryAfter</c> (for example a full
    /// <see cref="ConcurrencyLimiter"/> queue) is returned as it is: the caller fails the item.
    /// </summary>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> fired while waiting.</exception>
    public static async ValueTask<RateLimitLease> AcquirePacedAsync(RateLimiter limiter, TimeProvider timeProvider, CancellationToken cancellationToken)
    {
        while (true)
        {
            var lease = await limiter.AcquireAsync(1, cancellationToken).ConfigureAwait(false);
            if (lease.IsAcquired || !lease.TryGetMetadata(MetadataName.RetryAfter, out var retryAfter))
            {
                return lease;
            }

            lease.Dispose();

            // Never spin: a limiter that says "retry now" still gets a millisecond.
            var delay = retryAfter > TimeSpan.Zero ? retryAfter : TimeSpan.FromMilliseconds(1);
            await Task.Delay(delay, timeProvider, cancellationToken).ConfigureAwait(false);
        }
    }
}
