using Polly;

namespace AsyncPatterns;

/// <summary>
/// Puts a <see cref="CircuitBreaker"/> inside a Polly pipeline. The strategy holds no state of its own: every pipeline
/// built with the same breaker shares its state, counters and callbacks.
/// </summary>
/// <remarks>
/// Outcomes are classified by their exception only (a result is always a success), with the pipeline's
/// <see cref="ResilienceContext.CancellationToken"/> as the caller's token. A refusal is returned as an outcome carrying
/// <see cref="Polly.CircuitBreaker.BrokenCircuitException"/> or <see cref="Polly.CircuitBreaker.IsolatedCircuitException"/>,
/// never thrown inside the pipeline, so <c>ResiliencePipeline.ExecuteOutcomeAsync</c> stays exception-free.
/// </remarks>
internal sealed class CircuitBreakerResilienceStrategy : ResilienceStrategy
{
    private readonly CircuitBreaker _breaker;

    public CircuitBreakerResilienceStrategy(CircuitBreaker breaker) => _breaker = breaker;

    protected override ValueTask<Outcome<TResult>> ExecuteCore<TResult, TState>(
        Func<ResilienceContext, TState, ValueTask<Outcome<TResult>>> callback, ResilienceContext context, TState state) =>
        _breaker.ExecuteInPipelineAsync(callback, context, state);
}
