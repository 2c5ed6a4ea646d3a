using Polly;

namespace AsyncPatterns;

/// <summary>
/// Thrown when a rate limiter refuses a permit, for example by
/// <c>RateLimiterExtensions.RunAsync</c>.
/// </summary>
/// <remarks>
/// Derives from Polly's <see cref="ExecutionRejectedException"/>, so one
/// <c>catch (ExecutionRejectedException)</c> handles this library's refusals and Polly's alike.
/// </remarks>
public sealed class RateLimitRejectedException : ExecutionRejectedException
{
    /// <summary>Initializes a new instance with a default message.</summary>
    public RateLimitRejectedException()
        : this(retryAfter: null)
    {
    }

    /// <summary>Initializes a new instance with the given message.</summary>
    /// <param name="message">The message.</param>
    public RateLimitRejectedException(string message)
        : base(message)
    {
    }

    /// <summary>Initializes a new instance with the given message and inner exception.</summary>
    /// <param name="message">The message.</param>
    /// <param name="innerException">The inner exception.</param>
    public RateLimitRejectedException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Initializes a new instance that says when a permit may be available.</summary>
    /// <param name="retryAfter">How long to wait before trying again, when the limiter knows.</param>
    public RateLimitRejectedException(TimeSpan? retryAfter)
        : base(retryAfter is { } r
            ? $"The rate limiter refused the permit; retry after {r}."
            : "The rate limiter refused the permit.")
    {
        RetryAfter = retryAfter;
    }

    /// <summary>Initializes a new instance with a message and the time after which to retry.</summary>
    /// <param name="message">The message.</param>
    /// <param name="retryAfter">How long to wait before trying again, when the limiter knows.</param>
    public RateLimitRejectedException(string message, TimeSpan? retryAfter)
        : base(message)
    {
        RetryAfter = retryAfter;
    }

    /// <summary>Initializes a new instance with a message, the time after which to retry, and an inner exception.</summary>
    /// <param name="message">The message.</param>
    /// <param name="retryAfter">How long to wait before trying again, when the limiter knows.</param>
    /// <param name="innerException">The inner exception.</param>
    /// <remarks>The same set of constructors as Polly's <c>RateLimiterRejectedException</c>.</remarks>
    public RateLimitRejectedException(string message, TimeSpan? retryAfter, Exception innerException)
        : base(message, innerException)
    {
        RetryAfter = retryAfter;
    }

    /// <summary>Gets how long to wait before a permit may be granted, when the limiter said so.</summary>
    public TimeSpan? RetryAfter { get; }
}
