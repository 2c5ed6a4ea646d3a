namespace AsyncPatterns;

/// <content>The waiting add.</content>
internal abstract partial class BatchEngine<T>
{
    /// <summary>
    /// An add that found the batcher full and waits, in arrival order, for a finished batch to release capacity.
    /// </summary>
    /// <remarks>
    /// The engine marks a waiter completed under its lock (admitted, refused or cancelled: whichever comes first wins)
    /// and signals it after releasing the lock. Without a caller's completion (<c>Batcher&lt;T&gt;</c>) the waiter is
    /// itself the task <c>AddAsync</c> returns; with one, the caller's result task carries a refusal instead.
    /// </remarks>
    internal sealed class CapacityWaiter : TaskCompletionSource
    {
        private const int RegistrationNone = 0;
        private const int RegistrationSet = 1;
        private const int RegistrationReleased = 2;

        private readonly BatchEngine<T> _owner;
        private CancellationTokenRegistration _registration;
        private int _registrationState;
        private bool _completed;

        public CapacityWaiter(BatchEngine<T> owner, T item, object? completion, long weight)
            : base(TaskCreationOptions.RunContinuationsAsynchronously)
        {
            _owner = owner;
            Item = item;
            Completion = completion;
            Weight = weight;
        }

        public T Item { get; }

        public object? Completion { get; }

        public long Weight { get; }

        /// <summary>The next waiter in a chain of waiters to signal after the lock is released.</summary>
        public CapacityWaiter? Next { get; set; }

        /// <summary>Whether the waiter was admitted, refused or cancelled. Read and written under the engine's lock.</summary>
        public bool IsCompleted => _completed;

        /// <summary>Claims the waiter for one outcome; false if another outcome claimed it first. Under the engine's lock.</summary>
        public bool TryMarkCompleted()
        {
            _owner._lock.AssertHeld();
            if (_completed)
            {
                return false;
            }

            _completed = true;
            return true;
        }

        public void RegisterCancellation(CancellationToken cancellationToken)
        {
            if (!cancellationToken.CanBeCanceled)
            {
                return;
            }

            _registration = cancellationToken.UnsafeRegister(static (state, token) => ((CapacityWaiter)state!).Cancel(token), this);

            // Whoever comes second (this thread, or the one that completed the waiter) disposes the registration.
            if (Interlocked.CompareExchange(ref _registrationState, RegistrationSet, RegistrationNone) == RegistrationReleased)
            {
                _registration.Dispose();
            }
        }

        public void SetAccepted()
        {
            ReleaseRegistration();
            TrySetResult();
        }

        public void SetRefused(Exception error)
        {
            ReleaseRegistration();
            if (Completion is not null)
            {
                _owner.CompleteRefused(Completion, error);
            }
            else if (error is OperationCanceledException canceled)
            {
                TrySetCanceled(canceled.CancellationToken);
            }
            else
            {
                TrySetException(error);
            }
        }

        private void Cancel(CancellationToken cancellationToken)
        {
            lock (_owner._lock)
            {
                if (!TryMarkCompleted())
                {
                    return;
                }
            }

            // The waiter stays queued, marked completed; the next add or admission skips it.
            SetRefused(new OperationCanceledException(cancellationToken));
        }

        private void ReleaseRegistration()
        {
            if (Interlocked.Exchange(ref _registrationState, RegistrationReleased) == RegistrationSet)
            {
                _registration.Dispose();
            }
        }
    }
}
