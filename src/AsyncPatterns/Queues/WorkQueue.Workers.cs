using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <content>The workers: take items from the channel and run the handler, counting every outcome.</content>
public sealed partial class WorkQueue<T>
{
    private async Task RunWorkerAsync(int index)
    {
        try
        {
            // No token on the waits: workers stop when the channel is closed and empty. A drain that is cut short
            // empties it itself, so they return promptly then too.
            if (_plain)
            {
                await RunPlainWorkerAsync(index).ConfigureAwait(false);
            }
            else
            {
                await RunFeaturesWorkerAsync(index).ConfigureAwait(false);
            }
        }
        finally
        {
            LeaveParticipant();
        }
    }

    /// <summary>The worker without a rate limiter or pipeline: the handler is called inline.</summary>
    private async Task RunPlainWorkerAsync(int index)
    {
        var reader = _reader;
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            // HandleAvailable runs every item that is there while the handlers complete synchronously; it returns
            // only to have a handler that is still running awaited here.
            while (HandleAvailable(index, out var item, out var pending, out var timed, out var start))
            {
                Exception? failure = null;
                try
                {
                    await pending.ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    failure = ex;
                }

                Finish(ref _workers[index], item, failure, timed, start);
            }
        }
    }

    /// <summary>
    /// Takes and handles the items that are in the channel now, one after another, for as long as each handler
    /// completes synchronously. Synchronous on purpose: the per-item work stays in registers instead of going
    /// through the async state machine, and a synchronous handler costs no allocation.
    /// </summary>
    /// <returns>
    /// <see langword="false"/> once the channel is empty. <see langword="true"/> when the handler of
    /// <paramref name="item"/> has not completed: the caller awaits <paramref name="pending"/>, then calls
    /// <see cref="Finish"/> with <paramref name="timed"/> and <paramref name="start"/>.
    /// </returns>
    private bool HandleAvailable(int index, [MaybeNullWhen(false)] out T item, out ValueTask pending, out bool timed, out long start)
    {
        ref var slot = ref _workers[index];
        var reader = _reader;
        var handler = _handler;
        var token = _handlerToken;
        while (reader.TryRead(out item))
        {
            Volatile.Write(ref slot.Taken, slot.Taken + 1);
            if (_abandoned)
            {
                DropAbandoned(item);
                continue;
            }

            timed = WorkQueueMetrics.HandlerDuration.Enabled;
            start = timed ? _timeProvider.GetTimestamp() : 0;
            Volatile.Write(ref slot.Busy, 1);
            Exception? failure = null;
            try
            {
                pending = handler(item, token);
                if (!pending.IsCompleted)
                {
                    return true;
                }

                // Completed: this observes the outcome (and releases a pooled IValueTaskSource) exactly as an await
                // would, and never blocks.
#pragma warning disable VSTHRD002
                pending.GetAwaiter().GetResult();
#pragma warning restore VSTHRD002
            }
            catch (Exception ex)
            {
                failure = ex;
            }

            Finish(ref slot, item, failure, timed, start);
        }

        pending = default;
        timed = false;
        start = 0;
        return false;
    }

    /// <summary>The worker with a rate limiter and/or a pipeline.</summary>
    private async Task RunFeaturesWorkerAsync(int index)
    {
        var reader = _reader;
        var token = _handlerToken;
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            // Take everything that is there before waiting again: one wake-up per burst, not per item.
            while (reader.TryRead(out var item))
            {
                Volatile.Write(ref _workers[index].Taken, _workers[index].Taken + 1);
                if (_abandoned)
                {
                    DropAbandoned(item);
                    continue;
                }

                await ProcessWithFeaturesAsync(index, item, token).ConfigureAwait(false);
            }
        }
    }

    /// <summary>The path with a rate limiter and/or a resilience pipeline.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ProcessWithFeaturesAsync(int index, T item, CancellationToken token)
    {
        RateLimitLease? lease = null;
        if (_rateLimiter is { } limiter)
        {
            try
            {
                lease = await RateLimiterPacing.AcquirePacedAsync(limiter, _timeProvider, token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (token.IsCancellationRequested)
            {
                // The drain was cut short while this item waited for its permit: it never started.
                DropAbandoned(item);
                return;
            }
            catch (Exception ex)
            {
                // For example a limiter disposed by its owner.
                RecordFailure(ref _workers[index], item, ex);
                return;
            }

            if (!lease.IsAcquired)
            {
                TimeSpan? retryAfter = lease.TryGetMetadata(MetadataName.RetryAfter, out var after) ? after : null;
                lease.Dispose();
                WorkQueueLog.PermitRefused(_logger, _context.Name);
                RecordFailure(ref _workers[index], item, new RateLimitRejectedException(retryAfter));
                return;
            }
        }

        var timed = WorkQueueMetrics.HandlerDuration.Enabled;
        var start = timed ? _timeProvider.GetTimestamp() : 0;
        Volatile.Write(ref _workers[index].Busy, 1);
        Exception? failure = null;
        try
        {
            if (_pipeline is { } pipeline)
            {
                // The state-passing overload with a static lambda: no closure is allocated per item.
                await pipeline.ExecuteAsync(
                    static (state, ct) => state.Handler(state.Item, ct),
                    (Handler: _handler, Item: item),
                    token).ConfigureAwait(false);
            }
            else
            {
                await _handler(item, token).ConfigureAwait(false);
            }
        }
        catch (Exception ex)
        {
            failure = ex;
        }
        finally
        {
            lease?.Dispose();
        }

        Finish(ref _workers[index], item, failure, timed, start);
    }

    /// <summary>Leaves the handler: records the duration and the outcome.</summary>
    private void Finish(ref WorkQueueWorkerSlot slot, T item, Exception? failure, bool timed, long start)
    {
        Volatile.Write(ref slot.Busy, 0);
        if (timed)
        {
            WorkQueueMetrics.HandlerDuration.Record(_timeProvider.GetElapsedTime(start).TotalSeconds, _context.NameTag);
        }

        if (failure is null)
        {
            Volatile.Write(ref slot.Handled, slot.Handled + 1);
            if (WorkQueueMetrics.Handled.Enabled)
            {
                WorkQueueMetrics.Handled.Add(1, _context.NameTag);
            }
        }
        else
        {
            RecordFailure(ref slot, item, failure);
        }
    }

    private void RecordFailure(ref WorkQueueWorkerSlot slot, T item, Exception failure)
    {
        Volatile.Write(ref slot.Failed, slot.Failed + 1);
        if (WorkQueueMetrics.Failed.Enabled)
        {
            WorkQueueMetrics.Failed.Add(1, _context.NameTag);
        }

        WorkQueueLog.HandlerFailed(_logger, _context.Name, failure);
        if (_onError is { } onError)
        {
            try
            {
                onError(item, failure);
            }
            catch (Exception ex)
            {
                WorkQueueLog.CallbackFailed(_logger, _context.Name, nameof(WorkQueueOptions<T>.OnError), ex);
            }
        }
    }
}
