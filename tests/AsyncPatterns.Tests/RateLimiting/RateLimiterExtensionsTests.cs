using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;
using Polly;

namespace AsyncPatterns.Tests.RateLimiting;

public sealed class RateLimiterExtensionsTests
{
    private readonly ManualTimeProvider _clock = new();

    [Fact]
    public async Task RunAsync_runs_the_action_under_a_permit_and_returns_its_result()
    {
        using var limiter = Gcra(queueLimit: 0);
        var result = await limiter.RunAsync(_ => ValueTask.FromResult(42)).WithTimeout();

        result.Should().Be(42);
        limiter.AttemptAcquire().IsAcquired.Should().BeFalse("the permit was used");
    }

    [Fact]
    public async Task A_refused_permit_throws_RateLimitRejectedException_with_RetryAfter_and_never_runs_the_action()
    {
        using var limiter = Gcra(queueLimit: 0);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        _clock.Advance(TimeSpan.FromMilliseconds(30));
        var ran = false;

        Func<Task> act = () => limiter.RunAsync(_ => { ran = true; return ValueTask.FromResult(1); }).AsTask();

        var ex = (await act.Should().ThrowAsync<RateLimitRejectedException>()).Which;
        ex.RetryAfter.Should().Be(TimeSpan.FromMilliseconds(70));
        ex.Should().BeAssignableTo<ExecutionRejectedException>();
        ran.Should().BeFalse();

        Func<Task> voidAct = () => limiter.RunAsync(_ => { ran = true; return ValueTask.CompletedTask; }).AsTask();
        (await voidAct.Should().ThrowAsync<RateLimitRejectedException>()).Which.RetryAfter.Should().Be(TimeSpan.FromMilliseconds(70));
        ran.Should().BeFalse();
    }

    [Fact]
    public async Task RunAsync_waits_in_the_queue_for_its_permit()
    {
        using var limiter = Gcra(queueLimit: 1);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        var ran = 0;

        var run = limiter.RunAsync(_ => { Interlocked.Increment(ref ran); return ValueTask.CompletedTask; }).AsTask();
        await AsyncAssert.StillPendingAsync(run);
        ran.Should().Be(0);

        _clock.Advance(TimeSpan.FromMilliseconds(100));
        await run.WithTimeout();
        ran.Should().Be(1);
    }

    [Fact]
    public async Task The_lease_is_released_whatever_the_action_does()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1 });

        await limiter.RunAsync(async _ => { await Task.Yield(); return 1; }).WithTimeout();
        Func<Task> throwsLater = () => limiter.RunAsync<int>(async _ => { await Task.Yield(); throw new InvalidOperationException("boom"); }).AsTask();
        await throwsLater.Should().ThrowAsync<InvalidOperationException>().WithMessage("boom");
        Func<Task> throwsAtOnce = () => limiter.RunAsync(_ => throw new ArgumentException("sync")).AsTask();
        await throwsAtOnce.Should().ThrowAsync<ArgumentException>().WithMessage("sync");
        await limiter.RunAsync(async _ => await Task.Yield()).WithTimeout();

        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(1, "every lease was disposed");
    }

    [Fact]
    public async Task Cancelling_the_wait_throws_OperationCanceledException_and_skips_the_action()
    {
        using var limiter = Gcra(queueLimit: 1);
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue();
        using var cts = new CancellationTokenSource();
        var ran = false;

        var run = limiter.RunAsync(_ => { ran = true; return ValueTask.FromResult(1); }, cancellationToken: cts.Token).AsTask();
        cts.Cancel();

        await run.Awaiting(r => r.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        _clock.Advance(TimeSpan.FromSeconds(1));
        ran.Should().BeFalse();
    }

    [Fact]
    public async Task The_action_receives_the_token_and_several_permits_can_be_asked_for()
    {
        using var limiter = Gcra(queueLimit: 0, burst: 3);
        using var cts = new CancellationTokenSource();
        var seen = CancellationToken.None;

        await limiter.RunAsync(t => { seen = t; return ValueTask.CompletedTask; }, permits: 3, cts.Token).WithTimeout();

        seen.Should().Be(cts.Token);
        limiter.AttemptAcquire().IsAcquired.Should().BeFalse("three permits were taken");
    }

    [Fact]
    public void Null_arguments_throw()
    {
        using var limiter = Gcra(queueLimit: 0);
        var nullLimiter = () => RateLimiterExtensions.RunAsync(null!, _ => ValueTask.FromResult(1));
        nullLimiter.Should().Throw<ArgumentNullException>().Which.ParamName.Should().Be("limiter");
        var nullAction = () => limiter.RunAsync((Func<CancellationToken, ValueTask<int>>)null!);
        nullAction.Should().Throw<ArgumentNullException>().Which.ParamName.Should().Be("action");
        var nullVoidAction = () => limiter.RunAsync((Func<CancellationToken, ValueTask>)null!);
        nullVoidAction.Should().Throw<ArgumentNullException>().Which.ParamName.Should().Be("action");
    }

    [Fact]
    public void RateLimitRejectedException_has_the_constructors_of_Pollys_RateLimiterRejectedException()
    {
        var inner = new InvalidOperationException("inner");
        var full = new RateLimitRejectedException("refused", TimeSpan.FromSeconds(3), inner);
        full.Message.Should().Be("refused");
        full.RetryAfter.Should().Be(TimeSpan.FromSeconds(3));
        full.InnerException.Should().BeSameAs(inner);
        full.Should().BeAssignableTo<Polly.ExecutionRejectedException>();

        new RateLimitRejectedException(TimeSpan.FromSeconds(1)).RetryAfter.Should().Be(TimeSpan.FromSeconds(1));
        new RateLimitRejectedException("refused", TimeSpan.FromSeconds(2)).RetryAfter.Should().Be(TimeSpan.FromSeconds(2));
        new RateLimitRejectedException("refused", inner).RetryAfter.Should().BeNull();
        new RateLimitRejectedException().RetryAfter.Should().BeNull();
    }

    [Fact]
    public async Task A_disposed_limiter_throws_ObjectDisposedException_and_a_cancelled_token_OperationCanceledException()
    {
        var limiter = Gcra(queueLimit: 1);
        var ran = false;
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();
        await limiter.Awaiting(l => l.RunAsync(_ => { ran = true; return ValueTask.CompletedTask; }, cancellationToken: cts.Token).AsTask())
            .Should().ThrowAsync<OperationCanceledException>();
        limiter.AttemptAcquire().IsAcquired.Should().BeTrue("the cancelled call took no permit");

        limiter.Dispose();
        await limiter.Awaiting(l => l.RunAsync(_ => { ran = true; return ValueTask.CompletedTask; }).AsTask())
            .Should().ThrowAsync<ObjectDisposedException>();
        ran.Should().BeFalse();
    }

    private GcraRateLimiter Gcra(int queueLimit, int burst = 1) =>
        new(new GcraRateLimiterOptions { PermitsPerSecond = 10, Burst = burst, QueueLimit = queueLimit, TimeProvider = _clock });
}
