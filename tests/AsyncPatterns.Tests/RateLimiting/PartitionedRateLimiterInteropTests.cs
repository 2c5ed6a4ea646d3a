using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.RateLimiting;

/// <summary>
/// The BCL's <see cref="PartitionedRateLimiter"/> is how ASP.NET Core's rate-limiting middleware limits per client:
/// <c>RateLimitPartition.Get(key, _ => new GcraRateLimiter(...))</c>. These tests run our limiters inside it.
/// </summary>
public sealed class PartitionedRateLimiterInteropTests
{
    private readonly ManualTimeProvider _clock = new();

    [Fact]
    public void Each_partition_gets_its_own_GCRA_rate()
    {
        using var limiter = PerClient(permitsPerSecond: 10, burst: 2);

        Acquired(limiter, "alice", 5).Should().Be(2, "alice's burst");
        Acquired(limiter, "bob", 5).Should().Be(2, "bob's own burst, untouched by alice");

        _clock.AdvanceMilliseconds(100);
        Acquired(limiter, "alice", 5).Should().Be(1, "one interval passed");
        Acquired(limiter, "bob", 5).Should().Be(1);
    }

    [Fact]
    public void A_refused_partition_lease_carries_RetryAfter_from_GCRA()
    {
        using var limiter = PerClient(permitsPerSecond: 4, burst: 1);
        limiter.AttemptAcquire("alice").IsAcquired.Should().BeTrue();

        using var refused = limiter.AttemptAcquire("alice");

        refused.IsAcquired.Should().BeFalse();
        refused.TryGetMetadata(MetadataName.RetryAfter, out var retryAfter).Should().BeTrue();
        retryAfter.Should().Be(TimeSpan.FromMilliseconds(250));
    }

    [Fact]
    public async Task A_partition_waiter_is_granted_when_its_permit_falls_due()
    {
        using var limiter = PerClient(permitsPerSecond: 10, burst: 1, queueLimit: 1);
        limiter.AttemptAcquire("alice").IsAcquired.Should().BeTrue();

        var waiter = limiter.AcquireAsync("alice").AsTask();
        await AsyncAssert.StillPendingAsync(waiter);

        _clock.AdvanceMilliseconds(100);
        using var lease = await waiter.WithTimeout();
        lease.IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task An_adaptive_partition_returns_its_slot_when_the_lease_is_disposed()
    {
        using var limiter = PartitionedRateLimiter.Create<string, string>(key => RateLimitPartition.Get(key, _ =>
            new AdaptiveConcurrencyLimiter(new AdaptiveConcurrencyLimiterOptions { InitialLimit = 1, MinLimit = 1, MaxLimit = 1, QueueLimit = 1, TimeProvider = _clock })));

        var first = limiter.AttemptAcquire("alice");
        first.IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire("alice").IsAcquired.Should().BeFalse("alice's one slot is taken");
        using (var bob = limiter.AttemptAcquire("bob"))
        {
            bob.IsAcquired.Should().BeTrue("bob has his own limiter");
        }

        var waiter = limiter.AcquireAsync("alice").AsTask();
        await AsyncAssert.StillPendingAsync(waiter);
        first.Dispose();

        using var second = await waiter.WithTimeout();
        second.IsAcquired.Should().BeTrue();
    }

    [Fact]
    public void A_chained_per_client_and_global_limit_holds_both_bounds()
    {
        // Per client first: a rate permit is used up even when a later limiter in the chain refuses, so a client
        // over its own limit must be turned away before it takes a global permit.
        using var global = PerClient(permitsPerSecond: 10, burst: 3, partitionKey: _ => "global");
        using var perClient = PerClient(permitsPerSecond: 10, burst: 2);
        using var limiter = PartitionedRateLimiter.CreateChained(perClient, global);

        Acquired(limiter, "alice", 5).Should().Be(2, "alice's own burst");
        Acquired(limiter, "bob", 5).Should().Be(1, "the global burst of 3 is used up");
        Acquired(limiter, "carol", 5).Should().Be(0);
    }

    private static int Acquired(PartitionedRateLimiter<string> limiter, string key, int attempts)
    {
        var granted = 0;
        for (var i = 0; i < attempts; i++)
        {
            using var lease = limiter.AttemptAcquire(key);
            granted += lease.IsAcquired ? 1 : 0;
        }

        return granted;
    }

    private PartitionedRateLimiter<string> PerClient(double permitsPerSecond, int burst, int queueLimit = 0, Func<string, string>? partitionKey = null) =>
        PartitionedRateLimiter.Create<string, string>(resource => RateLimitPartition.Get(partitionKey?.Invoke(resource) ?? resource, _ =>
            new GcraRateLimiter(new GcraRateLimiterOptions
            {
                PermitsPerSecond = permitsPerSecond,
                Burst = burst,
                QueueLimit = queueLimit,
                TimeProvider = _clock,
            })));
}
