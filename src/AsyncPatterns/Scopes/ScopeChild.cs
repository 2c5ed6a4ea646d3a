namespace AsyncPatterns;

/// <summary>A child of a <see cref="CancellationScope"/>: a thread-pool work item that also is the child's task.</summary>
internal interface IScopeChild : IThreadPoolWorkItem
{
    /// <summary>Completes the child's task with the result of <paramref name="completed"/>, which succeeded.</summary>
    void TrySucceed(Task completed);

    /// <summary>Completes the child's task as cancelled.</summary>
    void TryCancel(CancellationToken token);

    /// <summary>Faults the child's task and marks the fault observed.</summary>
    void TryFail(IReadOnlyList<Exception> exceptions);

    /// <summary>Hands the child's outcome to the scope when <paramref name="task"/> completes.</summary>
    void AwaitCompletion(Task task);
}

/// <summary>A child without a result. Deriving from the task source saves an allocation per child.</summary>
internal sealed class ScopeChild : TaskCompletionSource, IScopeChild
{
    private readonly CancellationScope _scope;
    private readonly Func<CancellationToken, Task> _work;
    private readonly ExecutionContext? _executionContext;
    private Task? _userTask;

    public ScopeChild(CancellationScope scope, Func<CancellationToken, Task> work)
        : base(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        _scope = scope;
        _work = work;
        _executionContext = ExecutionContext.Capture();
    }

    public void Execute()
    {
        if (_executionContext is null)
        {
            _scope.StartChild(this, _work);
        }
        else
        {
            ExecutionContext.Run(_executionContext, static state => ((ScopeChild)state!).StartInContext(), this);
        }
    }

    public void TrySucceed(Task completed) => TrySetResult();

    public void TryCancel(CancellationToken token) => TrySetCanceled(token);

    public void TryFail(IReadOnlyList<Exception> exceptions)
    {
        TrySetException(exceptions);
        _ = Task.Exception; // observed: the scope owns the failure, nobody has to await this task
    }

    public void AwaitCompletion(Task task)
    {
        _userTask = task;
        task.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(OnUserTaskCompleted);
    }

    private void StartInContext() => _scope.StartChild(this, _work);

    private void OnUserTaskCompleted() => _scope.CompleteChild(this, _userTask, synchronousException: null);
}

/// <summary>A child with a result of type <typeparamref name="T"/>.</summary>
internal sealed class ScopeChild<T> : TaskCompletionSource<T>, IScopeChild
{
    private readonly CancellationScope _scope;
    private readonly Func<CancellationToken, Task> _work; // a Func<CancellationToken, Task<T>>, by variance
    private readonly ExecutionContext? _executionContext;
    private Task? _userTask;

    public ScopeChild(CancellationScope scope, Func<CancellationToken, Task<T>> work)
        : base(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        _scope = scope;
        _work = work;
        _executionContext = ExecutionContext.Capture();
    }

    public void Execute()
    {
        if (_executionContext is null)
        {
            _scope.StartChild(this, _work);
        }
        else
        {
            ExecutionContext.Run(_executionContext, static state => ((ScopeChild<T>)state!).StartInContext(), this);
        }
    }

#pragma warning disable VSTHRD002 // The task has completed successfully: reading its result does not block.
    public void TrySucceed(Task completed) => TrySetResult(((Task<T>)completed).Result);
#pragma warning restore VSTHRD002

    public void TryCancel(CancellationToken token) => TrySetCanceled(token);

    public void TryFail(IReadOnlyList<Exception> exceptions)
    {
        TrySetException(exceptions);
        _ = Task.Exception; // observed: the scope owns the failure, nobody has to await this task
    }

    public void AwaitCompletion(Task task)
    {
        _userTask = task;
        task.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(OnUserTaskCompleted);
    }

    private void StartInContext() => _scope.StartChild(this, _work);

    private void OnUserTaskCompleted() => _scope.CompleteChild(this, _userTask, synchronousException: null);
}
