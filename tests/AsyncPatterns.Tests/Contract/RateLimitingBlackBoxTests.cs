using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;
using Microsoft.Extensions.Logging;
using Polly;

namespace AsyncPatterns.Tests.Contract;

/// <summary>
/// Black-box tests of DESIGN.md's "Rate limiting" and "Rejections" sections and the shared rules, written from the
/// contract (and the System.Threading.RateLimiting semantics) without reading the implementation.
/// </summary>
public sealed class RateLimitingBlackBoxTests
{
    private static readonly TimeSpan T = TimeSpan.FromMilliseconds(100); // emission interval at 10/s
    private readonly ManualTimeProvider _clock = new();

    private GcraRateLimiter Create(Action<GcraRateLimiterOptions>? configure = null)
    {
        var options = new GcraRateLimiterOptions { PermitsPerSecond = 10, TimeProvider = _clock };
        configure?.Invoke(options);
        return new GcraRateLimiter(options);
    }

    private static TimeSpan? RetryAfterOf(RateLimitLease lease) =>
        lease.TryGetMetadata(MetadataName.RetryAfter, out var retryAfter) ? retryAfter : null;

    private static void Granted(RateLimitLease lease)
    {
        using (lease)
        {
            lease.IsAcquired.Should().BeTrue();
        }
    }

    private static TimeSpan? Refused(RateLimitLease lease)
    {
        using (lease)
        {
            lease.IsAcquired.Should().BeFalse();
            return RetryAfterOf(lease);
        }
    }

    // ---------------------------------------------------------------- options

    [Fact]
    public void Options_have_the_documented_defaults()
    {
        var o = new GcraRateLimiterOptions();
        o.PermitsPerSecond.Should().Be(0);
        o.Burst.Should().Be(1);
        o.QueueLimit.Should().Be(0);
        o.QueueProcessingOrder.Should().Be(QueueProcessingOrder.OldestFirst);
        o.Name.Should().BeNull();
        o.TimeProvider.Should().BeNull();
        o.LoggerFactory.Should().BeNull();
    }

    [Fact]
    public void A_GcraRateLimiter_is_a_RateLimiter()
    {
        using var limiter = Create();
        limiter.Should().BeAssignableTo<RateLimiter>();
        limiter.PermitsPerSecond.Should().Be(10);
    }

    public static TheoryData<string, Action<GcraRateLimiterOptions>> BadOptions => new()
    {
        { nameof(GcraRateLimiterOptions.PermitsPerSecond), o => o.PermitsPerSecond = 0 },
        { nameof(GcraRateLimiterOptions.PermitsPerSecond), o => o.PermitsPerSecond = -1 },
        { nameof(GcraRateLimiterOptions.PermitsPerSecond), o => o.PermitsPerSecond = double.NaN },
        { nameof(GcraRateLimiterOptions.PermitsPerSecond), o => o.PermitsPerSecond = double.PositiveInfinity },
        { nameof(GcraRateLimiterOptions.PermitsPerSecond), o => o.PermitsPerSecond = double.NegativeInfinity },
        { nameof(GcraRateLimiterOptions.Burst), o => o.Burst = 0 },
        { nameof(GcraRateLimiterOptions.Burst), o => o.Burst = -5 },
        { nameof(GcraRateLimiterOptions.QueueLimit), o => o.QueueLimit = -1 },
        { nameof(GcraRateLimiterOptions.QueueProcessingOrder), o => o.QueueProcessingOrder = (QueueProcessingOrder)42 },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public void A_bad_option_throws_an_argument_exception_naming_it(string option, Action<GcraRateLimiterOptions> configure)
    {
        var options = new GcraRateLimiterOptions { PermitsPerSecond = 10 };
        configure(options);
        var ex = FluentActions.Invoking(() => new GcraRateLimiter(options)).Should().Throw<ArgumentException>().Which;
        ex.ParamName.Should().Be(option);
        ex.Message.Length.Should().BeGreaterThan(option.Length + 10, "the message says what is allowed");
    }

    [Fact]
    public void Null_options_throw_ArgumentNullException()
    {
        FluentActions.Invoking(() => new GcraRateLimiter(null!)).Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public void Options_are_copied_so_later_changes_have_no_effect()
    {
        var options = new GcraRateLimiterOptions { PermitsPerSecond = 10, Burst = 1, TimeProvider = _clock };
        using var limiter = new GcraRateLimiter(options);
        options.PermitsPerSecond = 1_000_000;
        options.Burst = 100;
        options.QueueLimit = 100;
        options.TimeProvider = null;

        Granted(limiter.AttemptAcquire());
        Refused(limiter.AttemptAcquire()).Should().Be(T);
        _clock.Advance(T);
        Granted(limiter.AttemptAcquire());
        limiter.PermitsPerSecond.Should().Be(10);
    }

    // ---------------------------------------------------------------- GCRA arithmetic

    [Fact]
    public void Burst_one_spaces_permits_by_the_emission_interval()
    {
        using var limiter = Create();
        Granted(limiter.AttemptAcquire());
        Refused(limiter.AttemptAcquire()).Should().Be(T);
        _clock.AdvanceMilliseconds(40);
        Refused(limiter.AttemptAcquire()).Should().Be(TimeSpan.FromMilliseconds(60));
        _clock.AdvanceMilliseconds(60);
        Granted(limiter.AttemptAcquire());
        Refused(limiter.AttemptAcquire()).Should().Be(T);
    }

    [Fact]
    public void Burst_permits_go_at_once_and_RetryAfter_follows_the_redis_cell_formula()
    {
        using var limiter = Create(o => o.Burst = 3);
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(3);
        Granted(limiter.AttemptAcquire());
        Granted(limiter.AttemptAcquire(2));
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(0);

        // tat = now + 3T; a request for 2: newTat = now + 5T, τ = 3T => RetryAfter = 2T.
        Refused(limiter.AttemptAcquire(2)).Should().Be(2 * T);
        Refused(limiter.AttemptAcquire()).Should().Be(T);
        _clock.AdvanceMilliseconds(50);
        Refused(limiter.AttemptAcquire()).Should().Be(TimeSpan.FromMilliseconds(50));
        _clock.AdvanceMilliseconds(50);
        Granted(limiter.AttemptAcquire());
        Refused(limiter.AttemptAcquire()).Should().Be(T);
    }

    [Fact]
    public void A_long_idle_spell_never_saves_up_more_than_Burst()
    {
        using var limiter = Create(o => o.Burst = 4);
        _clock.Advance(TimeSpan.FromHours(3));
        for (var i = 0; i < 4; i++)
        {
            Granted(limiter.AttemptAcquire());
        }

        Refused(limiter.AttemptAcquire()).Should().Be(T);
    }

    [Fact]
    public void Permits_partially_saved_up_are_usable()
    {
        using var limiter = Create(o => o.Burst = 5);
        for (var i = 0; i < 5; i++)
        {
            Granted(limiter.AttemptAcquire());
        }

        _clock.Advance(2 * T);
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(2);
        Refused(limiter.AttemptAcquire(3)).Should().Be(T);
        Granted(limiter.AttemptAcquire(2));
        Refused(limiter.AttemptAcquire());
    }

    [Fact]
    public void Over_any_span_at_most_rate_times_span_plus_burst_are_granted_and_the_rate_is_exact()
    {
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 1_000, TimeProvider = _clock });
        var granted = 0;
        for (var step = 0; step <= 4_000; step++)
        {
            using var lease = limiter.AttemptAcquire();
            if (lease.IsAcquired)
            {
                granted++;
            }

            _clock.Advance(TimeSpan.FromTicks(2_500)); // 0.25 ms
        }

        granted.Should().Be(1_001, "one at t = 0, then one every millisecond for a second");
    }

