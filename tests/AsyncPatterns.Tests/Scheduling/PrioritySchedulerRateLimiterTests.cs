using System.Collections.Concurrent;
using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Scheduling;

public sealed class PrioritySchedulerRateLimiterTests
{
    [Fact]
    public async Task A_concurrency_limiter_caps_running_work_below_MaxConcurrency_and_gets_every_permit_back()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 100 });
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 4, RateLimiter = limiter });
        var running = 0;
        var peak = 0;

        var tasks = Enumerable.Range(0, 40).Select(i => scheduler.RunAsync(
            async _ =>
            {
                PrioritySchedulerTests.InterlockedMax(ref peak, Interlocked.Increment(ref running));
                await Task.Delay(1);
                Interlocked.Decrement(ref running);
            },
            i % 3)).ToArray();
        await Task.WhenAll(tasks).WithTimeout();

        Volatile.Read(ref peak).Should().Be(1);
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(1, "each lease is disposed when its work ends");
        scheduler.GetStatistics().Handled.Should().Be(40);
    }

    [Fact]
    public async Task Permits_go_out_in_priority_order_and_the_waiting_item_holds_its_slot()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 10 });
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 1, RateLimiter = limiter });
        var order = new ConcurrentQueue<string>();
        Task Run(string name, int priority) => scheduler.RunAsync(_ => { order.Enqueue(name); return ValueTask.CompletedTask; }, priority);
        var held = limiter.AttemptAcquire();                // the test holds the only permit
        held.IsAcquired.Should().BeTrue();

        var waiting = Run("waiting", 0);                    // starts, then waits for a permit in the only slot
        await AsyncAssert.EventuallyAsync(() => limiter.GetStatistics()!.CurrentQueuedCount == 1);
        var low = Run("low", 5);
        var high = Run("high", 1);

        scheduler.RunningCount.Should().Be(1);
        scheduler.QueuedCount.Should().Be(2, "the slot is held by the item waiting for its permit");
        order.Should().BeEmpty();

        held.Dispose();
        await Task.WhenAll(waiting, low, high).WithTimeout();

        order.Should().Equal("waiting", "high", "low");
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(1);
    }

    [Fact]
    public async Task A_rate_limiter_on_the_fake_clock_spaces_the_starts()
    {
        var clock = new ManualTimeProvider();
        using var limiter = new OnePermitPerInterval(clock, TimeSpan.FromSeconds(1));
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = 4, RateLimiter = limiter, TimeProvider = clock });
        var starts = new ConcurrentQueue<TimeSpan>();
        var tasks = Enumerable.Range(0, 4)
            .Select(_ => scheduler.RunAsync(_ => { starts.Enqueue(clock.Elapsed); return ValueTask.CompletedTask; }))
            .ToArray();
        await AsyncAssert.EventuallyAsync(() => starts.Count == 1 && clock.ActiveTimerCount == 1);

        for (var i = 2; i <= 4; i++)
        {
            clock.Advance(TimeSpan.FromSeconds(1));
            var expected = i;
            await AsyncAssert.EventuallyAsync(() => starts.Count == expected && (expected == 4 || clock.ActiveTimerCount == 1));
        }

        await Task.WhenAll(tasks).WithTimeout();
        starts.Should().Equal(TimeSpan.Zero, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(3));
    }

    [Fact]
    public async Task A_refused_permit_faults_the_item_with_RateLimitRejectedException()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 0 });
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { RateLimiter = limiter });
        await scheduler.RunAsync(_ => ValueTask.CompletedTask).WithTimeout();
        using var held = limiter.AttemptAcquire();
        var invoked = false;

        var refused = scheduler.RunAsync(_ => { invoked = true; return ValueTask.CompletedTask; });

        await FluentActions.Awaiting(() => refused.WithTimeout()).Should().ThrowAsync<RateLimitRejectedException>();
        invoked.Should().BeFalse();
        var statistics = scheduler.GetStatistics();
        statistics.Failed.Should().Be(1);
        statistics.Handled.Should().Be(1);
        await AsyncAssert.EventuallyAsync(() => scheduler.RunningCount == 0, "the slot is returned");
    }

    [Fact]
    public async Task Cancelling_an_item_waiting_for_its_permit_cancels_it_without_running_it()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 10 });
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { RateLimiter = limiter });
        var held = limiter.AttemptAcquire();
        using var cts = new CancellationTokenSource();
        var invoked = false;
        var waiting = scheduler.RunAsync(_ => { invoked = true; return ValueTask.CompletedTask; }, cancellationToken: cts.Token);
        var next = scheduler.RunAsync(_ => ValueTask.CompletedTask);
        await AsyncAssert.EventuallyAsync(() => limiter.GetStatistics()!.CurrentQueuedCount == 1);

        await cts.CancelAsync();

        await FluentActions.Awaiting(() => waiting.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        invoked.Should().BeFalse();
        await AsyncAssert.EventuallyAsync(() => scheduler.QueuedCount == 0, "the freed slot takes the next item");
        held.Dispose();
        await next.WithTimeout();
        scheduler.GetStatistics().Canceled.Should().Be(1);
    }

    [Fact]
    public async Task A_cut_short_drain_drops_an_item_waiting_for_its_permit()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 10 });
        await using var scheduler = new PriorityScheduler(new PrioritySchedulerOptions { RateLimiter = limiter });
        using var held = limiter.AttemptAcquire();
        var waiting = scheduler.RunAsync(_ => ValueTask.CompletedTask);
        var queued = scheduler.RunAsync(_ => ValueTask.CompletedTask);
        await AsyncAssert.EventuallyAsync(() => limiter.GetStatistics()!.CurrentQueuedCount == 1);

        await FluentActions.Awaiting(() => scheduler.DrainAsync(new CancellationToken(canceled: true)))
            .Should().ThrowAsync<OperationCanceledException>();
        await scheduler.Completion.WithTimeout();

        waiting.IsCanceled.Should().BeTrue();
        queued.IsCanceled.Should().BeTrue();
        scheduler.GetStatistics().Abandoned.Should().Be(2);
    }

    /// <summary>
    /// A minimal limiter on the fake clock: one permit per interval, waiters served in order. (The BCL token bucket
    /// reads the real clock even when replenished by hand, so it cannot be driven deterministically.)
    /// </summary>
    private sealed class OnePermitPerInterval(TimeProvider clock, TimeSpan interval) : RateLimiter
    {
        private readonly SemaphoreSlim _order = new(1, 1);
        private long _nextTicks;

        public override TimeSpan? IdleDuration => null;

        public override RateLimiterStatistics? GetStatistics() => null;

        protected override RateLimitLease AttemptAcquireCore(int permitCount)
        {
            lock (_order)
            {
                var now = clock.GetUtcNow().UtcTicks;
                if (_nextTicks > now || _order.CurrentCount == 0)
                {
                    return Lease.Refused;
                }

                _nextTicks = now + interval.Ticks;
                return Lease.Granted;
            }
        }

        protected override async ValueTask<RateLimitLease> AcquireAsyncCore(int permitCount, CancellationToken cancellationToken)
        {
            await _order.WaitAsync(cancellationToken);
            try
            {
                while (true)
                {
                    long wait;
                    lock (_order)
                    {
                        var now = clock.GetUtcNow().UtcTicks;
                        wait = _nextTicks - now;
                        if (wait <= 0)
                        {
                            _nextTicks = now + interval.Ticks;
                            return Lease.Granted;
                        }
                    }

                    await Task.Delay(TimeSpan.FromTicks(wait), clock, cancellationToken);
                }
            }
            finally
            {
                _order.Release();
            }
        }

        protected override void Dispose(bool disposing)
        {
            _order.Dispose();
            base.Dispose(disposing);
        }

        private sealed class Lease(bool acquired) : RateLimitLease
        {
            public static readonly Lease Granted = new(true);
            public static readonly Lease Refused = new(false);

            public override bool IsAcquired => acquired;

            public override IEnumerable<string> MetadataNames => [];

            public override bool TryGetMetadata(string metadataName, out object? metadata)
            {
                metadata = null;
                return false;
            }
        }
    }
}
