using System.Threading.RateLimiting;
using Polly.Timeout;

namespace AsyncPatterns;

/// <summary>
/// Runs work under any <see cref="RateLimiter"/>: acquire, run, release, and a refusal as an exception.
/// </summary>
/// <remarks>Thread-safety: the methods are as thread-safe as the limiter; every limiter in this library is.</remarks>
public static class RateLimiterExtensions
{
    /// <summary>
    /// Acquires <paramref name="permits"/> from <paramref name="limiter"/> (waiting in its queue, if it has one), runs
    /// <paramref name="action"/>, then disposes the lease, whatever the outcome.
    /// </summary>
    /// <typeparam name="T">The action's result type.</typeparam>
    /// <param name="limiter">The limiter to acquire from.</param>
    /// <param name="action">The work; receives <paramref name="cancellationToken"/>.</param>
    /// <param name="permits">The permits to acquire; the default is 1.</param>
    /// <param name="cancellationToken">Cancels the wait for permits, and is passed to <paramref name="action"/>.</param>
    /// <returns>The action's result.</returns>
    /// <remarks>
    /// <para>
    /// Completes synchronously, without allocating, when the permits are granted at once and the action completes
    /// synchronously.
    /// </para>
    /// <para>
    /// With an <see cref="AdaptiveConcurrencyLease"/> the outcome is reported for the caller: a
    /// <see cref="TimeoutException"/>, Polly's <see cref="TimeoutRejectedException"/> or an
    /// <see cref="OperationCanceledException"/> caused by a <see cref="TimeoutException"/> (as <c>HttpClient</c>
    /// throws) is a drop; any other exception is ignored (no latency sample); a result is a success.
    /// </para>
    /// </remarks>
    /// <exception cref="ArgumentNullException"><paramref name="limiter"/> or <paramref name="action"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="permits"/> is negative or more than the limiter can ever grant.</exception>
    /// <exception cref="RateLimitRejectedException">The limiter refused the permits; <see cref="RateLimitRejectedException.RetryAfter"/> is the lease's <see cref="MetadataName.RetryAfter"/>, when it has one.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled while waiting.</exception>
    /// <exception cref="ObjectDisposedException">The limiter was disposed.</exception>
    public static ValueTask<T> RunAsync<T>(this RateLimiter limiter, Func<CancellationToken, ValueTask<T>> action, int permits = 1, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(limiter);
        ArgumentNullException.ThrowIfNull(action);

        var acquire = limiter.AcquireAsync(permits, cancellationToken);
        if (!acquire.IsCompletedSuccessfully)
        {
            return AcquireThenRunAsync(acquire, action, cancellationToken);
        }

#pragma warning disable VSTHRD103 // The ValueTask completed successfully: reading its result does not block.
        var lease = acquire.Result;
#pragma warning restore VSTHRD103
        if (!lease.IsAcquired)
        {
            return ValueTask.FromException<T>(Rejected(lease));
        }

        ValueTask<T> run;
        try
        {
            run = action(cancellationToken);
        }
        catch (Exception ex)
        {
            Release(lease, ex);
            return ValueTask.FromException<T>(ex);
        }

        if (run.IsCompletedSuccessfully)
        {
#pragma warning disable VSTHRD103 // Completed successfully: does not block.
            var result = run.Result;
#pragma warning restore VSTHRD103
            lease.Dispose();
            return new ValueTask<T>(result);
        }

        return AwaitThenReleaseAsync(run, lease);
    }

