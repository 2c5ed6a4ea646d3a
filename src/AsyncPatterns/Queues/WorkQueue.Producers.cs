using System.Runtime.CompilerServices;
using System.Threading.Channels;

namespace AsyncPatterns;

/// <content>
/// Producers that wait for room (<see cref="BoundedChannelFullMode.Wait"/>): one line, first in first out, as a bounded
/// channel serves its blocked writers.
/// </content>
/// <remarks>
/// <para>
/// Only one producer at a time waits on the channel: the <em>leader</em>. A producer that finds the queue full and no
/// leader becomes the leader itself and waits with its own token (<c>WaitToWriteAsync</c> + <c>TryWrite</c>, so the
/// token only ever abandons the wait: <c>BoundedChannel.WriteAsync(item, ct)</c> can report a cancellation after it
/// wrote the item on .NET 10, see dotnet/runtime#132230). Producers that arrive while there is a leader queue behind
/// it in <see cref="_producers"/>. When the leader is done and others are waiting, a pump takes over and admits them
/// one after another, in arrival order, each as soon as there is room.
/// </para>
/// <para>
/// So a freed slot wakes one waiter, not every waiting producer (the channel wakes all its <c>WaitToWriteAsync</c>
/// callers at once, which makes many waiting producers race for each slot), and a lone producer that waits now and
/// then (the usual case) allocates nothing: it is the leader, on a pooled state machine and the channel's reusable
/// waiter. While a line exists the hot path does not barge in: <see cref="EnqueueAsync"/> joins the line and
/// <see cref="TryEnqueue"/> returns <see langword="false"/>.
/// </para>
/// </remarks>
public sealed partial class WorkQueue<T>
{
    private readonly Lock _producersLock = new();

    // Producers waiting behind the leader, oldest first. Cancelled ones stay until they reach the head (or a compaction).
    private readonly Queue<ProducerWaiter> _producers = new();
    private int _deadProducers;

    // True while a leader or the pump is at work: new producers then join the line instead of writing directly.
    private volatile bool _lineActive;

