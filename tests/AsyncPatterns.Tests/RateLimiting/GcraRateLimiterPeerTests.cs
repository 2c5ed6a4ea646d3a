using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;
using Polly;

namespace AsyncPatterns.Tests.RateLimiting;

/// <summary>
/// dotnet/runtime's <c>TokenBucketRateLimiterTests</c> ported to <see cref="GcraRateLimiter"/> where the behaviour is
/// the token bucket's own (one emission interval stands for one replenishment period of one token), plus what Polly's
/// rate-limiter strategy and ASP.NET Core's middleware read from a lease.
/// </summary>
public sealed class GcraRateLimiterPeerTests
{
    // One permit every 20 s, as the BCL tests' ReplenishmentPeriod of 20 s with one token per period.
    private static readonly TimeSpan Interval = TimeSpan.FromSeconds(20);

    private readonly ManualTimeProvider _clock = new();

    [Fact]
    public async Task RetryMetadataOnFailedWaitAsync()
    {
        using var limiter = Create(burst: 2, queueLimit: 1);
        using var lease = limiter.AttemptAcquire(2);

        var failed = await limiter.AcquireAsync(2).AsTask().WithTimeout();
        failed.IsAcquired.Should().BeFalse();
        failed.TryGetMetadata(MetadataName.RetryAfter.Name, out var metadata).Should().BeTrue();
        metadata.Should().BeOfType<TimeSpan>().Which.Should().Be(Interval * 2);
        failed.TryGetMetadata(MetadataName.RetryAfter, out var typed).Should().BeTrue();
        typed.Should().Be(Interval * 2);
        failed.MetadataNames.Should().Equal(MetadataName.RetryAfter.Name);
    }

    [Fact]
    public async Task CorrectRetryMetadataWithQueuedItem()
    {
        using var limiter = Create(burst: 2, queueLimit: 1);
        using var lease = limiter.AttemptAcquire(2);
        var waiter = limiter.AcquireAsync(1).AsTask();
        waiter.IsCompleted.Should().BeFalse();

        var failed = await limiter.AcquireAsync(2).AsTask().WithTimeout();
        failed.TryGetMetadata(MetadataName.RetryAfter, out var retryAfter).Should().BeTrue();
        retryAfter.Should().Be(Interval * 3, "the queued permit is served first");
    }

    [Fact]
    public async Task CorrectRetryMetadataWithNonZeroAvailableItems()
    {
        using var limiter = Create(burst: 3, queueLimit: 1);
        using var lease = limiter.AttemptAcquire(2);

        var failed = await limiter.AcquireAsync(3).AsTask().WithTimeout();
        failed.TryGetMetadata(MetadataName.RetryAfter, out var retryAfter).Should().BeTrue();
        retryAfter.Should().Be(Interval * 2, "one of the three permits is already there");
    }

    [Fact]
    public async Task FailsWhenQueuingMoreThanLimit_OldestFirst()
    {
        using var limiter = Create(burst: 1, queueLimit: 1);
        using var lease = limiter.AttemptAcquire(1);
        var waiter = limiter.AcquireAsync(1).AsTask();

        var failed = await limiter.AcquireAsync(1).AsTask().WithTimeout();
        failed.IsAcquired.Should().BeFalse();
        failed.TryGetMetadata(MetadataName.RetryAfter, out var retryAfter).Should().BeTrue();
        retryAfter.Should().Be(Interval * 2);
        waiter.IsCompleted.Should().BeFalse();
    }

    [Fact]
    public void NoMetadataOnAcquiredLease_and_MetadataNamesContainsAllMetadata()
    {
        using var limiter = Create(burst: 1);
        using var lease = limiter.AttemptAcquire(1);
        lease.IsAcquired.Should().BeTrue();
        lease.TryGetMetadata(MetadataName.RetryAfter, out _).Should().BeFalse();
        lease.GetAllMetadata().Should().BeEmpty();

        // As the token bucket's leases: MetadataNames lists every name a lease of this limiter may carry.
        lease.MetadataNames.Should().Equal(MetadataName.RetryAfter.Name);
    }

