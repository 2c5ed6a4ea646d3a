namespace AsyncPatterns;

/// <summary>
/// A component that accepts work and can be stopped without losing any of it.
/// </summary>
/// <remarks>
/// <para>
/// Every primitive in this library that accepts work (the work queue, the batchers and the
/// priority scheduler) implements this interface, so a graceful shutdown can drain them all in order.
/// </para>
/// <para>
/// Implementations are thread-safe; calling <see cref="DrainAsync"/> more than once, or concurrently,
/// is allowed and every call completes when the one drain has finished.
/// </para>
/// </remarks>
public interface IDrainable
{
    /// <summary>
    /// Stops accepting work, finishes what was accepted, then returns.
    /// </summary>
    /// <param name="cancellationToken">
    /// Cuts the drain short: in-flight work is cancelled and work that was accepted but never started is
    /// reported through the component's <c>OnDropped</c> callback (and its statistics), never lost silently.
    /// </param>
    /// <returns>A task that completes when every accepted item is handled, failed or dropped.</returns>
    Task DrainAsync(CancellationToken cancellationToken = default);
}
