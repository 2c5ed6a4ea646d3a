namespace AsyncPatterns;

/// <summary>Submission, shedding, cancellation and hand-over to runners.</summary>
public sealed partial class PriorityScheduler
{
    private enum Admission
    {
        Started,
        Queued,
        QueuedByEviction,
        Rejected,
        Closed,
        CanceledEarly,
    }

    private void Submit(Delegate work, object source, PriorityWorkOperations operations, int priority, CancellationToken cancellationToken)
    {
        PriorityWorkCancellation? cancellation = null;
        if (cancellationToken.CanBeCanceled)
        {
            // Registered before the item is queued, so that a runner taking it always finds the registration to dispose.
            cancellation = new PriorityWorkCancellation(this, source, operations, priority, cancellationToken);
            cancellation.Registration = cancellationToken.UnsafeRegister(
                static state => ((PriorityWorkCancellation)state!).Owner.OnCallerCanceled((PriorityWorkCancellation)state),
                cancellation);
        }

        var entry = new PriorityWorkEntry
        {
            Priority = priority,
            Work = work,
            Source = source,
            Operations = operations,
            Cancellation = cancellation,
            Context = ExecutionContext.Capture(),
            EnqueuedAt = PrioritySchedulerMetrics.QueueWaitTime.Enabled ? _context.TimeProvider.GetTimestamp() : long.MinValue,
        };

        Runner? runner = null;
        PriorityWorkEntry evicted = default;
        Admission admission;
        lock (_lock)
        {
            admission = AdmitLocked(ref entry, ref runner, ref evicted);
        }

        switch (admission)
        {
            case Admission.Started:
                ThreadPool.UnsafeQueueUserWorkItem(runner!, preferLocal: false);
                return;
            case Admission.Queued:
                RecordQueued(priority, +1);
                return;
            case Admission.QueuedByEviction:
                RecordQueued(priority, +1);
                Evict(in evicted, priority);
                return;
            case Admission.Rejected:
                cancellation?.Registration.Dispose();
                Reject(source, operations, priority);
                return;
            case Admission.CanceledEarly:
                cancellation!.Registration.Dispose();
                operations.SetCanceled(source, cancellationToken);
                return;
            default:
                cancellation?.Registration.Dispose();
                Guard.ThrowClosed(Kind, _context.Name);
                return;
        }
    }

    private Admission AdmitLocked(ref PriorityWorkEntry entry, ref Runner? runner, ref PriorityWorkEntry evicted)
    {
        _lock.AssertHeld();
        if (_closed)
        {
            return Admission.Closed;
        }

        var cancellation = entry.Cancellation;
        if (cancellation is { State: PriorityWorkCancellation.Canceled })
        {
            return Admission.CanceledEarly;
        }

        if (_running < _maxConcurrency)
        {
            // A free slot means an empty queue: items queue only while every slot is busy.
            _running++;
            _accepted++;
            cancellation?.State = PriorityWorkCancellation.Taken;
            runner = _idleRunners.Count > 0 ? _idleRunners.Pop() : new Runner(this);
            runner.Current = entry;
            return Admission.Started;
        }

        if (_aging)
        {
            // Read under the lock so that keys never decrease in submission order: FIFO holds among equal priorities.
            var now = _context.TimeProvider.GetTimestamp();
            entry.EnqueuedAt = now;
            entry.Key = (entry.Priority * _agingStamps) + (now - _origin);
        }
        else
        {
            entry.Key = entry.Priority;
        }

        var admission = Admission.Queued;
        if (_queuedCount >= _capacity)
        {
            if (!TryEvictLocked(entry.Key, out evicted))
            {
                cancellation?.State = PriorityWorkCancellation.Taken;
                return Admission.Rejected;
            }

            admission = Admission.QueuedByEviction;
        }

        entry.Sequence = ++_sequence;
        cancellation?.State = PriorityWorkCancellation.Queued;
        _queue.Push(entry);
        _queuedCount++;
        _accepted++;
        return admission;
    }

    // Removes the least urgent live item if `key` is more urgent than it.
    private bool TryEvictLocked(Int128 key, out PriorityWorkEntry evicted)
    {
        _lock.AssertHeld();
        while (_queue.Count > 0)
        {
            ref readonly var least = ref _queue.PeekMax();
            if (!least.IsLive)
            {
                _queue.PopMax(out _);
                _deadCount--;
                continue;
            }

            if (key >= least.Key)
            {
                break;
            }

            _queue.PopMax(out evicted);
            evicted.Cancellation?.State = PriorityWorkCancellation.Taken;
            _queuedCount--;
            return true;
        }

        evicted = default;
        return false;
    }

    private void Evict(in PriorityWorkEntry evicted, int priority)
    {
        evicted.Cancellation?.Registration.Dispose();
        Interlocked.Increment(ref _evicted);
        RecordQueued(evicted.Priority, -1);
        if (PrioritySchedulerMetrics.Evicted.Enabled)
        {
            PrioritySchedulerMetrics.Evicted.Add(1, PrioritySchedulerMetrics.Tags(_context.NameTag, evicted.Priority));
        }

        PrioritySchedulerLog.WorkEvicted(_context.Logger, _context.Name, _capacity, evicted.Priority, priority);
        evicted.Operations.SetException(evicted.Source, new WorkRejectedException(
            $"The PriorityScheduler '{_context.Name}' evicted this priority {evicted.Priority} item: its queue was full ({_capacity} items) and a more urgent priority {priority} item arrived."));
    }

