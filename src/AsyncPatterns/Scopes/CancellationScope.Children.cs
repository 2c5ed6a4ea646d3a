using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;

namespace AsyncPatterns;

/// <summary>Children's lifecycle (accept, schedule, start, classify, end), cancellation and the scope's end.</summary>
public sealed partial class CancellationScope
{
    /// <summary>Refusals thrown by <c>Run</c>, mapped to the scope that threw them (weakly: nothing is kept alive).</summary>
    private static readonly ConditionalWeakTable<Exception, CancellationScope> Refusals = new();

    [MethodImpl(MethodImplOptions.NoInlining)]
    private InvalidOperationException NotAcceptingException()
    {
        var refusal = new InvalidOperationException(
            _context.Name == PrimitiveName
                ? "The CancellationScope is cancelled or has ended, so it accepts no new children."
                : $"The CancellationScope '{_context.Name}' is cancelled or has ended, so it accepts no new children.");
        Refusals.AddOrUpdate(refusal, this);
        return refusal;
    }

    /// <summary>True for an exception this scope's own <c>Run</c> threw because the scope was already cancelled.</summary>
    private bool IsOwnRefusal(Exception exception) =>
        exception is InvalidOperationException && Refusals.TryGetValue(exception, out var scope) && ReferenceEquals(scope, this);

    private void Accept(IScopeChild child)
    {
        if (!TryAccept(child))
        {
            throw NotAcceptingException();
        }
    }

    /// <summary>Accepts and schedules <paramref name="child"/>, or returns false when the scope is cancelled or has ended.</summary>
    private bool TryAccept(IScopeChild child)
    {
        if (_token.IsCancellationRequested || !TryAddActive())
        {
            return false;
        }

        if (_maxConcurrency == int.MaxValue)
        {
            Schedule(child);
            return true;
        }

        bool start;
        bool dropped = false;
        lock (_lock)
        {
            // Checked again under the lock: a cancel that empties the queue takes this lock after cancelling the
            // token, so a child is either seen by that drain or sees the cancelled token here.
            if (_token.IsCancellationRequested)
            {
                start = false;
                dropped = true;
            }
            else if (_running < _maxConcurrency)
            {
                _running++;
                start = true;
            }
            else
            {
                (_waiting ??= new Queue<IScopeChild>()).Enqueue(child);
                start = false;
            }
        }

        if (start)
        {
            Schedule(child);
        }
        else if (dropped)
        {
            EndNeverStarted(child);
        }

        return true;
    }

    private bool TryAddActive()
    {
        var current = Interlocked.Read(ref _state);
        while (LiveOf(current) != 0)
        {
            var seen = Interlocked.CompareExchange(ref _state, current + 1, current);
            if (seen == current)
            {
                return true;
            }

            current = seen;
        }

        return false;
    }

    private static void Schedule(IScopeChild child) => ThreadPool.UnsafeQueueUserWorkItem(child, preferLocal: true);

    /// <summary>
    /// Runs on the thread pool: invokes the child's delegate, even when the scope was cancelled since
    /// <see cref="Run"/> accepted it (as Trio's <c>start_soon</c>): an accepted child always runs, sees the cancelled
    /// token at its first check and gets to run its own cleanup, whatever the thread pool's timing.
    /// </summary>
    internal void StartChild(IScopeChild child, Func<CancellationToken, Task> work)
    {
        Interlocked.Increment(ref _started);
        if (CancellationScopeMetrics.ChildrenStarted.Enabled)
        {
            CancellationScopeMetrics.ChildrenStarted.Add(1, _context.NameTag);
        }

        Task task;
        try
        {
            task = work(_token);
        }
        catch (Exception ex)
        {
            CompleteChild(child, userTask: null, ex);
            return;
        }

        if (task is null)
        {
            CompleteChild(child, userTask: null, new InvalidOperationException("The child delegate returned null instead of a Task."));
        }
        else if (task.IsCompleted)
        {
            CompleteChild(child, task, synchronousException: null);
        }
        else
        {
            child.AwaitCompletion(task);
        }
    }

