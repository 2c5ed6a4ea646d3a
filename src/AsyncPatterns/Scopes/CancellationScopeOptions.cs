namespace AsyncPatterns;

/// <summary>
/// Settings for a <see cref="CancellationScope"/>: its deadline, how many children may run at once, and the shared
/// name, clock and logger settings of <see cref="AsyncPatternsOptions"/>.
/// </summary>
/// <remarks>
/// The scope validates and copies these values when it is created; changing the options object afterwards has no
/// effect on a scope already built from it. Every deadline is measured on <see cref="AsyncPatternsOptions.TimeProvider"/>,
/// so tests can drive it with a fake clock.
/// </remarks>
public sealed class CancellationScopeOptions : AsyncPatternsOptions
{
    /// <summary>
    /// Gets or sets how long the scope may live, counted from its creation. When it passes, the scope's token is
    /// cancelled and <see cref="CancellationScope.TimedOut"/> becomes <see langword="true"/>.
    /// </summary>
    /// <value>
    /// The default is <see langword="null"/>: no deadline. Must be greater than <see cref="TimeSpan.Zero"/>;
    /// <see cref="System.Threading.Timeout.InfiniteTimeSpan"/> also means no deadline.
    /// </value>
    public TimeSpan? Timeout { get; set; }

    /// <summary>
    /// Gets or sets how many children may run at once (Go's <c>errgroup.SetLimit</c>). Children started beyond the
    /// limit wait, and start in the order <see cref="CancellationScope.Run(Func{CancellationToken, Task})"/> was
    /// called as running children finish. <see cref="CancellationScope.Run(Func{CancellationToken, Task})"/> itself
    /// never waits.
    /// </summary>
    /// <value>The default is <see cref="int.MaxValue"/>: no limit. Must be greater than 0.</value>
    public int MaxConcurrency { get; set; } = int.MaxValue;
}