    [Fact]
    public void A_rate_that_does_not_divide_a_second_is_still_exact_over_time()
    {
        using var limiter = Create(o => o.PermitsPerSecond = 3);
        var granted = 0;
        for (var step = 0; step < 1_000; step++)
        {
            using var lease = limiter.AttemptAcquire();
            if (lease.IsAcquired)
            {
                granted++;
            }

            _clock.AdvanceMilliseconds(10);
        }

        granted.Should().BeInRange(30, 31, "10 s at 3/s, plus the one at t = 0");
    }

    [Fact]
    public void A_fractional_rate_spaces_permits_seconds_apart()
    {
        using var limiter = Create(o => o.PermitsPerSecond = 0.5);
        Granted(limiter.AttemptAcquire());
        Refused(limiter.AttemptAcquire()).Should().Be(TimeSpan.FromSeconds(2));
        _clock.Advance(TimeSpan.FromSeconds(2));
        Granted(limiter.AttemptAcquire());
    }

    [Fact]
    public void A_very_high_rate_works()
    {
        using var limiter = Create(o => { o.PermitsPerSecond = 1_000_000; o.Burst = 1_000; });
        var granted = 0;
        for (var i = 0; i < 2_000; i++)
        {
            using var lease = limiter.AttemptAcquire();
            granted += lease.IsAcquired ? 1 : 0;
        }

        granted.Should().Be(1_000);
        _clock.Advance(TimeSpan.FromMilliseconds(1));
        Granted(limiter.AttemptAcquire(1_000));
    }

    [Fact]
    public async Task Permit_counts_beyond_Burst_or_negative_throw()
    {
        using var limiter = Create(o => { o.Burst = 3; o.QueueLimit = 10; });
        FluentActions.Invoking(() => limiter.AttemptAcquire(4)).Should().Throw<ArgumentOutOfRangeException>();
        FluentActions.Invoking(() => limiter.AttemptAcquire(-1)).Should().Throw<ArgumentOutOfRangeException>();
        await FluentActions.Awaiting(async () => await limiter.AcquireAsync(4)).Should().ThrowAsync<ArgumentOutOfRangeException>();
        await FluentActions.Awaiting(async () => await limiter.AcquireAsync(-1)).Should().ThrowAsync<ArgumentOutOfRangeException>();
        Granted(limiter.AttemptAcquire(3));
    }

    [Fact]
    public void Zero_permits_succeed_only_while_a_permit_is_available_and_take_nothing()
    {
        using var limiter = Create(o => o.Burst = 2);
        Granted(limiter.AttemptAcquire(0));
        Granted(limiter.AttemptAcquire(0));
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(2);
        Granted(limiter.AttemptAcquire(2));
        Refused(limiter.AttemptAcquire(0));
        _clock.Advance(T);
        Granted(limiter.AttemptAcquire(0));
        Granted(limiter.AttemptAcquire(1));
    }

    [Fact]
    public void Leases_carry_RetryAfter_only_when_refused()
    {
        using var limiter = Create();
        using (var granted = limiter.AttemptAcquire())
        {
            granted.IsAcquired.Should().BeTrue();
            granted.TryGetMetadata(MetadataName.RetryAfter, out _).Should().BeFalse();
        }

        using var refused = limiter.AttemptAcquire();
        refused.IsAcquired.Should().BeFalse();
        refused.MetadataNames.Should().Contain(MetadataName.RetryAfter.Name);
        refused.TryGetMetadata(MetadataName.RetryAfter.Name, out var raw).Should().BeTrue();
        raw.Should().Be(T);
        refused.GetAllMetadata().Should().Contain(kv => kv.Key == MetadataName.RetryAfter.Name);
    }

    // ---------------------------------------------------------------- waiting

    [Fact]
    public async Task AcquireAsync_completes_synchronously_when_a_permit_is_due()
    {
        using var limiter = Create(o => o.QueueLimit = 5);
        var vt = limiter.AcquireAsync();
        vt.IsCompleted.Should().BeTrue();
        Granted(await vt);
    }

    [Fact]
    public async Task Waiters_are_served_in_order_each_at_the_exact_instant_its_permit_is_due()
    {
        using var limiter = Create(o => o.QueueLimit = 3);
        Granted(limiter.AttemptAcquire());
        var a = limiter.AcquireAsync().AsTask();
        var b = limiter.AcquireAsync().AsTask();
        var c = limiter.AcquireAsync().AsTask();
        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(3);

        // The queue is full: refused at once, with the time until its permit after the queued ones falls due.
        Refused(await limiter.AcquireAsync().AsTask().WithTimeout()).Should().Be(4 * T);

        _clock.AdvanceMilliseconds(99.9);
        await AsyncAssert.StillPendingAsync(a, "a's permit falls due at 100 ms");
        _clock.AdvanceMilliseconds(0.1);
        Granted(await a.WithTimeout());
        b.IsCompleted.Should().BeFalse();

        _clock.AdvanceMilliseconds(99.9);
        await AsyncAssert.StillPendingAsync(b);
        _clock.AdvanceMilliseconds(0.1);
        Granted(await b.WithTimeout());
        c.IsCompleted.Should().BeFalse();
        _clock.Advance(T);
        Granted(await c.WithTimeout());

        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(0);
        Refused(limiter.AttemptAcquire()).Should().Be(T);
    }

    [Fact]
    public async Task A_clock_jump_releases_every_waiter_that_fell_due_and_keeps_the_rate()
    {
        using var limiter = Create(o => o.QueueLimit = 10);
        Granted(limiter.AttemptAcquire());
        var waiters = Enumerable.Range(0, 5).Select(_ => limiter.AcquireAsync().AsTask()).ToList();
        _clock.Advance(3 * T);
        await AsyncAssert.EventuallyAsync(() => waiters.Take(3).All(w => w.IsCompleted));
        await AsyncAssert.StillPendingAsync(waiters[3]);
        _clock.Advance(T);
        Granted(await waiters[3].WithTimeout());
        await AsyncAssert.StillPendingAsync(waiters[4]);
        _clock.Advance(T);
        Granted(await waiters[4].WithTimeout());
        foreach (var w in waiters)
        {
            Granted(await w);
        }
    }