    [Fact]
    public void A_refused_lease_gives_RetryAfter_through_GetAllMetadata()
    {
        using var limiter = Create(burst: 1);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        var refused = limiter.AttemptAcquire();

        refused.GetAllMetadata().Should().ContainSingle().Which.Should().Be(new KeyValuePair<string, object?>(MetadataName.RetryAfter.Name, Interval));
    }

    [Fact]
    public void AcquireZero_reports_availability_even_while_a_larger_request_waits()
    {
        using var limiter = Create(burst: 2, queueLimit: 2);
        limiter.AttemptAcquire(2).IsAcquired.Should().BeTrue();
        _clock.Advance(Interval);
        var waiter = limiter.AcquireAsync(2).AsTask();

        limiter.AttemptAcquire(0).IsAcquired.Should().BeTrue("one permit is available, as the token bucket reports it");
        limiter.AttemptAcquire(1).IsAcquired.Should().BeFalse("OldestFirst: the waiter comes first");
        waiter.IsCompleted.Should().BeFalse();
    }

    [Fact]
    public async Task GetStatisticsHasCorrectValues()
    {
        // The token bucket's test: 100 tokens, queue 50, 30 tokens per 1 ms period. Here: Burst 100, one permit per ms.
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions
        {
            PermitsPerSecond = 1000,
            Burst = 100,
            QueueLimit = 50,
            TimeProvider = _clock,
        });

        var stats = limiter.GetStatistics()!;
        stats.CurrentAvailablePermits.Should().Be(100);
        stats.CurrentQueuedCount.Should().Be(0);
        stats.TotalFailedLeases.Should().Be(0);
        stats.TotalSuccessfulLeases.Should().Be(0);

        limiter.AttemptAcquire(60).IsAcquired.Should().BeTrue();
        stats = limiter.GetStatistics()!;
        stats.CurrentAvailablePermits.Should().Be(40);
        stats.TotalSuccessfulLeases.Should().Be(1);

        var queued = limiter.AcquireAsync(50).AsTask();
        stats = limiter.GetStatistics()!;
        stats.CurrentAvailablePermits.Should().Be(40);
        stats.CurrentQueuedCount.Should().Be(50);
        stats.TotalFailedLeases.Should().Be(0);

        (await limiter.AcquireAsync(1).AsTask().WithTimeout()).IsAcquired.Should().BeFalse();
        limiter.GetStatistics()!.TotalFailedLeases.Should().Be(1);

        limiter.AttemptAcquire(100).IsAcquired.Should().BeFalse();
        stats = limiter.GetStatistics()!;
        stats.CurrentAvailablePermits.Should().Be(40);
        stats.CurrentQueuedCount.Should().Be(50);
        stats.TotalFailedLeases.Should().Be(2);
        stats.TotalSuccessfulLeases.Should().Be(1);

