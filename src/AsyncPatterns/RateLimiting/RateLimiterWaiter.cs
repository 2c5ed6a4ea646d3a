using System.Diagnostics;
using System.Threading.RateLimiting;

namespace AsyncPatterns;

/// <summary>A limiter that queues <see cref="RateLimiterWaiter"/>s and must hear when one is cancelled.</summary>
internal interface IRateLimiterWaiterOwner
{
    /// <summary>Called from the waiter's cancellation callback; removes it from the queue if it is still there.</summary>
    void OnWaiterCanceled(RateLimiterWaiter waiter);
}

/// <summary>
/// One <c>AcquireAsync</c> call waiting in a limiter's queue: the task source the caller awaits and an intrusive
/// doubly-linked node, so that a cancelled waiter leaves the queue in O(1) the moment its token fires.
/// </summary>
/// <remarks>
/// Every field except the task is read and written under the owning limiter's lock. Whoever unlinks the node
/// (a grant, a cancellation, an eviction or a dispose) owns its completion, so each waiter completes exactly once.
/// </remarks>
internal sealed class RateLimiterWaiter : TaskCompletionSource<RateLimitLease>
{
    private static readonly Action<object?> CancelCallback = static state =>
    {
        var waiter = (RateLimiterWaiter)state!;
        waiter.Owner.OnWaiterCanceled(waiter);
    };

    public RateLimiterWaiter(IRateLimiterWaiterOwner owner, int permitCount, long arrival, CancellationToken cancellationToken)
        : base(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        Owner = owner;
        PermitCount = permitCount;
        Arrival = arrival;
        CancellationToken = cancellationToken;
    }

    public IRateLimiterWaiterOwner Owner { get; }

    public int PermitCount { get; }

    /// <summary>When the request arrived, in the owner's own time units.</summary>
    public long Arrival { get; }

    public CancellationToken CancellationToken { get; }

    public CancellationTokenRegistration Registration { get; private set; }

    /// <summary>The lease to complete with, when the limiter gives each waiter its own (set under the lock at grant time).</summary>
    public RateLimitLease? GrantedLease { get; set; }

    public RateLimiterWaiter? Previous { get; set; }

    public RateLimiterWaiter? Next { get; set; }

    public bool IsQueued { get; set; }

    /// <summary>True while <see cref="RegisterLocked"/> runs, when the callback may run inline on this thread.</summary>
    public bool IsRegistering { get; private set; }

    /// <summary>Set when the token fired during registration, before the waiter was queued.</summary>
    public bool CanceledWhileRegistering { get; set; }

    /// <summary>
    /// Unregisters from the token. Call outside the owner's lock: it waits for a cancellation callback that is
    /// running, and that callback takes the lock.
    /// </summary>
    public void DisposeRegistration() => Registration.Dispose();

    /// <summary>
    /// Registers for cancellation before the waiter is queued. Returns false when the token fired meanwhile (the
    /// callback ran inline and found nothing to remove); the caller then completes the waiter as cancelled.
    /// </summary>
    public bool RegisterLocked()
    {
        if (!CancellationToken.CanBeCanceled)
        {
            return true;
        }

        IsRegistering = true;
        Registration = CancellationToken.UnsafeRegister(CancelCallback, this);
        IsRegistering = false;
        return !CanceledWhileRegistering;
    }
}

/// <summary>
/// An intrusive doubly-linked deque of <see cref="RateLimiterWaiter"/>s with the count of permits they ask for.
/// Not thread-safe: the owning limiter guards it with its lock.
/// </summary>
internal sealed class RateLimiterWaiterQueue
{
    private RateLimiterWaiter? _head;
    private RateLimiterWaiter? _tail;

    /// <summary>The number of waiters queued.</summary>
    public int Count { get; private set; }

    /// <summary>The permits the queued waiters ask for; what <c>QueueLimit</c> bounds.</summary>
    public int PermitCount { get; private set; }

    /// <summary>The oldest waiter.</summary>
    public RateLimiterWaiter? Head => _head;

    /// <summary>The waiter served next: the oldest for OldestFirst, the newest for NewestFirst.</summary>
    public RateLimiterWaiter? PeekNext(QueueProcessingOrder order) => order == QueueProcessingOrder.OldestFirst ? _head : _tail;

