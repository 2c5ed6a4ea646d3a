using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.RateLimiting;

/// <summary>
/// dotnet/runtime's <c>ConcurrencyLimiterTests</c> ported to <see cref="AdaptiveConcurrencyLimiter"/> with its limit
/// pinned (MinLimit = MaxLimit), where it promises <see cref="ConcurrencyLimiter"/>'s semantics.
/// </summary>
public sealed class AdaptiveConcurrencyLimiterPeerTests
{
    private readonly ManualTimeProvider _clock = new();

    [Fact]
    public void CanAcquireResource_and_disposing_the_lease_releases_it()
    {
        using var limiter = Create(1);
        var lease = limiter.AttemptAcquire();
        lease.IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire().IsAcquired.Should().BeFalse();

        lease.Dispose();
        using var again = limiter.AttemptAcquire();
        again.IsAcquired.Should().BeTrue();
    }

    [Fact]
    public void Disposing_a_lease_twice_releases_its_permits_once()
    {
        using var limiter = Create(2);
        var first = limiter.AttemptAcquire();
        using var second = limiter.AttemptAcquire();

        first.Dispose();
        first.Dispose();

        using var third = limiter.AttemptAcquire();
        third.IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire().IsAcquired.Should().BeFalse("the second dispose released nothing");
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(0);
    }

    [Fact]
    public async Task ReasonMetadataOnFailedWaitAsync()
    {
        using var limiter = Create(2, queueLimit: 1);
        using var lease = limiter.AttemptAcquire(2);
        var waiter = limiter.AcquireAsync(1).AsTask();

        var failed = await limiter.AcquireAsync(1).AsTask().WithTimeout();
        failed.IsAcquired.Should().BeFalse();
        failed.TryGetMetadata(MetadataName.ReasonPhrase.Name, out var metadata).Should().BeTrue();
        metadata.Should().Be("Queue limit reached");
        failed.TryGetMetadata(MetadataName.ReasonPhrase, out var typed).Should().BeTrue();
        typed.Should().Be("Queue limit reached");
        failed.MetadataNames.Should().Equal(MetadataName.ReasonPhrase.Name);
        waiter.IsCompleted.Should().BeFalse();
    }

    [Fact]
    public void NoMetadataOnAcquiredLease_and_MetadataNamesContainsAllMetadata()
    {
        using var limiter = Create(1);
        using var lease = limiter.AttemptAcquire(1);
        lease.IsAcquired.Should().BeTrue();
        lease.TryGetMetadata(MetadataName.ReasonPhrase.Name, out _).Should().BeFalse();
        lease.GetAllMetadata().Should().BeEmpty();

        // As ConcurrencyLimiter's leases: MetadataNames lists every name a lease of this limiter may carry.
        lease.MetadataNames.Should().Equal(MetadataName.ReasonPhrase.Name);

        limiter.AttemptAcquire(0).MetadataNames.Should().Equal(MetadataName.ReasonPhrase.Name);
    }

    [Fact]
    public void A_refusal_that_did_not_queue_carries_no_reason()
    {
        using var limiter = Create(1);
        using var lease = limiter.AttemptAcquire();
        var refused = limiter.AttemptAcquire();
        refused.IsAcquired.Should().BeFalse();
        refused.TryGetMetadata(MetadataName.ReasonPhrase, out _).Should().BeFalse();
        refused.TryGetMetadata(MetadataName.RetryAfter, out _).Should().BeFalse("a concurrency limiter cannot know when a slot frees");
    }

    [Fact]
    public async Task GetStatisticsHasCorrectValues()
    {
        using var limiter = Create(100, queueLimit: 50);
        var stats = limiter.GetStatistics()!;
        stats.CurrentAvailablePermits.Should().Be(100);
        stats.CurrentQueuedCount.Should().Be(0);
        stats.TotalFailedLeases.Should().Be(0);
        stats.TotalSuccessfulLeases.Should().Be(0);

        var lease1 = limiter.AttemptAcquire(60);
        stats = limiter.GetStatistics()!;
        stats.CurrentAvailablePermits.Should().Be(40);
        stats.TotalSuccessfulLeases.Should().Be(1);

        var lease2 = limiter.AcquireAsync(50).AsTask();
        stats = limiter.GetStatistics()!;
        stats.CurrentAvailablePermits.Should().Be(40);
        stats.CurrentQueuedCount.Should().Be(50);

        (await limiter.AcquireAsync(1).AsTask().WithTimeout()).IsAcquired.Should().BeFalse();
        limiter.GetStatistics()!.TotalFailedLeases.Should().Be(1);

        limiter.AttemptAcquire(100).IsAcquired.Should().BeFalse();
        stats = limiter.GetStatistics()!;
        stats.CurrentAvailablePermits.Should().Be(40);
        stats.CurrentQueuedCount.Should().Be(50);
        stats.TotalFailedLeases.Should().Be(2);
        stats.TotalSuccessfulLeases.Should().Be(1);

        lease1.Dispose();
        using var granted = await lease2.WithTimeout();
        granted.IsAcquired.Should().BeTrue();
        stats = limiter.GetStatistics()!;
        stats.CurrentAvailablePermits.Should().Be(50);
        stats.CurrentQueuedCount.Should().Be(0);
        stats.TotalFailedLeases.Should().Be(2);
        stats.TotalSuccessfulLeases.Should().Be(2);
    }

