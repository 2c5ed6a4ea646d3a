using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <summary>The runners: one per busy concurrency slot, reused, each a thread-pool work item.</summary>
public sealed partial class PriorityScheduler
{
    /// <summary>
    /// Runs one item at a time for its scheduler, then takes the next most urgent one, until the queue is empty.
    /// At most <c>MaxConcurrency</c> runners exist; an idle one waits on the scheduler's stack.
    /// </summary>
    /// <remarks>
    /// Work that completes synchronously is followed by the next item on the same thread-pool visit (up to
    /// <see cref="BatchLimit"/> items, then the runner requeues itself to stay fair to other pool work). Work that
    /// completes asynchronously resumes the runner through a cached continuation that completes the item and takes
    /// the next one: on a thread-pool thread it runs it there (as an <c>await</c> loop would); on any other thread
    /// it requeues the runner to the thread pool, so a UI or dedicated thread that completed the work's task is
    /// never borrowed.
    /// </remarks>
    internal sealed class Runner : IThreadPoolWorkItem
    {
        private const int BatchLimit = 64;

        private static readonly ContextCallback InvokeInContext = static state => ((Runner)state!).InvokeCore();

        private readonly PriorityScheduler _owner;
        private readonly Action _onWorkCompleted;
        private readonly Action _onPermitCompleted;
        private CancellationTokenSource? _linked;
        private RateLimitLease? _lease;
        private Task? _pending;
        private Task<RateLimitLease>? _permit;
        private CancellationToken _token;
        private bool _finishedSynchronously;

        /// <summary>The item this runner runs now; set by the scheduler under its lock.</summary>
        internal PriorityWorkEntry Current;

        public Runner(PriorityScheduler owner)
        {
            _owner = owner;
            _onWorkCompleted = OnWorkCompleted;
            _onPermitCompleted = OnPermitCompleted;
        }

        public void Execute()
        {
            if (RunCurrent())
            {
                RunFollowing();
            }
        }

        /// <summary>Ends the current work (called by the operations before they complete the item's task).</summary>
        internal void EndWork(Exception? error)
        {
            ReleaseResources();
            _owner.CountEnd(error);
        }

        // Starts Current; true when it has already finished.
        private bool RunCurrent()
        {
            var owner = _owner;
            var token = owner._abort.Token;
            if (Current.Cancellation is { } cancellation)
            {
                // The queue no longer needs the caller's registration; the work gets both tokens.
                cancellation.Registration.Dispose();
                _linked = CancellationTokenSource.CreateLinkedTokenSource(cancellation.Token, token);
                token = _linked.Token;
            }

            owner.RecordStart(in Current);
            if (owner._rateLimiter is { } limiter)
            {
                RateLimitLease lease;
                try
                {
                    lease = limiter.AttemptAcquire(1);
                }
                catch (Exception exception)
                {
                    EndBeforeStart(exception);
                    return true;
                }

                if (!lease.IsAcquired)
                {
                    lease.Dispose();
                    return AcquirePermit(limiter, token);
                }

                _lease = lease;
            }

            return Invoke(token);
        }

        private bool Invoke(CancellationToken token)
        {
            if (_owner._abort.IsCancellationRequested)
            {
                // The drain was cut short before this item's work started: it is dropped, not run.
                EndBeforeStart(new OperationCanceledException(_owner._abort.Token));
                return true;
            }

            _token = token;
            if (Current.Context is { } context)
            {
                ExecutionContext.Run(context, InvokeInContext, this);
            }
            else
            {
                InvokeCore();
            }

            return _finishedSynchronously;
        }

        private void InvokeCore()
        {
            ref var current = ref Current;
            if (current.Operations.Invoke(this, current.Work, current.Source, _token, out var pending))
            {
                _finishedSynchronously = true;
                return;
            }

            _finishedSynchronously = false;
            _pending = pending;
            pending!.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(_onWorkCompleted);
        }

        private void OnWorkCompleted()
        {
            var pending = _pending!;
            _pending = null;
            Current.Operations.Complete(this, Current.Source, pending);
            Continue();
        }

        private bool AcquirePermit(RateLimiter limiter, CancellationToken token)
        {
            Task<RateLimitLease> permit;
            try
            {
                permit = RateLimiterPacing.AcquirePacedAsync(limiter, _owner._context.TimeProvider, token).AsTask();
            }
            catch (Exception exception)
            {
                EndBeforeStart(exception);
                return true;
            }

            if (permit.IsCompleted)
            {
                return OnPermit(permit, token);
            }

            _permit = permit;
            _token = token;
            permit.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(_onPermitCompleted);
            return false;
        }

        private void OnPermitCompleted()
        {
            var permit = _permit!;
            _permit = null;
            if (OnPermit(permit, _token))
            {
                Continue();
            }
        }

        // Runs the work once the permit arrived; true when the item has already finished.
        private bool OnPermit(Task<RateLimitLease> permit, CancellationToken token)
        {
            RateLimitLease lease;
            try
            {
#pragma warning disable VSTHRD002 // The task has completed: this reads its outcome and never blocks.
                lease = permit.GetAwaiter().GetResult();
#pragma warning restore VSTHRD002
            }
            catch (Exception exception)
            {
                EndBeforeStart(exception);
                return true;
            }

            if (!lease.IsAcquired)
            {
                TimeSpan? retryAfter = lease.TryGetMetadata(MetadataName.RetryAfter, out var after) ? after : null;
                lease.Dispose();
                EndBeforeStart(new RateLimitRejectedException(retryAfter));
                return true;
            }

            _lease = lease;
            return Invoke(token);
        }

        // After an asynchronous end. On a thread-pool thread the runner goes on here, as an await loop would; on any
        // other thread (one that completed the work's task, maybe a UI or dedicated thread) it moves to the pool.
        private void Continue()
        {
            if (Thread.CurrentThread.IsThreadPoolThread)
            {
                RunFollowing();
            }
            else if (_owner.TryTakeNext(this))
            {
                ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
            }
        }

        // The current item has finished: run the next ones while they finish synchronously, up to BatchLimit items,
        // then requeue to stay fair to other thread-pool work.
        private void RunFollowing()
        {
            for (var budget = BatchLimit; _owner.TryTakeNext(this);)
            {
                if (--budget == 0)
                {
                    ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
                    return;
                }

                if (!RunCurrent())
                {
                    return;
                }
            }
        }

        // The item ends without its work having run: cancelled while waiting for a permit, dropped, or refused a permit.
        private void EndBeforeStart(Exception exception)
        {
            ReleaseResources();
            var owner = _owner;
            ref var current = ref Current;
            if (exception is OperationCanceledException canceled)
            {
                Interlocked.Increment(ref owner._abort.IsCancellationRequested ? ref owner._dropped : ref owner._canceled);
                current.Operations.SetCanceled(current.Source, canceled.CancellationToken);
            }
            else
            {
                owner.CountEnd(exception);
                current.Operations.SetException(current.Source, exception);
            }
        }

        private void ReleaseResources()
        {
            _lease?.Dispose();
            _lease = null;
            _linked?.Dispose();
            _linked = null;
            _token = default;
        }
    }
}
