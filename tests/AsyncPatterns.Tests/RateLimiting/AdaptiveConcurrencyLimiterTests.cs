using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.RateLimiting;

public sealed class AdaptiveConcurrencyLimiterTests
{
    private static readonly TimeSpan BaseLatency = TimeSpan.FromMilliseconds(10);
    private readonly ManualTimeProvider _clock = new();

    [Fact]
    public void Settles_near_the_knee_shrinks_when_latency_climbs_and_grows_back_when_it_falls()
    {
        using var limiter = new AdaptiveConcurrencyLimiter(new AdaptiveConcurrencyLimiterOptions
        {
            InitialLimit = 20,
            MinLimit = 1,
            MaxLimit = 1_000,
            TimeProvider = _clock,
        });
        var backend = new SimulatedBackend(_clock, limiter);

        // Beyond its knee the backend queues: latency grows in proportion to concurrency.
        var first = backend.Run(knee: 100, TimeSpan.FromSeconds(5));
        first.Should().OnlyContain(limit => limit >= 75 && limit <= 125, "the limit settles within 25% of the knee (100)");

        // The backend slows down: the same concurrency now queues, latency climbs, the limit shrinks to the new knee.
        var slow = backend.Run(knee: 40, TimeSpan.FromSeconds(5));
        slow.Should().OnlyContain(limit => limit >= 30 && limit <= 50, "the limit settles within 25% of the knee (40)");

        // Latency falls again: the limit grows back.
        var recovered = backend.Run(knee: 100, TimeSpan.FromSeconds(5));
        recovered.Should().OnlyContain(limit => limit >= 75 && limit <= 125, "the limit grows back to within 25% of the knee (100)");
        limiter.NoLoadLatency.Should().Be(BaseLatency);
    }

    [Fact]
    public void The_limit_grows_while_latency_stays_at_the_no_load_minimum_up_to_MaxLimit()
    {
        using var limiter = Create(initial: 10, min: 1, max: 50);
        for (var round = 0; round < 20; round++)
        {
            var leases = AcquireAll(limiter);
            _clock.Advance(BaseLatency);
            leases.ForEach(l => l.Dispose());
        }

        limiter.CurrentLimit.Should().Be(50);
    }

    [Fact]
    public void Drops_shrink_the_limit_down_to_MinLimit()
    {
        using var limiter = Create(initial: 20, min: 5, max: 100);
        var history = new List<int>();
        for (var round = 0; round < 30; round++)
        {
            foreach (var lease in AcquireAll(limiter))
            {
                _clock.Advance(BaseLatency);
                lease.ReportDropped();
                lease.Dispose();
                history.Add(limiter.CurrentLimit);
            }
        }

        history.Should().BeInDescendingOrder();
        limiter.CurrentLimit.Should().Be(5);
    }

    [Fact]
    public void An_app_limited_caller_does_not_grow_the_limit()
    {
        using var limiter = Create(initial: 20, min: 1, max: 100);
        for (var i = 0; i < 50; i++)
        {
            var lease = (AdaptiveConcurrencyLease)limiter.AttemptAcquire();
            _clock.Advance(BaseLatency);
            lease.Dispose();
        }

        limiter.CurrentLimit.Should().Be(20, "one request at a time says nothing about the backend's capacity");
    }

    [Fact]
    public void Latency_is_measured_from_acquire_to_release_and_ignored_outcomes_give_no_sample()
    {
        using var limiter = Create(initial: 4, min: 1, max: 10);
        var ignored = (AdaptiveConcurrencyLease)limiter.AttemptAcquire();
        _clock.Advance(TimeSpan.FromMilliseconds(5));
        ignored.ReportIgnored();
        ignored.Dispose();
        limiter.NoLoadLatency.Should().BeNull();

        var lease = (AdaptiveConcurrencyLease)limiter.AttemptAcquire();
        _clock.Advance(TimeSpan.FromMilliseconds(30));
        lease.Dispose();
        lease.Dispose();
        limiter.NoLoadLatency.Should().Be(TimeSpan.FromMilliseconds(30));
        limiter.InFlight.Should().Be(0, "a second dispose releases nothing");
    }