        _clock.Advance(TimeSpan.FromMilliseconds(30));
        (await queued.WithTimeout()).IsAcquired.Should().BeTrue();
        stats = limiter.GetStatistics()!;
        stats.CurrentAvailablePermits.Should().Be(20);
        stats.CurrentQueuedCount.Should().Be(0);
        stats.TotalFailedLeases.Should().Be(2);
        stats.TotalSuccessfulLeases.Should().Be(2);
    }

    [Fact]
    public async Task LargeAcquiresAndQueuesDoNotIntegerOverflow()
    {
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions
        {
            PermitsPerSecond = 1_000,
            Burst = int.MaxValue,
            QueueLimit = int.MaxValue,
            QueueProcessingOrder = QueueProcessingOrder.NewestFirst,
            TimeProvider = _clock,
        });
        limiter.AttemptAcquire(int.MaxValue).IsAcquired.Should().BeTrue();

        var small = limiter.AcquireAsync(3).AsTask();
        small.IsCompleted.Should().BeFalse();
        var huge = limiter.AcquireAsync(int.MaxValue).AsTask();
        huge.IsCompleted.Should().BeFalse();
        (await small.WithTimeout()).IsAcquired.Should().BeFalse("evicted: both cannot fit in the queue");
        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(int.MaxValue);

        // int.MaxValue permits at 1,000/s fall due after about 24.9 days.
        _clock.Advance(TimeSpan.FromMilliseconds(int.MaxValue - 1L));
        huge.IsCompleted.Should().BeFalse();
        _clock.Advance(TimeSpan.FromMilliseconds(1));
        (await huge.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public void IdleDuration_grows_with_the_clock_while_idle_and_returns_after_use()
    {
        using var limiter = Create(burst: 1);
        limiter.IdleDuration.Should().Be(TimeSpan.Zero);
        _clock.Advance(TimeSpan.FromSeconds(15));
        limiter.IdleDuration.Should().Be(TimeSpan.FromSeconds(15));

        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        limiter.IdleDuration.Should().BeNull();
        _clock.Advance(Interval);
        limiter.IdleDuration.Should().Be(TimeSpan.Zero);
    }

    [Fact]
    public async Task A_refused_lease_gives_Polly_and_ASP_NET_Core_the_RetryAfter_they_read()
    {
        using var limiter = Create(burst: 1);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        _clock.Advance(TimeSpan.FromSeconds(5));

        // Polly's RateLimiterResilienceStrategy and ASP.NET Core's OnRejected samples read exactly this.
        using var lease = await limiter.AcquireAsync(1, CancellationToken.None).AsTask().WithTimeout();
        lease.IsAcquired.Should().BeFalse();
        lease.TryGetMetadata(MetadataName.RetryAfter, out TimeSpan retryAfter).Should().BeTrue();
        retryAfter.Should().Be(TimeSpan.FromSeconds(15));
        MetadataName.RetryAfter.Name.Should().Be("RETRY_AFTER");

        var rejected = await limiter.Awaiting(l => l.RunAsync(_ => ValueTask.FromResult(1)).AsTask()).Should().ThrowAsync<RateLimitRejectedException>();
        rejected.Which.RetryAfter.Should().Be(TimeSpan.FromSeconds(15));
        rejected.Which.Should().BeAssignableTo<ExecutionRejectedException>("one catch covers Polly's RateLimiterRejectedException and ours");
    }

    [Fact]
    public async Task An_evicted_waiter_gets_a_refused_lease_with_a_retry_hint()
    {
        using var limiter = Create(burst: 1, queueLimit: 1, QueueProcessingOrder.NewestFirst);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        var oldest = limiter.AcquireAsync().AsTask();
        var newest = limiter.AcquireAsync().AsTask();

        var evicted = await oldest.WithTimeout();
        evicted.IsAcquired.Should().BeFalse();
        evicted.TryGetMetadata(MetadataName.RetryAfter, out var retryAfter).Should().BeTrue();
        retryAfter.Should().BePositive();
        newest.IsCompleted.Should().BeFalse();
    }

    [Fact]
    public async Task Disposing_a_limiter_twice_and_leases_after_dispose_is_harmless()
    {
        var limiter = Create(burst: 1, queueLimit: 1);
        var lease = limiter.AttemptAcquire();
        var waiter = limiter.AcquireAsync().AsTask();
        limiter.Dispose();
        limiter.Dispose();
        await limiter.DisposeAsync();

        lease.Dispose();
        lease.Dispose();
        var failed = await waiter.WithTimeout();
        failed.IsAcquired.Should().BeFalse();
        failed.Dispose();
        failed.Dispose();
    }

    private GcraRateLimiter Create(int burst, int queueLimit = 0, QueueProcessingOrder order = QueueProcessingOrder.OldestFirst) =>
        new(new GcraRateLimiterOptions
        {
            PermitsPerSecond = 1 / Interval.TotalSeconds,
            Burst = burst,
            QueueLimit = queueLimit,
            QueueProcessingOrder = order,
            TimeProvider = _clock,
        });
}
