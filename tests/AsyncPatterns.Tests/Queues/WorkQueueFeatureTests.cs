using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Threading.Channels;
using System.Threading.RateLimiting;
using AsyncPatterns.Tests.TestSupport;
using Polly;
using Polly.Retry;

namespace AsyncPatterns.Tests.Queues;

/// <summary>Full modes, the rate limiter, the Polly pipeline and the metrics.</summary>
public sealed class WorkQueueFeatureTests
{
    public static TheoryData<BoundedChannelFullMode, int[], int[]> DropModes => new()
    {
        // Item 0 is in the handler, 1..3 fill Capacity 3, then 4 and 5 arrive.
        { BoundedChannelFullMode.DropOldest, [1, 2], [0, 3, 4, 5] },
        { BoundedChannelFullMode.DropNewest, [3, 4], [0, 1, 2, 5] },
        { BoundedChannelFullMode.DropWrite, [4, 5], [0, 1, 2, 3] },
    };

    [Theory]
    [MemberData(nameof(DropModes))]
    public async Task Drop_modes_never_wait_and_pass_the_item_they_drop_to_OnDropped(BoundedChannelFullMode mode, int[] expectedDropped, int[] expectedHandled)
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var handled = new ConcurrentQueue<int>();
        var dropped = new ConcurrentQueue<int>();
        var queue = new WorkQueue<int>(
            async (item, _) =>
            {
                await gate.Task;
                handled.Enqueue(item);
            },
            new WorkQueueOptions<int> { Capacity = 3, FullMode = mode, OnDropped = dropped.Enqueue });
        await queue.EnqueueAsync(0).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);

        for (var i = 1; i <= 4; i++)
        {
            var enqueue = queue.EnqueueAsync(i);
            enqueue.IsCompletedSuccessfully.Should().BeTrue("a drop mode never waits");
            await enqueue;
        }

        queue.TryEnqueue(5).Should().BeTrue("a drop mode accepts and drops instead of refusing");

        dropped.Should().Equal(expectedDropped);
        queue.Count.Should().Be(3);
        gate.SetResult();
        await queue.DrainAsync().WithTimeout();

        handled.Should().Equal(expectedHandled);
        var stats = queue.GetStatistics();
        stats.Should().Match<WorkQueueStatistics>(s => s.Accepted == 6 && s.Handled == 4 && s.Failed == 0 && s.Dropped == 2 && s.EnqueueWaits == 0);
        (stats.Handled + stats.Failed + stats.Dropped).Should().Be(stats.Accepted);
    }

    [Fact]
    public async Task Wait_mode_waits_instead_of_dropping()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var dropped = 0;
        var queue = new WorkQueue<int>(async (_, _) => await gate.Task, new WorkQueueOptions<int>
        {
            Capacity = 1,
            FullMode = BoundedChannelFullMode.Wait,
            OnDropped = _ => Interlocked.Increment(ref dropped),
        });
        await queue.EnqueueAsync(0).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        await queue.EnqueueAsync(1).WithTimeout();

        var waiting = queue.EnqueueAsync(2).AsTask();
        await AsyncAssert.StillPendingAsync(waiting);

        gate.SetResult();
        await waiting.WithTimeout();
        await queue.DrainAsync().WithTimeout();
        Volatile.Read(ref dropped).Should().Be(0);
        queue.GetStatistics().Handled.Should().Be(3);
    }

    [Fact]
    public async Task A_concurrency_limiter_bounds_the_handlers_and_each_lease_is_held_until_its_handler_finishes()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 10 });
        using var release = new SemaphoreSlim(0);
        var running = 0;
        var peak = 0;
        var queue = new WorkQueue<int>(
            async (_, _) =>
            {
                var now = Interlocked.Increment(ref running);
                if (now > Volatile.Read(ref peak))
                {
                    Volatile.Write(ref peak, now);
                }

                await release.WaitAsync();
                Interlocked.Decrement(ref running);
            },
            new WorkQueueOptions<int> { MaxConcurrency = 4, RateLimiter = limiter });
        for (var i = 0; i < 6; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        await AsyncAssert.EventuallyAsync(() => limiter.GetStatistics()!.CurrentQueuedCount == 3, "the other three workers wait for a permit");
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(0, "the handler holds the lease");

        for (var i = 0; i < 6; i++)
        {
            release.Release();
            await AsyncAssert.EventuallyAsync(() => queue.GetStatistics().Handled == i + 1);
        }

        await queue.DrainAsync().WithTimeout();
        Volatile.Read(ref peak).Should().Be(1);
        limiter.GetStatistics()!.CurrentAvailablePermits.Should().Be(1, "every lease was disposed");
        queue.GetStatistics().Handled.Should().Be(6);
    }

    [Fact]
    public async Task A_token_bucket_paces_the_workers_one_permit_per_item()
    {
        // Replenished by hand: the BCL token bucket has no TimeProvider. A manual replenish adds tokens for the real
        // time elapsed since the last one, so a 1 ms period makes every replenish refill the bucket (capped at TokenLimit).
        using var limiter = new TokenBucketRateLimiter(new TokenBucketRateLimiterOptions
        {
            TokenLimit = 2,
            TokensPerPeriod = 2,
            ReplenishmentPeriod = TimeSpan.FromMilliseconds(1),
            AutoReplenishment = false,
            QueueLimit = 10,
        });
        var queue = new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int> { RateLimiter = limiter, MaxConcurrency = 2 });
        for (var i = 0; i < 5; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => queue.GetStatistics().Handled == 2);
        await AsyncAssert.StillPendingAsync(queue.DrainAsync(), "no tokens left");
        queue.GetStatistics().Handled.Should().Be(2);

        limiter.TryReplenish().Should().BeTrue();
        await AsyncAssert.EventuallyAsync(() => queue.GetStatistics().Handled == 4);
        await Task.Delay(5); // a manual replenish only adds tokens for the real time since the previous one (≥ 1 period)
        limiter.TryReplenish().Should().BeTrue();
        await queue.Completion.WithTimeout();
        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s => s.Handled == 5 && s.Failed == 0);
    }

    [Fact]
    public async Task A_refused_permit_fails_the_item_with_RateLimitRejectedException()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 0 });
        using var held = await limiter.AcquireAsync(1);
        held.IsAcquired.Should().BeTrue();
        var errors = new ConcurrentQueue<(int Item, Exception Error)>();
        var queue = new WorkQueue<int>((_, _) => ValueTask.CompletedTask, new WorkQueueOptions<int>
        {
            RateLimiter = limiter,
            OnError = (item, error) => errors.Enqueue((item, error)),
        });

        await queue.EnqueueAsync(7).WithTimeout();
        await queue.DrainAsync().WithTimeout();

        errors.Should().ContainSingle().Which.Should().Match<(int Item, Exception Error)>(e => e.Item == 7 && e.Error is RateLimitRejectedException);
        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s => s.Accepted == 1 && s.Failed == 1);
    }

    [Fact]
    public async Task A_drain_cut_short_drops_an_item_still_waiting_for_its_permit()
    {
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 1 });
        using var held = await limiter.AcquireAsync(1);
        var dropped = new ConcurrentQueue<int>();
        var handled = 0;
        var queue = new WorkQueue<int>(
            (_, _) =>
            {
                Interlocked.Increment(ref handled);
                return ValueTask.CompletedTask;
            },
            new WorkQueueOptions<int> { RateLimiter = limiter, OnDropped = dropped.Enqueue });
        await queue.EnqueueAsync(1).WithTimeout();
        await queue.EnqueueAsync(2).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => limiter.GetStatistics()!.CurrentQueuedCount == 1);

        await FluentActions.Awaiting(() => queue.DrainAsync(new CancellationToken(canceled: true))).Should().ThrowAsync<OperationCanceledException>();
        await queue.Completion.WithTimeout();

        dropped.Should().BeEquivalentTo([1, 2]);
        Volatile.Read(ref handled).Should().Be(0);
        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s => s.Accepted == 2 && s.Dropped == 2);
    }

    [Fact]
    public async Task A_retry_pipeline_wraps_each_handler_call()
    {
        var attempts = new ConcurrentDictionary<int, int>();
        var pipeline = new ResiliencePipelineBuilder()
            .AddRetry(new RetryStrategyOptions { MaxRetryAttempts = 2, Delay = TimeSpan.Zero, ShouldHandle = new PredicateBuilder().Handle<InvalidOperationException>() })
            .Build();
        var errors = new ConcurrentQueue<(int Item, Exception Error)>();
        var queue = new WorkQueue<int>(
            (item, _) =>
            {
                var attempt = attempts.AddOrUpdate(item, 1, (_, n) => n + 1);

                // Items 0-4 succeed on their third attempt; item 5 never does.
                if (attempt < 3 || item == 5)
                {
                    throw new InvalidOperationException($"item {item} attempt {attempt}");
                }

                return ValueTask.CompletedTask;
            },
            new WorkQueueOptions<int> { Pipeline = pipeline, MaxConcurrency = 2, OnError = (item, error) => errors.Enqueue((item, error)) });

        for (var i = 0; i <= 5; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout();
        }

        await queue.DrainAsync().WithTimeout();

        attempts.Should().HaveCount(6).And.OnlyContain(a => a.Value == 3);
        errors.Should().ContainSingle().Which.Error.Message.Should().Be("item 5 attempt 3");
        queue.GetStatistics().Should().Match<WorkQueueStatistics>(s => s.Accepted == 6 && s.Handled == 5 && s.Failed == 1);
    }

    [Fact]
    public async Task The_pipeline_receives_the_handler_token_so_a_cut_short_drain_reaches_the_handler()
    {
        var pipeline = new ResiliencePipelineBuilder().AddTimeout(TimeSpan.FromMinutes(10)).Build();
        var sawCancellation = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var queue = new WorkQueue<int>(
            async (_, token) =>
            {
                await using var registration = token.Register(() => sawCancellation.TrySetResult());
                await Task.Delay(Timeout.Infinite, token);
            },
            new WorkQueueOptions<int> { Pipeline = pipeline });
        await queue.EnqueueAsync(1).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);

        await FluentActions.Awaiting(() => queue.DrainAsync(new CancellationToken(canceled: true))).Should().ThrowAsync<OperationCanceledException>();

        await sawCancellation.Task.WithTimeout();
        await queue.Completion.WithTimeout();
        queue.GetStatistics().Failed.Should().Be(1);
    }

    [Fact]
    public async Task Metrics_count_every_outcome_and_observe_depth_and_in_flight_tagged_with_the_queue_name()
    {
        var name = "metrics-" + Guid.NewGuid().ToString("N");
        var longs = new ConcurrentDictionary<string, long>();
        var durations = new ConcurrentQueue<double>();
        var observed = new ConcurrentDictionary<string, int>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == AsyncPatternsDiagnostics.MeterName && instrument.Name.StartsWith("asyncpatterns.workqueue.", StringComparison.Ordinal))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            if (HasName(tags, name))
            {
                longs.AddOrUpdate(instrument.Name, value, (_, total) => total + value);
            }
        });
        listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) =>
        {
            if (HasName(tags, name) && instrument.Name == "asyncpatterns.workqueue.handler.duration")
            {
                durations.Enqueue(value);
            }
        });
        listener.SetMeasurementEventCallback<int>((instrument, value, tags, _) =>
        {
            if (HasName(tags, name))
            {
                observed[instrument.Name] = value;
            }
        });
        listener.Start();

        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var queue = new WorkQueue<int>(
            async (item, _) =>
            {
                await gate.Task;
                if (item == 2)
                {
                    throw new InvalidOperationException("metric failure");
                }
            },
            new WorkQueueOptions<int> { Name = name, Capacity = 2, FullMode = BoundedChannelFullMode.DropOldest });
        await queue.EnqueueAsync(0).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => queue.InFlight == 1);
        for (var i = 1; i <= 3; i++)
        {
            await queue.EnqueueAsync(i).WithTimeout(); // 1 is dropped when 3 arrives
        }

        listener.RecordObservableInstruments();
        observed.Should().Contain("asyncpatterns.workqueue.depth", 2).And.Contain("asyncpatterns.workqueue.in_flight", 1);

        gate.SetResult();
        await queue.DrainAsync().WithTimeout();

        longs.Should().Contain("asyncpatterns.workqueue.accepted", 4)
            .And.Contain("asyncpatterns.workqueue.handled", 2)
            .And.Contain("asyncpatterns.workqueue.failed", 1)
            .And.Contain("asyncpatterns.workqueue.dropped", 1);
        durations.Should().HaveCount(3).And.OnlyContain(d => d >= 0);

        observed.Clear();
        listener.RecordObservableInstruments();
        observed.Should().NotContainKey("asyncpatterns.workqueue.depth", "a finished queue leaves the registry");
    }

    private static bool HasName(ReadOnlySpan<KeyValuePair<string, object?>> tags, string name)
    {
        foreach (var tag in tags)
        {
            if (tag.Key == AsyncPatternsDiagnostics.NameTag && Equals(tag.Value, name))
            {
                return true;
            }
        }

        return false;
    }
}
