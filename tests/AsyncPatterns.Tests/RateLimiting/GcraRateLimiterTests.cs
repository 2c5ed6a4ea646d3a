using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.RateLimiting;

public sealed class GcraRateLimiterTests
{
    private readonly ManualTimeProvider _clock = new();

    public static TheoryData<double, int> RatesAndBursts => new()
    {
        { 1_000, 1 },
        { 1_000, 20 },
        { 10_000, 1 },
        { 10_000, 100 },
        { 0.5, 1 },
        { 0.5, 3 },
    };

    [Theory]
    [MemberData(nameof(RatesAndBursts))]
    public void Over_ten_seconds_AttemptAcquire_grants_rate_times_time_within_Burst_and_never_more_than_Burst_at_once(double rate, int burst)
    {
        using var limiter = Create(rate, burst);
        var interval = TimeSpan.FromTicks((long)(TimeSpan.TicksPerSecond / rate));
        var step = interval / 2;
        long granted = 0;
        var end = _clock.GetUtcNow() + TimeSpan.FromSeconds(10);
        while (true)
        {
            var atThisInstant = 0;
            while (limiter.AttemptAcquire().IsAcquired)
            {
                atThisInstant++;
            }

            atThisInstant.Should().BeLessThanOrEqualTo(burst, "never more than Burst at one instant");
            granted += atThisInstant;
            if (_clock.GetUtcNow() >= end)
            {
                break;
            }

            _clock.Advance(step);
        }

        // The span [0 s, 10 s] holds Burst at the start and one permit every interval after it.
        var expected = rate * 10;
        granted.Should().BeInRange((long)expected - burst, (long)expected + burst);
    }

    [Theory]
    [MemberData(nameof(RatesAndBursts))]
    public async Task Over_ten_seconds_queued_waiters_are_granted_rate_times_time_within_Burst(double rate, int burst)
    {
        using var limiter = Create(rate, burst, queueLimit: 1_000_000);
        var interval = TimeSpan.FromTicks((long)(TimeSpan.TicksPerSecond / rate));
        var pending = new Queue<Task<RateLimitLease>>();
        long granted = 0;
        var random = new Random(1234);
        var end = _clock.GetUtcNow() + TimeSpan.FromSeconds(10);
        while (true)
        {
            while (pending.Count > 0 && pending.Peek().IsCompleted)
            {
                (await pending.Dequeue()).IsAcquired.Should().BeTrue();
                granted++;
            }

            if (_clock.GetUtcNow() >= end)
            {
                break;
            }

            // Keep demand ahead of supply: more requests wait than a step can grant.
            while (pending.Count < burst + 4)
            {
                pending.Enqueue(limiter.AcquireAsync().AsTask());
            }

            // Uneven steps, some spanning several intervals: the one timer still wakes at each due instant.
            var step = TimeSpan.FromTicks(Math.Max(1, (long)(interval.Ticks * random.NextDouble() * 3)));
            if (_clock.GetUtcNow() + step > end)
            {
                step = end - _clock.GetUtcNow();
            }

            _clock.Advance(step);
            _clock.ActiveTimerCount.Should().Be(1, "one timer per limiter, armed for the next waiter");
        }

        granted.Should().BeInRange((long)(rate * 10) - burst, (long)(rate * 10) + burst);
        while (pending.Count > 0)
        {
            pending.Dequeue().IsCompleted.Should().BeFalse("nothing more is due before the next interval");
        }
    }

