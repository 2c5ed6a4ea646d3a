using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;
using Polly;

namespace AsyncPatterns.Tests.Contract;

/// <summary>Black-box tests of GcraRateLimiter and RateLimiterExtensions, in the style of the System.Threading.RateLimiting suite.</summary>
public sealed class RateLimitingContractTests
{
    private readonly ManualTimeProvider _clock = new();

    private GcraRateLimiter Create(double perSecond = 10, int burst = 1, int queueLimit = 0, QueueProcessingOrder order = QueueProcessingOrder.OldestFirst) =>
        new(new GcraRateLimiterOptions { PermitsPerSecond = perSecond, Burst = burst, QueueLimit = queueLimit, QueueProcessingOrder = order, TimeProvider = _clock });

    private static TimeSpan? RetryAfter(RateLimitLease lease) => lease.TryGetMetadata(MetadataName.RetryAfter, out var value) ? value : null;

    [Fact]
    public void Options_have_the_documented_defaults()
    {
        var options = new GcraRateLimiterOptions();
        options.Burst.Should().Be(1);
        options.QueueLimit.Should().Be(0);
        options.QueueProcessingOrder.Should().Be(QueueProcessingOrder.OldestFirst);
    }

    [Fact]
    public void Is_a_RateLimiter()
    {
        using var limiter = Create();
        limiter.Should().BeAssignableTo<RateLimiter>();
    }

    [Fact]
    public void Null_options_throw_ArgumentNullException()
    {
        var create = () => new GcraRateLimiter(null!);
        create.Should().Throw<ArgumentNullException>();
    }

