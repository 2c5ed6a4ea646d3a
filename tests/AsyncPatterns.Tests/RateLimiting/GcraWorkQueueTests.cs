using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.RateLimiting;

public sealed class GcraWorkQueueTests
{
    [Fact]
    public async Task A_WorkQueue_with_a_GCRA_limiter_of_200_per_second_handles_200_items_per_simulated_second()
    {
        const int Items = 401;
        const int Workers = 4;
        var clock = new ManualTimeProvider();
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions
        {
            PermitsPerSecond = 200,
            QueueLimit = Workers,
            TimeProvider = clock,
        });
        long handled = 0;
        await using var queue = new WorkQueue<int>(
            (_, _) =>
            {
                Interlocked.Increment(ref handled);
                return ValueTask.CompletedTask;
            },
            new WorkQueueOptions<int> { Capacity = Items, MaxConcurrency = Workers, RateLimiter = limiter, TimeProvider = clock });
        for (var i = 0; i < Items; i++)
        {
            queue.TryEnqueue(i).Should().BeTrue();
        }

        var handledAtEachSecond = new List<long>();
        for (var step = 0; step <= 400; step++)
        {
            // Burst 1 at the start, then one permit every 5 ms; wait until every idle worker is back in the limiter's queue.
            var expected = step + 1;
            await AsyncAssert.EventuallyAsync(
                () => Interlocked.Read(ref handled) == expected
                    && limiter.GetStatistics()!.CurrentQueuedCount == Math.Min(Workers, Items - expected),
                $"step {step}: {expected} handled and the workers waiting for permits");
            if (step % 200 == 0)
            {
                handledAtEachSecond.Add(Interlocked.Read(ref handled));
            }

            if (step < 400)
            {
                clock.Advance(TimeSpan.FromMilliseconds(5));
            }
        }

        handledAtEachSecond.Should().Equal(1, 201, 401);
        await queue.DrainAsync().WithTimeout();
        queue.GetStatistics().Handled.Should().Be(Items);
    }
}