    [Fact]
    public async Task A_queued_waiter_is_granted_when_a_permit_is_released_and_gets_its_own_lease()
    {
        using var limiter = Create(initial: 1, min: 1, max: 1, queueLimit: 1);
        var held = limiter.AttemptAcquire();
        var waiter = limiter.AcquireAsync().AsTask();
        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(1);

        held.Dispose();
        var lease = await waiter.WithTimeout();
        lease.Should().BeOfType<AdaptiveConcurrencyLease>().And.NotBeSameAs(held);
        limiter.InFlight.Should().Be(1);
        lease.Dispose();
        limiter.InFlight.Should().Be(0);
    }

    [Fact]
    public void IdleDuration_counts_from_the_last_release()
    {
        using var limiter = Create(initial: 2, min: 1, max: 2);
        var lease = limiter.AttemptAcquire();
        _clock.Advance(TimeSpan.FromSeconds(1));
        limiter.IdleDuration.Should().BeNull();
        lease.Dispose();
        _clock.Advance(TimeSpan.FromSeconds(3));
        limiter.IdleDuration.Should().Be(TimeSpan.FromSeconds(3));
    }

    [Fact]
    public async Task RunAsync_reports_a_timeout_as_a_drop_and_a_result_as_a_success()
    {
        using var limiter = Create(initial: 20, min: 1, max: 100);
        var holders = AcquireAll(limiter);
        holders[0].Dispose();

        // A first sample sets the no-load latency.
        await limiter.RunAsync(async _ => { await Task.Yield(); _clock.Advance(BaseLatency); return 1; }).WithTimeout();
        limiter.CurrentLimit.Should().Be(20);

        Func<Task> timedOut = () => limiter.RunAsync<int>(_ => { _clock.Advance(BaseLatency); throw new TimeoutException(); }).AsTask();
        await timedOut.Should().ThrowAsync<TimeoutException>();
        limiter.CurrentLimit.Should().Be(19, "a timeout is a drop");
        limiter.InFlight.Should().Be(19, "the lease was released");

        holders[1].Dispose();
        Func<Task> failed = () => limiter.RunAsync<int>(_ => { _clock.Advance(BaseLatency * 5); throw new InvalidOperationException(); }).AsTask();
        await failed.Should().ThrowAsync<InvalidOperationException>();
        limiter.CurrentLimit.Should().Be(19, "another failure is ignored, not a latency sample");
        holders.Skip(2).ToList().ForEach(l => l.Dispose());
    }

    [Fact]
    public void Metrics_report_the_current_limit()
    {
        using var metrics = new RateLimitingMetricsRecorder();
        using var limiter = new AdaptiveConcurrencyLimiter(new AdaptiveConcurrencyLimiterOptions
        {
            Name = "adaptive-metrics",
            InitialLimit = 5,
            MinLimit = 1,
            MaxLimit = 50,
            TimeProvider = _clock,
        });
        metrics.Sum("asyncpatterns.ratelimiter.adaptive.limit", "adaptive-metrics").Should().Be(5);

        for (var round = 0; round < 3; round++)
        {
            var leases = AcquireAll(limiter);
            _clock.Advance(BaseLatency);
            leases.ForEach(l => l.Dispose());
        }

        metrics.Sum("asyncpatterns.ratelimiter.adaptive.limit", "adaptive-metrics").Should().Be(limiter.CurrentLimit).And.BeGreaterThan(5);
        metrics.Sum("asyncpatterns.ratelimiter.granted", "adaptive-metrics").Should().BeGreaterThan(0);
    }

