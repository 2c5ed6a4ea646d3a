namespace AsyncPatterns;

/// <content>Closing: drain, cut-short drains that drop what never started, and dispose.</content>
internal abstract partial class BatchEngine<T>
{
    /// <summary>Closes the engine, then waits for every accepted item; see <see cref="IDrainable.DrainAsync"/>.</summary>
    public async Task DrainAsync(CancellationToken cancellationToken)
    {
        Close();
        if (!_completion.Task.IsCompleted)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                Abort();
                cancellationToken.ThrowIfCancellationRequested();
            }

            try
            {
                await _completion.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                Abort();
                throw;
            }
        }
    }

    /// <summary>Drains with the <c>DrainTimeout</c> bound; never throws.</summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            if (_drainTimeout == Timeout.InfiniteTimeSpan)
            {
                await DrainAsync(CancellationToken.None).ConfigureAwait(false);
            }
            else
            {
                using var deadline = new CancellationTokenSource(_drainTimeout, Context.TimeProvider);
                await DrainAsync(deadline.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
            // The bound passed: in-flight batches were cancelled and the rest dropped (and reported).
        }
    }

    /// <summary>Stops accepting items, emits the current batch and refuses adds that were waiting for capacity.</summary>
    private void Close()
    {
        var signals = default(Signals);
        long pending;
        lock (_lock)
        {
            if (_closed)
            {
                return;
            }

            _closed = true;
            pending = _pending;
            if (_current is not null)
            {
                SealLocked(BatchTrigger.Drain, ref signals);
            }

            while (_waiters.TryDequeue(out var waiter))
            {
                if (waiter.TryMarkCompleted())
                {
                    waiter.Next = signals.Refused;
                    signals.Refused = waiter;
                }
            }

            CheckFinishedLocked(ref signals);
        }

        BatcherLog.Draining(Context.Logger, Context.Name, pending);
        Apply(ref signals);
    }

    /// <summary>Cuts a drain short: cancels in-flight batches' token and drops every batch that has not started.</summary>
    private void Abort()
    {
        var signals = default(Signals);
        List<BatchBuffer<T>>? dropped = null;
        long droppedItems = 0;
        lock (_lock)
        {
            if (_aborted)
            {
                return;
            }

            _aborted = true;
            while (_ready.TryDequeue(out var batch))
            {
                (dropped ??= []).Add(batch);
                droppedItems += batch.Count;
                _pending -= batch.Count;
                _dropped += batch.Count;
                _batchesDropped++;
            }

            CollectFlushedLocked(ref signals);
            CheckFinishedLocked(ref signals);
        }

        BatcherLog.DrainCutShort(Context.Logger, Context.Name);
        try
        {
            _abort.Cancel();
        }
        catch (AggregateException)
        {
            // A registration on the batch token threw; the work it belongs to reports its own failure.
        }

        if (dropped is not null)
        {
            BatcherLog.ItemsDropped(Context.Logger, Context.Name, droppedItems, dropped.Count);
            if (BatcherMetrics.ItemsDropped.Enabled)
            {
                BatcherMetrics.ItemsDropped.Add(droppedItems, Context.NameTag);
            }

            foreach (var batch in dropped)
            {
                BatcherMetrics.RecordEmitted(batch.Count, batch.Trigger, Context.NameTag);
                ReportDropped(batch);
            }
        }

        Apply(ref signals);
    }

    private void ReportDropped(BatchBuffer<T> batch)
    {
        CompleteDropped(batch);
        if (_onDropped is not null)
        {
            try
            {
                _onDropped(batch);
            }
            catch (Exception ex)
            {
                BatcherLog.OnDroppedThrew(Context.Logger, Context.Name, ex);
            }
        }
    }

    /// <summary>Runs once, when the engine is closed and nothing is pending.</summary>
    private void Finish()
    {
        _timer.Dispose();
        BatcherMetrics.Untrack(this);
        var statistics = GetStatistics();
        BatcherLog.Drained(Context.Logger, Context.Name, statistics.ItemsProcessed, statistics.ItemsFailed, statistics.ItemsDropped);
        _completion.TrySetResult();
    }
}