    /// <summary>Classifies a child's outcome, completes its task, records it, and frees its slot.</summary>
    internal void CompleteChild(IScopeChild child, Task? userTask, Exception? synchronousException)
    {
        if (userTask is { IsCompletedSuccessfully: true })
        {
            child.TrySucceed(userTask);
            ChildEnded(wasRunning: true, succeeded: true);
            return;
        }

        IReadOnlyList<Exception> exceptions = synchronousException is not null
            ? [synchronousException]
            : userTask!.IsCanceled
                ? [new TaskCanceledException(userTask)]
                : userTask.Exception!.InnerExceptions; // reading Exception marks the user's task observed

        List<Exception>? failures = null;
        foreach (var exception in exceptions)
        {
            if (!IsScopeCancellation(exception))
            {
                (failures ??= []).Add(exception);
            }
        }

        if (failures is null)
        {
            child.TryCancel(_token);
            Interlocked.Increment(ref _cancelled);
            RecordCancelledMetric();
        }
        else
        {
            child.TryFail(exceptions);
            Interlocked.Increment(ref _failed);
            if (CancellationScopeMetrics.ChildrenFailed.Enabled)
            {
                CancellationScopeMetrics.ChildrenFailed.Add(1, _context.NameTag);
            }

            foreach (var failure in failures)
            {
                if (_failFast)
                {
                    CancellationScopeLog.ChildFailedRethrown(_context.Logger, _context.Name, failure);
                }
                else
                {
                    CancellationScopeLog.ChildFailed(_context.Logger, _context.Name, failure);
                }
            }

            RecordFailures(failures);
        }

        ChildEnded(wasRunning: true);
    }

    /// <summary>True for a cancellation the scope (or its caller) caused, which is never reported as a failure.</summary>
    private bool IsScopeCancellation(Exception exception) =>
        exception is OperationCanceledException &&
        (_token.IsCancellationRequested || _callerToken.IsCancellationRequested);

    private void RecordFailures(List<Exception> failures)
    {
        lock (_lock)
        {
            _failures ??= [];
            _failureSet ??= new HashSet<Exception>(ReferenceEqualityComparer.Instance);
            foreach (var failure in failures)
            {
                // The body (or a sibling) that awaits a failed child and lets its exception escape rethrows the same
                // instance: that is one failure, not two ("one failure is rethrown as itself").
                if (_failureSet.Add(failure))
                {
                    _failures.Add(failure);
                }
            }
        }

        if (_failFast)
        {
            CancelInternal(CancelReason.Failure);
        }
    }

    private void RecordCancelledMetric()
    {
        if (CancellationScopeMetrics.ChildrenCancelled.Enabled)
        {
            CancellationScopeMetrics.ChildrenCancelled.Add(1, _context.NameTag);
        }
    }

    private void EndNeverStarted(IScopeChild child)
    {
        child.TryCancel(_token);
        Interlocked.Increment(ref _cancelled);
        RecordCancelledMetric();
        ChildEnded(wasRunning: false);
    }

    private void ChildEnded(bool wasRunning, bool succeeded = false)
    {
        if (wasRunning && _maxConcurrency != int.MaxValue)
        {
            IScopeChild? next = null;
            lock (_lock)
            {
                if (!_token.IsCancellationRequested && _waiting is { Count: > 0 } waiting)
                {
                    next = waiting.Dequeue(); // the slot passes straight to the next child
                }
                else
                {
                    _running--;
                }
            }

            if (next is not null)
            {
                // Scheduled, never run inline: a chain of children that finish synchronously must not recurse.
                Schedule(next);
            }
        }

        if (succeeded)
        {
            // Counts the success and releases the child's hold in one atomic step; the low half never borrows (it is
            // at least 1 here), and a carry out of the high half is a wrap of the success count.
            var state = Interlocked.Add(ref _state, SucceededOne - 1);
            if (SucceededOf32(state) == 0)
            {
                Interlocked.Increment(ref _succeededWraps);
            }

            if (LiveOf(state) == 0)
            {
                Finish();
            }

            return;
        }

        ReleaseActive();
    }

    private void ReleaseActive()
    {
        if (LiveOf(Interlocked.Decrement(ref _state)) == 0)
        {
            Finish();
        }
    }

    /// <summary>The low half of <see cref="_state"/>: live children, plus 1 while the owner holds the scope.</summary>
    private static long LiveOf(long state) => (uint)state;