    [Fact]
    public async Task A_multi_permit_waiter_waits_for_all_its_permits()
    {
        using var limiter = Create(o => { o.Burst = 3; o.QueueLimit = 5; });
        Granted(limiter.AttemptAcquire(3));
        var waiter = limiter.AcquireAsync(2).AsTask();
        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(2);
        _clock.Advance(2 * T - TimeSpan.FromTicks(1));
        await AsyncAssert.StillPendingAsync(waiter);
        _clock.Advance(TimeSpan.FromTicks(1));
        Granted(await waiter.WithTimeout());
    }

    [Fact]
    public async Task OldestFirst_a_new_request_never_overtakes_a_waiter()
    {
        using var limiter = Create(o => { o.Burst = 2; o.QueueLimit = 5; });
        Granted(limiter.AttemptAcquire(2));
        var big = limiter.AcquireAsync(2).AsTask(); // due at 2T
        _clock.Advance(T);                          // one permit is due now, but big waits for two
        Refused(limiter.AttemptAcquire());
        var small = limiter.AcquireAsync(1).AsTask();
        await AsyncAssert.StillPendingAsync(small, "it queues behind big");
        _clock.Advance(T);
        Granted(await big.WithTimeout());
        await AsyncAssert.StillPendingAsync(small);
        _clock.Advance(T);
        Granted(await small.WithTimeout());
    }

    [Fact]
    public async Task NewestFirst_serves_the_newest_waiter_first()
    {
        using var limiter = Create(o => { o.QueueLimit = 2; o.QueueProcessingOrder = QueueProcessingOrder.NewestFirst; });
        Granted(limiter.AttemptAcquire());
        var older = limiter.AcquireAsync().AsTask();
        var newer = limiter.AcquireAsync().AsTask();
        _clock.Advance(T);
        Granted(await newer.WithTimeout());
        await AsyncAssert.StillPendingAsync(older);
        _clock.Advance(T);
        Granted(await older.WithTimeout());
    }

    [Fact]
    public async Task NewestFirst_evicts_the_oldest_waiter_with_a_failed_lease_when_full()
    {
        using var limiter = Create(o => { o.QueueLimit = 1; o.QueueProcessingOrder = QueueProcessingOrder.NewestFirst; });
        Granted(limiter.AttemptAcquire());
        var older = limiter.AcquireAsync().AsTask();
        var newer = limiter.AcquireAsync().AsTask();
        Refused(await older.WithTimeout());
        newer.IsCompleted.Should().BeFalse();
        _clock.Advance(T);
        Granted(await newer.WithTimeout());
        var s = limiter.GetStatistics()!;
        s.TotalFailedLeases.Should().Be(1);
        s.TotalSuccessfulLeases.Should().Be(2);
    }

    [Fact]
    public async Task A_cancelled_waiter_leaves_at_once_frees_its_place_and_the_next_one_moves_up()
    {
        using var limiter = Create(o => o.QueueLimit = 2);
        Granted(limiter.AttemptAcquire());
        using var cts = new CancellationTokenSource();
        var first = limiter.AcquireAsync(1, cts.Token).AsTask();
        var second = limiter.AcquireAsync().AsTask();
        Refused(await limiter.AcquireAsync().AsTask().WithTimeout());

        cts.Cancel();
        await FluentActions.Awaiting(() => first.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(1);

        var third = limiter.AcquireAsync().AsTask(); // the cancelled waiter's place is free
        third.IsCompleted.Should().BeFalse();

        _clock.Advance(T);                             // second now gets the instant first would have had
        Granted(await second.WithTimeout());
        await AsyncAssert.StillPendingAsync(third);
        _clock.Advance(T);
        Granted(await third.WithTimeout());

        var s = limiter.GetStatistics()!;
        s.TotalSuccessfulLeases.Should().Be(3);
        s.TotalFailedLeases.Should().Be(1, "the queue-full refusal; a cancelled waiter is neither");
    }

    [Fact]
    public async Task An_already_cancelled_token_returns_a_cancelled_task_and_takes_nothing()
    {
        using var limiter = Create(o => o.QueueLimit = 2);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var task = limiter.AcquireAsync(1, cts.Token).AsTask();
        await FluentActions.Awaiting(() => task.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        Granted(limiter.AttemptAcquire());
    }

    [Fact]
    public async Task AcquireAsync_with_no_queue_refuses_at_once_with_RetryAfter()
    {
        using var limiter = Create();
        Granted(limiter.AttemptAcquire());
        var lease = await limiter.AcquireAsync().AsTask().WithTimeout();
        Refused(lease).Should().Be(T);
    }

    [Fact]
    public async Task Dispose_fails_waiters_and_later_calls_throw_ObjectDisposedException()
    {
        var limiter = Create(o => o.QueueLimit = 3);
        Granted(limiter.AttemptAcquire());
        var waiter = limiter.AcquireAsync().AsTask();
        limiter.Dispose();
        var lease = await waiter.WithTimeout();
        lease.IsAcquired.Should().BeFalse();
        FluentActions.Invoking(() => limiter.AttemptAcquire()).Should().Throw<ObjectDisposedException>();
        await FluentActions.Awaiting(async () => await limiter.AcquireAsync()).Should().ThrowAsync<ObjectDisposedException>();
        FluentActions.Invoking(() => limiter.Dispose()).Should().NotThrow();
        await limiter.DisposeAsync();
    }

    [Fact]
    public async Task DisposeAsync_fails_waiters_too()
    {
        var limiter = Create(o => o.QueueLimit = 3);
        Granted(limiter.AttemptAcquire());
        var waiter = limiter.AcquireAsync().AsTask();
        await limiter.DisposeAsync();
        (await waiter.WithTimeout()).IsAcquired.Should().BeFalse();
        _clock.Advance(T * 10);
    }

    [Fact]
    public async Task Zero_permit_AcquireAsync_waits_until_a_permit_is_available_and_takes_nothing()
    {
        using var limiter = Create(o => o.QueueLimit = 1);
        Granted(limiter.AttemptAcquire());
        var zero = limiter.AcquireAsync(0).AsTask();
        await AsyncAssert.StillPendingAsync(zero);
        _clock.Advance(T);
        Granted(await zero.WithTimeout());
        Granted(limiter.AttemptAcquire());
    }

    // ---------------------------------------------------------------- statistics and idle

    [Fact]
    public void Statistics_count_leases()
    {
        using var limiter = Create(o => o.Burst = 2);
        Granted(limiter.AttemptAcquire());
        Granted(limiter.AttemptAcquire());
        Refused(limiter.AttemptAcquire());
        Refused(limiter.AttemptAcquire(2));
        var s = limiter.GetStatistics()!;
        s.TotalSuccessfulLeases.Should().Be(2);
        s.TotalFailedLeases.Should().Be(2);
        s.CurrentAvailablePermits.Should().Be(0);
        s.CurrentQueuedCount.Should().Be(0);
    }

    [Fact]
    public void IdleDuration_is_null_until_a_full_burst_is_saved_up_again()
    {
        using var limiter = Create(o => o.Burst = 2);
        Granted(limiter.AttemptAcquire());
        limiter.IdleDuration.Should().BeNull();
        _clock.AdvanceMilliseconds(50);
        limiter.IdleDuration.Should().BeNull();
        _clock.AdvanceMilliseconds(80);
        limiter.IdleDuration.Should().Be(TimeSpan.FromMilliseconds(30));
    }

    // ---------------------------------------------------------------- concurrency

    [Fact]
    public async Task Concurrent_acquirers_at_one_instant_get_exactly_Burst_permits()
    {
        using var limiter = Create(o => o.Burst = 100);
        for (var round = 0; round < 3; round++)
        {
            var granted = 0;
            using var start = new Barrier(4);
            await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Task.Run(() =>
            {
                start.SignalAndWait();
                for (var i = 0; i < 500; i++)
                {
                    using var lease = limiter.AttemptAcquire();
                    if (lease.IsAcquired)
                    {
                        Interlocked.Increment(ref granted);
                    }
                }
            }))).WithTimeout();

            granted.Should().Be(round == 0 ? 100 : 10, $"round {round}");
            _clock.Advance(10 * T);
        }
    }