    [Fact]
    public async Task LargeAcquiresAndQueuesDoNotIntegerOverflow()
    {
        using var limiter = Create(int.MaxValue, queueLimit: int.MaxValue, QueueProcessingOrder.NewestFirst);
        var lease = limiter.AttemptAcquire(int.MaxValue);
        lease.IsAcquired.Should().BeTrue();

        var small = limiter.AcquireAsync(3).AsTask();
        small.IsCompleted.Should().BeFalse("every permit is held; 3 more would overflow the count, not fit");
        var huge = limiter.AcquireAsync(int.MaxValue).AsTask();
        huge.IsCompleted.Should().BeFalse();
        (await small.WithTimeout()).IsAcquired.Should().BeFalse("evicted for the newest request");

        lease.Dispose();
        (await huge.WithTimeout()).IsAcquired.Should().BeTrue();
        limiter.InFlight.Should().Be(int.MaxValue);
    }

    [Fact]
    public void AttemptAcquire_never_overflows_the_count_in_flight()
    {
        using var limiter = Create(int.MaxValue);
        using var lease = limiter.AttemptAcquire(int.MaxValue - 1);
        lease.IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire(2).IsAcquired.Should().BeFalse();
        limiter.InFlight.Should().Be(int.MaxValue - 1);
    }

    [Fact]
    public async Task Releasing_a_lease_after_the_limiter_is_disposed_is_harmless()
    {
        var limiter = Create(1, queueLimit: 1);
        var lease = limiter.AttemptAcquire();
        var waiter = limiter.AcquireAsync().AsTask();
        await limiter.DisposeAsync();

        (await waiter.WithTimeout()).IsAcquired.Should().BeFalse();
        lease.Dispose();
        lease.Dispose();
        limiter.Dispose();
    }

    [Fact]
    public async Task An_evicted_waiter_gets_a_failed_lease_without_a_reason()
    {
        using var limiter = Create(1, queueLimit: 1, QueueProcessingOrder.NewestFirst);
        using var lease = limiter.AttemptAcquire();
        var oldest = limiter.AcquireAsync().AsTask();
        var newest = limiter.AcquireAsync().AsTask();

        var evicted = await oldest.WithTimeout();
        evicted.IsAcquired.Should().BeFalse();
        evicted.TryGetMetadata(MetadataName.ReasonPhrase, out _).Should().BeFalse();
        newest.IsCompleted.Should().BeFalse();
    }

    [Fact]
    public void IdleDuration_grows_with_the_clock_and_is_null_while_a_permit_is_held()
    {
        using var limiter = Create(2);
        _clock.Advance(TimeSpan.FromSeconds(2));
        limiter.IdleDuration.Should().Be(TimeSpan.FromSeconds(2));

        var lease = limiter.AttemptAcquire();
        limiter.IdleDuration.Should().BeNull();
        lease.Dispose();
        limiter.IdleDuration.Should().Be(TimeSpan.Zero);
        _clock.Advance(TimeSpan.FromSeconds(1));
        limiter.IdleDuration.Should().Be(TimeSpan.FromSeconds(1));
    }

    private AdaptiveConcurrencyLimiter Create(int limit, int queueLimit = 0, QueueProcessingOrder order = QueueProcessingOrder.OldestFirst) =>
        new(new AdaptiveConcurrencyLimiterOptions
        {
            InitialLimit = limit,
            MinLimit = limit,
            MaxLimit = limit,
            QueueLimit = queueLimit,
            QueueProcessingOrder = order,
            TimeProvider = _clock,
        });
}
