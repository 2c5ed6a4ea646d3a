using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.RateLimiting;

/// <summary>
/// Behaviour every <see cref="RateLimiter"/> shares, run against each implementation. The BCL's
/// <see cref="TokenBucketRateLimiter"/> runs it too, which proves the tests themselves describe the BCL's semantics.
/// </summary>
/// <remarks>
/// A limiter is created with <c>permitLimit</c> permits available at once. <see cref="Replenish"/> makes permits
/// available again: time passes for a rate limiter, held leases are released for a concurrency limiter. Tests keep
/// every granted lease in <see cref="Held"/> so that both kinds can be driven the same way.
/// </remarks>
public abstract class RateLimiterContractTests
{
    protected ManualTimeProvider Clock { get; } = new();

    protected Stack<RateLimitLease> Held { get; } = new();

    /// <summary>Creates the limiter under test with <paramref name="permitLimit"/> permits available now.</summary>
    protected abstract RateLimiter Create(int permitLimit, int queueLimit = 0, QueueProcessingOrder order = QueueProcessingOrder.OldestFirst);

    /// <summary>Makes <paramref name="permits"/> more permits available (one at a time).</summary>
    protected abstract void Replenish(RateLimiter limiter, int permits);

    [Fact]
    public void AttemptAcquire_grants_up_to_the_limit_then_refuses()
    {
        using var limiter = Create(3);
        for (var i = 0; i < 3; i++)
        {
            Hold(limiter.AttemptAcquire()).IsAcquired.Should().BeTrue();
        }

        limiter.AttemptAcquire().IsAcquired.Should().BeFalse();
    }

