using BenchmarkDotNet.Attributes;
using Polly;
using Polly.CircuitBreaker;

namespace AsyncPatterns.Benchmarks;

/// <summary>
/// The circuit breaker's costs, each against what a user would pick instead: a closed-circuit success (plain call,
/// ours, Polly v8 <c>AddCircuitBreaker</c>, Polly v7 <c>CircuitBreakerAsync</c>, ours inside a Polly pipeline), and an
/// open-circuit refusal (thrown <see cref="BrokenCircuitException"/> vs our no-throw <c>ExecuteOutcomeAsync</c>).
/// </summary>
[MemoryDiagnoser]
public class CircuitBreakerBenchmarks
{
    private static readonly Func<CancellationToken, ValueTask<int>> Action = static _ => new ValueTask<int>(42);
    private static readonly Task<int> CompletedV7 = Task.FromResult(42);

    private CircuitBreaker _closed = null!;
    private CircuitBreaker _open = null!;
    private ResiliencePipeline _pollyV8 = null!;
    private ResiliencePipeline _pollyV8Open = null!;
    private ResiliencePipeline _oursInPolly = null!;
    private AsyncPolicy _pollyV7 = null!;

    [GlobalSetup]
    public void Setup()
    {
        _closed = new CircuitBreaker(new CircuitBreakerOptions { Name = "bench-closed" });
        _open = new CircuitBreaker(new CircuitBreakerOptions { Name = "bench-open", FailureThreshold = 1, BreakDuration = TimeSpan.FromDays(1) });
        _ = _open.ExecuteOutcomeAsync(static _ => ValueTask.FromException<int>(new InvalidOperationException())).AsTask().Result;

        _pollyV8 = new ResiliencePipelineBuilder().AddCircuitBreaker(new CircuitBreakerStrategyOptions()).Build();
        var control = new CircuitBreakerManualControl();
        _pollyV8Open = new ResiliencePipelineBuilder()
            .AddCircuitBreaker(new CircuitBreakerStrategyOptions { ManualControl = control, BreakDuration = TimeSpan.FromHours(1) })
            .Build();
        control.IsolateAsync().GetAwaiter().GetResult();
        _oursInPolly = new ResiliencePipelineBuilder().AddCircuitBreaker(_closed).Build();
        _pollyV7 = Policy.Handle<Exception>().CircuitBreakerAsync(5, TimeSpan.FromSeconds(30));

        if (_open.State != CircuitState.Open)
        {
            throw new InvalidOperationException("The open-circuit benchmarks need an open breaker.");
        }
    }

    [Benchmark(Baseline = true, Description = "Plain call (no breaker)")]
    public ValueTask<int> PlainCall() => Action(CancellationToken.None);

    [Benchmark(Description = "Ours: closed, success")]
    public ValueTask<int> Ours_Closed() => _closed.ExecuteAsync(Action);

    [Benchmark(Description = "Polly v8 AddCircuitBreaker: closed, success")]
    public ValueTask<int> PollyV8_Closed() => _pollyV8.ExecuteAsync(Action);

    [Benchmark(Description = "Polly v7 CircuitBreakerAsync: closed, success")]
    public Task<int> PollyV7_Closed() => _pollyV7.ExecuteAsync(static () => CompletedV7);

    [Benchmark(Description = "Ours inside a Polly v8 pipeline: closed, success")]
    public ValueTask<int> OursInPolly_Closed() => _oursInPolly.ExecuteAsync(Action);

    [Benchmark(Description = "Ours: open, refusal thrown (ExecuteAsync + catch)")]
    public async Task<int> Ours_Open_Thrown()
    {
        try
        {
            return await _open.ExecuteAsync(Action);
        }
        catch (BrokenCircuitException)
        {
            return -1;
        }
    }

    [Benchmark(Description = "Ours: open, no-throw (ExecuteOutcomeAsync)")]
    public async ValueTask<int> Ours_Open_Outcome()
    {
        var outcome = await _open.ExecuteOutcomeAsync(Action);
        return outcome.Exception is null ? outcome.Result : -1;
    }

    [Benchmark(Description = "Polly v8: open, refusal thrown")]
    public async Task<int> PollyV8_Open_Thrown()
    {
        try
        {
            return await _pollyV8Open.ExecuteAsync(Action);
        }
        catch (BrokenCircuitException)
        {
            return -1;
        }
    }
}
