using AsyncPatterns.Tests.TestSupport;
using Polly;
using Polly.CircuitBreaker;
using Polly.Retry;
using static AsyncPatterns.Tests.CircuitBreaking.CircuitBreakerTestKit;

namespace AsyncPatterns.Tests.CircuitBreaking;

/// <summary>The breaker as a strategy inside Polly pipelines.</summary>
public sealed class CircuitBreakerPipelineTests
{
    private readonly ManualTimeProvider _clock = new();

    [Fact]
    public async Task Retry_then_our_breaker_counts_each_attempt_and_stops_retrying_once_the_circuit_opens()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 2);
        var retries = 0;
        var pipeline = new ResiliencePipelineBuilder { TimeProvider = _clock }
            .AddRetry(new RetryStrategyOptions
            {
                ShouldHandle = new PredicateBuilder().Handle<InvalidOperationException>(),
                MaxRetryAttempts = 5,
                Delay = TimeSpan.Zero,
                OnRetry = _ => { retries++; return ValueTask.CompletedTask; },
            })
            .AddCircuitBreaker(breaker)
            .Build();
        var attempts = 0;

        var refusal = await pipeline.Invoking(p => p.ExecuteAsync(_ => { attempts++; return Boom(default); }).AsTask())
            .Should().ThrowAsync<BrokenCircuitException>();

        attempts.Should().Be(2, "the third attempt was refused by the open circuit");
        retries.Should().Be(2);
        refusal.Which.RetryAfter.Should().Be(Break);
        breaker.State.Should().Be(CircuitState.Open);
        breaker.GetStatistics().Failures.Should().Be(2);
    }

    [Fact]
    public async Task Retry_recovers_through_the_breaker_when_a_later_attempt_succeeds()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 3);
        var pipeline = new ResiliencePipelineBuilder { TimeProvider = _clock }
            .AddRetry(new RetryStrategyOptions { MaxRetryAttempts = 3, Delay = TimeSpan.Zero })
            .AddCircuitBreaker(breaker)
            .Build();
        var attempts = 0;

        var result = await pipeline.ExecuteAsync(_ => ++attempts < 3 ? Boom(default) : new ValueTask<int>(attempts));

        result.Should().Be(3);
        breaker.State.Should().Be(CircuitState.Closed);
        var stats = breaker.GetStatistics();
        (stats.Failures, stats.Successes, stats.ConsecutiveFailures).Should().Be((2L, 1L, 0));
    }

    [Fact]
    public async Task Two_pipelines_sharing_one_breaker_share_its_state()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 2);
        var first = new ResiliencePipelineBuilder().AddCircuitBreaker(breaker).Build();
        var second = new ResiliencePipelineBuilder<int>().AddCircuitBreaker(breaker).Build();

        await first.Invoking(p => p.ExecuteAsync(Boom).AsTask()).Should().ThrowAsync<InvalidOperationException>();
        await second.Invoking(p => p.ExecuteAsync(Boom).AsTask()).Should().ThrowAsync<InvalidOperationException>();

        breaker.State.Should().Be(CircuitState.Open);
        await first.Invoking(p => p.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>();
        await second.Invoking(p => p.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>();
        await breaker.Invoking(b => b.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<BrokenCircuitException>();

        _clock.Advance(Break);
        (await second.ExecuteAsync(Ok)).Should().Be(42);
        breaker.State.Should().Be(CircuitState.Closed);
        (await first.ExecuteAsync(Ok)).Should().Be(42);
        breaker.GetStatistics().Rejections.Should().Be(3);
    }

    [Fact]
    public async Task Isolate_and_Reset_reach_every_pipeline_using_the_breaker()
    {
        var breaker = Create(_clock);
        var pipeline = new ResiliencePipelineBuilder().AddCircuitBreaker(breaker).Build();

        breaker.Isolate();
        await pipeline.Invoking(p => p.ExecuteAsync(Ok).AsTask()).Should().ThrowAsync<IsolatedCircuitException>();
        breaker.Reset();

        (await pipeline.ExecuteAsync(Ok)).Should().Be(42);
    }

    [Fact]
    public async Task A_refusal_inside_a_pipeline_is_an_outcome_not_a_thrown_exception()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 1);
        var pipeline = new ResiliencePipelineBuilder().AddCircuitBreaker(breaker).Build();
        await breaker.FailAsync();
        var context = ResilienceContextPool.Shared.Get();
        var thrown = new System.Collections.Concurrent.ConcurrentBag<Exception>();
        void OnFirstChance(object? sender, System.Runtime.ExceptionServices.FirstChanceExceptionEventArgs e) => thrown.Add(e.Exception);

        AppDomain.CurrentDomain.FirstChanceException += OnFirstChance;
        Outcome<int> outcome;
        try
        {
            outcome = await pipeline.ExecuteOutcomeAsync(static (_, _) => Outcome.FromResultAsValueTask(1), context, 0);
        }
        finally
        {
            AppDomain.CurrentDomain.FirstChanceException -= OnFirstChance;
            ResilienceContextPool.Shared.Return(context);
        }

        outcome.Exception.Should().BeOfType<BrokenCircuitException>();
        thrown.Should().NotContain(e => ReferenceEquals(e, outcome.Exception), "nothing was thrown on the way");
    }

    [Fact]
    public async Task Cancellation_through_the_pipelines_token_is_not_a_failure()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 1);
        var pipeline = new ResiliencePipelineBuilder().AddCircuitBreaker(breaker).Build();
        using var cts = new CancellationTokenSource();

        var call = pipeline.ExecuteAsync(async ct => { await Task.Delay(Timeout.Infinite, ct); return 1; }, cts.Token).AsTask();
        await cts.CancelAsync();

        await call.Invoking(c => c.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        breaker.State.Should().Be(CircuitState.Closed);
        breaker.GetStatistics().IgnoredOutcomes.Should().Be(1);
    }

    [Fact]
    public async Task The_pipeline_strategy_admits_trials_and_publishes_changes_like_the_direct_calls()
    {
        var changes = new List<CircuitState>();
        var breaker = Create(_clock, o =>
        {
            o.FailureThreshold = 1;
            o.OnStateChanged = async c => { await Task.Yield(); changes.Add(c.NewState); };
        });
        var pipeline = new ResiliencePipelineBuilder().AddCircuitBreaker(breaker).Build();
        await pipeline.Invoking(p => p.ExecuteAsync(async _ => { await Task.Yield(); return Throw(); }).AsTask())
            .Should().ThrowAsync<InvalidOperationException>();
        _clock.Advance(Break);

        (await pipeline.ExecuteAsync(async _ => { await Task.Yield(); return 5; })).Should().Be(5);

        changes.Should().Equal(CircuitState.Open, CircuitState.HalfOpen, CircuitState.Closed);
    }

    [Fact]
    public void Synchronous_pipeline_execution_works_through_the_breaker()
    {
        var breaker = Create(_clock, o => o.FailureThreshold = 1);
        var pipeline = new ResiliencePipelineBuilder().AddCircuitBreaker(breaker).Build();

        pipeline.Execute(() => 1).Should().Be(1);
        pipeline.Invoking(p => p.Execute<int>(() => throw new InvalidOperationException())).Should().Throw<InvalidOperationException>();
        pipeline.Invoking(p => p.Execute(() => 1)).Should().Throw<BrokenCircuitException>();
    }

    [Fact]
    public void AddCircuitBreaker_rejects_nulls()
    {
        var builder = new ResiliencePipelineBuilder();
        builder.Invoking(b => b.AddCircuitBreaker((CircuitBreaker)null!)).Should().Throw<ArgumentNullException>().WithParameterName("breaker");
        FluentActions.Invoking(() => CircuitBreakerPipelineExtensions.AddCircuitBreaker((ResiliencePipelineBuilder)null!, new CircuitBreaker()))
            .Should().Throw<ArgumentNullException>().WithParameterName("builder");
    }

    private static int Throw() => throw new InvalidOperationException();
}
