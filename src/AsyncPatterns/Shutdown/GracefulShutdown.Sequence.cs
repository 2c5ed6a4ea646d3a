namespace AsyncPatterns;

/// <summary>The shutdown sequence: stop, drain within the deadline, abort, clean up, report.</summary>
public sealed partial class GracefulShutdown
{
    /// <summary>
    /// Starts the shutdown unless it has started; returns whether this call started it. With
    /// <paramref name="abortCause"/>, a shutdown this call starts is aborted from the outset.
    /// </summary>
    private bool Start(string reason, string? abortCause = null)
    {
        IDrainable[] components;
        Func<CancellationToken, Task>[] cleanups;
        int running;
        lock (_lock)
        {
            if (_reason is not null)
            {
                return false;
            }

            Volatile.Write(ref _reason, reason);
            _abortCause = abortCause;
            _startedAt = _context.TimeProvider.GetTimestamp();
            components = [.. _components];
            cleanups = [.. _cleanups];
            running = _running;
        }

        ShutdownLog.ShutdownStarted(_context.Logger, _context.Name, reason, running, components.Length, _drainTimeout);
        if (running == 0)
        {
            _tasksEnded.TrySetResult();
        }

        // Arm the deadline before running the StoppingToken callbacks, so slow callbacks cannot postpone it.
        if (_drainTimeout != Timeout.InfiniteTimeSpan)
        {
            _deadline = _context.TimeProvider.CreateTimer(
                static state => ((GracefulShutdown)state!).FireAbort("DrainTimeout passed"),
                this,
                _drainTimeout,
                Timeout.InfiniteTimeSpan);
        }

        try
        {
            _stopping.Cancel();
        }
        catch (AggregateException ex)
        {
            foreach (var inner in ex.InnerExceptions)
            {
                ShutdownLog.StoppingCallbackFailed(_context.Logger, _context.Name, inner);
                RecordError(inner);
            }
        }

        if (abortCause is not null)
        {
            CancelAbort(abortCause);
        }

        _ = RunSequenceAsync(components, cleanups);
        return true;
    }

    /// <summary>Fires <see cref="AbortToken"/> once, if the drain phase is still going.</summary>
    private void FireAbort(string cause)
    {
        lock (_lock)
        {
            if (_reason is null || _abortCause is not null || _drainPhaseOver)
            {
                return;
            }

            _abortCause = cause;
        }

        CancelAbort(cause);
    }

    private void CancelAbort(string cause)
    {
        try
        {
            // Inside the try: a throwing logger or clock must not leave the sequence waiting for _abortFired forever.
            var elapsed = _context.TimeProvider.GetElapsedTime(_startedAt);
            ShutdownLog.Aborting(_context.Logger, _context.Name, cause, elapsed);
            _abort.Cancel();
        }
        catch (AggregateException ex)
        {
            foreach (var inner in ex.InnerExceptions)
            {
                RecordError(inner);
            }
        }
        finally
        {
            // The sequence may already be past the drains (its waits end inside Cancel, before the callbacks
            // registered earlier have run): it waits for this before making the report.
            _abortFired.TrySetResult();
        }
    }

    private async Task RunSequenceAsync(IDrainable[] components, Func<CancellationToken, Task>[] cleanups)
    {
        var timeProvider = _context.TimeProvider;
        var abort = _abort.Token;
        var timedOut = true;
        try
        {
            // Phase 1a: tracked work (usually the producers) stops first.
            try
            {
                await _tasksEnded.Task.WaitAsync(abort).ConfigureAwait(false);
                var elapsed = timeProvider.GetElapsedTime(_startedAt);
                ShutdownLog.TasksStopped(_context.Logger, _context.Name, elapsed);
            }
            catch (OperationCanceledException) when (abort.IsCancellationRequested)
            {
                // The deadline passed: what still runs will be counted as abandoned.
            }

            // Phase 1b: components, last registered first. After an abort each is still drained, with the
            // cancelled token, so it closes and reports what it drops instead of losing it silently.
            for (var i = components.Length - 1; i >= 0; i--)
            {
                await DrainAsync(components[i], abort).ConfigureAwait(false);
            }

            lock (_lock)
            {
                _drainPhaseOver = true;
                timedOut = _abortCause is not null;
            }

            _deadline?.Dispose();
            if (timedOut)
            {
                // Every AbortToken callback has run and its failure is in Errors before the report is made; this
                // also moves the rest of the sequence off the thread that fired the abort (a timer, Abort()).
                await _abortFired.Task.ConfigureAwait(false);
            }

            var drainElapsed = timeProvider.GetElapsedTime(_startedAt);
            ShutdownLog.DrainPhaseFinished(_context.Logger, _context.Name, drainElapsed, timedOut);
            RecordPhase("drain", drainElapsed);

            // Phase 2: cleanups, last registered first, each on its own clock.
            var cleanupStarted = timeProvider.GetTimestamp();
            for (var i = cleanups.Length - 1; i >= 0; i--)
            {
                await CleanUpAsync(cleanups[i], i).ConfigureAwait(false);
            }

            var cleanupElapsed = timeProvider.GetElapsedTime(cleanupStarted);
            ShutdownLog.CleanupPhaseFinished(_context.Logger, _context.Name, cleanups.Length, cleanupElapsed);
            RecordPhase("cleanup", cleanupElapsed);
        }
#pragma warning disable CA1031 // A logger or metrics listener that throws must not leave Completion pending forever.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            RecordError(ex);
        }

