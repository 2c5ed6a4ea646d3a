using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <summary>
/// Builds the seeds' combined limit — at most N operations at once <em>and</em> at most R starts per second — as one
/// <see cref="RateLimiter"/>, on <see cref="RateLimiter.CreateChained"/>.
/// </summary>
/// <remarks>
/// <para>
/// The chain is a <see cref="ConcurrencyLimiter"/> first, then a <see cref="GcraRateLimiter"/>: a caller first takes a
/// concurrency slot (holding it until its lease is disposed), then waits for its rate permit. That order keeps starts
/// evenly spaced; the reverse would spend rate permits on callers still waiting for a slot, and release them in a burst.
/// A lease from the combined limiter holds both; disposing it frees the slot (the rate permit is used up).
/// </para>
/// <para>
/// Unlike a bare <see cref="RateLimiter.CreateChained"/> (which leaves its inner limiters alone), disposing the
/// returned limiter disposes both inner limiters, because this helper created them.
/// </para>
/// <para>Thread-safety: the returned limiter is safe to use from any number of threads at once.</para>
/// </remarks>
public static class CombinedRateLimiter
{
    /// <summary>Creates a limiter that allows at most <paramref name="maxConcurrency"/> at once and <paramref name="permitsPerSecond"/> starts per second.</summary>
    /// <param name="maxConcurrency">Permits that may be held at once; greater than 0.</param>
    /// <param name="permitsPerSecond">Sustained starts per second; a finite number greater than 0.</param>
    /// <param name="burst">Starts that may go at one instant after an idle spell; the default is 1.</param>
    /// <param name="queueLimit">
    /// Permits that may wait for a concurrency slot in <c>AcquireAsync</c>; the default 0 never waits. When greater than 0,
    /// callers holding a slot also wait their turn for the rate (at most <paramref name="maxConcurrency"/> of them).
    /// </param>
    /// <param name="timeProvider">The clock for the rate; null means <see cref="TimeProvider.System"/>.</param>
    /// <returns>One limiter enforcing both bounds.</returns>
    /// <exception cref="ArgumentOutOfRangeException">
    /// A bound is out of range; <see cref="ArgumentException.ParamName"/> is the parameter's name (or, for a rate
    /// beyond what the clock can resolve, the <see cref="GcraRateLimiterOptions"/> property's).
    /// </exception>
    public static RateLimiter Create(int maxConcurrency, double permitsPerSecond, int burst = 1, int queueLimit = 0, TimeProvider? timeProvider = null)
    {
        Guard.Positive(maxConcurrency, nameof(maxConcurrency));
        Guard.PositiveFinite(permitsPerSecond, nameof(permitsPerSecond));
        Guard.Positive(burst, nameof(burst));
        Guard.NotNegative(queueLimit, nameof(queueLimit));
        return Create(
            new ConcurrencyLimiterOptions { PermitLimit = maxConcurrency, QueueLimit = queueLimit },
            new GcraRateLimiterOptions
            {
                PermitsPerSecond = permitsPerSecond,
                Burst = burst,
                QueueLimit = queueLimit == 0 ? 0 : checked(maxConcurrency * burst),
                TimeProvider = timeProvider,
            });
    }

    /// <summary>Creates a limiter from a <see cref="ConcurrencyLimiter"/> and a <see cref="GcraRateLimiter"/> built from these options.</summary>
    /// <param name="concurrency">The concurrency bound and its queue.</param>
    /// <param name="rate">The rate bound and its queue.</param>
    /// <returns>One limiter enforcing both bounds; disposing it disposes both.</returns>
    /// <exception cref="ArgumentNullException">An options object is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range.</exception>
    public static RateLimiter Create(ConcurrencyLimiterOptions concurrency, GcraRateLimiterOptions rate)
    {
        ArgumentNullException.ThrowIfNull(concurrency);
        ArgumentNullException.ThrowIfNull(rate);
        var rateLimiter = new GcraRateLimiter(rate);
        ConcurrencyLimiter concurrencyLimiter;
        try
        {
            concurrencyLimiter = new ConcurrencyLimiter(concurrency);
        }
        catch
        {
            rateLimiter.Dispose();
            throw;
        }

        return new OwningRateLimiter(RateLimiter.CreateChained(concurrencyLimiter, rateLimiter), concurrencyLimiter, rateLimiter);
    }

    /// <summary>A chained limiter that also disposes the limiters it chains.</summary>
    private sealed class OwningRateLimiter(RateLimiter chain, params RateLimiter[] owned) : RateLimiter
    {
        public override TimeSpan? IdleDuration => chain.IdleDuration;

        public override RateLimiterStatistics? GetStatistics() => chain.GetStatistics();

        protected override RateLimitLease AttemptAcquireCore(int permitCount) => chain.AttemptAcquire(permitCount);

        protected override ValueTask<RateLimitLease> AcquireAsyncCore(int permitCount, CancellationToken cancellationToken) =>
            chain.AcquireAsync(permitCount, cancellationToken);

        protected override void Dispose(bool disposing)
        {
            base.Dispose(disposing);
            if (disposing)
            {
                chain.Dispose();
                foreach (var limiter in owned)
                {
                    limiter.Dispose();
                }
            }
        }

        protected override async ValueTask DisposeAsyncCore()
        {
            await chain.DisposeAsync().ConfigureAwait(false);
            foreach (var limiter in owned)
            {
                await limiter.DisposeAsync().ConfigureAwait(false);
            }

            await base.DisposeAsyncCore().ConfigureAwait(false);
        }
    }
}
