using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.CircuitBreaking;

public sealed class CircuitBreakerOptionsTests
{
    public static TheoryData<string, Action<CircuitBreakerOptions>> BadOptions => new()
    {
        { nameof(CircuitBreakerOptions.FailureThreshold), o => o.FailureThreshold = 0 },
        { nameof(CircuitBreakerOptions.FailureThreshold), o => o.FailureThreshold = -3 },
        { nameof(CircuitBreakerOptions.FailureRatio), o => o.FailureRatio = 0 },
        { nameof(CircuitBreakerOptions.FailureRatio), o => o.FailureRatio = -0.1 },
        { nameof(CircuitBreakerOptions.FailureRatio), o => o.FailureRatio = 1.0001 },
        { nameof(CircuitBreakerOptions.FailureRatio), o => o.FailureRatio = double.NaN },
        { nameof(CircuitBreakerOptions.MinimumThroughput), o => o.MinimumThroughput = 1 },
        { nameof(CircuitBreakerOptions.MinimumThroughput), o => o.MinimumThroughput = 0 },
        { nameof(CircuitBreakerOptions.SamplingDuration), o => o.SamplingDuration = TimeSpan.Zero },
        { nameof(CircuitBreakerOptions.SamplingDuration), o => o.SamplingDuration = TimeSpan.FromSeconds(-1) },
        { nameof(CircuitBreakerOptions.BreakDuration), o => o.BreakDuration = TimeSpan.Zero },
        { nameof(CircuitBreakerOptions.BreakDuration), o => o.BreakDuration = TimeSpan.FromMilliseconds(-5) },
        { nameof(CircuitBreakerOptions.HalfOpenMaxCalls), o => o.HalfOpenMaxCalls = 0 },
        { nameof(CircuitBreakerOptions.HalfOpenMaxCalls), o => o.HalfOpenMaxCalls = -1 },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public void Bad_options_throw_at_construction_naming_the_option_and_the_allowed_range(string option, Action<CircuitBreakerOptions> spoil)
    {
        var options = new CircuitBreakerOptions();
        spoil(options);

        var thrown = FluentActions.Invoking(() => new CircuitBreaker(options)).Should().Throw<ArgumentOutOfRangeException>().Which;

        thrown.ParamName.Should().Be(option);
        thrown.Message.Should().Contain(option).And.Contain("must be");
    }

    [Fact]
    public void Edge_values_that_are_allowed_construct()
    {
        FluentActions.Invoking(() => new CircuitBreaker(new CircuitBreakerOptions
        {
            FailureThreshold = 1,
            FailureRatio = 1.0,
            MinimumThroughput = 2,
            SamplingDuration = TimeSpan.FromTicks(1),
            BreakDuration = TimeSpan.MaxValue,
            HalfOpenMaxCalls = int.MaxValue,
        })).Should().NotThrow();
    }

    [Fact]
    public async Task A_huge_break_does_not_overflow_the_clock()
    {
        var clock = new ManualTimeProvider();
        var breaker = new CircuitBreaker(new CircuitBreakerOptions { TimeProvider = clock, FailureThreshold = 1, BreakDuration = TimeSpan.MaxValue });
        await breaker.FailAsync();
        clock.Advance(TimeSpan.FromDays(3650));

        await breaker.Invoking(b => b.ExecuteAsync(CircuitBreakerTestKit.Ok).AsTask()).Should().ThrowAsync<Polly.CircuitBreaker.BrokenCircuitException>();
    }

    [Fact]
    public async Task Null_actions_throw_ArgumentNullException_at_the_call()
    {
        var breaker = new CircuitBreaker();

        FluentActions.Invoking(() => breaker.ExecuteAsync((Func<CancellationToken, ValueTask<int>>)null!)).Should().Throw<ArgumentNullException>().WithParameterName("action");
        FluentActions.Invoking(() => breaker.ExecuteAsync((Func<CancellationToken, ValueTask>)null!)).Should().Throw<ArgumentNullException>().WithParameterName("action");
        FluentActions.Invoking(() => breaker.ExecuteAsync((Func<int, CancellationToken, ValueTask<int>>)null!, 1)).Should().Throw<ArgumentNullException>().WithParameterName("action");
        FluentActions.Invoking(() => breaker.ExecuteAsync((Func<int, CancellationToken, ValueTask>)null!, 1)).Should().Throw<ArgumentNullException>().WithParameterName("action");
        FluentActions.Invoking(() => breaker.ExecuteOutcomeAsync((Func<CancellationToken, ValueTask<int>>)null!)).Should().Throw<ArgumentNullException>().WithParameterName("action");
        FluentActions.Invoking(() => breaker.ExecuteOutcomeAsync((Func<int, CancellationToken, ValueTask<int>>)null!, 1)).Should().Throw<ArgumentNullException>().WithParameterName("action");
        await breaker.ExecuteAsync(CircuitBreakerTestKit.Ok);
        breaker.GetStatistics().Successes.Should().Be(1, "a null action changed nothing");
    }

    [Fact]
    public async Task A_short_sampling_period_uses_one_window_as_in_Polly()
    {
        var clock = new ManualTimeProvider();
        var breaker = new CircuitBreaker(new CircuitBreakerOptions
        {
            TimeProvider = clock,
            FailureRatio = 0.5,
            MinimumThroughput = 2,
            SamplingDuration = TimeSpan.FromMilliseconds(100),
        });

        await breaker.FailAsync();
        clock.AdvanceMilliseconds(100); // the window started at construction and has now expired
        await breaker.SucceedAsync();
        await breaker.FailAsync();
        breaker.State.Should().Be(Polly.CircuitBreaker.CircuitState.Open, "1 failure of 2 in the new window reaches 0.5");
    }
}
