using System.Runtime.CompilerServices;

namespace AsyncPatterns;

/// <summary>
/// The typed half of a queued item: invokes its delegate and completes its task source. One shared instance per
/// result type, so a queued <see cref="PriorityWorkEntry"/> stays untyped and allocation-free.
/// </summary>
internal abstract class PriorityWorkOperations
{
    /// <summary>
    /// Runs the work. Returns <see langword="true"/> when it finished synchronously (the item is then completed
    /// through <paramref name="runner"/>); otherwise <paramref name="pending"/> is the task to wait for before
    /// calling <see cref="Complete"/>.
    /// </summary>
    public abstract bool Invoke(PriorityScheduler.Runner runner, Delegate work, object source, CancellationToken token, out Task? pending);

    /// <summary>Completes the item from the finished <paramref name="pending"/> task.</summary>
    public abstract void Complete(PriorityScheduler.Runner runner, object source, Task pending);

    /// <summary>Cancels the item's task.</summary>
    public abstract void SetCanceled(object source, CancellationToken token);

    /// <summary>Faults the item's task.</summary>
    public abstract void SetException(object source, Exception exception);

    /// <summary>Ends a failed work item: an <see cref="OperationCanceledException"/> cancels the task, as an async method would.</summary>
    protected void Fail(PriorityScheduler.Runner runner, object source, Exception exception)
    {
        runner.EndWork(exception);
        if (exception is OperationCanceledException canceled)
        {
            SetCanceled(source, canceled.CancellationToken);
        }
        else
        {
            SetException(source, exception);
        }
    }
}

/// <summary>Operations for <c>Func&lt;CancellationToken, ValueTask&lt;T&gt;&gt;</c> work completing a <see cref="TaskCompletionSource{T}"/>.</summary>
internal sealed class PriorityWorkOperations<T> : PriorityWorkOperations
{
    public static readonly PriorityWorkOperations<T> Instance = new();

    public override bool Invoke(PriorityScheduler.Runner runner, Delegate work, object source, CancellationToken token, out Task? pending)
    {
        pending = null;
        ValueTask<T> running;
        try
        {
            running = Unsafe.As<Func<CancellationToken, ValueTask<T>>>(work)(token);
        }
        catch (Exception exception)
        {
            Fail(runner, source, exception);
            return true;
        }

        if (running.IsCompletedSuccessfully)
        {
            var result = running.Result;
            runner.EndWork(null);
            Unsafe.As<TaskCompletionSource<T>>(source).TrySetResult(result);
            return true;
        }

        pending = running.AsTask();
        return false;
    }

    public override void Complete(PriorityScheduler.Runner runner, object source, Task pending)
    {
        T result;
        try
        {
#pragma warning disable VSTHRD002 // The task has completed: this reads its outcome and never blocks.
            result = Unsafe.As<Task<T>>(pending).GetAwaiter().GetResult();
#pragma warning restore VSTHRD002
        }
        catch (Exception exception)
        {
            Fail(runner, source, exception);
            return;
        }

        runner.EndWork(null);
        Unsafe.As<TaskCompletionSource<T>>(source).TrySetResult(result);
    }

    public override void SetCanceled(object source, CancellationToken token) =>
        Unsafe.As<TaskCompletionSource<T>>(source).TrySetCanceled(token);

    public override void SetException(object source, Exception exception) =>
        Unsafe.As<TaskCompletionSource<T>>(source).TrySetException(exception);
}

/// <summary>Operations for <c>Func&lt;CancellationToken, ValueTask&gt;</c> work completing a <see cref="TaskCompletionSource"/>.</summary>
internal sealed class PriorityWorkVoidOperations : PriorityWorkOperations
{
    public static readonly PriorityWorkVoidOperations Instance = new();

    public override bool Invoke(PriorityScheduler.Runner runner, Delegate work, object source, CancellationToken token, out Task? pending)
    {
        pending = null;
        ValueTask running;
        try
        {
            running = Unsafe.As<Func<CancellationToken, ValueTask>>(work)(token);
        }
        catch (Exception exception)
        {
            Fail(runner, source, exception);
            return true;
        }

        if (running.IsCompletedSuccessfully)
        {
            running.GetAwaiter().GetResult();
            runner.EndWork(null);
            Unsafe.As<TaskCompletionSource>(source).TrySetResult();
            return true;
        }

        pending = running.AsTask();
        return false;
    }

    public override void Complete(PriorityScheduler.Runner runner, object source, Task pending)
    {
        try
        {
#pragma warning disable VSTHRD002 // The task has completed: this reads its outcome and never blocks.
            pending.GetAwaiter().GetResult();
#pragma warning restore VSTHRD002
        }
        catch (Exception exception)
        {
            Fail(runner, source, exception);
            return;
        }

        runner.EndWork(null);
        Unsafe.As<TaskCompletionSource>(source).TrySetResult();
    }

    public override void SetCanceled(object source, CancellationToken token) =>
        Unsafe.As<TaskCompletionSource>(source).TrySetCanceled(token);

    public override void SetException(object source, Exception exception) =>
        Unsafe.As<TaskCompletionSource>(source).TrySetException(exception);
}

/// <summary>
/// Links a queued item to its caller's token; exists only when that token can be cancelled. Its
/// <see cref="State"/>, changed under the scheduler's lock, says who owns the item's end.
/// </summary>
internal sealed class PriorityWorkCancellation
{
    /// <summary>Registered, not yet queued.</summary>
    public const int Pending = 0;

    /// <summary>Waiting in the queue.</summary>
    public const int Queued = 1;

    /// <summary>Taken by a runner (or ended by eviction, rejection or a cut-short drain): cancellation no longer removes it.</summary>
    public const int Taken = 2;

    /// <summary>Cancelled by its token before it started.</summary>
    public const int Canceled = 3;

    public PriorityWorkCancellation(PriorityScheduler owner, object source, PriorityWorkOperations operations, int priority, CancellationToken token)
    {
        Owner = owner;
        Source = source;
        Operations = operations;
        Priority = priority;
        Token = token;
    }

    public PriorityScheduler Owner { get; }

    public object Source { get; }

    public PriorityWorkOperations Operations { get; }

    public int Priority { get; }

    public CancellationToken Token { get; }

    public CancellationTokenRegistration Registration { get; set; }

    public int State { get; set; }
}
