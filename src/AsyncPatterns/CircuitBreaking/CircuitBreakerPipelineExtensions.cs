using Polly;

namespace AsyncPatterns;

/// <summary>
/// Adds a <see cref="CircuitBreaker"/> to a Polly <see cref="ResiliencePipelineBuilder"/> or
/// <see cref="ResiliencePipelineBuilder{TResult}"/>, so it composes with Polly's retry, timeout and the rest.
/// </summary>
public static class CircuitBreakerPipelineExtensions
{
    /// <summary>
    /// Adds <paramref name="breaker"/> as a strategy: <c>new ResiliencePipelineBuilder().AddRetry(...).AddCircuitBreaker(breaker).Build()</c>.
    /// </summary>
    /// <typeparam name="TBuilder">The builder type: <see cref="ResiliencePipelineBuilder"/> or <see cref="ResiliencePipelineBuilder{TResult}"/>.</typeparam>
    /// <param name="builder">The pipeline builder.</param>
    /// <param name="breaker">The breaker. Several pipelines may share one breaker; they then share its state.</param>
    /// <returns>The same builder, for chaining.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="builder"/> or <paramref name="breaker"/> is null.</exception>
    /// <remarks>
    /// <para>
    /// The breaker sees each attempt that reaches it: placed after a retry (the usual order) it counts every attempt and
    /// refuses attempts while open with <see cref="Polly.CircuitBreaker.BrokenCircuitException"/>. Polly's default retry
    /// predicate handles every exception except <see cref="OperationCanceledException"/>, so it would retry refusals too;
    /// give the retry a <c>ShouldHandle</c> that leaves out <see cref="ExecutionRejectedException"/>.
    /// </para>
    /// <para>
    /// Outcomes are classified by exception only, with <see cref="ResilienceContext.CancellationToken"/> as the caller's
    /// token; a result is always a success. A refusal is returned as an outcome, not thrown inside the pipeline.
    /// </para>
    /// </remarks>
    public static TBuilder AddCircuitBreaker<TBuilder>(this TBuilder builder, CircuitBreaker breaker)
        where TBuilder : ResiliencePipelineBuilderBase
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(breaker);
        return builder.AddStrategy(_ => new CircuitBreakerResilienceStrategy(breaker));
    }
}