    [Fact]
    public void AttemptAcquire_takes_several_permits_at_once()
    {
        using var limiter = Create(3);
        Hold(limiter.AttemptAcquire(2)).IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire(2).IsAcquired.Should().BeFalse();
        Hold(limiter.AttemptAcquire(1)).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public void AttemptAcquire_zero_reports_whether_permits_remain_without_taking_one()
    {
        using var limiter = Create(1);
        limiter.AttemptAcquire(0).IsAcquired.Should().BeTrue();
        Hold(limiter.AttemptAcquire(1)).IsAcquired.Should().BeTrue("asking for zero took nothing");
        limiter.AttemptAcquire(0).IsAcquired.Should().BeFalse();
    }

    [Fact]
    public async Task Asking_for_more_than_the_limit_or_a_negative_count_throws()
    {
        using var limiter = Create(2, queueLimit: 10);
        limiter.Invoking(l => l.AttemptAcquire(3)).Should().Throw<ArgumentOutOfRangeException>();
        Func<Task> tooMany = async () => await limiter.AcquireAsync(3);
        await tooMany.Should().ThrowAsync<ArgumentOutOfRangeException>();
        limiter.Invoking(l => l.AttemptAcquire(-1)).Should().Throw<ArgumentOutOfRangeException>();
        Func<Task> negative = async () => await limiter.AcquireAsync(-1);
        await negative.Should().ThrowAsync<ArgumentOutOfRangeException>();
    }

    [Fact]
    public async Task AcquireAsync_completes_synchronously_when_permits_are_available()
    {
        using var limiter = Create(2, queueLimit: 2);
        var acquire = limiter.AcquireAsync().AsTask();
        acquire.IsCompletedSuccessfully.Should().BeTrue();
        Hold(await acquire).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task AcquireAsync_without_a_queue_refuses_at_once()
    {
        using var limiter = Create(1, queueLimit: 0);
        Hold(limiter.AttemptAcquire());
        var acquire = limiter.AcquireAsync().AsTask();
        acquire.IsCompletedSuccessfully.Should().BeTrue();
        (await acquire).IsAcquired.Should().BeFalse();
    }

    [Fact]
    public async Task Waiters_are_granted_oldest_first()
    {
        using var limiter = Create(1, queueLimit: 3);
        Hold(limiter.AttemptAcquire());
        var first = limiter.AcquireAsync().AsTask();
        var second = limiter.AcquireAsync().AsTask();
        var third = limiter.AcquireAsync().AsTask();
        first.IsCompleted.Should().BeFalse();

        Replenish(limiter, 1);
        Hold(await first.WithTimeout()).IsAcquired.Should().BeTrue();
        second.IsCompleted.Should().BeFalse();
        third.IsCompleted.Should().BeFalse();

        Replenish(limiter, 1);
        Hold(await second.WithTimeout()).IsAcquired.Should().BeTrue();
        third.IsCompleted.Should().BeFalse();

        Replenish(limiter, 1);
        Hold(await third.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task OldestFirst_a_new_request_does_not_overtake_a_waiter()
    {
        using var limiter = Create(2, queueLimit: 3);
        Hold(limiter.AttemptAcquire());
        Hold(limiter.AttemptAcquire());
        var waiter = limiter.AcquireAsync(2).AsTask();

        Replenish(limiter, 1);
        limiter.AttemptAcquire(1).IsAcquired.Should().BeFalse("a permit is free but the waiter came first");
        var late = limiter.AcquireAsync(1).AsTask();
        late.IsCompleted.Should().BeFalse();
        waiter.IsCompleted.Should().BeFalse();

        Replenish(limiter, 1);
        Hold(await waiter.WithTimeout()).IsAcquired.Should().BeTrue();
        late.IsCompleted.Should().BeFalse();

        Replenish(limiter, 1);
        Hold(await late.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task NewestFirst_serves_the_newest_waiter_first()
    {
        using var limiter = Create(1, queueLimit: 2, QueueProcessingOrder.NewestFirst);
        Hold(limiter.AttemptAcquire());
        var older = limiter.AcquireAsync().AsTask();
        var newer = limiter.AcquireAsync().AsTask();

        Replenish(limiter, 1);
        Hold(await newer.WithTimeout()).IsAcquired.Should().BeTrue();
        older.IsCompleted.Should().BeFalse();

        Replenish(limiter, 1);
        Hold(await older.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task NewestFirst_evicts_the_oldest_waiter_when_the_queue_is_full()
    {
        using var limiter = Create(1, queueLimit: 2, QueueProcessingOrder.NewestFirst);
        Hold(limiter.AttemptAcquire());
        var oldest = limiter.AcquireAsync().AsTask();
        var middle = limiter.AcquireAsync().AsTask();
        var newest = limiter.AcquireAsync().AsTask();

        (await oldest.WithTimeout()).IsAcquired.Should().BeFalse("the oldest waiter was evicted to make room");
        middle.IsCompleted.Should().BeFalse();
        newest.IsCompleted.Should().BeFalse();

        Replenish(limiter, 1);
        Hold(await newest.WithTimeout()).IsAcquired.Should().BeTrue();
        middle.IsCompleted.Should().BeFalse();
    }

    [Fact]
    public async Task NewestFirst_counts_each_evicted_waiter_as_a_failed_lease()
    {
        using var limiter = Create(2, queueLimit: 2, QueueProcessingOrder.NewestFirst);
        Hold(limiter.AttemptAcquire(2));
        var first = limiter.AcquireAsync().AsTask();
        var second = limiter.AcquireAsync().AsTask();
        long failedBefore = limiter.GetStatistics()!.TotalFailedLeases;

        // A request for two permits needs both queued places: both waiters go, each one a failed lease.
        var big = limiter.AcquireAsync(2).AsTask();

        (await first.WithTimeout()).IsAcquired.Should().BeFalse();
        (await second.WithTimeout()).IsAcquired.Should().BeFalse();
        big.IsCompleted.Should().BeFalse();
        var statistics = limiter.GetStatistics()!;
        statistics.TotalFailedLeases.Should().Be(failedBefore + 2);
        statistics.CurrentQueuedCount.Should().Be(2);
    }

    [Fact]
    public async Task NewestFirst_never_evicts_for_a_request_larger_than_the_queue()
    {
        using var limiter = Create(2, queueLimit: 1, QueueProcessingOrder.NewestFirst);
        Hold(limiter.AttemptAcquire(2));
        var waiter = limiter.AcquireAsync(1).AsTask();

        (await limiter.AcquireAsync(2).AsTask().WithTimeout()).IsAcquired.Should().BeFalse();
        waiter.IsCompleted.Should().BeFalse("nothing is evicted for a request that could never fit");
    }

    [Fact]
    public async Task OldestFirst_refuses_a_new_request_when_the_queue_is_full()
    {
        using var limiter = Create(1, queueLimit: 1);
        Hold(limiter.AttemptAcquire());
        var waiter = limiter.AcquireAsync().AsTask();

        (await limiter.AcquireAsync().AsTask().WithTimeout()).IsAcquired.Should().BeFalse();
        waiter.IsCompleted.Should().BeFalse();

        Replenish(limiter, 1);
        Hold(await waiter.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task QueueLimit_counts_permits_not_requests()
    {
        using var limiter = Create(2, queueLimit: 2);
        Hold(limiter.AttemptAcquire(2));
        var big = limiter.AcquireAsync(2).AsTask();

        (await limiter.AcquireAsync(1).AsTask().WithTimeout()).IsAcquired.Should().BeFalse("two permits already wait");
        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(2);
        big.IsCompleted.Should().BeFalse();
    }

    [Fact]
    public async Task A_cancelled_waiter_leaves_the_queue_at_once_and_frees_its_place()
    {
        using var limiter = Create(1, queueLimit: 1);
        Hold(limiter.AttemptAcquire());
        using var cts = new CancellationTokenSource();
        var cancelled = limiter.AcquireAsync(1, cts.Token).AsTask();

        cts.Cancel();
        await cancelled.Awaiting(t => t.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(0);

        var next = limiter.AcquireAsync().AsTask();
        next.IsCompleted.Should().BeFalse("the cancelled waiter's place was freed, so this one queues");

        Replenish(limiter, 1);
        Hold(await next.WithTimeout()).IsAcquired.Should().BeTrue("the permit went to the next waiter, not the cancelled one");
    }

    [Fact]
    public async Task An_already_cancelled_token_returns_a_cancelled_task_without_side_effects()
    {
        using var limiter = Create(1, queueLimit: 1);
        var acquire = limiter.AcquireAsync(1, new CancellationToken(canceled: true)).AsTask();

        acquire.IsCanceled.Should().BeTrue();
        await acquire.Awaiting(a => a).Should().ThrowAsync<OperationCanceledException>();
        Hold(limiter.AttemptAcquire()).IsAcquired.Should().BeTrue("the cancelled call took nothing");
    }

    [Fact]
    public async Task AcquireAsync_zero_waits_until_a_permit_is_available_and_takes_none()
    {
        using var limiter = Create(1, queueLimit: 1);
        (await limiter.AcquireAsync(0).AsTask().WithTimeout()).IsAcquired.Should().BeTrue();
        Hold(limiter.AttemptAcquire());

        var zero = limiter.AcquireAsync(0).AsTask();
        zero.IsCompleted.Should().BeFalse();

        Replenish(limiter, 1);
        (await zero.WithTimeout()).IsAcquired.Should().BeTrue();
        Hold(limiter.AttemptAcquire()).IsAcquired.Should().BeTrue("the zero-permit request took nothing");
    }

    [Fact]
    public async Task Dispose_fails_queued_waiters_and_later_calls_throw()
    {
        var limiter = Create(1, queueLimit: 2);
        Hold(limiter.AttemptAcquire());
        var first = limiter.AcquireAsync().AsTask();
        var second = limiter.AcquireAsync().AsTask();

        limiter.Dispose();

        (await first.WithTimeout()).IsAcquired.Should().BeFalse();
        (await second.WithTimeout()).IsAcquired.Should().BeFalse();
        limiter.Invoking(l => l.AttemptAcquire()).Should().Throw<ObjectDisposedException>();
        Func<Task> afterDispose = async () => await limiter.AcquireAsync();
        await afterDispose.Should().ThrowAsync<ObjectDisposedException>();
        limiter.Dispose();
        await limiter.DisposeAsync();
    }

    [Fact]
    public async Task GetStatistics_counts_leases_and_queued_permits()
    {
        using var limiter = Create(2, queueLimit: 2);
        Hold(limiter.AttemptAcquire());
        Hold(limiter.AttemptAcquire());
        limiter.AttemptAcquire().IsAcquired.Should().BeFalse();
        var waiter = limiter.AcquireAsync(2).AsTask();

        var stats = limiter.GetStatistics()!;
        stats.TotalSuccessfulLeases.Should().Be(2);
        stats.TotalFailedLeases.Should().Be(1);
        stats.CurrentQueuedCount.Should().Be(2);
        stats.CurrentAvailablePermits.Should().Be(0);

        Replenish(limiter, 2);
        Hold(await waiter.WithTimeout());
        stats = limiter.GetStatistics()!;
        stats.TotalSuccessfulLeases.Should().Be(3);
        stats.CurrentQueuedCount.Should().Be(0);
    }

    [Fact]
    public void IdleDuration_is_null_while_the_limiter_is_in_use()
    {
        using var limiter = Create(2);
        limiter.IdleDuration.Should().NotBeNull("a fresh limiter is idle");
        Hold(limiter.AttemptAcquire(2));
        limiter.IdleDuration.Should().BeNull();
    }

    // Ported from dotnet/runtime's BaseRateLimiterTests (TokenBucketRateLimiterTests, ConcurrencyLimiterTests).

    [Fact]
    public async Task NewestFirst_AttemptAcquire_takes_a_free_permit_while_others_wait()
    {
        using var limiter = Create(2, queueLimit: 3, QueueProcessingOrder.NewestFirst);
        Hold(limiter.AttemptAcquire(1)).IsAcquired.Should().BeTrue();
        var waiter = limiter.AcquireAsync(2).AsTask();
        waiter.IsCompleted.Should().BeFalse();

        Hold(limiter.AttemptAcquire(1)).IsAcquired.Should().BeTrue("with NewestFirst a new request may take a free permit");
        waiter.IsCompleted.Should().BeFalse();

        Replenish(limiter, 2);
        Hold(await waiter.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task NewestFirst_AcquireAsync_takes_a_free_permit_while_others_wait()
    {
        using var limiter = Create(2, queueLimit: 3, QueueProcessingOrder.NewestFirst);
        Hold(limiter.AttemptAcquire(1)).IsAcquired.Should().BeTrue();
        var waiter = limiter.AcquireAsync(2).AsTask();
        waiter.IsCompleted.Should().BeFalse();

        var newer = limiter.AcquireAsync(1).AsTask();
        newer.IsCompletedSuccessfully.Should().BeTrue("with NewestFirst a new request may take a free permit at once");
        Hold(await newer).IsAcquired.Should().BeTrue();
        waiter.IsCompleted.Should().BeFalse();

        Replenish(limiter, 2);
        Hold(await waiter.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task OldestFirst_asking_for_zero_reports_a_free_permit_even_while_a_larger_request_waits()
    {
        using var limiter = Create(2, queueLimit: 2);
        Hold(limiter.AttemptAcquire(1));
        var waiter = limiter.AcquireAsync(2).AsTask();
        waiter.IsCompleted.Should().BeFalse();

        limiter.AttemptAcquire(0).IsAcquired.Should().BeTrue("one permit is free; asking for zero takes nothing and overtakes no one");
        var zero = limiter.AcquireAsync(0).AsTask();
        zero.IsCompletedSuccessfully.Should().BeTrue();
        (await zero).IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire(1).IsAcquired.Should().BeFalse("OldestFirst: the waiter comes first");
        waiter.IsCompleted.Should().BeFalse();
        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(2);
    }

    [Fact]
    public async Task One_replenishment_grants_every_waiter_it_covers()
    {
        using var limiter = Create(2, queueLimit: 2);
        Hold(limiter.AttemptAcquire(2));
        var first = limiter.AcquireAsync(1).AsTask();
        var second = limiter.AcquireAsync(1).AsTask();
        first.IsCompleted.Should().BeFalse();
        second.IsCompleted.Should().BeFalse();

        Replenish(limiter, 2);
        Hold(await first.WithTimeout()).IsAcquired.Should().BeTrue();
        Hold(await second.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task OldestFirst_cancelling_the_head_waiter_lets_the_next_one_through()
    {
        using var limiter = Create(3, queueLimit: 3);
        for (var i = 0; i < 3; i++)
        {
            Hold(limiter.AttemptAcquire(1));
        }

        using var cts = new CancellationTokenSource();
        var big = limiter.AcquireAsync(2, cts.Token).AsTask();
        cts.Cancel();
        (await big.Awaiting(t => t.WithTimeout()).Should().ThrowAsync<TaskCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);

        var small = limiter.AcquireAsync(1).AsTask();
        Replenish(limiter, 1);
        Hold(await small.WithTimeout()).IsAcquired.Should().BeTrue();
        var statistics = limiter.GetStatistics()!;
        statistics.CurrentAvailablePermits.Should().Be(0);
        statistics.CurrentQueuedCount.Should().Be(0);
    }

    [Fact]
    public async Task NewestFirst_after_a_cancellation_a_new_request_evicts_the_remaining_waiter()
    {
        using var limiter = Create(2, queueLimit: 2, QueueProcessingOrder.NewestFirst);
        Hold(limiter.AttemptAcquire(2));
        using var cts = new CancellationTokenSource();
        var cancelled = limiter.AcquireAsync(1, cts.Token).AsTask();
        var remaining = limiter.AcquireAsync(1).AsTask();
        cts.Cancel();
        await cancelled.Awaiting(t => t.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();

        var big = limiter.AcquireAsync(2).AsTask();
        big.IsCompleted.Should().BeFalse();
        (await remaining.WithTimeout()).IsAcquired.Should().BeFalse("evicted to make room for the newest request");

        Replenish(limiter, 2);
        Hold(await big.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task A_cancelled_waiter_counts_as_neither_a_successful_nor_a_failed_lease_and_dispose_after_it_is_clean()
    {
        var limiter = Create(1, queueLimit: 1);
        Hold(limiter.AttemptAcquire());
        var before = limiter.GetStatistics()!;
        using var cts = new CancellationTokenSource();
        var waiter = limiter.AcquireAsync(1, cts.Token).AsTask();
        cts.Cancel();
        await waiter.Awaiting(t => t.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();

        var after = limiter.GetStatistics()!;
        after.TotalSuccessfulLeases.Should().Be(before.TotalSuccessfulLeases);
        after.TotalFailedLeases.Should().Be(before.TotalFailedLeases);
        limiter.Dispose();
        await limiter.DisposeAsync();
    }

    [Fact]
    public async Task A_refusal_because_the_queue_is_full_counts_as_a_failed_lease()
    {
        using var limiter = Create(1, queueLimit: 1);
        Hold(limiter.AttemptAcquire());
        var waiter = limiter.AcquireAsync().AsTask();

        (await limiter.AcquireAsync().AsTask().WithTimeout()).IsAcquired.Should().BeFalse();
        var statistics = limiter.GetStatistics()!;
        statistics.TotalFailedLeases.Should().Be(1);
        statistics.TotalSuccessfulLeases.Should().Be(1);
        statistics.CurrentQueuedCount.Should().Be(1);
        waiter.IsCompleted.Should().BeFalse();
    }

    [Fact]
    public async Task GetStatistics_counts_zero_permit_requests_as_leases()
    {
        using var limiter = Create(3, queueLimit: 1);
        Hold(limiter.AttemptAcquire(0)).IsAcquired.Should().BeTrue();
        limiter.GetStatistics()!.TotalSuccessfulLeases.Should().Be(1);
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(3, "asking for zero takes nothing");

        Hold(await limiter.AcquireAsync(0).AsTask().WithTimeout()).IsAcquired.Should().BeTrue();
        limiter.GetStatistics()!.TotalSuccessfulLeases.Should().Be(2);

        Hold(limiter.AttemptAcquire(3)).IsAcquired.Should().BeTrue();
        limiter.GetStatistics()!.TotalSuccessfulLeases.Should().Be(3);
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(0);

        limiter.AttemptAcquire(0).IsAcquired.Should().BeFalse();
        var statistics = limiter.GetStatistics()!;
        statistics.TotalSuccessfulLeases.Should().Be(3);
        statistics.TotalFailedLeases.Should().Be(1);
    }

    [Fact]
    public void GetStatistics_returns_a_new_snapshot_each_time()
    {
        using var limiter = Create(1);
        var before = limiter.GetStatistics()!;
        Hold(limiter.AttemptAcquire());
        var after = limiter.GetStatistics()!;

        after.Should().NotBeSameAs(before);
        before.CurrentAvailablePermits.Should().Be(1);
        before.TotalSuccessfulLeases.Should().Be(0);
        after.CurrentAvailablePermits.Should().Be(0);
        after.TotalSuccessfulLeases.Should().Be(1);
    }

    [Fact]
    public void GetStatistics_throws_after_dispose()
    {
        var limiter = Create(1);
        limiter.Dispose();
        limiter.Invoking(l => l.GetStatistics()).Should().Throw<ObjectDisposedException>();
    }

    [Fact]
    public async Task DisposeAsync_fails_queued_waiters_and_later_calls_throw()
    {
        var limiter = Create(1, queueLimit: 3);
        Hold(limiter.AttemptAcquire());
        var waiters = Enumerable.Range(0, 3).Select(_ => limiter.AcquireAsync().AsTask()).ToList();
        waiters.Should().OnlyContain(w => !w.IsCompleted);

        await limiter.DisposeAsync();

        foreach (var waiter in waiters)
        {
            (await waiter.WithTimeout()).IsAcquired.Should().BeFalse();
        }

        limiter.Invoking(l => l.AttemptAcquire()).Should().Throw<ObjectDisposedException>();
        limiter.Invoking(l => l.AttemptAcquire(0)).Should().Throw<ObjectDisposedException>();
        Func<Task> afterDispose = async () => await limiter.AcquireAsync();
        await afterDispose.Should().ThrowAsync<ObjectDisposedException>();
    }

    [Fact]
    public void Asking_for_a_negative_count_names_permitCount()
    {
        // (For more than the limit the token bucket names its own parameter, tokenCount; ours name permitCount.)
        using var limiter = Create(1);
        limiter.Invoking(l => l.AttemptAcquire(-1)).Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("permitCount");
    }

    [Fact]
    public void IdleDuration_returns_once_permits_are_back()
    {
        using var limiter = Create(1);
        Hold(limiter.AttemptAcquire());
        limiter.IdleDuration.Should().BeNull();

        Replenish(limiter, 1);
        limiter.IdleDuration.Should().NotBeNull();
    }

    [Fact]
    public void IdleDuration_is_null_while_a_waiter_is_queued()
    {
        using var limiter = Create(1, queueLimit: 1);
        Hold(limiter.AttemptAcquire());
        var waiter = limiter.AcquireAsync().AsTask();
        limiter.IdleDuration.Should().BeNull();
        waiter.IsCompleted.Should().BeFalse();
    }

    [Fact]
    public void An_acquired_lease_has_no_RetryAfter_and_disposing_it_twice_is_harmless()
    {
        using var limiter = Create(1);
        var lease = limiter.AttemptAcquire();
        lease.IsAcquired.Should().BeTrue();
        lease.TryGetMetadata(MetadataName.RetryAfter, out _).Should().BeFalse();
        lease.Dispose();
        lease.Dispose();
    }

    protected RateLimitLease Hold(RateLimitLease lease)
    {
        if (lease.IsAcquired)
        {
            Held.Push(lease);
        }

        return lease;
    }
}

/// <summary>The contract against <see cref="GcraRateLimiter"/>: 10 permits per second, so one more every 100 ms.</summary>
public sealed class GcraRateLimiterContractTests : RateLimiterContractTests
{
    protected override RateLimiter Create(int permitLimit, int queueLimit = 0, QueueProcessingOrder order = QueueProcessingOrder.OldestFirst) =>
        new GcraRateLimiter(new GcraRateLimiterOptions
        {
            PermitsPerSecond = 10,
            Burst = permitLimit,
            QueueLimit = queueLimit,
            QueueProcessingOrder = order,
            TimeProvider = Clock,
        });

    protected override void Replenish(RateLimiter limiter, int permits) => Clock.Advance(TimeSpan.FromMilliseconds(100 * permits));
}

/// <summary>The contract against <see cref="AdaptiveConcurrencyLimiter"/> with its limit pinned (min = max).</summary>
public sealed class AdaptiveConcurrencyLimiterContractTests : RateLimiterContractTests
{
    protected override RateLimiter Create(int permitLimit, int queueLimit = 0, QueueProcessingOrder order = QueueProcessingOrder.OldestFirst) =>
        new AdaptiveConcurrencyLimiter(new AdaptiveConcurrencyLimiterOptions
        {
            InitialLimit = permitLimit,
            MinLimit = permitLimit,
            MaxLimit = permitLimit,
            QueueLimit = queueLimit,
            QueueProcessingOrder = order,
            TimeProvider = Clock,
        });

    protected override void Replenish(RateLimiter limiter, int permits)
    {
        // Release the most recently held leases until that many permits are free.
        var freed = 0;
        while (freed < permits)
        {
            var lease = (AdaptiveConcurrencyLease)Held.Pop();
            freed += lease.PermitCount;
            lease.Dispose();
        }
    }
}

/// <summary>
/// The contract against the BCL's <see cref="TokenBucketRateLimiter"/> (manual replenishment, one token per period):
/// the reference that proves the contract tests describe the BCL's own semantics.
/// </summary>
/// <remarks>
/// The bucket adds a token per replenishment period elapsed on the real clock. To add exactly one, this drives its
/// internal <c>ReplenishInternal(long)</c> with a fake timestamp one period on, as the BCL's own tests do.
/// </remarks>
public sealed class TokenBucketRateLimiterContractTests : RateLimiterContractTests
{
    private static readonly System.Reflection.MethodInfo ReplenishInternal =
        typeof(TokenBucketRateLimiter).GetMethod("ReplenishInternal", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!;

    private static readonly System.Reflection.FieldInfo LastReplenishment =
        typeof(TokenBucketRateLimiter).GetField("_lastReplenishmentTick", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!;

    protected override RateLimiter Create(int permitLimit, int queueLimit = 0, QueueProcessingOrder order = QueueProcessingOrder.OldestFirst) =>
        new TokenBucketRateLimiter(new TokenBucketRateLimiterOptions
        {
            TokenLimit = permitLimit,
            TokensPerPeriod = 1,
            ReplenishmentPeriod = TimeSpan.FromSeconds(1),
            AutoReplenishment = false,
            QueueLimit = queueLimit,
            QueueProcessingOrder = order,
        });

    protected override void Replenish(RateLimiter limiter, int permits)
    {
        for (var i = 0; i < permits; i++)
        {
            var last = (long)LastReplenishment.GetValue(limiter)!;
            ReplenishInternal.Invoke(limiter, [last + System.Diagnostics.Stopwatch.Frequency]);
        }
    }
}
