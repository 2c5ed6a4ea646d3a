using Polly;

namespace AsyncPatterns;

/// <summary>
/// Thrown, or set on a work item's task, when a scheduler sheds the item: it was refused because the queue
/// was full of more urgent work, or evicted by a more urgent item. <see cref="Exception.Message"/> says which.
/// </summary>
/// <remarks>
/// Derives from Polly's <see cref="ExecutionRejectedException"/>, so one
/// <c>catch (ExecutionRejectedException)</c> handles this library's refusals and Polly's alike.
/// </remarks>
public sealed class WorkRejectedException : ExecutionRejectedException
{
    /// <summary>Initializes a new instance with a default message.</summary>
    public WorkRejectedException()
        : base("The work item was rejected by the scheduler.")
    {
    }

    /// <summary>Initializes a new instance with the given message.</summary>
    /// <param name="message">The message, which says why the item was shed.</param>
    public WorkRejectedException(string message)
        : base(message)
    {
    }

    /// <summary>Initializes a new instance with the given message and inner exception.</summary>
    /// <param name="message">The message.</param>
    /// <param name="innerException">The inner exception.</param>
    public WorkRejectedException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
