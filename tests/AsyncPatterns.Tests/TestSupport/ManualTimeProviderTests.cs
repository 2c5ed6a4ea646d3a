namespace AsyncPatterns.Tests.TestSupport;

public class ManualTimeProviderTests
{
    [Fact]
    public void Advance_fires_due_timers_in_due_order_with_the_clock_at_each_due_time()
    {
        var clock = new ManualTimeProvider();
        var fired = new List<(string Name, TimeSpan At)>();
        using var late = clock.CreateTimer(_ => fired.Add(("late", clock.Elapsed)), null, TimeSpan.FromSeconds(3), Timeout.InfiniteTimeSpan);
        using var early = clock.CreateTimer(_ => fired.Add(("early", clock.Elapsed)), null, TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan);
        using var never = clock.CreateTimer(_ => fired.Add(("never", clock.Elapsed)), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);

        clock.Advance(TimeSpan.FromSeconds(2));
        fired.Should().Equal(("early", TimeSpan.FromSeconds(1)));
        clock.Elapsed.Should().Be(TimeSpan.FromSeconds(2));

        clock.Advance(TimeSpan.FromSeconds(5));
        fired.Should().Equal(("early", TimeSpan.FromSeconds(1)), ("late", TimeSpan.FromSeconds(3)));
    }

    [Fact]
    public void Periodic_timer_fires_once_per_period_crossed_and_stops_when_disposed()
    {
        var clock = new ManualTimeProvider();
        var count = 0;
        var timer = clock.CreateTimer(_ => count++, null, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));

        clock.Advance(TimeSpan.FromSeconds(3.5));
        count.Should().Be(3);

        timer.Dispose();
        clock.Advance(TimeSpan.FromSeconds(10));
        count.Should().Be(3);
        timer.Change(TimeSpan.Zero, TimeSpan.Zero).Should().BeFalse();
    }

    [Fact]
    public void Change_reschedules_relative_to_now()
    {
        var clock = new ManualTimeProvider();
        var fired = 0;
        using var timer = clock.CreateTimer(_ => fired++, null, TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan);
        clock.Advance(TimeSpan.FromMilliseconds(500));
        timer.Change(TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan);

        clock.Advance(TimeSpan.FromMilliseconds(900));
        fired.Should().Be(0);
        clock.Advance(TimeSpan.FromMilliseconds(100));
        fired.Should().Be(1);
    }

    [Fact]
    public async Task Task_Delay_and_CancelAfter_follow_the_manual_clock()
    {
        var clock = new ManualTimeProvider();
        var delay = Task.Delay(TimeSpan.FromSeconds(10), clock);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5), clock);

        clock.Advance(TimeSpan.FromSeconds(4));
        cts.IsCancellationRequested.Should().BeFalse();
        delay.IsCompleted.Should().BeFalse();

        clock.Advance(TimeSpan.FromSeconds(1));
        cts.IsCancellationRequested.Should().BeTrue();

        clock.Advance(TimeSpan.FromSeconds(5));
        await delay.WithTimeout();
        clock.GetElapsedTime(0, clock.GetTimestamp()).Should().BeGreaterThan(TimeSpan.Zero);
    }
}