    // Pooled: a producer that waits for room often (the point of backpressure) should not allocate each time.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask EnqueueSlowAsync(T item, CancellationToken cancellationToken)
    {
        if (IsClosed)
        {
            Guard.ThrowClosed(Kind, _context.Name);
        }

        ProducerWaiter? waiter = null;
        lock (_producersLock)
        {
            if (IsClosed)
            {
                Guard.ThrowClosed(Kind, _context.Name);
            }

            if (_lineActive)
            {
                waiter = new ProducerWaiter(this, item);
                _producers.Enqueue(waiter);
                Interlocked.Increment(ref _waitingProducers);
                Interlocked.Increment(ref _enqueueWaits);
            }
            else
            {
                _lineActive = true;
            }
        }

        if (waiter is not null)
        {
            // Admitted (the item is accepted), refused (closed) or cancelled: the waiter's task says which.
            waiter.RegisterCancellation(cancellationToken);
            await waiter.Task.ConfigureAwait(false);
            return;
        }

        await LeadAsync(item, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The leader: waits on the channel for room for its own item, then hands the line to the pump.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask LeadAsync(T item, CancellationToken cancellationToken)
    {
        var waited = false;
        try
        {
            while (true)
            {
                if (_writer.TryWrite(item))
                {
                    break;
                }

                var wait = _writer.WaitToWriteAsync(cancellationToken);
                if (!wait.IsCompleted && !waited)
                {
                    waited = true;
                    Interlocked.Increment(ref _enqueueWaits);
                    Interlocked.Increment(ref _waitingProducers);
                }

                if (!await wait.ConfigureAwait(false))
                {
                    Guard.ThrowClosed(Kind, _context.Name);
                }
            }
        }
        catch (ChannelClosedException)
        {
            Guard.ThrowClosed(Kind, _context.Name);
        }
        finally
        {
            if (waited)
            {
                Interlocked.Decrement(ref _waitingProducers);
            }

            HandOverLine();
        }

        RecordAccepted();
    }

    /// <summary>Ends the leader's turn: the pump serves whoever queued behind it, or the line closes.</summary>
    private void HandOverLine()
    {
        bool pump;
        lock (_producersLock)
        {
            pump = HasLiveProducerLocked();
            if (!pump)
            {
                _lineActive = false;
            }
        }

        if (pump)
        {
            // On the pool, without the leader's ExecutionContext: the leader's EnqueueAsync returns at once instead of
            // admitting the whole line first, and the pump does not keep the leader's AsyncLocals alive while it waits.
            ThreadPool.UnsafeQueueUserWorkItem(static queue => _ = queue.PumpAsync(), this, preferLocal: false);
        }
    }

    /// <summary>Admits the queued producers in order, each as soon as there is room; refuses them all once the queue closes.</summary>
    private async Task PumpAsync()
    {
        try
        {
            await PumpCoreAsync().ConfigureAwait(false);
        }
#pragma warning disable CA1031 // Nothing may escape a fire-and-forget pump: the line would be left active and unserved.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // Unexpected (a throwing MeterListener, say): fail everyone still in line rather than leave them hanging.
            RefuseLine(ex);
        }
    }

    private async Task PumpCoreAsync()
    {
        while (true)
        {
            ProducerWaiter head;
            lock (_producersLock)
            {
                if (!HasLiveProducerLocked())
                {
                    _lineActive = false;
                    return;
                }

                head = _producers.Peek();
                head.State = ProducerWaiter.Claimed;
            }

            if (_writer.TryWrite(head.Item))
            {
                lock (_producersLock)
                {
                    _producers.Dequeue();
                    head.State = ProducerWaiter.Done;
                }

                try
                {
                    RecordAccepted();
                }
                finally
                {
                    // The item is in the queue: its producer is released even if recording it threw.
                    head.Finish(null);
                }

                continue;
            }

            var canceled = false;
            lock (_producersLock)
            {
                if (head.CancelRequested)
                {
                    _producers.Dequeue();
                    head.State = ProducerWaiter.Done;
                    canceled = true;
                }
                else
                {
                    head.State = ProducerWaiter.Waiting;
                }
            }

            if (canceled)
            {
                head.Finish(new OperationCanceledException(head.CanceledToken));
                continue;
            }

            bool open;
            try
            {
                open = await _writer.WaitToWriteAsync().ConfigureAwait(false);
            }
            catch (ChannelClosedException)
            {
                open = false;
            }

            if (!open)
            {
                RefuseLine();
                return;
            }
        }
    }

    /// <summary>
    /// The queue closed: every producer still in line gets <see cref="InvalidOperationException"/> (or
    /// <paramref name="error"/>, when the pump itself failed).
    /// </summary>
    private void RefuseLine(Exception? error = null)
    {
        List<ProducerWaiter> refused = [];
        lock (_producersLock)
        {
            while (_producers.TryDequeue(out var waiter))
            {
                if (waiter.State != ProducerWaiter.Done)
                {
                    waiter.State = ProducerWaiter.Done;
                    refused.Add(waiter);
                }
            }

            _deadProducers = 0;
            _lineActive = false;
        }

        foreach (var waiter in refused)
        {
            waiter.Finish(error ?? Guard.ClosedException(Kind, _context.Name));
        }
    }

    /// <summary>Drops cancelled waiters from the head of the line; true if a live one remains.</summary>
    private bool HasLiveProducerLocked()
    {
        _producersLock.AssertHeld();
        while (_producers.TryPeek(out var head) && head.State == ProducerWaiter.Done)
        {
            _producers.Dequeue();
            _deadProducers--;
        }

        return _producers.Count != 0;
    }

    /// <summary>A waiting producer's token fired: it leaves the line at once, unless the pump is writing its item now.</summary>
    private void OnProducerCanceled(ProducerWaiter waiter, CancellationToken cancellationToken)
    {
        lock (_producersLock)
        {
            switch (waiter.State)
            {
                case ProducerWaiter.Waiting:
                    waiter.State = ProducerWaiter.Done;
                    if (++_deadProducers > 64 && _deadProducers > _producers.Count / 2)
                    {
                        CompactLineLocked();
                    }

                    break;
                case ProducerWaiter.Claimed:
                    // The pump is trying to write the item: if that succeeds the item is accepted; if not, the pump
                    // cancels the waiter.
                    waiter.CanceledToken = cancellationToken;
                    waiter.CancelRequested = true;
                    return;
                default:
                    return;
            }
        }

        waiter.Finish(new OperationCanceledException(cancellationToken));
    }

    /// <summary>Removes cancelled waiters from the whole line, so a long stall cannot accumulate them.</summary>
    private void CompactLineLocked()
    {
        _producersLock.AssertHeld();
        var count = _producers.Count;
        for (var i = 0; i < count; i++)
        {
            var waiter = _producers.Dequeue();
            if (waiter.State != ProducerWaiter.Done)
            {
                _producers.Enqueue(waiter);
            }
        }

        _deadProducers = 0;
    }

    /// <summary>A producer waiting in line behind the leader; its task completes when it is admitted, refused or cancelled.</summary>
    private sealed class ProducerWaiter(WorkQueue<T> owner, T item) : TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        public const int Waiting = 0;
        public const int Claimed = 1;
        public const int Done = 2;

        private const int RegistrationNone = 0;
        private const int RegistrationSet = 1;
        private const int RegistrationReleased = 2;

        private CancellationTokenRegistration _registration;
        private int _registrationState;

        public WorkQueue<T> Owner { get; } = owner;

        public T Item { get; } = item;

        /// <summary>Gets or sets the state; read and written under the owner's producers lock.</summary>
        public int State { get; set; }

        /// <summary>Gets or sets a value indicating whether the token fired while the pump held the waiter.</summary>
        public bool CancelRequested { get; set; }

        public CancellationToken CanceledToken { get; set; }

        public void RegisterCancellation(CancellationToken cancellationToken)
        {
            if (!cancellationToken.CanBeCanceled)
            {
                return;
            }

            _registration = cancellationToken.UnsafeRegister(
                static (state, token) =>
                {
                    var waiter = (ProducerWaiter)state!;
                    waiter.Owner.OnProducerCanceled(waiter, token);
                },
                this);

            // Whoever comes second (this thread, or the one that finished the waiter) disposes the registration.
            if (Interlocked.CompareExchange(ref _registrationState, RegistrationSet, RegistrationNone) == RegistrationReleased)
            {
                _registration.Dispose();
            }
        }

        /// <summary>Completes the waiter (outside the lock): admitted when <paramref name="error"/> is null.</summary>
        public void Finish(Exception? error)
        {
            Interlocked.Decrement(ref Owner._waitingProducers);
            if (Interlocked.Exchange(ref _registrationState, RegistrationReleased) == RegistrationSet)
            {
                _registration.Dispose();
            }

            if (error is null)
            {
                TrySetResult();
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
    }
}