    /// <summary>
    /// Acquires <paramref name="permits"/> from <paramref name="limiter"/> (waiting in its queue, if it has one), runs
    /// <paramref name="action"/>, then disposes the lease, whatever the outcome.
    /// </summary>
    /// <param name="limiter">The limiter to acquire from.</param>
    /// <param name="action">The work; receives <paramref name="cancellationToken"/>.</param>
    /// <param name="permits">The permits to acquire; the default is 1.</param>
    /// <param name="cancellationToken">Cancels the wait for permits, and is passed to <paramref name="action"/>.</param>
    /// <returns>A task that completes when the action has.</returns>
    /// <remarks>The same as <see cref="RunAsync{T}"/>, for work without a result.</remarks>
    /// <exception cref="ArgumentNullException"><paramref name="limiter"/> or <paramref name="action"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="permits"/> is negative or more than the limiter can ever grant.</exception>
    /// <exception cref="RateLimitRejectedException">The limiter refused the permits; <see cref="RateLimitRejectedException.RetryAfter"/> is the lease's <see cref="MetadataName.RetryAfter"/>, when it has one.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled while waiting.</exception>
    /// <exception cref="ObjectDisposedException">The limiter was disposed.</exception>
    public static ValueTask RunAsync(this RateLimiter limiter, Func<CancellationToken, ValueTask> action, int permits = 1, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(limiter);
        ArgumentNullException.ThrowIfNull(action);

        var acquire = limiter.AcquireAsync(permits, cancellationToken);
        if (!acquire.IsCompletedSuccessfully)
        {
            return AcquireThenRunAsync(acquire, action, cancellationToken);
        }

#pragma warning disable VSTHRD103 // The ValueTask completed successfully: reading its result does not block.
        var lease = acquire.Result;
#pragma warning restore VSTHRD103
        if (!lease.IsAcquired)
        {
            return ValueTask.FromException(Rejected(lease));
        }

        ValueTask run;
        try
        {
            run = action(cancellationToken);
        }
        catch (Exception ex)
        {
            Release(lease, ex);
            return ValueTask.FromException(ex);
        }

        if (run.IsCompletedSuccessfully)
        {
#pragma warning disable CA1849 // Completed successfully: does not block; GetResult lets a pooled source be reused.
            run.GetAwaiter().GetResult();
#pragma warning restore CA1849
            lease.Dispose();
            return default;
        }

        return AwaitThenReleaseAsync(run, lease);
    }

    private static async ValueTask<T> AcquireThenRunAsync<T>(ValueTask<RateLimitLease> acquire, Func<CancellationToken, ValueTask<T>> action, CancellationToken cancellationToken)
    {
        var lease = await acquire.ConfigureAwait(false);
        if (!lease.IsAcquired)
        {
            throw Rejected(lease);
        }

        return await AwaitThenReleaseAsync(RunGuardedAsync(action, cancellationToken), lease).ConfigureAwait(false);
    }

    private static async ValueTask AcquireThenRunAsync(ValueTask<RateLimitLease> acquire, Func<CancellationToken, ValueTask> action, CancellationToken cancellationToken)
    {
        var lease = await acquire.ConfigureAwait(false);
        if (!lease.IsAcquired)
        {
            throw Rejected(lease);
        }

        await AwaitThenReleaseAsync(RunGuardedAsync(action, cancellationToken), lease).ConfigureAwait(false);
    }

    private static ValueTask<T> RunGuardedAsync<T>(Func<CancellationToken, ValueTask<T>> action, CancellationToken cancellationToken)
    {
        try
        {
            return action(cancellationToken);
        }
        catch (Exception ex)
        {
            return ValueTask.FromException<T>(ex);
        }
    }

    private static ValueTask RunGuardedAsync(Func<CancellationToken, ValueTask> action, CancellationToken cancellationToken)
    {
        try
        {
            return action(cancellationToken);
        }
        catch (Exception ex)
        {
            return ValueTask.FromException(ex);
        }
    }

    private static async ValueTask<T> AwaitThenReleaseAsync<T>(ValueTask<T> run, RateLimitLease lease)
    {
        T result;
        try
        {
            result = await run.ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            Release(lease, ex);
            throw;
        }

        lease.Dispose();
        return result;
    }

    private static async ValueTask AwaitThenReleaseAsync(ValueTask run, RateLimitLease lease)
    {
        try
        {
            await run.ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            Release(lease, ex);
            throw;
        }

        lease.Dispose();
    }

    /// <summary>Disposes a lease after the action failed, telling an adaptive limiter whether it was a drop.</summary>
    private static void Release(RateLimitLease lease, Exception exception)
    {
        if (lease is AdaptiveConcurrencyLease adaptive)
        {
            if (exception is TimeoutException or TimeoutRejectedException or OperationCanceledException { InnerException: TimeoutException })
            {
                adaptive.ReportDropped();
            }
            else
            {
                adaptive.ReportIgnored();
            }
        }

        lease.Dispose();
    }

    private static RateLimitRejectedException Rejected(RateLimitLease lease)
    {
        TimeSpan? retryAfter = lease.TryGetMetadata(MetadataName.RetryAfter, out var value) ? value : null;
        lease.Dispose();
        return new RateLimitRejectedException(retryAfter);
    }
}
