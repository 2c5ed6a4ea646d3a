using Polly;

namespace AsyncPatterns;

// The slow paths of the Execute methods: the action did not complete synchronously, or a state change must be published.
// Kept apart so the synchronous paths in CircuitBreaker.cs stay small enough to read (and to inline).
public sealed partial class CircuitBreaker
{
    private async ValueTask<TResult> PublishThenExecuteAsync<TResult, TState>(
        Func<TState, CancellationToken, ValueTask<TResult>> action, TState state, int permit, CancellationToken cancellationToken)
    {
        await PublishAsync().ConfigureAwait(false);
        ValueTask<TResult> pending;
        try
        {
            pending = action(state, cancellationToken);
        }
        catch (Exception ex)
        {
            pending = ValueTask.FromException<TResult>(ex);
        }

        return await AwaitResultAsync(pending, permit, cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask<TResult> PublishThenReturnAsync<TResult>(TResult result)
    {
        await PublishAsync().ConfigureAwait(false);
        return result;
    }

    private async ValueTask<TResult> AwaitResultAsync<TResult>(ValueTask<TResult> pending, int permit, CancellationToken cancellationToken)
    {
        TResult result;
        try
        {
            result = await pending.ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            if (OnException(permit, ex, cancellationToken))
            {
                await PublishAsync().ConfigureAwait(false);
            }

            throw;
        }

        if (OnSuccess(permit))
        {
            await PublishAsync().ConfigureAwait(false);
        }

        return result;
    }

    private async ValueTask PublishThenExecuteAsync<TState>(
        Func<TState, CancellationToken, ValueTask> action, TState state, int permit, CancellationToken cancellationToken)
    {
        await PublishAsync().ConfigureAwait(false);
        ValueTask pending;
        try
        {
            pending = action(state, cancellationToken);
        }
        catch (Exception ex)
        {
            pending = ValueTask.FromException(ex);
        }

        await AwaitAsync(pending, permit, cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask AwaitAsync(ValueTask pending, int permit, CancellationToken cancellationToken)
    {
        try
        {
            await pending.ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            if (OnException(permit, ex, cancellationToken))
            {
                await PublishAsync().ConfigureAwait(false);
            }

            throw;
        }

        if (OnSuccess(permit))
        {
            await PublishAsync().ConfigureAwait(false);
        }
    }

    private ValueTask<Outcome<TResult>> CompleteOutcomeAsync<TResult>(Outcome<TResult> outcome, int permit, CancellationToken cancellationToken)
    {
        var publish = outcome.Exception is { } exception
            ? OnException(permit, exception, cancellationToken)
            : OnSuccess(permit);
        return publish ? PublishThenReturnAsync(outcome) : new(outcome);
    }

    private async ValueTask<Outcome<TResult>> PublishThenExecuteOutcomeAsync<TResult, TState>(
        Func<TState, CancellationToken, ValueTask<TResult>> action, TState state, int permit, CancellationToken cancellationToken)
    {
        await PublishAsync().ConfigureAwait(false);
        ValueTask<TResult> pending;
        try
        {
            pending = action(state, cancellationToken);
        }
        catch (Exception ex)
        {
            return await CompleteOutcomeAsync(Outcome.FromException<TResult>(ex), permit, cancellationToken).ConfigureAwait(false);
        }

        return await AwaitOutcomeAsync(pending, permit, cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask<Outcome<TResult>> AwaitOutcomeAsync<TResult>(ValueTask<TResult> pending, int permit, CancellationToken cancellationToken)
    {
        Outcome<TResult> outcome;
        try
        {
            outcome = Outcome.FromResult(await pending.ConfigureAwait(false));
        }
        catch (Exception ex)
        {
            outcome = Outcome.FromException<TResult>(ex);
        }

        return await CompleteOutcomeAsync(outcome, permit, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The body of the Polly strategy (<see cref="CircuitBreakerResilienceStrategy"/>): outcomes in, outcomes out, nothing thrown.</summary>
    internal ValueTask<Outcome<TResult>> ExecuteInPipelineAsync<TResult, TState>(
        Func<ResilienceContext, TState, ValueTask<Outcome<TResult>>> callback, ResilienceContext context, TState state)
    {
        var cancellationToken = context.CancellationToken;
        if (cancellationToken.IsCancellationRequested)
        {
            return new(Outcome.FromException<TResult>(new OperationCanceledException(cancellationToken)));
        }

        if (!TryEnter(out var permit, out var publish, out var rejection))
        {
            return new(Outcome.FromException<TResult>(rejection!));
        }

        if (publish)
        {
            return PublishThenExecuteInPipelineAsync(callback, context, state, permit);
        }

        ValueTask<Outcome<TResult>> pending;
        try
        {
            pending = callback(context, state);
        }
        catch (Exception ex)
        {
            return CompleteOutcomeAsync(Outcome.FromException<TResult>(ex), permit, cancellationToken);
        }

#pragma warning disable VSTHRD103 // Result of a ValueTask that has completed: no blocking.
        return pending.IsCompletedSuccessfully
            ? CompleteOutcomeAsync(pending.Result, permit, cancellationToken)
            : AwaitInPipelineAsync(pending, context, permit);
#pragma warning restore VSTHRD103
    }

    private async ValueTask<Outcome<TResult>> PublishThenExecuteInPipelineAsync<TResult, TState>(
        Func<ResilienceContext, TState, ValueTask<Outcome<TResult>>> callback, ResilienceContext context, TState state, int permit)
    {
        await PublishAsync().ConfigureAwait(context.ContinueOnCapturedContext);
        ValueTask<Outcome<TResult>> pending;
        try
        {
            pending = callback(context, state);
        }
        catch (Exception ex)
        {
            pending = new(Outcome.FromException<TResult>(ex));
        }

        return await AwaitInPipelineAsync(pending, context, permit).ConfigureAwait(context.ContinueOnCapturedContext);
    }

    private async ValueTask<Outcome<TResult>> AwaitInPipelineAsync<TResult>(ValueTask<Outcome<TResult>> pending, ResilienceContext context, int permit)
    {
        Outcome<TResult> outcome;
        try
        {
            outcome = await pending.ConfigureAwait(context.ContinueOnCapturedContext);
        }
        catch (Exception ex)
        {
            outcome = Outcome.FromException<TResult>(ex);
        }

        return await CompleteOutcomeAsync(outcome, permit, context.CancellationToken).ConfigureAwait(context.ContinueOnCapturedContext);
    }
}
