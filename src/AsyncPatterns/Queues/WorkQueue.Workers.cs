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
            var reader = _reader;
            var token = _handlerToken;

            // No token on the wait: workers stop when the channel is closed and empty. A drain that is cut short
            // empties it itself, so this returns false promptly then too.
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

                    if (_plain)
                    {
                        // Inline on purpose: a handler that completes synchronously costs no state machine and no allocation.
                        var timed = WorkQueueMetrics.HandlerDuration.Enabled;
                        var start = timed ? _timeProvider.GetTimestamp() : 0;
                        Volatile.Write(ref _workers[index].Busy, 1);
                        Exception? failure = null;
                        try
                        {
                            await _handler(item, token).ConfigureAwait(false);
                        }
                        catch (Exception ex)
                        {
                            failure = ex;
                        }

                        Finish(index, item, failure, timed, start);
                    }
                    else
                    {
                        await ProcessWithFeaturesAsync(index, item, token).ConfigureAwait(false);
                    }
                }
            }
        }
        finally
        {
            LeaveParticipant();
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
                lease = await limiter.AcquireAsync(1, token).ConfigureAwait(false);
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
                RecordFailure(index, item, ex);
                return;
            }

            if (!lease.IsAcquired)
            {
                TimeSpan? retryAfter = lease.TryGetMetadata(MetadataName.RetryAfter, out var after) ? after : null;
                lease.Dispose();
                WorkQueueLog.PermitRefused(_logger, _context.Name);
                RecordFailure(index, item, new RateLimitRejectedException(retryAfter));
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

        Finish(index, item, failure, timed, start);
    }

    /// <summary>Leaves the handler: records the duration and the outcome.</summary>
    private void Finish(int index, T item, Exception? failure, bool timed, long start)
    {
        ref var slot = ref _workers[index];
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
            RecordFailure(index, item, failure);
        }
    }

    private void RecordFailure(int index, T item, Exception failure)
    {
        ref var slot = ref _workers[index];
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
