namespace AsyncPatterns;

/// <content>Workers: running sealed batches, accounting for them and releasing capacity.</content>
internal abstract partial class BatchEngine<T>
{
    /// <summary>A worker booked by <see cref="SealLocked"/> starts here, on the thread pool.</summary>
    void IThreadPoolWorkItem.Execute() => _ = RunWorkerAsync();

    /// <summary>Runs sealed batches one after the other until none is left; never throws.</summary>
    private async Task RunWorkerAsync()
    {
        var batch = TakeNext(previous: null);
        while (batch is not null)
        {
            BatcherMetrics.RecordEmitted(batch.Count, batch.Trigger, Context.NameTag);
            BatcherLog.BatchEmitted(Context.Logger, Context.Name, batch.Count, batch.Trigger);
            var started = BatcherMetrics.BatchDuration.Enabled ? Context.TimeProvider.GetTimestamp() : 0;
            Exception? error = null;
            try
            {
                await ProcessAsync(batch, _abort.Token).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                error = ex;
            }

            RecordFinished(batch, started, error is null);
            var signals = default(Signals);
            lock (_lock)
            {
                AccountFinishedLocked(batch, error is null, ref signals);
            }

            // Accounting first, then callers and callbacks: whoever observes a result sees statistics that include it.
            if (error is null)
            {
                try
                {
                    CompleteSucceeded(batch);
                }
                catch (Exception ex)
                {
                    // The results list itself threw while being read: the callers not yet completed get that error.
                    BatcherLog.BatchFailed(Context.Logger, Context.Name, batch.Count, ex);
                    CompleteFailed(batch, ex);
                }
            }
            else
            {
                ReportFailure(batch, error);
            }

            Apply(ref signals);
            batch = TakeNext(batch);
        }
    }

    /// <summary>Recycles <paramref name="previous"/> and takes the next sealed batch, or retires the worker.</summary>
    private BatchBuffer<T>? TakeNext(BatchBuffer<T>? previous)
    {
        lock (_lock)
        {
            if (previous is not null && _pool.Count < _poolLimit)
            {
                previous.Reset();
                _pool.Push(previous);
            }

            if (_ready.TryDequeue(out var next))
            {
                _inFlight.Add(next);
                return next;
            }

            _runningWorkers--;
            return null;
        }
    }

    /// <summary>Counts a finished batch, releases its capacity to waiting adds and finds flushes that are now done.</summary>
    private void AccountFinishedLocked(BatchBuffer<T> batch, bool succeeded, ref Signals signals)
    {
        _lock.AssertHeld();
        _inFlight.Remove(batch);
        _pending -= batch.Count;
        if (succeeded)
        {
            _processed += batch.Count;
            _batchesProcessed++;
        }
        else
        {
            _failed += batch.Count;
            _batchesFailed++;
        }

        AdmitWaitersLocked(ref signals);
        CollectFlushedLocked(ref signals);
        CheckFinishedLocked(ref signals);
    }

    /// <summary>Moves waiting adds, oldest first, into batches while there is capacity.</summary>
    private void AdmitWaitersLocked(ref Signals signals)
    {
        _lock.AssertHeld();
        while (_pending < _capacity && _waiters.TryDequeue(out var waiter))
        {
            if (waiter.TryMarkCompleted())
            {
                AppendLocked(waiter.Item, waiter.Completion, waiter.Weight, ref signals);
                waiter.Next = signals.Admitted;
                signals.Admitted = waiter;
            }
        }
    }

    private void CollectFlushedLocked(ref Signals signals)
    {
        _lock.AssertHeld();
        if (_flushWaiters.Count == 0)
        {
            return;
        }

        var min = MinOutstandingSequenceLocked();
        while (_flushWaiters.TryPeek(out var flush) && flush.Sequence < min)
        {
            _flushWaiters.Dequeue();
            flush.Next = signals.Flushed;
            signals.Flushed = flush;
        }
    }

    private void CheckFinishedLocked(ref Signals signals)
    {
        _lock.AssertHeld();
        if (_closed && _pending == 0 && !_finished)
        {
            _finished = true;
            signals.Finished = true;
        }
    }

    private void ReportFailure(BatchBuffer<T> batch, Exception error)
    {
        BatcherLog.BatchFailed(Context.Logger, Context.Name, batch.Count, error);
        if (BatcherMetrics.ItemsFailed.Enabled)
        {
            BatcherMetrics.ItemsFailed.Add(batch.Count, Context.NameTag);
        }

        CompleteFailed(batch, error);
        if (_onError is not null)
        {
            try
            {
                _onError(batch, error);
            }
            catch (Exception ex)
            {
                BatcherLog.OnErrorThrew(Context.Logger, Context.Name, ex);
            }
        }
    }

    private void RecordFinished(BatchBuffer<T> batch, long started, bool succeeded)
    {
        var time = Context.TimeProvider;
        if (started != 0 && BatcherMetrics.BatchDuration.Enabled)
        {
            BatcherMetrics.BatchDuration.Record(
                time.GetElapsedTime(started).TotalSeconds,
                Context.NameTag,
                new KeyValuePair<string, object?>(BatcherMetrics.OutcomeTag, succeeded ? "processed" : "failed"));
        }

        if (BatcherMetrics.BatchLatency.Enabled)
        {
            BatcherMetrics.BatchLatency.Record(time.GetElapsedTime(batch.FirstItemTimestamp).TotalSeconds, Context.NameTag);
        }
    }
}
