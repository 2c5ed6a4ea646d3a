using System.Diagnostics;
using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.RateLimiting;

public sealed class GcraRateLimiterStressTests
{
    [Fact]
    public async Task Many_threads_on_the_real_clock_never_get_more_permits_than_the_rate_allows()
    {
        const double Rate = 20_000;
        const int Burst = 10;
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions { PermitsPerSecond = Rate, Burst = Burst });
        var clock = Stopwatch.StartNew();
        var run = TimeSpan.FromMilliseconds(500);
        long granted = 0;
        long refused = 0;

        var threads = Enumerable.Range(0, 8).Select(_ => Task.Factory.StartNew(
            () =>
            {
                while (clock.Elapsed < run)
                {
                    if (limiter.AttemptAcquire().IsAcquired)
                    {
                        Interlocked.Increment(ref granted);
                    }
                    else
                    {
                        Interlocked.Increment(ref refused);
                    }
                }
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default)).ToArray();
        await Task.WhenAll(threads).WithTimeout(TimeSpan.FromSeconds(10));
        var elapsed = clock.Elapsed;

        granted.Should().BeLessThanOrEqualTo((long)(Rate * elapsed.TotalSeconds) + Burst, "never more than the rate allows");
        // How many are taken depends on how much CPU the threads get on a shared machine; only the bound is exact.
        granted.Should().BeGreaterThan(Burst, "permits that fall due are taken");
        var stats = limiter.GetStatistics()!;
        stats.TotalSuccessfulLeases.Should().Be(granted);
        stats.TotalFailedLeases.Should().Be(refused);
    }

    [Fact]
    public async Task Concurrent_attempts_waiters_and_cancellations_on_the_fake_clock_account_for_every_request()
    {
        const double Rate = 1_000;
        const int Burst = 5;
        var fake = new ManualTimeProvider();
        var limiter = new GcraRateLimiter(new GcraRateLimiterOptions
        {
            PermitsPerSecond = Rate,
            Burst = Burst,
            QueueLimit = 50,
            TimeProvider = fake,
        });
        long granted = 0;
        long refused = 0;
        long cancelled = 0;
        using var stop = new CancellationTokenSource();

        async Task WorkerAsync(int seed)
        {
            var random = new Random(seed);
            while (!stop.IsCancellationRequested)
            {
                if (random.Next(3) == 0)
                {
                    Count(limiter.AttemptAcquire());
                    await Task.Yield();
                    continue;
                }

                using var cts = new CancellationTokenSource();
                var acquire = limiter.AcquireAsync(1, cts.Token).AsTask();
                if (random.Next(4) == 0)
                {
                    cts.Cancel();
                }

                try
                {
                    Count(await acquire.WaitAsync(TimeSpan.FromSeconds(20)));
                }
                catch (OperationCanceledException)
                {
                    Interlocked.Increment(ref cancelled);
                }
                catch (ObjectDisposedException)
                {
                    return;
                }
            }
        }

        void Count(RateLimitLease lease) => Interlocked.Increment(ref lease.IsAcquired ? ref granted : ref refused);

        var workers = Enumerable.Range(0, 6).Select(i => Task.Run(() => WorkerAsync(i))).ToArray();
        for (var ms = 0; ms < 2_000; ms++)
        {
            fake.Advance(TimeSpan.FromMilliseconds(1));
            if (ms % 50 == 0)
            {
                await Task.Delay(1);
            }
        }

        var grantedWithinTwoSeconds = Interlocked.Read(ref granted);
        stop.Cancel();
        limiter.Dispose();
        await Task.WhenAll(workers).WithTimeout(TimeSpan.FromSeconds(20));

        grantedWithinTwoSeconds.Should().BeLessThanOrEqualTo((long)(Rate * 2) + Burst);
        granted.Should().BeLessThanOrEqualTo((long)(Rate * 2) + Burst, "nothing is granted after the clock stopped");
        granted.Should().BeGreaterThan(0);
        limiter.Invoking(l => l.GetStatistics()).Should().Throw<ObjectDisposedException>();
    }
}