    [Theory]
    [InlineData(1, 0, 10, "MinLimit")]
    [InlineData(5, 5, 4, "MaxLimit")]
    [InlineData(4, 5, 10, "InitialLimit")]
    [InlineData(11, 5, 10, "InitialLimit")]
    public void Limits_out_of_order_are_refused(int initial, int min, int max, string option)
    {
        var act = () => new AdaptiveConcurrencyLimiter(new AdaptiveConcurrencyLimiterOptions { InitialLimit = initial, MinLimit = min, MaxLimit = max });
        var ex = act.Should().Throw<ArgumentOutOfRangeException>().Which;
        ex.ParamName.Should().Be(option);
        ex.Message.Should().Contain(option + " must be");
    }

    [Fact]
    public void Algorithm_knobs_and_queue_settings_are_validated()
    {
        Refuses(o => o.QueueLimit = -1, "QueueLimit");
        Refuses(o => o.QueueProcessingOrder = (QueueProcessingOrder)9, "QueueProcessingOrder");
        Refuses(o => o.Alpha = 6, "Alpha");
        Refuses(o => o.Alpha = 0, "Alpha");
        Refuses(o => o.Beta = double.NaN, "Beta");
        Refuses(o => o.Smoothing = 0, "Smoothing");
        Refuses(o => o.Smoothing = 1.5, "Smoothing");

        static void Refuses(Action<AdaptiveConcurrencyLimiterOptions> configure, string option)
        {
            var options = new AdaptiveConcurrencyLimiterOptions();
            configure(options);
            var act = () => new AdaptiveConcurrencyLimiter(options);
            act.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(option);
        }
    }

    [Fact]
    public void Asking_for_more_than_MaxLimit_throws_but_more_than_the_current_limit_is_granted_when_idle()
    {
        using var limiter = Create(initial: 2, min: 1, max: 5);
        limiter.Invoking(l => l.AttemptAcquire(6)).Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("permitCount");
        using var big = limiter.AttemptAcquire(4);
        big.IsAcquired.Should().BeTrue("nothing is in flight, so a request above the current limit cannot starve");
        limiter.AttemptAcquire().IsAcquired.Should().BeFalse();
    }

    private static List<AdaptiveConcurrencyLease> AcquireAll(AdaptiveConcurrencyLimiter limiter)
    {
        var leases = new List<AdaptiveConcurrencyLease>();
        while (limiter.AttemptAcquire() is AdaptiveConcurrencyLease lease)
        {
            leases.Add(lease);
        }

        return leases;
    }

    private AdaptiveConcurrencyLimiter Create(int initial, int min, int max, int queueLimit = 0) =>
        new(new AdaptiveConcurrencyLimiterOptions
        {
            InitialLimit = initial,
            MinLimit = min,
            MaxLimit = max,
            QueueLimit = queueLimit,
            TimeProvider = _clock,
        });

    /// <summary>
    /// A discrete-event simulation on the fake clock: unlimited demand keeps the limiter full, and each request takes
    /// the base latency up to the knee's concurrency, proportionally longer beyond it (the backend queues).
    /// </summary>
    private sealed class SimulatedBackend(ManualTimeProvider clock, AdaptiveConcurrencyLimiter limiter)
    {
        private readonly PriorityQueue<AdaptiveConcurrencyLease, DateTimeOffset> _inFlight = new();

        /// <summary>Runs for <paramref name="duration"/>; returns the limits seen during its last second.</summary>
        public List<int> Run(int knee, TimeSpan duration)
        {
            var end = clock.GetUtcNow() + duration;
            var lastSecond = end - TimeSpan.FromSeconds(1);
            var limits = new List<int>();
            while (clock.GetUtcNow() < end)
            {
                while (limiter.AttemptAcquire() is AdaptiveConcurrencyLease lease)
                {
                    var concurrency = limiter.InFlight;
                    var latency = concurrency <= knee ? BaseLatency : BaseLatency * concurrency / knee;
                    _inFlight.Enqueue(lease, clock.GetUtcNow() + latency);
                }

                _inFlight.TryDequeue(out var done, out var at).Should().BeTrue();
                clock.AdvanceTo(at);
                done!.Dispose();
                if (clock.GetUtcNow() >= lastSecond)
                {
                    limits.Add(limiter.CurrentLimit);
                }
            }

            return limits;
        }
    }
}