    [Fact]
    public async Task Concurrent_waiters_are_released_one_per_interval()
    {
        using var limiter = Create(o => o.QueueLimit = 100);
        Granted(limiter.AttemptAcquire());
        var waiters = new ConcurrentBag<Task<RateLimitLease>>();
        await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Task.Run(() =>
        {
            for (var i = 0; i < 10; i++)
            {
                waiters.Add(limiter.AcquireAsync().AsTask());
            }
        }))).WithTimeout();

        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(40);
        for (var k = 1; k <= 40; k++)
        {
            _clock.Advance(T);
            await AsyncAssert.EventuallyAsync(() => waiters.Count(w => w.IsCompleted) == k, $"after {k} intervals");
            waiters.Count(w => w.IsCompleted).Should().Be(k);
        }

        waiters.Should().OnlyContain(w => w.Result.IsAcquired);
    }

    // ---------------------------------------------------------------- RunAsync

    [Fact]
    public async Task RunAsync_acquires_runs_and_returns_the_result_passing_the_token()
    {
        using var limiter = Create();
        using var cts = new CancellationTokenSource();
        CancellationToken seen = default;
        var result = await limiter.RunAsync(ct => { seen = ct; return new ValueTask<int>(7); }, cancellationToken: cts.Token).AsTask().WithTimeout();
        result.Should().Be(7);
        seen.Should().Be(cts.Token);
        Refused(limiter.AttemptAcquire()).Should().Be(T, "RunAsync used the permit");
    }

    [Fact]
    public async Task RunAsync_refused_throws_RateLimitRejectedException_with_RetryAfter_and_does_not_run()
    {
        using var limiter = Create();
        Granted(limiter.AttemptAcquire());
        _clock.AdvanceMilliseconds(30);
        var ran = false;
        var ex = (await FluentActions.Awaiting(() => limiter.RunAsync(_ => { ran = true; return new ValueTask<int>(1); }).AsTask().WithTimeout())
            .Should().ThrowAsync<RateLimitRejectedException>()).Which;
        ran.Should().BeFalse();
        ex.RetryAfter.Should().Be(TimeSpan.FromMilliseconds(70));
        ex.Should().BeAssignableTo<ExecutionRejectedException>();
        ex.Message.Should().NotBeNullOrWhiteSpace();

        await FluentActions.Awaiting(() => limiter.RunAsync(_ => { ran = true; return ValueTask.CompletedTask; }).AsTask().WithTimeout())
            .Should().ThrowAsync<ExecutionRejectedException>();
        ran.Should().BeFalse();
    }

    [Fact]
    public async Task RunAsync_releases_a_concurrency_permit_after_the_action_whatever_its_outcome()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 2, QueueLimit = 0 });
        long? duringAvailable = null;
        await limiter.RunAsync(_ => { duringAvailable = limiter.GetStatistics()!.CurrentAvailablePermits; return ValueTask.CompletedTask; }, permits: 2).WithTimeout();
        duringAvailable.Should().Be(0);
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(2);

        await FluentActions.Awaiting(() => limiter.RunAsync<int>(async _ => { await Task.Yield(); throw new FormatException("x"); }).AsTask().WithTimeout())
            .Should().ThrowAsync<FormatException>();
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(2);

        using var cts = new CancellationTokenSource();
        var call = limiter.RunAsync(async ct => await Task.Delay(Timeout.Infinite, ct), cancellationToken: cts.Token).AsTask();
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(1);
        cts.Cancel();
        await FluentActions.Awaiting(() => call.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(2);
    }

    [Fact]
    public async Task RunAsync_refused_by_a_full_concurrency_limiter_has_no_RetryAfter()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 0 });
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var holder = limiter.RunAsync(_ => new ValueTask(gate.Task)).AsTask();
        var ex = (await FluentActions.Awaiting(() => limiter.RunAsync(_ => new ValueTask<int>(1)).AsTask().WithTimeout())
            .Should().ThrowAsync<RateLimitRejectedException>()).Which;
        ex.RetryAfter.Should().BeNull();
        gate.SetResult();
        await holder.WithTimeout();
        (await limiter.RunAsync(_ => new ValueTask<int>(3)).AsTask().WithTimeout()).Should().Be(3);
    }

    [Fact]
    public async Task RunAsync_waits_in_the_queue_then_runs()
    {
        using var limiter = Create(o => o.QueueLimit = 1);
        Granted(limiter.AttemptAcquire());
        var ran = false;
        var call = limiter.RunAsync(_ => { ran = true; return new ValueTask<string>("done"); }).AsTask();
        await AsyncAssert.StillPendingAsync(call);
        ran.Should().BeFalse();
        _clock.Advance(T);
        (await call.WithTimeout()).Should().Be("done");
        ran.Should().BeTrue();
    }

    [Fact]
    public async Task RunAsync_cancelled_while_waiting_throws_OperationCanceledException_without_running_and_frees_the_place()
    {
        using var limiter = Create(o => o.QueueLimit = 1);
        Granted(limiter.AttemptAcquire());
        using var cts = new CancellationTokenSource();
        var ran = false;
        var call = limiter.RunAsync(_ => { ran = true; return ValueTask.CompletedTask; }, cancellationToken: cts.Token).AsTask();
        await AsyncAssert.StillPendingAsync(call);
        cts.Cancel();
        await FluentActions.Awaiting(() => call.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        ran.Should().BeFalse();

        var next = limiter.RunAsync(_ => new ValueTask<int>(5)).AsTask();
        _clock.Advance(T);
        (await next.WithTimeout()).Should().Be(5);
    }

    [Fact]
    public async Task RunAsync_with_an_already_cancelled_token_does_not_run()
    {
        using var limiter = Create();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var ran = false;
        await FluentActions.Awaiting(() => limiter.RunAsync(_ => { ran = true; return new ValueTask<int>(1); }, cancellationToken: cts.Token).AsTask().WithTimeout())
            .Should().ThrowAsync<OperationCanceledException>();
        ran.Should().BeFalse();
        Granted(limiter.AttemptAcquire());
    }

    [Fact]
    public async Task RunAsync_takes_the_requested_number_of_permits()
    {
        using var limiter = Create(o => o.Burst = 3);
        await limiter.RunAsync(_ => ValueTask.CompletedTask, permits: 2).WithTimeout();
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(1);
        var ex = (await FluentActions.Awaiting(() => limiter.RunAsync(_ => ValueTask.CompletedTask, permits: 2).AsTask().WithTimeout())
            .Should().ThrowAsync<RateLimitRejectedException>()).Which;
        ex.RetryAfter.Should().Be(T);
    }

    [Fact]
    public async Task RunAsync_argument_errors()
    {
        using var limiter = Create(o => o.Burst = 2);
        FluentActions.Invoking(() => ((RateLimiter)null!).RunAsync(_ => new ValueTask<int>(1))).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => limiter.RunAsync((Func<CancellationToken, ValueTask<int>>)null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => limiter.RunAsync((Func<CancellationToken, ValueTask>)null!)).Should().Throw<ArgumentNullException>();
        await FluentActions.Awaiting(async () => await limiter.RunAsync(_ => new ValueTask<int>(1), permits: -1)).Should().ThrowAsync<ArgumentOutOfRangeException>();
        await FluentActions.Awaiting(async () => await limiter.RunAsync(_ => new ValueTask<int>(1), permits: 3)).Should().ThrowAsync<ArgumentOutOfRangeException>();
        Granted(limiter.AttemptAcquire(2));
    }

    [Fact]
    public async Task RunAsync_on_a_disposed_limiter_throws_ObjectDisposedException()
    {
        var limiter = Create();
        limiter.Dispose();
        await FluentActions.Awaiting(async () => await limiter.RunAsync(_ => new ValueTask<int>(1))).Should().ThrowAsync<ObjectDisposedException>();
    }

    [Fact]
    public async Task RunAsync_completes_synchronously_when_granted_at_once_and_the_action_is_synchronous()
    {
        using var limiter = Create(o => o.Burst = 2);
        var task = limiter.RunAsync(_ => new ValueTask<int>(4)).AsTask();
        task.IsCompletedSuccessfully.Should().BeTrue();
        (await task).Should().Be(4);
        limiter.RunAsync(_ => ValueTask.CompletedTask).AsTask().IsCompletedSuccessfully.Should().BeTrue();
    }

    [Fact]
    public async Task RunAsync_action_exceptions_propagate_unchanged()
    {
        using var limiter = Create();
        var boom = new InvalidOperationException("boom");
        var thrown = await FluentActions.Awaiting(() => limiter.RunAsync<int>(_ => throw boom).AsTask().WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        thrown.Which.Should().BeSameAs(boom);
    }

    [Fact]
    public void RateLimitRejectedException_carries_RetryAfter_and_is_an_ExecutionRejectedException()
    {
        new RateLimitRejectedException().Should().BeAssignableTo<ExecutionRejectedException>();
        new RateLimitRejectedException().RetryAfter.Should().BeNull();
        new RateLimitRejectedException(TimeSpan.FromSeconds(3)).RetryAfter.Should().Be(TimeSpan.FromSeconds(3));
        new RateLimitRejectedException("m", TimeSpan.FromSeconds(1)).Message.Should().Be("m");
        var inner = new Exception();
        var e = new RateLimitRejectedException("m", TimeSpan.FromSeconds(2), inner);
        e.InnerException.Should().BeSameAs(inner);
        e.RetryAfter.Should().Be(TimeSpan.FromSeconds(2));
        new RateLimitRejectedException("m").Message.Should().Be("m");
    }

    // ---------------------------------------------------------------- combined

    [Fact]
    public void CreateChained_concurrency_then_gcra_is_one_RateLimiter_enforcing_both()
    {
        using var concurrency = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 2, QueueLimit = 0 });
        using var rate = Create(o => o.Burst = 5);
        using var chained = RateLimiter.CreateChained(concurrency, rate);

        var first = chained.AttemptAcquire();
        var second = chained.AttemptAcquire();
        first.IsAcquired.Should().BeTrue();
        second.IsAcquired.Should().BeTrue();
        Refused(chained.AttemptAcquire());
        first.Dispose();
        Granted(chained.AttemptAcquire());
        second.Dispose();

        // 5 rate permits spent (2 + 1 + ... ) : the rate binds next.
        Granted(chained.AttemptAcquire());
        Granted(chained.AttemptAcquire());
        Refused(chained.AttemptAcquire()).Should().Be(T);
    }

    [Fact]
    public async Task CombinedRateLimiter_keeps_at_most_N_running_and_starts_spaced_by_the_rate()
    {
        using var limiter = CombinedRateLimiter.Create(maxConcurrency: 2, permitsPerSecond: 10, queueLimit: 10, timeProvider: _clock);
        limiter.Should().BeAssignableTo<RateLimiter>();

        var running = 0;
        var maxRunning = 0;
        var starts = new ConcurrentQueue<TimeSpan>();
        var gates = Enumerable.Range(0, 5).Select(_ => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).ToArray();
        var calls = gates.Select((gate, i) => limiter.RunAsync(async _ =>
        {
            starts.Enqueue(_clock.Elapsed);
            var now = Interlocked.Increment(ref running);
            InterlockedMax(ref maxRunning, now);
            await gate.Task;
            Interlocked.Decrement(ref running);
        }).AsTask()).ToArray();

        await AsyncAssert.EventuallyAsync(() => starts.Count == 1);
        await AsyncAssert.StillPendingAsync(calls[1], "the second holds a slot but waits for its rate permit");
        starts.Count.Should().Be(1);
        _clock.Advance(T);
        await AsyncAssert.EventuallyAsync(() => starts.Count == 2);
        _clock.Advance(T * 5);
        await AsyncAssert.StillPendingAsync(calls[2], "both slots are taken");
        starts.Count.Should().Be(2);

        gates[0].SetResult();
        await calls[0].WithTimeout();
        await AsyncAssert.EventuallyAsync(() => starts.Count == 3, "a slot freed and the rate allows it");
        gates[1].SetResult();
        await calls[1].WithTimeout();
        await AsyncAssert.EventuallyAsync(() => limiter.GetStatistics() is not null);
        await AsyncAssert.StillPendingAsync(calls[3], "the rate permit for the 4th falls due 100 ms after the 3rd");
        _clock.Advance(T);
        await AsyncAssert.EventuallyAsync(() => starts.Count == 4);

        foreach (var g in gates)
        {
            g.TrySetResult();
        }

        _clock.Advance(T);
        await Task.WhenAll(calls).WithTimeout();
        maxRunning.Should().BeLessThanOrEqualTo(2);
        var s = starts.ToArray();
        for (var i = 1; i < s.Length; i++)
        {
            (s[i] - s[i - 1]).Should().BeGreaterThanOrEqualTo(T, $"start {i}");
        }
    }

    [Fact]
    public async Task CombinedRateLimiter_refused_by_the_rate_gives_RetryAfter_and_frees_its_slot()
    {
        using var limiter = CombinedRateLimiter.Create(maxConcurrency: 2, permitsPerSecond: 10, timeProvider: _clock);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var holder = limiter.RunAsync(_ => new ValueTask(gate.Task)).AsTask();
        var ex = (await FluentActions.Awaiting(() => limiter.RunAsync(_ => ValueTask.CompletedTask).AsTask().WithTimeout())
            .Should().ThrowAsync<RateLimitRejectedException>()).Which;
        ex.RetryAfter.Should().Be(T);
        _clock.Advance(T);
        await limiter.RunAsync(_ => ValueTask.CompletedTask).WithTimeout(); // the refused call did not keep a slot
        _clock.Advance(T);
        await limiter.RunAsync(_ => ValueTask.CompletedTask).WithTimeout();
        gate.SetResult();
        await holder.WithTimeout();
    }

    [Fact]
    public void CombinedRateLimiter_validates_its_arguments()
    {
        FluentActions.Invoking(() => CombinedRateLimiter.Create(0, 10)).Should().Throw<ArgumentOutOfRangeException>();
        FluentActions.Invoking(() => CombinedRateLimiter.Create(1, 0)).Should().Throw<ArgumentOutOfRangeException>();
        FluentActions.Invoking(() => CombinedRateLimiter.Create(1, double.NaN)).Should().Throw<ArgumentOutOfRangeException>();
        FluentActions.Invoking(() => CombinedRateLimiter.Create(1, 10, burst: 0)).Should().Throw<ArgumentOutOfRangeException>();
        FluentActions.Invoking(() => CombinedRateLimiter.Create(1, 10, queueLimit: -1)).Should().Throw<ArgumentOutOfRangeException>();
    }

    [Fact]
    public void Disposing_the_combined_limiter_disposes_the_inner_ones()
    {
        var limiter = CombinedRateLimiter.Create(1, 10, timeProvider: _clock);
        limiter.Dispose();
        FluentActions.Invoking(() => limiter.AttemptAcquire()).Should().Throw<ObjectDisposedException>();
    }

    private static void InterlockedMax(ref int target, int value)
    {
        int current;
        while ((current = Volatile.Read(ref target)) < value && Interlocked.CompareExchange(ref target, value, current) != current)
        {
        }
    }

    // ---------------------------------------------------------------- observability

    [Fact]
    public async Task Metrics_are_named_asyncpatterns_ratelimiter_in_permits_and_tagged_with_the_name()
    {
        var name = "gcra-" + Guid.NewGuid().ToString("N");
        var measurements = new ConcurrentQueue<(string Instrument, long Value)>();
        var published = new ConcurrentBag<string>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "AsyncPatterns")
            {
                published.Add(instrument.Name);
                if (instrument.Name.StartsWith("asyncpatterns.ratelimiter.", StringComparison.Ordinal))
                {
                    l.EnableMeasurementEvents(instrument);
                }
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "asyncpatterns.name" && Equals(tag.Value, name))
                {
                    measurements.Enqueue((instrument.Name, value));
                }
            }
        });
        listener.Start();

        using var limiter = Create(o => { o.Name = name; o.Burst = 3; o.QueueLimit = 2; });
        Granted(limiter.AttemptAcquire(3));
        Refused(limiter.AttemptAcquire());
        var waiter = limiter.AcquireAsync(2).AsTask();
        _clock.Advance(2 * T);
        Granted(await waiter.WithTimeout());

        published.Should().OnlyContain(n => n.StartsWith("asyncpatterns.", StringComparison.Ordinal));
        long Sum(string instrument) => measurements.Where(m => m.Instrument == instrument).Sum(m => m.Value);
        Sum("asyncpatterns.ratelimiter.granted").Should().Be(5);
        Sum("asyncpatterns.ratelimiter.refused").Should().Be(1);
        measurements.Where(m => m.Instrument == "asyncpatterns.ratelimiter.queue.length").Select(m => m.Value).Should().Equal(2, -2);
    }

    [Fact]
    public void Without_a_TimeProvider_the_system_clock_is_used()
    {
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 1 });
        Granted(limiter.AttemptAcquire());
        var retryAfter = Refused(limiter.AttemptAcquire());
        retryAfter.Should().BeGreaterThan(TimeSpan.FromMilliseconds(500)).And.BeLessThanOrEqualTo(TimeSpan.FromSeconds(1));
    }

    [Fact]
    public async Task Without_a_TimeProvider_a_waiter_wakes_on_the_system_timer()
    {
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = 20, QueueLimit = 1 });
        Granted(limiter.AttemptAcquire());
        var waiter = limiter.AcquireAsync().AsTask();
        Granted(await waiter.WithTimeout(TimeSpan.FromSeconds(5)));
    }

    // ---------------------------------------------------------------- second round: adversarial

    [Fact]
    public async Task QueueLimit_counts_permits_not_requests()
    {
        using var limiter = Create(o => { o.Burst = 2; o.QueueLimit = 3; });
        Granted(limiter.AttemptAcquire(2));
        var two = limiter.AcquireAsync(2).AsTask();
        Refused(await limiter.AcquireAsync(2).AsTask().WithTimeout());
        var one = limiter.AcquireAsync(1).AsTask();
        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(3);
        Refused(await limiter.AcquireAsync(1).AsTask().WithTimeout());
        _clock.Advance(3 * T);
        Granted(await two.WithTimeout());
        Granted(await one.WithTimeout());
    }

    [Fact]
    public async Task NewestFirst_lets_a_new_request_take_a_due_permit_while_others_wait()
    {
        using var limiter = Create(o => { o.Burst = 2; o.QueueLimit = 4; o.QueueProcessingOrder = QueueProcessingOrder.NewestFirst; });
        Granted(limiter.AttemptAcquire(2));
        var big = limiter.AcquireAsync(2).AsTask();
        _clock.Advance(T);
        Granted(limiter.AttemptAcquire(1));
        await AsyncAssert.StillPendingAsync(big);
        _clock.Advance(2 * T);
        Granted(await big.WithTimeout());
    }

    [Fact]
    public async Task NewestFirst_a_request_larger_than_QueueLimit_is_refused_without_evicting()
    {
        using var limiter = Create(o => { o.Burst = 3; o.QueueLimit = 2; o.QueueProcessingOrder = QueueProcessingOrder.NewestFirst; });
        Granted(limiter.AttemptAcquire(3));
        var waiter = limiter.AcquireAsync(1).AsTask();
        Refused(await limiter.AcquireAsync(3).AsTask().WithTimeout());
        waiter.IsCompleted.Should().BeFalse();
        _clock.Advance(T);
        Granted(await waiter.WithTimeout());
    }

    [Fact]
    public async Task Cancelling_the_last_waiter_and_then_advancing_grants_nothing_spurious()
    {
        using var limiter = Create(o => o.QueueLimit = 2);
        Granted(limiter.AttemptAcquire());
        using var cts = new CancellationTokenSource();
        var w = limiter.AcquireAsync(1, cts.Token).AsTask();
        cts.Cancel();
        await FluentActions.Awaiting(() => w.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        _clock.Advance(T);
        Granted(limiter.AttemptAcquire());
        Refused(limiter.AttemptAcquire()).Should().Be(T);
        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(0);
    }

    [Fact]
    public async Task Cancelling_a_middle_waiter_pulls_the_later_ones_forward()
    {
        using var limiter = Create(o => o.QueueLimit = 5);
        Granted(limiter.AttemptAcquire());
        using var cts = new CancellationTokenSource();
        var a = limiter.AcquireAsync().AsTask();
        var b = limiter.AcquireAsync(1, cts.Token).AsTask();
        var c = limiter.AcquireAsync().AsTask();
        cts.Cancel();
        await FluentActions.Awaiting(() => b.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        _clock.Advance(T);
        Granted(await a.WithTimeout());
        await AsyncAssert.StillPendingAsync(c);
        _clock.Advance(T);
        Granted(await c.WithTimeout());
    }

    [Fact]
    public async Task Disposing_with_waiters_and_a_pending_timer_then_advancing_is_harmless()
    {
        var limiter = Create(o => o.QueueLimit = 5);
        Granted(limiter.AttemptAcquire());
        var waiters = Enumerable.Range(0, 3).Select(_ => limiter.AcquireAsync().AsTask()).ToList();
        limiter.Dispose();
        foreach (var w in waiters)
        {
            var lease = await w.WithTimeout();
            lease.IsAcquired.Should().BeFalse();
            lease.TryGetMetadata(MetadataName.RetryAfter, out _).Should().BeFalse("waiters failed by dispose get no RetryAfter");
        }

        FluentActions.Invoking(() => _clock.Advance(T * 10)).Should().NotThrow();
        FluentActions.Invoking(() => limiter.GetStatistics()).Should().Throw<ObjectDisposedException>();
    }

    [Fact]
    public void A_fresh_limiter_is_idle()
    {
        using var limiter = Create(o => o.Burst = 3);
        limiter.IdleDuration.Should().NotBeNull();
        _clock.AdvanceMilliseconds(250);
        limiter.IdleDuration.Should().NotBeNull();
        limiter.IdleDuration!.Value.Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(250));
    }

    [Fact]
    public async Task IdleDuration_is_null_while_anyone_waits()
    {
        using var limiter = Create(o => o.QueueLimit = 1);
        Granted(limiter.AttemptAcquire());
        var w = limiter.AcquireAsync().AsTask();
        limiter.IdleDuration.Should().BeNull();
        _clock.Advance(T);
        Granted(await w.WithTimeout());
        limiter.IdleDuration.Should().BeNull();
        _clock.Advance(T * 2);
        limiter.IdleDuration.Should().Be(T);
    }

    [Fact]
    public void A_rate_beyond_the_clocks_resolution_is_refused_naming_the_option()
    {
        var ex = FluentActions.Invoking(() => Create(o => o.PermitsPerSecond = 1e15)).Should().Throw<ArgumentOutOfRangeException>().Which;
        ex.ParamName.Should().Be(nameof(GcraRateLimiterOptions.PermitsPerSecond));
        var slow = FluentActions.Invoking(() => Create(o => o.PermitsPerSecond = 1e-12)).Should().Throw<ArgumentOutOfRangeException>().Which;
        slow.ParamName.Should().BeOneOf(nameof(GcraRateLimiterOptions.PermitsPerSecond), nameof(GcraRateLimiterOptions.Burst));
    }

    [Fact]
    public async Task Stress_waiters_with_random_cancellations_are_each_granted_or_cancelled_and_never_faster_than_the_rate()
    {
        using var limiter = Create(o => { o.PermitsPerSecond = 100; o.QueueLimit = 1_000; });
        var interval = TimeSpan.FromMilliseconds(10);
        var random = new Random(7);
        var sources = new List<CancellationTokenSource>();
        var waiters = new List<Task<RateLimitLease>>();
        var producers = Enumerable.Range(0, 4).Select(p => Task.Run(() =>
        {
            var local = new List<(CancellationTokenSource, Task<RateLimitLease>)>();
            for (var i = 0; i < 50; i++)
            {
                var cts = new CancellationTokenSource();
                local.Add((cts, limiter.AcquireAsync(1, cts.Token).AsTask()));
            }

            return local;
        })).ToList();
        foreach (var (cts, task) in (await Task.WhenAll(producers).WithTimeout()).SelectMany(x => x))
        {
            sources.Add(cts);
            waiters.Add(task);
        }

        var cancellers = Task.Run(() =>
        {
            foreach (var cts in sources.Where((_, i) => i % 3 == 0))
            {
                cts.Cancel();
            }
        });
        var granted = 0;
        for (var step = 1; step <= 250; step++)
        {
            _clock.Advance(interval);
            await Task.Yield();
            var now = waiters.Count(w => w.IsCompletedSuccessfully && w.Result.IsAcquired);
            now.Should().BeLessThanOrEqualTo(step + 1, "one at t = 0, then at most one permit per interval");
            granted = now;
        }

        await cancellers.WithTimeout();
        await Task.WhenAll(waiters.Select(w => w.ContinueWith(_ => { }, TaskScheduler.Default))).WithTimeout();
        var cancelled = waiters.Count(w => w.IsCanceled);
        var ok = waiters.Count(w => w.IsCompletedSuccessfully && w.Result.IsAcquired);
        (cancelled + ok).Should().Be(200, "every waiter is granted or cancelled");
        waiters.Should().NotContain(w => w.IsFaulted);
        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(0);
        limiter.GetStatistics()!.TotalSuccessfulLeases.Should().Be(ok);
        foreach (var cts in sources)
        {
            cts.Dispose();
        }
    }

    [Fact]
    public async Task Chained_limiter_cancelled_while_waiting_for_the_rate_gives_back_its_concurrency_slot()
    {
        using var limiter = CombinedRateLimiter.Create(maxConcurrency: 1, permitsPerSecond: 10, queueLimit: 5, timeProvider: _clock);
        Granted(await limiter.AcquireAsync().AsTask().WithTimeout());
        using var cts = new CancellationTokenSource();
        var waiting = limiter.AcquireAsync(1, cts.Token).AsTask();       // takes the slot, waits for the rate
        await AsyncAssert.StillPendingAsync(waiting);
        cts.Cancel();
        await FluentActions.Awaiting(() => waiting.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();

        _clock.Advance(T);
        using var next = await limiter.AcquireAsync().AsTask().WithTimeout();
        next.IsAcquired.Should().BeTrue("the cancelled caller did not keep the only slot");
    }

    [Fact]
    public async Task RunAsync_cancelled_during_the_action_surfaces_the_cancellation_and_releases()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 0 });
        await FluentActions.Awaiting(() => limiter.RunAsync<int>(_ => throw new FormatException()).AsTask().WithTimeout()).Should().ThrowAsync<FormatException>();
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(1, "a synchronous throw releases the permit too");
    }

    [Fact]
    public async Task RunAsync_through_the_RateLimiter_base_type_and_with_zero_permits()
    {
        RateLimiter limiter = Create();
        (await limiter.RunAsync(_ => new ValueTask<int>(1), permits: 0).AsTask().WithTimeout()).Should().Be(1);
        (await limiter.RunAsync(_ => new ValueTask<int>(2)).AsTask().WithTimeout()).Should().Be(2);
        limiter.Dispose();
    }

    [Fact]
    public async Task Refusals_evictions_and_dispose_are_counted_in_the_refused_metric()
    {
        var name = "gcra-" + Guid.NewGuid().ToString("N");
        var refused = 0L;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "AsyncPatterns" && instrument.Name == "asyncpatterns.ratelimiter.refused")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "asyncpatterns.name" && Equals(tag.Value, name))
                {
                    Interlocked.Add(ref refused, value);
                }
            }
        });
        listener.Start();

        var limiter = Create(o => { o.Name = name; o.QueueLimit = 1; o.QueueProcessingOrder = QueueProcessingOrder.NewestFirst; o.Burst = 2; });
        Granted(limiter.AttemptAcquire(2));
        Refused(limiter.AttemptAcquire(2));                  // 2 permits refused
        var evicted = limiter.AcquireAsync(1).AsTask();
        var queued = limiter.AcquireAsync(1).AsTask();      // evicts the first: 1 permit
        Refused(await evicted.WithTimeout());
        limiter.Dispose();                                  // fails the queued one: 1 permit
        Refused(await queued.WithTimeout());
        Interlocked.Read(ref refused).Should().Be(4);
    }

    // ---------------------------------------------------------------- shared rules: cost and ConfigureAwait(false)

    [Fact]
    public async Task A_granted_acquire_and_a_synchronous_RunAsync_allocate_nothing()
    {
        using var limiter = Create(o => { o.PermitsPerSecond = 1e6; o.Burst = 1_000_000; });
        Func<CancellationToken, ValueTask<int>> action = static _ => new ValueTask<int>(1);
        for (var i = 0; i < 2_000; i++)
        {
            limiter.AttemptAcquire().Dispose();
            (await limiter.AcquireAsync()).Dispose();
            await limiter.RunAsync(action);
        }

        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < 10_000; i++)
        {
            limiter.AttemptAcquire().Dispose();
            (await limiter.AcquireAsync()).Dispose();
            await limiter.RunAsync(action);
        }

        (GC.GetAllocatedBytesForCurrentThread() - before).Should().BeLessThan(1_000);
    }

    private sealed class CountingSynchronizationContext : SynchronizationContext
    {
        public int Posts;

        public override void Post(SendOrPostCallback d, object? state)
        {
            Interlocked.Increment(ref Posts);
            ThreadPool.QueueUserWorkItem(_ => d(state));
        }
    }

    [Fact]
    public async Task RunAsync_does_not_capture_the_callers_synchronization_context()
    {
        using var limiter = Create(o => o.QueueLimit = 2);
        Granted(limiter.AttemptAcquire());
        var context = new CountingSynchronizationContext();
        Task<int> waiting;
        Task<int> slowAction;
        var previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            waiting = limiter.RunAsync(_ => new ValueTask<int>(1)).AsTask();
            slowAction = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1 })
                .RunAsync(async _ => { await Task.Delay(1).ConfigureAwait(false); return 2; }).AsTask();
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }

        _clock.Advance(T);
        (await waiting.WithTimeout()).Should().Be(1);
        (await slowAction.WithTimeout()).Should().Be(2);
        context.Posts.Should().Be(0);
    }

    private sealed class CapturingLoggerProvider : Microsoft.Extensions.Logging.ILoggerProvider
    {
        public ConcurrentQueue<(Microsoft.Extensions.Logging.LogLevel Level, string Message)> Entries { get; } = new();

        public Microsoft.Extensions.Logging.ILogger CreateLogger(string categoryName) => new Logger(this);

        public void Dispose()
        {
        }

        private sealed class Logger(CapturingLoggerProvider owner) : Microsoft.Extensions.Logging.ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => true;

            public void Log<TState>(Microsoft.Extensions.Logging.LogLevel logLevel, Microsoft.Extensions.Logging.EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                owner.Entries.Enqueue((logLevel, formatter(state, exception)));
        }
    }

    [Fact]
    public async Task Refusals_and_dispose_with_waiters_are_logged_with_the_name()
    {
        var provider = new CapturingLoggerProvider();
        using var factory = Microsoft.Extensions.Logging.LoggerFactory.Create(b =>
        {
            b.AddProvider(provider).SetMinimumLevel(LogLevel.Trace);
        });
        var limiter = Create(o => { o.Name = "outbound-api"; o.LoggerFactory = factory; o.QueueLimit = 1; });
        Granted(limiter.AttemptAcquire());
        provider.Entries.Should().BeEmpty("a grant is not worth a log line");
        Refused(limiter.AttemptAcquire());
        provider.Entries.Should().NotBeEmpty();
        provider.Entries.Should().OnlyContain(e => e.Message.Contains("outbound-api"));
        var waiter = limiter.AcquireAsync().AsTask();
        limiter.Dispose();
        Refused(await waiter.WithTimeout());
        provider.Entries.Should().Contain(e => e.Level >= Microsoft.Extensions.Logging.LogLevel.Information && e.Message.Contains("outbound-api"));
    }
}