    private void Reject(object source, PriorityWorkOperations operations, int priority)
    {
        Interlocked.Increment(ref _rejected);
        if (PrioritySchedulerMetrics.Rejected.Enabled)
        {
            PrioritySchedulerMetrics.Rejected.Add(1, PrioritySchedulerMetrics.Tags(_context.NameTag, priority));
        }

        PrioritySchedulerLog.WorkRejected(_context.Logger, _context.Name, _capacity, priority);
        operations.SetException(source, new WorkRejectedException(
            $"The PriorityScheduler '{_context.Name}' refused this priority {priority} item: its queue is full ({_capacity} items) and holds nothing less urgent."));
    }

    private void OnCallerCanceled(PriorityWorkCancellation cancellation)
    {
        lock (_lock)
        {
            switch (cancellation.State)
            {
                case PriorityWorkCancellation.Pending:
                    // Not queued yet: Submit sees this and cancels the task itself.
                    cancellation.State = PriorityWorkCancellation.Canceled;
                    return;
                case PriorityWorkCancellation.Queued:
                    // Removed at once from every count; the heap entry is skipped when it surfaces.
                    cancellation.State = PriorityWorkCancellation.Canceled;
                    _queuedCount--;
                    if (++_deadCount > 64 && _deadCount > _queuedCount)
                    {
                        _queue.RemoveDead();
                        _deadCount = 0;
                    }

                    break;
                default:
                    return;
            }
        }

        Interlocked.Increment(ref _canceled);
        RecordQueued(cancellation.Priority, -1);
        cancellation.Operations.SetCanceled(cancellation.Source, cancellation.Token);
    }

    /// <summary>Gives <paramref name="runner"/> the most urgent queued item, or returns its slot when none is left.</summary>
    internal bool TryTakeNext(Runner runner)
    {
        bool drained;
        lock (_lock)
        {
            while (_queue.Count > 0)
            {
                _queue.PopMin(out runner.Current);
                if (runner.Current.IsLive)
                {
                    runner.Current.Cancellation?.State = PriorityWorkCancellation.Taken;
                    _queuedCount--;
                    return true;
                }

                _deadCount--;
            }

            runner.Current = default;
            _running--;
            _idleRunners.Push(runner);
            drained = _closed && _running == 0;
        }

        if (drained)
        {
            OnDrained();
        }

        return false;
    }

    // Cuts a drain short: drops what is queued and fires the token that running work received.
    private void Abort(CancellationToken cancellationToken)
    {
        List<PriorityWorkEntry> dropped = [];
        int running;
        lock (_lock)
        {
            if (_aborted)
            {
                return;
            }

            _aborted = true;
            _queue.Clear(dropped);
            foreach (var entry in dropped)
            {
                if (entry.IsLive)
                {
                    entry.Cancellation?.State = PriorityWorkCancellation.Taken;
                }
            }

            _queuedCount = 0;
            _deadCount = 0;
            running = _running;
        }

        var count = 0;
        foreach (var entry in dropped)
        {
            if (!entry.IsLive)
            {
                continue;
            }

            count++;
            entry.Cancellation?.Registration.Dispose();
            Interlocked.Increment(ref _dropped);
            RecordQueued(entry.Priority, -1);
            entry.Operations.SetCanceled(entry.Source, cancellationToken);
        }

        if (count > 0 && PrioritySchedulerMetrics.Dropped.Enabled)
        {
            PrioritySchedulerMetrics.Dropped.Add(count, _context.NameTag);
        }

        PrioritySchedulerLog.DrainCutShort(_context.Logger, _context.Name, count, running);
        try
        {
            _abort.Cancel();
        }
        catch (AggregateException exception)
        {
            // A callback that running work registered on its token threw; the drain still ends.
            PrioritySchedulerLog.CancellationCallbackFailed(_context.Logger, _context.Name, exception);
        }
    }

    private void RecordQueued(int priority, int delta)
    {
        if (PrioritySchedulerMetrics.Queued.Enabled)
        {
            PrioritySchedulerMetrics.Queued.Add(delta, PrioritySchedulerMetrics.Tags(_context.NameTag, priority));
        }
    }

    private void RecordStart(in PriorityWorkEntry entry)
    {
        if (entry.Sequence != 0)
        {
            RecordQueued(entry.Priority, -1);
        }

        if (entry.EnqueuedAt != long.MinValue && PrioritySchedulerMetrics.QueueWaitTime.Enabled)
        {
            PrioritySchedulerMetrics.QueueWaitTime.Record(
                _context.TimeProvider.GetElapsedTime(entry.EnqueuedAt).TotalSeconds,
                PrioritySchedulerMetrics.Tags(_context.NameTag, entry.Priority));
        }
    }

    private void CountEnd(Exception? error)
    {
        if (error is null)
        {
            Interlocked.Increment(ref _ends.Handled);
        }
        else
        {
            Interlocked.Increment(ref _ends.Failed);
            PrioritySchedulerLog.WorkFailed(_context.Logger, _context.Name, error);
        }
    }
}