    [Theory]
    [InlineData(nameof(GcraRateLimiterOptions.PermitsPerSecond), 0, 1, 0)]
    [InlineData(nameof(GcraRateLimiterOptions.PermitsPerSecond), -1, 1, 0)]
    [InlineData(nameof(GcraRateLimiterOptions.PermitsPerSecond), double.NaN, 1, 0)]
    [InlineData(nameof(GcraRateLimiterOptions.Burst), 10, 0, 0)]
    [InlineData(nameof(GcraRateLimiterOptions.QueueLimit), 10, 1, -1)]
    public void Invalid_options_throw_ArgumentOutOfRangeException_naming_the_option(string option, double perSecond, int burst, int queueLimit)
    {
        var create = () => new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = perSecond, Burst = burst, QueueLimit = queueLimit });
        create.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(option);
    }

    [Fact]
    public void Burst_permits_go_at_once_then_the_refusal_carries_RetryAfter_of_one_emission_interval()
    {
        using var limiter = Create(perSecond: 10, burst: 3);
        for (var i = 0; i < 3; i++)
        {
            limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        }

        using var refused = limiter.AttemptAcquire();

        refused.IsAcquired.Should().BeFalse();
        RetryAfter(refused).Should().Be(TimeSpan.FromMilliseconds(100));
    }

    [Fact]
    public void Permits_are_spaced_exactly_by_the_emission_interval()
    {
        using var limiter = Create(perSecond: 4);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        _clock.Advance(TimeSpan.FromMilliseconds(249));
        limiter.AttemptAcquire().IsAcquired.Should().BeFalse();
        _clock.Advance(TimeSpan.FromMilliseconds(1));
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
    }

    [Fact]
    public void RetryAfter_follows_the_GCRA_formula_for_several_permits()
    {
        using var limiter = Create(perSecond: 10, burst: 5);
        limiter.AttemptAcquire(5).IsAcquired.Should().BeTrue();
        _clock.Advance(TimeSpan.FromMilliseconds(150));

        using var refused = limiter.AttemptAcquire(3);

        // tat = 500 ms, τ = 500 ms, now = 150 ms: newTat = 800 ms, RetryAfter = 800 - 500 - 150 = 150 ms.
        refused.IsAcquired.Should().BeFalse();
        RetryAfter(refused).Should().Be(TimeSpan.FromMilliseconds(150));
    }

    [Fact]
    public void AttemptAcquire_zero_succeeds_only_while_a_permit_is_available()
    {
        using var limiter = Create();
        limiter.AttemptAcquire(0).IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire(0).IsAcquired.Should().BeTrue("0 permits takes nothing");
        limiter.AttemptAcquire(1).IsAcquired.Should().BeTrue();

        limiter.AttemptAcquire(0).IsAcquired.Should().BeFalse();
    }

    [Fact]
    public async Task Permit_count_above_Burst_or_negative_throws_ArgumentOutOfRangeException()
    {
        using var limiter = Create(burst: 2);
        FluentActions.Invoking(() => limiter.AttemptAcquire(3)).Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be("permitCount");
        FluentActions.Invoking(() => limiter.AttemptAcquire(-1)).Should().Throw<ArgumentOutOfRangeException>();
        await FluentActions.Awaiting(async () => await limiter.AcquireAsync(3)).Should().ThrowAsync<ArgumentOutOfRangeException>();
        await FluentActions.Awaiting(async () => await limiter.AcquireAsync(-1)).Should().ThrowAsync<ArgumentOutOfRangeException>();
    }

    [Fact]
    public async Task Queued_acquisitions_are_served_in_order_at_the_exact_instant_they_are_due()
    {
        using var limiter = Create(perSecond: 10, queueLimit: 2);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        var first = limiter.AcquireAsync().AsTask();
        var second = limiter.AcquireAsync().AsTask();
        first.IsCompleted.Should().BeFalse();

        _clock.Advance(TimeSpan.FromMilliseconds(99));
        await AsyncAssert.StillPendingAsync(first);
        _clock.Advance(TimeSpan.FromMilliseconds(1));

        (await first.WithTimeout()).IsAcquired.Should().BeTrue();
        second.IsCompleted.Should().BeFalse();
        _clock.Advance(TimeSpan.FromMilliseconds(100));
        (await second.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task With_OldestFirst_a_new_request_never_overtakes_a_waiter()
    {
        using var limiter = Create(perSecond: 10, burst: 2, queueLimit: 2);
        limiter.AttemptAcquire(2).IsAcquired.Should().BeTrue();
        var waiter = limiter.AcquireAsync(2).AsTask();
        _clock.Advance(TimeSpan.FromMilliseconds(100)); // one permit due; the waiter needs two

        limiter.AttemptAcquire(1).IsAcquired.Should().BeFalse("a waiter is queued first");

        _clock.Advance(TimeSpan.FromMilliseconds(100));
        (await waiter.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task A_full_queue_refuses_with_RetryAfter()
    {
        using var limiter = Create(perSecond: 10, queueLimit: 1);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        var queued = limiter.AcquireAsync().AsTask();

        using var refused = await limiter.AcquireAsync().AsTask().WithTimeout();

        refused.IsAcquired.Should().BeFalse();
        RetryAfter(refused).Should().NotBeNull().And.Subject!.Value.Should().BePositive();
        _clock.Advance(TimeSpan.FromMilliseconds(100));
        (await queued.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task NewestFirst_evicts_the_oldest_waiter_when_the_queue_is_full()
    {
        using var limiter = Create(perSecond: 10, queueLimit: 1, order: QueueProcessingOrder.NewestFirst);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        var oldest = limiter.AcquireAsync().AsTask();

        var newest = limiter.AcquireAsync().AsTask();

        (await oldest.WithTimeout()).IsAcquired.Should().BeFalse();
        _clock.Advance(TimeSpan.FromMilliseconds(100));
        (await newest.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task Cancelling_a_queued_AcquireAsync_removes_it_at_once_and_throws_TaskCanceledException_with_the_token()
    {
        using var limiter = Create(perSecond: 10, queueLimit: 1);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        using var cts = new CancellationTokenSource();
        var waiter = limiter.AcquireAsync(1, cts.Token).AsTask();

        await cts.CancelAsync();

        var thrown = await FluentActions.Awaiting(() => waiter.WithTimeout()).Should().ThrowExactlyAsync<TaskCanceledException>();
        thrown.Which.CancellationToken.Should().Be(cts.Token);
        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(0);
        var next = limiter.AcquireAsync().AsTask();
        next.IsCompleted.Should().BeFalse("the cancelled waiter left room in the queue");
        _clock.Advance(TimeSpan.FromMilliseconds(100));
        (await next.WithTimeout()).IsAcquired.Should().BeTrue();
    }

    [Fact]
    public async Task AcquireAsync_with_an_already_cancelled_token_that_would_queue_is_cancelled()
    {
        using var limiter = Create(perSecond: 10, queueLimit: 1);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();

        await FluentActions.Awaiting(async () => await limiter.AcquireAsync(1, new CancellationToken(true))).Should().ThrowAsync<OperationCanceledException>();

        limiter.GetStatistics()!.CurrentQueuedCount.Should().Be(0);
    }

    [Fact]
    public async Task AcquireAsync_zero_waits_until_a_permit_is_available()
    {
        using var limiter = Create(perSecond: 10, queueLimit: 1);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();

        var zero = limiter.AcquireAsync(0).AsTask();
        zero.IsCompleted.Should().BeFalse();
        _clock.Advance(TimeSpan.FromMilliseconds(100));

        (await zero.WithTimeout()).IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire(1).IsAcquired.Should().BeTrue("AcquireAsync(0) takes no permit");
    }

    [Fact]
    public async Task Dispose_fails_queued_waiters_and_later_calls_throw_ObjectDisposedException()
    {
        var limiter = Create(perSecond: 10, queueLimit: 1);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        var waiter = limiter.AcquireAsync().AsTask();

        limiter.Dispose();

        (await waiter.WithTimeout()).IsAcquired.Should().BeFalse();
        FluentActions.Invoking(() => limiter.AttemptAcquire()).Should().Throw<ObjectDisposedException>();
        await FluentActions.Awaiting(async () => await limiter.AcquireAsync()).Should().ThrowAsync<ObjectDisposedException>();
        FluentActions.Invoking(() => limiter.GetStatistics()).Should().Throw<ObjectDisposedException>();
        limiter.Dispose(); // idempotent
        await limiter.DisposeAsync();
    }

    [Fact]
    public async Task GetStatistics_counts_leases_and_available_and_queued_permits()
    {
        using var limiter = Create(perSecond: 10, burst: 2, queueLimit: 3);
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(2);
        limiter.AttemptAcquire(2).IsAcquired.Should().BeTrue();
        limiter.AttemptAcquire().IsAcquired.Should().BeFalse();
        var waiter = limiter.AcquireAsync(2).AsTask();

        var stats = limiter.GetStatistics()!;

        stats.CurrentAvailablePermits.Should().Be(0);
        stats.CurrentQueuedCount.Should().Be(2);
        stats.TotalSuccessfulLeases.Should().Be(1);
        stats.TotalFailedLeases.Should().Be(1);
        _clock.Advance(TimeSpan.FromMilliseconds(200));
        (await waiter.WithTimeout()).IsAcquired.Should().BeTrue();
        limiter.GetStatistics()!.TotalSuccessfulLeases.Should().Be(2);
    }

    [Fact]
    public void IdleDuration_is_set_while_a_full_burst_is_available_and_null_otherwise()
    {
        using var limiter = Create(perSecond: 10);
        limiter.IdleDuration.Should().NotBeNull();
        _clock.Advance(TimeSpan.FromSeconds(1));
        limiter.IdleDuration.Should().NotBeNull().And.Subject!.Value.Should().BePositive();

        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        limiter.IdleDuration.Should().BeNull();

        _clock.Advance(TimeSpan.FromMilliseconds(150));
        limiter.IdleDuration.Should().NotBeNull();
    }

    [Fact]
    public async Task Works_in_RateLimiter_CreateChained()
    {
        using var concurrency = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 5, QueueLimit = 0 });
        using var rate = Create(perSecond: 10);
        using var chained = RateLimiter.CreateChained(concurrency, rate);

        using (var first = await chained.AcquireAsync().AsTask().WithTimeout())
        {
            first.IsAcquired.Should().BeTrue();
        }

        using var second = await chained.AcquireAsync().AsTask().WithTimeout();
        second.IsAcquired.Should().BeFalse("the rate limiter allows one per 100 ms");
    }

    [Fact]
    public async Task RunAsync_acquires_runs_and_releases()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 2, QueueLimit = 0 });
        var inside = -1L;

        var result = await limiter.RunAsync(_ => { inside = limiter.GetStatistics()!.CurrentAvailablePermits; return new ValueTask<int>(7); }, permits: 2).AsTask().WithTimeout();

        result.Should().Be(7);
        inside.Should().Be(0);
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(2);
    }

    [Fact]
    public async Task RunAsync_releases_the_lease_when_the_action_throws()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 0 });

        await FluentActions.Awaiting(() => limiter.RunAsync(_ => ValueTask.FromException(new FormatException())).AsTask().WithTimeout())
            .Should().ThrowAsync<FormatException>();
        await FluentActions.Awaiting(() => limiter.RunAsync(async _ => { await Task.Yield(); throw new FormatException(); }).AsTask().WithTimeout())
            .Should().ThrowAsync<FormatException>();

        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(1);
    }

    [Fact]
    public async Task RunAsync_refusal_throws_RateLimitRejectedException_with_RetryAfter_and_does_not_run()
    {
        using var limiter = Create(perSecond: 10);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        var ran = false;

        var thrown = await FluentActions.Awaiting(() => limiter.RunAsync(_ => { ran = true; return ValueTask.CompletedTask; }).AsTask().WithTimeout())
            .Should().ThrowAsync<RateLimitRejectedException>();

        ran.Should().BeFalse();
        thrown.Which.RetryAfter.Should().Be(TimeSpan.FromMilliseconds(100));
        thrown.Which.Should().BeAssignableTo<ExecutionRejectedException>();
    }

    [Fact]
    public async Task RunAsync_waits_in_the_limiters_queue()
    {
        using var limiter = Create(perSecond: 10, queueLimit: 1);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();

        var run = limiter.RunAsync(_ => new ValueTask<int>(3)).AsTask();
        run.IsCompleted.Should().BeFalse();
        _clock.Advance(TimeSpan.FromMilliseconds(100));

        (await run.WithTimeout()).Should().Be(3);
    }

    [Fact]
    public void RunAsync_null_arguments_throw_ArgumentNullException()
    {
        using var limiter = Create();
        FluentActions.Invoking(() => limiter.RunAsync((Func<CancellationToken, ValueTask>)null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => ((RateLimiter)null!).RunAsync(_ => ValueTask.CompletedTask)).Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public async Task RunAsync_with_an_already_cancelled_token_neither_runs_nor_takes_a_permit()
    {
        using var limiter = Create(perSecond: 10);
        var ran = false;

        await FluentActions.Awaiting(() => limiter.RunAsync(_ => { ran = true; return ValueTask.CompletedTask; }, cancellationToken: new CancellationToken(true)).AsTask().WithTimeout())
            .Should().ThrowAsync<OperationCanceledException>();

        ran.Should().BeFalse();
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue("no permit was taken");
    }
}