    [Fact]
    public async Task A_late_timer_does_not_lose_rate_each_wake_up_grants_every_waiter_whose_time_has_come()
    {
        // The OS timer wakes about 1 ms late; at 10,000/s that is 10 permits per wake-up.
        var late = new LateTimeProvider(_clock, TimeSpan.FromMilliseconds(1));
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 10_000, QueueLimit = 64, TimeProvider = late });
        var pending = new Queue<Task<RateLimitLease>>();
        long granted = 0;
        for (var ms = 0; ms < 1_000; ms++)
        {
            while (pending.Count < 64)
            {
                pending.Enqueue(limiter.AcquireAsync().AsTask());
            }

            while (pending.Count > 0 && pending.Peek().IsCompleted)
            {
                (await pending.Dequeue()).IsAcquired.Should().BeTrue();
                granted++;
            }

            _clock.Advance(TimeSpan.FromMilliseconds(1));
        }

        // One second at 10,000/s, the last millisecond of waiters still to be woken by the late timer.
        granted.Should().BeInRange(10_000 - 12, 10_000 + 1);
    }

    [Fact]
    public async Task A_waiter_wakes_at_the_exact_instant_its_permits_are_due()
    {
        using var limiter = Create(permitsPerSecond: 1, burst: 1, queueLimit: 2);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        var waiter = limiter.AcquireAsync().AsTask();

        _clock.Advance(TimeSpan.FromSeconds(1) - TimeSpan.FromTicks(1));
        waiter.IsCompleted.Should().BeFalse();
        _clock.NextDue.Should().Be(_clock.Start + TimeSpan.FromSeconds(1));

        _clock.Advance(TimeSpan.FromTicks(1));
        (await waiter.WithTimeout()).IsAcquired.Should().BeTrue();
        _clock.ActiveTimerCount.Should().Be(0, "the timer is disarmed when nobody waits");
    }

    [Fact]
    public async Task Several_waiters_share_one_timer_and_one_wake_up_grants_all_that_are_due()
    {
        using var limiter = Create(permitsPerSecond: 10, burst: 3, queueLimit: 10);
        limiter.AttemptAcquire(3).IsAcquired.Should().BeTrue();
        var waiters = Enumerable.Range(0, 5).Select(_ => limiter.AcquireAsync().AsTask()).ToList();
        _clock.ActiveTimerCount.Should().Be(1);

        _clock.Advance(TimeSpan.FromMilliseconds(300));
        await Task.WhenAll(waiters.Take(3)).WithTimeout();
        waiters.Skip(3).Should().OnlyContain(t => !t.IsCompleted);

        _clock.Advance(TimeSpan.FromMilliseconds(200));
        await Task.WhenAll(waiters).WithTimeout();
    }

    [Fact]
    public async Task A_waiter_asking_for_several_permits_waits_for_all_of_them()
    {
        using var limiter = Create(permitsPerSecond: 10, burst: 3, queueLimit: 3);
        limiter.AttemptAcquire(3).IsAcquired.Should().BeTrue();
        var waiter = limiter.AcquireAsync(3).AsTask();

        _clock.Advance(TimeSpan.FromMilliseconds(299));
        waiter.IsCompleted.Should().BeFalse();
        _clock.Advance(TimeSpan.FromMilliseconds(1));
        (await waiter.WithTimeout()).IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire().IsAcquired.Should().BeFalse("all three were taken");
    }

    [Fact]
    public void A_refused_lease_says_when_to_retry()
    {
        using var limiter = Create(permitsPerSecond: 10, burst: 1);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();

        RetryAfter(limiter.AttemptAcquire()).Should().Be(TimeSpan.FromMilliseconds(100));
        _clock.Advance(TimeSpan.FromMilliseconds(40));
        var refused = limiter.AttemptAcquire();
        refused.MetadataNames.Should().Contain(MetadataName.RetryAfter.Name);
        RetryAfter(refused).Should().Be(TimeSpan.FromMilliseconds(60));

        _clock.Advance(TimeSpan.FromMilliseconds(60));
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue("exactly when RetryAfter said");
    }

    [Fact]
    public void A_request_for_n_permits_follows_the_DESIGN_formula()
    {
        // T = 100 ms, τ = 3T. At 0: three permits, TAT = 300 ms.
        using var limiter = Create(permitsPerSecond: 10, burst: 3);
        limiter.AttemptAcquire(3).IsAcquired.Should().BeTrue();

        // At 50 ms, two more: newTat = max(300, 50) + 200 = 500; 500 − 300 = 200 > 50, so RetryAfter = 200 − 50.
        _clock.Advance(TimeSpan.FromMilliseconds(50));
        RetryAfter(limiter.AttemptAcquire(2)).Should().Be(TimeSpan.FromMilliseconds(150));
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(0, "a refusal leaves the TAT alone");

        // At 200 ms exactly: newTat − τ = 200 ≤ 200, granted; TAT = 500 ms.
        _clock.Advance(TimeSpan.FromMilliseconds(150));
        limiter.AttemptAcquire(2).IsAcquired.Should().BeTrue();
        RetryAfter(limiter.AttemptAcquire(1)).Should().Be(TimeSpan.FromMilliseconds(100));
    }

    [Fact]
    public async Task RetryAfter_counts_the_permits_already_waiting()
    {
        using var limiter = Create(permitsPerSecond: 10, burst: 1, queueLimit: 2);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        var first = limiter.AcquireAsync().AsTask();
        var second = limiter.AcquireAsync().AsTask();

        RetryAfter(limiter.AttemptAcquire()).Should().Be(TimeSpan.FromMilliseconds(300));
        RetryAfter(await limiter.AcquireAsync()).Should().Be(TimeSpan.FromMilliseconds(300), "the queue is full");
        first.IsCompleted.Should().BeFalse();
        second.IsCompleted.Should().BeFalse();
    }

    [Fact]
    public void IdleDuration_counts_from_the_instant_the_burst_was_saved_up_again()
    {
        using var limiter = Create(permitsPerSecond: 10, burst: 2);
        _clock.Advance(TimeSpan.FromSeconds(5));
        limiter.IdleDuration.Should().Be(TimeSpan.FromSeconds(5));

        limiter.AttemptAcquire(2).IsAcquired.Should().BeTrue();
        _clock.Advance(TimeSpan.FromMilliseconds(150));
        limiter.IdleDuration.Should().BeNull("only one of the two permits is back");
        _clock.Advance(TimeSpan.FromMilliseconds(350));
        limiter.IdleDuration.Should().Be(TimeSpan.FromMilliseconds(300));
    }

    [Fact]
    public void GetStatistics_reports_the_permits_available_now()
    {
        using var limiter = Create(permitsPerSecond: 10, burst: 4);
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(4);
        limiter.AttemptAcquire(3).IsAcquired.Should().BeTrue();
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(1);
        _clock.Advance(TimeSpan.FromMilliseconds(250));
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(3);
        limiter.Dispose();
        limiter.Invoking(l => l.GetStatistics()).Should().Throw<ObjectDisposedException>();
    }

    [Fact]
    public void A_successful_acquire_allocates_nothing_and_reuses_one_lease()
    {
        using var limiter = Create(permitsPerSecond: 1_000_000_000, burst: 1_000);
        var first = limiter.AttemptAcquire();
        first.IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire().Should().BeSameAs(first);

        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < 100; i++)
        {
            limiter.AttemptAcquire().Dispose();
        }

        (GC.GetAllocatedBytesForCurrentThread() - before).Should().Be(0);
    }

    [Fact]
    public void Asking_for_more_than_Burst_throws_naming_the_value()
    {
        using var limiter = Create(permitsPerSecond: 10, burst: 2, queueLimit: 10);
        var ex = limiter.Invoking(l => l.AttemptAcquire(3)).Should().Throw<ArgumentOutOfRangeException>().Which;
        ex.ParamName.Should().Be("permitCount");
        ex.ActualValue.Should().Be(3);
        ex.Message.Should().Contain("Burst (2)");
    }

    public static TheoryData<double> BadRates => new() { 0, -1, double.NaN, double.PositiveInfinity, double.NegativeInfinity };

    [Theory]
    [MemberData(nameof(BadRates))]
    public void PermitsPerSecond_must_be_a_finite_number_above_zero(double rate)
    {
        var act = () => new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = rate });
        var ex = act.Should().Throw<ArgumentOutOfRangeException>().Which;
        ex.ParamName.Should().Be("PermitsPerSecond");
        ex.Message.Should().Contain("PermitsPerSecond must be a finite number greater than 0");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    public void Burst_must_be_above_zero(int burst)
    {
        var act = () => new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 1, Burst = burst });
        act.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("Burst");
    }

    [Fact]
    public void QueueLimit_must_not_be_negative_and_the_order_must_be_defined()
    {
        var queue = () => new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 1, QueueLimit = -1 });
        queue.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("QueueLimit");
        var order = () => new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 1, QueueProcessingOrder = (QueueProcessingOrder)7 });
        order.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("QueueProcessingOrder");
        var none = () => new GcraRateLimiter(null!);
        none.Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public void A_rate_or_burst_beyond_what_the_clock_can_hold_is_refused()
    {
        var tooFast = () => new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 1e15, TimeProvider = _clock });
        tooFast.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("PermitsPerSecond");
        var tooLong = () => new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 1e-12, Burst = 1, TimeProvider = _clock });
        tooLong.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("Burst");
    }

    [Fact]
    public void Options_are_copied_at_construction()
    {
        var options = new GcraRateLimiterOptions { PermitsPerSecond = 10, Burst = 1, TimeProvider = _clock };
        using var limiter = new GcraRateLimiter(options);
        options.Burst = 100;
        options.PermitsPerSecond = 1_000;

        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire().IsAcquired.Should().BeFalse();
        limiter.PermitsPerSecond.Should().Be(10);
    }

    [Fact]
    public async Task A_cancelled_head_waiter_re_arms_the_timer_for_the_next_one()
    {
        using var limiter = Create(permitsPerSecond: 10, burst: 1, queueLimit: 5, order: QueueProcessingOrder.NewestFirst);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        var older = limiter.AcquireAsync().AsTask();
        using var cts = new CancellationTokenSource();
        var newest = limiter.AcquireAsync(1, cts.Token).AsTask();

        cts.Cancel();
        await newest.Awaiting(t => t.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        _clock.ActiveTimerCount.Should().Be(1);

        _clock.Advance(TimeSpan.FromMilliseconds(100));
        (await older.WithTimeout()).IsAcquired.Should().BeTrue();
        _clock.ActiveTimerCount.Should().Be(0);
    }

    [Fact]
    public async Task Dispose_stops_the_timer_and_fails_waiters_without_retry_advice()
    {
        var limiter = Create(permitsPerSecond: 1, burst: 1, queueLimit: 1);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        var waiter = limiter.AcquireAsync().AsTask();
        _clock.ActiveTimerCount.Should().Be(1);

        await limiter.DisposeAsync();

        var lease = await waiter.WithTimeout();
        lease.IsAcquired.Should().BeFalse();
        lease.TryGetMetadata(MetadataName.RetryAfter, out _).Should().BeFalse();
        _clock.ActiveTimerCount.Should().Be(0);
    }

    private static TimeSpan RetryAfter(RateLimitLease lease)
    {
        lease.IsAcquired.Should().BeFalse();
        lease.TryGetMetadata(MetadataName.RetryAfter, out var retryAfter).Should().BeTrue();
        return retryAfter;
    }

    private GcraRateLimiter Create(double permitsPerSecond, int burst, int queueLimit = 0, QueueProcessingOrder order = QueueProcessingOrder.OldestFirst) =>
        new(new GcraRateLimiterOptions
        {
            PermitsPerSecond = permitsPerSecond,
            Burst = burst,
            QueueLimit = queueLimit,
            QueueProcessingOrder = order,
            TimeProvider = _clock,
        });
}
