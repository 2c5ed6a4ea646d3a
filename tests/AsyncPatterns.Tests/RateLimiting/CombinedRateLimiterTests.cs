using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.RateLimiting;

public sealed class CombinedRateLimiterTests
{
    private readonly ManualTimeProvider _clock = new();

    [Theory]
    [InlineData(250, 80)] // each call holds its slot 250 ms: 2 slots allow 8 starts/s, below the rate
    [InlineData(50, 100)] // each call holds its slot 50 ms: the rate (10/s) is the bound
    public void At_most_N_at_once_and_at_most_R_per_second_hold_together(int holdMilliseconds, int expectedStarts)
    {
        using var limiter = CombinedRateLimiter.Create(maxConcurrency: 2, permitsPerSecond: 10, timeProvider: _clock);
        var running = new List<(RateLimitLease Lease, DateTimeOffset Until)>();
        var starts = new List<DateTimeOffset>();
        var end = _clock.GetUtcNow() + TimeSpan.FromSeconds(10);
        while (_clock.GetUtcNow() < end)
        {
            foreach (var done in running.Where(r => r.Until <= _clock.GetUtcNow()).ToList())
            {
                done.Lease.Dispose();
                running.Remove(done);
            }

            RateLimitLease lease;
            while ((lease = limiter.AttemptAcquire()).IsAcquired)
            {
                running.Add((lease, _clock.GetUtcNow() + TimeSpan.FromMilliseconds(holdMilliseconds)));
                starts.Add(_clock.GetUtcNow());
            }

            running.Count.Should().BeLessThanOrEqualTo(2, "at most 2 at once");
            _clock.Advance(TimeSpan.FromMilliseconds(10));
        }

        starts.Zip(starts.Skip(1), (a, b) => b - a).Should().OnlyContain(gap => gap >= TimeSpan.FromMilliseconds(100), "at most 10 per second, evenly spaced");
        starts.Count.Should().BeCloseTo(expectedStarts, 2);
    }

    [Fact]
    public async Task A_waiter_takes_a_slot_then_waits_its_turn_for_the_rate()
    {
        using var limiter = CombinedRateLimiter.Create(maxConcurrency: 2, permitsPerSecond: 10, queueLimit: 5, timeProvider: _clock);
        var first = await limiter.AcquireAsync().AsTask().WithTimeout();
        first.IsAcquired.Should().BeTrue();
        var second = limiter.AcquireAsync().AsTask();
        var third = limiter.AcquireAsync().AsTask();
        await AsyncAssert.StillPendingAsync(second, "the rate allows one per 100 ms");

        _clock.Advance(TimeSpan.FromMilliseconds(100));
        (await second.WithTimeout()).IsAcquired.Should().BeTrue();
        _clock.Advance(TimeSpan.FromMilliseconds(500));
        await AsyncAssert.StillPendingAsync(third, "both slots are held");

        first.Dispose();
        await AsyncAssert.EventuallyAsync(() => _clock.ActiveTimerCount > 0 || third.IsCompleted, "the third caller takes the freed slot");
        (await third.WithTimeout()).IsAcquired.Should().BeTrue("a rate permit was already due");
    }

    [Fact]
    public void Disposing_the_combined_limiter_disposes_both_inner_limiters()
    {
        var limiter = CombinedRateLimiter.Create(maxConcurrency: 1, permitsPerSecond: 1, timeProvider: _clock);
        limiter.Dispose();
        limiter.Invoking(l => l.AttemptAcquire()).Should().Throw<ObjectDisposedException>();
    }

    [Fact]
    public async Task A_refusal_by_the_rate_carries_RetryAfter_and_frees_the_concurrency_slot()
    {
        using var limiter = CombinedRateLimiter.Create(maxConcurrency: 1, permitsPerSecond: 10, timeProvider: _clock);
        var first = limiter.AttemptAcquire();
        first.IsAcquired.Should().BeTrue();
        first.Dispose();

        // The slot is free, the rate is not: the chain hands back the rate limiter's refused lease, advice included.
        var refused = limiter.AttemptAcquire();
        refused.IsAcquired.Should().BeFalse();
        refused.TryGetMetadata(MetadataName.RetryAfter, out var retryAfter).Should().BeTrue();
        retryAfter.Should().Be(TimeSpan.FromMilliseconds(100));
        var rejected = await limiter.Awaiting(l => l.RunAsync(_ => ValueTask.CompletedTask).AsTask()).Should().ThrowAsync<RateLimitRejectedException>();
        rejected.Which.RetryAfter.Should().Be(TimeSpan.FromMilliseconds(100));

        _clock.Advance(TimeSpan.FromMilliseconds(100));
        using var next = limiter.AttemptAcquire();
        next.IsAcquired.Should().BeTrue("the refused attempts gave their concurrency slot back");
    }

    [Fact]
    public void Statistics_and_IdleDuration_come_from_the_chain_and_throw_after_dispose()
    {
        var limiter = CombinedRateLimiter.Create(maxConcurrency: 2, permitsPerSecond: 10, timeProvider: _clock);
        using (var lease = limiter.AttemptAcquire())
        {
            lease.IsAcquired.Should().BeTrue();
            limiter.AttemptAcquire().IsAcquired.Should().BeFalse("the rate allows one per 100 ms");
            var statistics = limiter.GetStatistics()!;
            statistics.TotalSuccessfulLeases.Should().Be(1);
            statistics.TotalFailedLeases.Should().Be(1);
            limiter.IdleDuration.Should().BeNull();
        }

        limiter.Dispose();
        limiter.Invoking(l => l.GetStatistics()).Should().Throw<ObjectDisposedException>();
    }

    [Fact]
    public async Task DisposeAsync_makes_every_method_throw()
    {
        var limiter = CombinedRateLimiter.Create(maxConcurrency: 1, permitsPerSecond: 1, queueLimit: 1, timeProvider: _clock);
        using var held = limiter.AttemptAcquire();
        var waiter = limiter.AcquireAsync().AsTask();

        await limiter.DisposeAsync();

        (await waiter.WithTimeout()).IsAcquired.Should().BeFalse("the inner limiters failed their waiters");
        limiter.Invoking(l => l.AttemptAcquire()).Should().Throw<ObjectDisposedException>();
        await limiter.Awaiting(l => l.AcquireAsync().AsTask()).Should().ThrowAsync<ObjectDisposedException>();
    }

    [Fact]
    public void Bad_bounds_are_refused_naming_them()
    {
        var concurrency = () => CombinedRateLimiter.Create(maxConcurrency: 0, permitsPerSecond: 1);
        concurrency.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("maxConcurrency");
        var rate = () => CombinedRateLimiter.Create(maxConcurrency: 1, permitsPerSecond: double.NaN);
        rate.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("permitsPerSecond");
        var burst = () => CombinedRateLimiter.Create(maxConcurrency: 1, permitsPerSecond: 1, burst: 0);
        burst.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("burst");
        var queue = () => CombinedRateLimiter.Create(maxConcurrency: 1, permitsPerSecond: 1, queueLimit: -1);
        queue.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("queueLimit");
    }
}