    public void EnqueueTail(RateLimiterWaiter waiter)
    {
        Debug.Assert(!waiter.IsQueued);
        waiter.Previous = _tail;
        waiter.Next = null;
        if (_tail is null)
        {
            _head = waiter;
        }
        else
        {
            _tail.Next = waiter;
        }

        _tail = waiter;
        waiter.IsQueued = true;
        Count++;
        PermitCount += waiter.PermitCount;
    }

    /// <summary>
    /// A waiter's token fired (the owner's lock held): removes it and returns true if it still waits. Otherwise it was
    /// already granted, evicted or failed by Dispose, or the token fired while it was registering, which is noted so
    /// that the registering call returns a cancelled task.
    /// </summary>
    public bool TryRemoveCanceled(RateLimiterWaiter waiter)
    {
        if (!waiter.IsQueued)
        {
            if (waiter.IsRegistering)
            {
                waiter.CanceledWhileRegistering = true;
            }

            return false;
        }

        Remove(waiter);
        return true;
    }

    public void Remove(RateLimiterWaiter waiter)
    {
        Debug.Assert(waiter.IsQueued);
        if (waiter.Previous is null)
        {
            _head = waiter.Next;
        }
        else
        {
            waiter.Previous.Next = waiter.Next;
        }

        if (waiter.Next is null)
        {
            _tail = waiter.Previous;
        }
        else
        {
            waiter.Next.Previous = waiter.Previous;
        }

        waiter.Previous = null;
        waiter.Next = null;
        waiter.IsQueued = false;
        Count--;
        PermitCount -= waiter.PermitCount;
    }

    /// <summary>
    /// Makes room for <paramref name="permitCount"/> queued permits within <paramref name="queueLimit"/>, as the BCL
    /// limiters do: with <see cref="QueueProcessingOrder.NewestFirst"/> the oldest waiters are unlinked into
    /// <paramref name="evicted"/> (to be failed after the lock is released). Returns false when the request must be
    /// refused instead.
    /// </summary>
    public bool TryMakeRoom(int permitCount, int queueLimit, QueueProcessingOrder order, ref RateLimiterWaiterBatch evicted)
    {
        if (queueLimit - PermitCount >= permitCount)
        {
            return true;
        }

        if (order != QueueProcessingOrder.NewestFirst || permitCount > queueLimit)
        {
            return false;
        }

        do
        {
            var oldest = Head!;
            Remove(oldest);
            evicted.Add(oldest);
        }
        while (queueLimit - PermitCount < permitCount);
        return true;
    }

    /// <summary>Unlinks every waiter in processing order, for Dispose.</summary>
    public List<RateLimiterWaiter> RemoveAll(QueueProcessingOrder order)
    {
        var all = new List<RateLimiterWaiter>(Count);
        while (PeekNext(order) is { } next)
        {
            Remove(next);
            all.Add(next);
        }

        return all;
    }
}

/// <summary>
/// Waiters unlinked under a lock, to be completed after it is released. Allocation-free for a single waiter.
/// </summary>
internal struct RateLimiterWaiterBatch
{
    private RateLimiterWaiter? _first;
    private List<RateLimiterWaiter>? _more;

    public readonly bool IsEmpty => _first is null;

    public readonly int Count => _first is null ? 0 : 1 + (_more?.Count ?? 0);

    public void Add(RateLimiterWaiter waiter)
    {
        if (_first is null)
        {
            _first = waiter;
        }
        else
        {
            (_more ??= []).Add(waiter);
        }
    }

    /// <summary>
    /// Completes every waiter with <paramref name="lease"/> (or, when null, its own <see cref="RateLimiterWaiter.GrantedLease"/>)
    /// and returns the permits they asked for.
    /// </summary>
    public readonly long CompleteAll(RateLimitLease? lease)
    {
        if (_first is null)
        {
            return 0;
        }

        long permits = Complete(_first, lease);
        if (_more is not null)
        {
            foreach (var waiter in _more)
            {
                permits += Complete(waiter, lease);
            }
        }

        return permits;
    }

    private static long Complete(RateLimiterWaiter waiter, RateLimitLease? lease)
    {
        waiter.TrySetResult(lease ?? waiter.GrantedLease!);

        // Outside the lock: Dispose waits for a cancellation callback that is running, and that callback takes the lock.
        waiter.DisposeRegistration();
        return waiter.PermitCount;
    }
}