        _completion.TrySetResult(MakeReport(timedOut));
    }

    private async Task DrainAsync(IDrainable component, CancellationToken abort)
    {
        var name = DisplayName(component);
        ShutdownLog.Draining(_context.Logger, _context.Name, name);
        var started = _context.TimeProvider.GetTimestamp();
        Task drain;
        try
        {
            drain = component.DrainAsync(abort) ?? Task.CompletedTask;
        }
#pragma warning disable CA1031 // A component's failure is recorded in the report; the other components still drain.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            drain = Task.FromException(ex);
        }

        try
        {
            // WaitAsync: a component that ignores its token cannot hold the shutdown past the deadline.
            await drain.WaitAsync(abort).ConfigureAwait(false);
            var elapsed = _context.TimeProvider.GetElapsedTime(started);
            ShutdownLog.Drained(_context.Logger, _context.Name, name, elapsed);
        }
        catch (OperationCanceledException) when (abort.IsCancellationRequested)
        {
            // A drain cut short throws OperationCanceledException by contract: expected, not an error.
            var elapsed = _context.TimeProvider.GetElapsedTime(started);
            ShutdownLog.DrainCutShort(_context.Logger, _context.Name, name, elapsed);
            ObserveAbandoned(drain);
        }
#pragma warning disable CA1031
        catch (Exception ex)
#pragma warning restore CA1031
        {
            ShutdownLog.DrainFailed(_context.Logger, _context.Name, name, ex);
            RecordError(ex);
        }
    }

    private async Task CleanUpAsync(Func<CancellationToken, Task> cleanup, int index)
    {
        using var bound = _cleanupTimeout == Timeout.InfiniteTimeSpan
            ? new CancellationTokenSource()
            : new CancellationTokenSource(_cleanupTimeout, _context.TimeProvider);
        Task task;
        try
        {
            task = cleanup(bound.Token) ?? Task.CompletedTask;
        }
#pragma warning disable CA1031 // A cleanup's failure is recorded in the report; the other cleanups still run.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            task = Task.FromException(ex);
        }

        try
        {
            await task.WaitAsync(bound.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (bound.IsCancellationRequested)
        {
            ShutdownLog.CleanupTimedOut(_context.Logger, _context.Name, index, _cleanupTimeout);
            RecordError(new TimeoutException(
                $"Cleanup {index} (in registration order) of {Kind} '{_context.Name}' did not finish within CleanupTimeout ({_cleanupTimeout}) and was abandoned."));
            ObserveAbandoned(task);
        }
#pragma warning disable CA1031
        catch (Exception ex)
#pragma warning restore CA1031
        {
            ShutdownLog.CleanupFailed(_context.Logger, _context.Name, index, ex);
            RecordError(ex);
        }
    }

    /// <summary>Logs a failure of work the shutdown stopped waiting for, so it is never an unobserved exception.</summary>
    private void ObserveAbandoned(Task task)
    {
        if (task.IsCompleted)
        {
            // Finished as it was cut short: its exception, if any, is the expected cancellation.
            _ = task.Exception;
            return;
        }

        _ = task.ContinueWith(
            static (t, state) =>
            {
                if (t.Exception?.InnerExceptions.All(static e => e is OperationCanceledException) == false)
                {
                    var self = (GracefulShutdown)state!;
                    ShutdownLog.AbandonedWorkFailed(self._context.Logger, self._context.Name, t.Exception);
                }
            },
            this,
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);
    }

    private ShutdownReport MakeReport(bool timedOut)
    {
        string reason;
        int completed, cancelled, faulted, abandoned;
        Exception[] errors;
        lock (_lock)
        {
            _reportMade = true;
            reason = _reason!;
            completed = _completed;
            cancelled = _cancelled;
            faulted = _faulted;
            abandoned = _running;
            errors = [.. _errors];
        }

        var elapsed = _context.TimeProvider.GetElapsedTime(_startedAt);
        var report = new ShutdownReport(reason, elapsed, timedOut, completed, cancelled, faulted, abandoned, Array.AsReadOnly(errors));
        try
        {
            ShutdownLog.ShutdownFinished(_context.Logger, _context.Name, elapsed, reason, timedOut, completed, cancelled, faulted, abandoned, errors.Length);
            RecordPhase("total", elapsed);
            RecordOutcome("completed", completed);
            RecordOutcome("cancelled", cancelled);
            RecordOutcome("faulted", faulted);
            RecordOutcome("abandoned", abandoned);
            if (errors.Length > 0 && ShutdownMetrics.Errors.Enabled)
            {
                ShutdownMetrics.Errors.Add(errors.Length, _context.NameTag);
            }

            if (ShutdownMetrics.Shutdowns.Enabled)
            {
                ShutdownMetrics.Shutdowns.Add(1, _context.NameTag, new(ShutdownMetrics.TimedOutTag, timedOut));
            }
        }
#pragma warning disable CA1031 // Telemetry must not keep the report from its waiters.
        catch (Exception)
#pragma warning restore CA1031
        {
        }

        return report;
    }

    private void RecordPhase(string phase, TimeSpan elapsed)
    {
        if (ShutdownMetrics.PhaseDuration.Enabled)
        {
            ShutdownMetrics.PhaseDuration.Record(elapsed.TotalSeconds, _context.NameTag, new(ShutdownMetrics.PhaseTag, phase));
        }
    }

    private void RecordOutcome(string outcome, int count)
    {
        if (count > 0 && ShutdownMetrics.Tasks.Enabled)
        {
            ShutdownMetrics.Tasks.Add(count, _context.NameTag, new(ShutdownMetrics.OutcomeTag, outcome));
        }
    }

    private static string DisplayName(IDrainable component)
    {
        var name = component.GetType().Name;
        var tick = name.IndexOf('`', StringComparison.Ordinal);
        return tick < 0 ? name : name[..tick];
    }
}
