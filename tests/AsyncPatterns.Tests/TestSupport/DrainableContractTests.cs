namespace AsyncPatterns.Tests.TestSupport;

/// <summary>
/// One component under the <see cref="IDrainable"/> contract test, driven through what every such component has:
/// a way to submit one item, and the accounting afterwards.
/// </summary>
public abstract class DrainableHarness : IAsyncDisposable
{
    /// <summary>The component under test.</summary>
    public abstract IDrainable Component { get; }

    /// <summary>Submits one item; completes when the component has accepted it (not when it is handled).</summary>
    public abstract Task SubmitAsync(int item);

    /// <summary>Items the component accepted.</summary>
    public abstract long Accepted { get; }

    /// <summary>Items handled successfully.</summary>
    public abstract long Handled { get; }

    /// <summary>Items whose work failed (including work that ended in cancellation).</summary>
    public abstract long Failed { get; }

    /// <summary>Items dropped or abandoned (reported to OnDropped, or their task cancelled before starting).</summary>
    public abstract long Dropped { get; }

    /// <summary>A task that completes when every accepted item has reached its end.</summary>
    public abstract Task Completion { get; }

    /// <inheritdoc />
    public abstract ValueTask DisposeAsync();
}

/// <summary>
/// The behaviour every <see cref="IDrainable"/> shares. Each implementation's tests inherit this class and say how
/// to build the component around a piece of work.
/// </summary>
public abstract class DrainableContractTests
{
    /// <summary>
    /// Builds the component so that each item runs <paramref name="work"/> with the token the component passes it,
    /// one item at a time (at most one in flight), and so that at least 100 items can wait without blocking a submit.
    /// </summary>
    protected abstract DrainableHarness Create(Func<int, CancellationToken, Task> work);

    [Fact]
    public async Task Drain_finishes_every_accepted_item_before_it_completes()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var handled = new List<int>();
        await using var harness = Create(async (item, _) =>
        {
            await gate.Task;
            lock (handled)
            {
                handled.Add(item);
            }
        });
        for (var i = 0; i < 10; i++)
        {
            await harness.SubmitAsync(i).WithTimeout();
        }

        var drain = harness.Component.DrainAsync();
        await AsyncAssert.StillPendingAsync(drain, "the drain must wait for accepted work");

        gate.SetResult();
        await drain.WithTimeout();

        handled.Should().BeEquivalentTo(Enumerable.Range(0, 10));
        harness.Accepted.Should().Be(10);
        harness.Handled.Should().Be(10);
        harness.Failed.Should().Be(0);
        harness.Dropped.Should().Be(0);
        await harness.Completion.WithTimeout();
    }

    [Fact]
    public async Task Submitting_after_drain_throws_InvalidOperationException()
    {
        await using var harness = Create((_, _) => Task.CompletedTask);
        await harness.Component.DrainAsync().WithTimeout();

        var submit = () => harness.SubmitAsync(1);

        await submit.Should().ThrowAsync<InvalidOperationException>();
        harness.Accepted.Should().Be(0);
    }

    [Fact]
    public async Task Drain_is_idempotent_and_concurrent_calls_all_complete()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = Create((_, _) => gate.Task);
        await harness.SubmitAsync(1).WithTimeout();

        var first = harness.Component.DrainAsync();
        var second = harness.Component.DrainAsync();
        gate.SetResult();

        await Task.WhenAll(first, second).WithTimeout();
        await harness.Component.DrainAsync().WithTimeout();
        harness.Handled.Should().Be(1);
    }

    [Fact]
    public async Task Drain_cut_short_cancels_in_flight_work_and_drops_what_never_started()
    {
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var sawCancellation = 0;
        await using var harness = Create(async (_, token) =>
        {
            started.TrySetResult();
            try
            {
                await Task.Delay(Timeout.Infinite, token);
            }
            catch (OperationCanceledException)
            {
                Interlocked.Increment(ref sawCancellation);
                throw;
            }
        });
        for (var i = 0; i < 5; i++)
        {
            await harness.SubmitAsync(i).WithTimeout();
        }

        await started.Task.WithTimeout();
        using var cts = new CancellationTokenSource();
        var drain = harness.Component.DrainAsync(cts.Token);
        await AsyncAssert.StillPendingAsync(drain, "in-flight work blocks the drain until its token fires");

        await cts.CancelAsync();
        await FluentActions.Awaiting(() => drain.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await harness.Completion.WithTimeout();

        Volatile.Read(ref sawCancellation).Should().Be(1, "the one in-flight item sees the drain's cancellation");
        harness.Accepted.Should().Be(5);
        harness.Dropped.Should().BeGreaterThanOrEqualTo(4, "items that never started are dropped, not lost");
        (harness.Handled + harness.Failed + harness.Dropped).Should().Be(harness.Accepted);
    }

    [Fact]
    public async Task Drain_cut_short_returns_even_if_the_work_ignores_cancellation()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = Create(async (_, _) =>
        {
            started.TrySetResult();
            await release.Task; // ignores its token on purpose
        });
        await harness.SubmitAsync(1).WithTimeout();
        await started.Task.WithTimeout();

        using var cts = new CancellationTokenSource();
        var drain = harness.Component.DrainAsync(cts.Token);
        await cts.CancelAsync();

        await FluentActions.Awaiting(() => drain.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        harness.Completion.IsCompleted.Should().BeFalse("the hung item is still in flight");

        release.SetResult();
        await harness.Completion.WithTimeout();
        (harness.Handled + harness.Failed + harness.Dropped).Should().Be(harness.Accepted);
    }

    [Fact]
    public async Task DisposeAsync_drains_accepted_work()
    {
        var handled = 0;
        var harness = Create(async (_, _) =>
        {
            await Task.Yield();
            Interlocked.Increment(ref handled);
        });
        for (var i = 0; i < 20; i++)
        {
            await harness.SubmitAsync(i).WithTimeout();
        }

        await harness.DisposeAsync().AsTask().WithTimeout();

        Volatile.Read(ref handled).Should().Be(20);
        harness.Handled.Should().Be(20);
        await FluentActions.Awaiting(() => harness.SubmitAsync(99)).Should().ThrowAsync<InvalidOperationException>();
    }
}