    /// <summary>The high half of <see cref="_state"/>: successes modulo 2^32.</summary>
    private static long SucceededOf32(long state) => (long)((ulong)state >> 32);

    /// <summary>Every success so far (read from a <see cref="_state"/> snapshot and the wrap count).</summary>
    private long SucceededOf(long state) => (Interlocked.Read(ref _succeededWraps) << 32) + SucceededOf32(state);

    /// <summary>Returns true when this call cancelled the scope (the first reason wins).</summary>
    private bool CancelInternal(CancelReason reason)
    {
        if (Interlocked.CompareExchange(ref _reason, (int)reason, (int)CancelReason.None) != (int)CancelReason.None)
        {
            return false;
        }

        if (reason == CancelReason.Deadline)
        {
            CancellationScopeLog.TimedOut(_context.Logger, _context.Name, _timeout.GetValueOrDefault());
        }
        else if (_context.Logger.IsEnabled(LogLevel.Debug))
        {
            var text = ReasonText(reason);
            CancellationScopeLog.Cancelled(_context.Logger, _context.Name, text);
        }

        CancelTokenSource();
        DropWaiting();
        return true;
    }

    private void CancelTokenSource()
    {
        try
        {
            _cts.Cancel();
        }
        catch (AggregateException ex)
        {
            // A callback registered on Token threw. It is user code failing, so it is recorded like a child failure.
            foreach (var inner in ex.InnerExceptions)
            {
                CancellationScopeLog.CancellationCallbackFailed(_context.Logger, _context.Name, inner);
            }

            RecordFailures([.. ex.InnerExceptions]);
        }
    }

    private void DropWaiting()
    {
        if (_maxConcurrency == int.MaxValue)
        {
            return;
        }

        IScopeChild[] dropped;
        lock (_lock)
        {
            if (_waiting is not { Count: > 0 } waiting)
            {
                return;
            }

            dropped = waiting.ToArray();
            waiting.Clear();
        }

        foreach (var child in dropped)
        {
            EndNeverStarted(child);
        }
    }

    /// <summary>The last child (or the owner) has ended: seal the outcome, release resources, complete.</summary>
    private void Finish()
    {
        // Sealing the reason first means a deadline that fires from now on is not a timeout: the work was done.
        if (Interlocked.CompareExchange(ref _reason, (int)CancelReason.Ended, (int)CancelReason.None) == (int)CancelReason.None)
        {
            CancelTokenSource();
        }

        _timer?.Dispose();
        _callerRegistration.Dispose();

        bool failed;
        lock (_lock)
        {
            failed = _failures is { Count: > 0 };
        }

        var outcome = failed ? "failed" : OutcomeText((CancelReason)Volatile.Read(ref _reason));
        var duration = _context.TimeProvider.GetElapsedTime(_startTimestamp);
        if (CancellationScopeMetrics.Duration.Enabled)
        {
            CancellationScopeMetrics.Duration.Record(
                duration.TotalSeconds,
                _context.NameTag,
                new KeyValuePair<string, object?>(CancellationScopeMetrics.OutcomeTag, outcome));
        }

        if (_context.Logger.IsEnabled(LogLevel.Debug))
        {
            var succeeded = SucceededOf(Interlocked.Read(ref _state));
            var failedCount = Interlocked.Read(ref _failed);
            var cancelled = Interlocked.Read(ref _cancelled);
            CancellationScopeLog.Ended(_context.Logger, _context.Name, outcome, duration, succeeded, failedCount, cancelled);
        }

        _completion.TrySetResult();
    }

    private static string ReasonText(CancelReason reason) => reason switch
    {
        CancelReason.Explicit => "Cancel was called",
        CancelReason.Caller => "the outer token was cancelled",
        CancelReason.Deadline => "its deadline passed",
        CancelReason.Failure => "a child failed",
        CancelReason.Exit => "the scope was left",
        _ => "it ended",
    };

    private static string OutcomeText(CancelReason reason) => reason switch
    {
        CancelReason.Explicit => "cancelled",
        CancelReason.Caller => "caller_cancelled",
        CancelReason.Deadline => "timed_out",
        CancelReason.Failure => "failed",
        _ => "completed",
    };
}
