using System.Diagnostics;

namespace AsyncPatterns.Tests.TestSupport;

/// <summary>
/// Waiting helpers with a hard real-time bound, so a bug that hangs fails its test instead of blocking CI.
/// </summary>
public static class AsyncAssert
{
    /// <summary>The bound used when a test gives none: generous, because CI machines are slow and shared.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);

    /// <summary>Waits for <paramref name="task"/> and fails the test if it takes longer than the bound.</summary>
    public static async Task WithTimeout(this Task task, TimeSpan? timeout = null)
    {
        try
        {
            await task.WaitAsync(timeout ?? DefaultTimeout);
        }
        catch (TimeoutException) when (!task.IsCompleted)
        {
            throw new Xunit.Sdk.XunitException($"The operation did not complete within {timeout ?? DefaultTimeout} (a hang?).");
        }
    }

    /// <summary>Waits for <paramref name="task"/> and its result, failing the test past the bound.</summary>
    public static async Task<T> WithTimeout<T>(this Task<T> task, TimeSpan? timeout = null)
    {
        await ((Task)task).WithTimeout(timeout);
        return await task;
    }

    /// <summary>Waits for a <see cref="ValueTask"/>, failing the test past the bound.</summary>
    public static Task WithTimeout(this ValueTask task, TimeSpan? timeout = null) => task.AsTask().WithTimeout(timeout);

    /// <summary>Waits for a <see cref="ValueTask{T}"/>, failing the test past the bound.</summary>
    public static Task<T> WithTimeout<T>(this ValueTask<T> task, TimeSpan? timeout = null) => task.AsTask().WithTimeout(timeout);

    /// <summary>
    /// Polls <paramref name="condition"/> until it holds, failing the test with <paramref name="because"/> past
    /// the bound. For effects that happen on the thread pool after a fake-clock advance; never for timing.
    /// </summary>
    public static async Task EventuallyAsync(Func<bool> condition, string because = "", TimeSpan? timeout = null)
    {
        var limit = timeout ?? DefaultTimeout;
        var clock = Stopwatch.StartNew();
        var spins = 0;
        while (!condition())
        {
            if (clock.Elapsed > limit)
            {
                throw new Xunit.Sdk.XunitException($"The condition did not hold within {limit}. {because}");
            }

            // Yield first (cheap, usually enough), then back off to short sleeps.
            if (++spins < 50)
            {
                await Task.Yield();
            }
            else
            {
                await Task.Delay(1);
            }
        }
    }

    /// <summary>
    /// Asserts that <paramref name="task"/> is still pending after letting the thread pool run for a moment.
    /// Use to prove something waits (backpressure); it can only fail, never flake, when the code is right.
    /// </summary>
    public static async Task StillPendingAsync(Task task, string because = "")
    {
        for (var i = 0; i < 20; i++)
        {
            await Task.Yield();
        }

        await Task.Delay(20);
        task.IsCompleted.Should().BeFalse(because);
    }
}
