namespace AsyncPatterns.Tests.RateLimiting;

/// <summary>
/// A clock whose timers fire <see cref="Lateness"/> after they are due, as an operating system's timer does
/// (about 1 ms late), over a <see cref="TestSupport.ManualTimeProvider"/> that reads the time.
/// </summary>
internal sealed class LateTimeProvider(TestSupport.ManualTimeProvider inner, TimeSpan lateness) : TimeProvider
{
    public TimeSpan Lateness { get; } = lateness;

    public override long TimestampFrequency => inner.TimestampFrequency;

    public override long GetTimestamp() => inner.GetTimestamp();

    public override DateTimeOffset GetUtcNow() => inner.GetUtcNow();

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period) =>
        new LateTimer(inner.CreateTimer(callback, state, Late(dueTime), period), this);

    private TimeSpan Late(TimeSpan dueTime) => dueTime == Timeout.InfiniteTimeSpan ? dueTime : dueTime + Lateness;

    private sealed class LateTimer(ITimer timer, LateTimeProvider owner) : ITimer
    {
        public bool Change(TimeSpan dueTime, TimeSpan period) => timer.Change(owner.Late(dueTime), period);

        public void Dispose() => timer.Dispose();

        public ValueTask DisposeAsync() => timer.DisposeAsync();
    }
}
