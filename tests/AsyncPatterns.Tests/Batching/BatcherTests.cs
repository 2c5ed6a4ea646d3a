using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Batching;

public sealed class BatcherTests
{
    private static readonly TimeSpan Delay = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan OneTick = TimeSpan.FromTicks(1);

    private readonly ManualTimeProvider _time = new();

    [Fact]
    public async Task Items_250_with_MaxBatchSize_100_go_as_100_100_and_50_exactly_MaxDelay_after_the_50s_first_item()
    {
        var batches = new ConcurrentQueue<(int[] Items, TimeSpan At)>();
        await using var batcher = Recording(batches, Options());

        for (var i = 0; i < 201; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        var firstOfLast = _time.Elapsed;
        for (var i = 201; i < 250; i++)
        {
            _time.AdvanceMilliseconds(10); // later items must not restart the delay
            await batcher.AddAsync(i).WithTimeout();
        }

        _time.AdvanceTo(_time.Start + firstOfLast + Delay - OneTick);
        batcher.GetStatistics().BatchesEmitted.Should().Be(2, "the last batch is one tick short of MaxDelay");

        _time.Advance(OneTick);
        batcher.GetStatistics().BatchesEmitted.Should().Be(3);
        await AsyncAssert.EventuallyAsync(() => batches.Count == 3);

        var all = batches.ToArray();
        all.Select(b => b.Items.Length).Should().Equal(100, 100, 50);
        all.SelectMany(b => b.Items).Should().Equal(Enumerable.Range(0, 250));
        all[2].At.Should().Be(firstOfLast + Delay);
        var statistics = batcher.GetStatistics();
        statistics.BatchesBySize.Should().Be(2);
        statistics.BatchesByAge.Should().Be(1);
        await AsyncAssert.EventuallyAsync(() => batcher.GetStatistics().ItemsProcessed == 250);
    }

    [Fact]
    public async Task A_lone_item_goes_after_MaxDelay_and_no_batch_is_ever_empty()
    {
        var batches = new ConcurrentQueue<(int[] Items, TimeSpan At)>();
        await using var batcher = Recording(batches, Options());

        await batcher.AddAsync(42).WithTimeout();
        _time.Advance(Delay - OneTick);
        batcher.GetStatistics().BatchesEmitted.Should().Be(0);

        _time.Advance(OneTick);
        await AsyncAssert.EventuallyAsync(() => batches.Count == 1);
        _time.Advance(Delay * 10);
        await batcher.FlushAsync().WithTimeout();

        batches.Should().ContainSingle().Which.Should().BeEquivalentTo((new[] { 42 }, Delay));
        batcher.GetStatistics().BatchesEmitted.Should().Be(1, "time passing with nothing buffered emits nothing");
    }

    [Fact]
    public async Task A_batch_started_after_an_earlier_one_went_by_size_goes_MaxDelay_after_its_own_first_item()
    {
        var batches = new ConcurrentQueue<(int[] Items, TimeSpan At)>();
        await using var batcher = Recording(batches, Options(o => o.MaxBatchSize = 2));

        await batcher.AddAsync(1).WithTimeout(); // the timer is armed for this batch's deadline, t = 1 s
        _time.AdvanceMilliseconds(300);
        await batcher.AddAsync(2).WithTimeout(); // the batch goes by size
        _time.AdvanceMilliseconds(200);
        await batcher.AddAsync(3).WithTimeout(); // its deadline is t = 1.5 s

        _time.AdvanceTo(_time.Start + TimeSpan.FromMilliseconds(1500) - OneTick);
        batcher.GetStatistics().BatchesByAge.Should().Be(0, "the timer fired at 1 s for the earlier batch and re-armed");
        _time.Advance(OneTick);
        batcher.GetStatistics().BatchesByAge.Should().Be(1);

        await AsyncAssert.EventuallyAsync(() => batches.Count == 2);
        batches.Last().Should().BeEquivalentTo((new[] { 3 }, TimeSpan.FromMilliseconds(1500)));
        _time.ActiveTimerCount.Should().Be(0, "with no open batch the timer is left unarmed");
    }

    [Fact]
    public async Task AddAsync_waits_at_Capacity_while_processBatch_is_blocked_and_resumes_when_a_batch_completes()
    {
        var release = new SemaphoreSlim(0);
        await using var batcher = new Batcher<int>(
            async (_, _) => await release.WaitAsync(),
            Options(o => { o.MaxBatchSize = 10; o.Capacity = 20; }));

        for (var i = 0; i < 20; i++)
        {
            var add = batcher.AddAsync(i);
            add.IsCompletedSuccessfully.Should().BeTrue("there is room for {0} items", 20);
            await add;
        }

        var waiting = batcher.AddAsync(20).AsTask();
        await AsyncAssert.StillPendingAsync(waiting, "Capacity items are pending");
        batcher.GetStatistics().WaitingAdds.Should().Be(1);
        batcher.GetStatistics().ItemsAccepted.Should().Be(20);

        release.Release();
        await waiting.WithTimeout();
        batcher.GetStatistics().ItemsAccepted.Should().Be(21);
        release.Release(10);
        await batcher.DrainAsync().WithTimeout();
        batcher.GetStatistics().ItemsProcessed.Should().Be(21);
    }

    [Fact]
    public async Task Cancelling_a_waiting_add_abandons_only_the_wait()
    {
        var release = new SemaphoreSlim(0);
        await using var batcher = new Batcher<int>(
            async (_, _) => await release.WaitAsync(),
            Options(o => { o.MaxBatchSize = 5; o.Capacity = 5; }));
        for (var i = 0; i < 5; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        using var cts = new CancellationTokenSource();
        var cancelled = batcher.AddAsync(5, cts.Token).AsTask();
        var next = batcher.AddAsync(6).AsTask();
        await cts.CancelAsync();

        await FluentActions.Awaiting(() => cancelled.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        next.IsCompleted.Should().BeFalse();
        release.Release();
        await next.WithTimeout();

        release.Release(10);
        await batcher.DrainAsync().WithTimeout();
        var statistics = batcher.GetStatistics();
        statistics.ItemsAccepted.Should().Be(6, "the cancelled item was never accepted");
        statistics.ItemsProcessed.Should().Be(6);
    }

    [Fact]
    public async Task An_already_cancelled_token_returns_a_cancelled_task_without_accepting_the_item()
    {
        await using var batcher = new Batcher<int>((_, _) => default, Options());

        var add = batcher.AddAsync(1, new CancellationToken(canceled: true));

        add.IsCanceled.Should().BeTrue();
        batcher.GetStatistics().ItemsAccepted.Should().Be(0);
        batcher.FlushAsync(new CancellationToken(canceled: true)).IsCanceled.Should().BeTrue();
    }

    [Fact]
    public async Task A_throwing_processBatch_fails_only_its_batch_and_OnError_gets_it()
    {
        var failed = new ConcurrentQueue<(int[] Batch, Exception Error)>();
        var processed = new ConcurrentQueue<int>();
        await using var batcher = new Batcher<int>(
            (batch, _) =>
            {
                if (batch.Contains(13))
                {
                    throw new InvalidDataException("bad batch");
                }

                foreach (var item in batch)
                {
                    processed.Enqueue(item);
                }

                return default;
            },
            Options(o =>
            {
                o.MaxBatchSize = 10;
                o.OnError = (batch, error) => failed.Enqueue((batch.ToArray(), error));
            }));

        for (var i = 0; i < 30; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await batcher.FlushAsync().WithTimeout();

        failed.Should().ContainSingle();
        failed.Single().Batch.Should().Equal(Enumerable.Range(10, 10));
        failed.Single().Error.Should().BeOfType<InvalidDataException>();
        processed.Should().BeEquivalentTo(Enumerable.Range(0, 10).Concat(Enumerable.Range(20, 10)));
        var statistics = batcher.GetStatistics();
        statistics.ItemsFailed.Should().Be(10);
        statistics.ItemsProcessed.Should().Be(20);
        statistics.BatchesFailed.Should().Be(1);
    }

    [Fact]
    public async Task A_throwing_OnError_callback_does_not_break_the_batcher()
    {
        var calls = 0;
        await using var batcher = new Batcher<int>(
            (batch, _) => batch[0] == 0 ? throw new InvalidDataException() : default,
            Options(o =>
            {
                o.MaxBatchSize = 1;
                o.OnError = (_, _) =>
                {
                    Interlocked.Increment(ref calls);
                    throw new InvalidOperationException("callback bug");
                };
            }));

        await batcher.AddAsync(0).WithTimeout();
        await batcher.AddAsync(1).WithTimeout();
        await batcher.DrainAsync().WithTimeout();

        calls.Should().Be(1);
        batcher.GetStatistics().ItemsProcessed.Should().Be(1);
    }

    [Fact]
    public async Task Order_is_kept_within_and_across_batches_with_one_concurrent_batch()
    {
        var seen = new List<int>();
        var batchSizes = new List<int>();
        await using var batcher = new Batcher<int>(
            async (batch, _) =>
            {
                await Task.Yield();
                lock (seen)
                {
                    seen.AddRange(batch);
                    batchSizes.Add(batch.Count);
                }
            },
            Options(o => o.MaxBatchSize = 7));

        for (var i = 0; i < 1000; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await batcher.DrainAsync().WithTimeout();

        seen.Should().Equal(Enumerable.Range(0, 1000));
        batchSizes.Take(batchSizes.Count - 1).Should().OnlyContain(size => size == 7);
        batchSizes.Last().Should().Be(1000 % 7);
    }

    [Fact]
    public async Task Never_more_than_MaxConcurrentBatches_run_at_once()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var running = 0;
        var maximum = 0;
        await using var batcher = new Batcher<int>(
            async (_, _) =>
            {
                var now = Interlocked.Increment(ref running);
                InterlockedMax(ref maximum, now);
                await gate.Task;
                Interlocked.Decrement(ref running);
            },
            Options(o => { o.MaxBatchSize = 1; o.MaxConcurrentBatches = 3; }));

        for (var i = 0; i < 10; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => Volatile.Read(ref running) == 3);
        await AsyncAssert.StillPendingAsync(gate.Task);
        Volatile.Read(ref running).Should().Be(3);
        batcher.GetStatistics().BatchesInFlight.Should().Be(3);

        gate.SetResult();
        await batcher.DrainAsync().WithTimeout();
        maximum.Should().Be(3);
        batcher.GetStatistics().ItemsProcessed.Should().Be(10);
    }

    [Fact]
    public async Task FlushAsync_emits_the_partial_batch_now_and_completes_only_after_it_is_processed()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var processed = 0;
        await using var batcher = new Batcher<int>(
            async (batch, _) =>
            {
                await gate.Task;
                Interlocked.Add(ref processed, batch.Count);
            },
            Options());
        for (var i = 0; i < 5; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        var flush = batcher.FlushAsync();

        batcher.GetStatistics().BatchesByFlush.Should().Be(1, "the flush emits at once, without waiting for MaxDelay");
        await AsyncAssert.StillPendingAsync(flush, "the flushed batch is not processed yet");
        gate.SetResult();
        await flush.WithTimeout();
        Volatile.Read(ref processed).Should().Be(5);
    }

    [Fact]
    public async Task FlushAsync_also_waits_for_earlier_batches_still_running()
    {
        var first = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var second = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var batcher = new Batcher<int>(
            async (batch, _) => await (batch[0] == 0 ? first.Task : second.Task),
            Options(o => { o.MaxBatchSize = 2; o.MaxConcurrentBatches = 2; }));
        await batcher.AddAsync(0).WithTimeout();
        await batcher.AddAsync(1).WithTimeout(); // batch [0, 1] runs, blocked on first
        await batcher.AddAsync(2).WithTimeout();

        var flush = batcher.FlushAsync(); // batch [2] runs, blocked on second
        second.SetResult();
        await AsyncAssert.EventuallyAsync(() => batcher.GetStatistics().BatchesProcessed == 1);
        await AsyncAssert.StillPendingAsync(flush, "batch [0, 1] was added before the flush and still runs");

        first.SetResult();
        await flush.WithTimeout();
        batcher.GetStatistics().ItemsProcessed.Should().Be(3);
    }

    [Fact]
    public async Task FlushAsync_with_nothing_pending_completes_at_once()
    {
        await using var batcher = new Batcher<int>((_, _) => default, Options());

        batcher.FlushAsync().IsCompletedSuccessfully.Should().BeTrue();
        batcher.GetStatistics().BatchesEmitted.Should().Be(0);
    }

    [Fact]
    public async Task Drain_processes_everything_then_AddAsync_throws_InvalidOperationException_naming_the_batcher()
    {
        var processed = 0;
        var batcher = new Batcher<int>(
            (batch, _) =>
            {
                Interlocked.Add(ref processed, batch.Count);
                return default;
            },
            Options(o => o.Name = "orders"));
        for (var i = 0; i < 5; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await batcher.DrainAsync().WithTimeout();

        processed.Should().Be(5);
        batcher.GetStatistics().BatchesByDrain.Should().Be(1);
        await batcher.Completion.WithTimeout();
        var add = async () => await batcher.AddAsync(6);
        (await add.Should().ThrowAsync<InvalidOperationException>()).Which.Message.Should().Contain("Batcher 'orders'");
        await batcher.DisposeAsync();
        _time.ActiveTimerCount.Should().Be(0, "the drained batcher released its timer");
    }

    [Fact]
    public async Task DisposeAsync_processes_everything_and_refuses_adds_that_were_waiting_for_capacity()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var batcher = new Batcher<int>(
            async (_, _) => await gate.Task,
            Options(o => { o.MaxBatchSize = 2; o.Capacity = 2; }));
        await batcher.AddAsync(0).WithTimeout();
        await batcher.AddAsync(1).WithTimeout();
        var waiting = batcher.AddAsync(2).AsTask();

        var dispose = batcher.DisposeAsync().AsTask();

        await FluentActions.Awaiting(() => waiting.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        await AsyncAssert.StillPendingAsync(dispose, "the accepted batch is still running");
        gate.SetResult();
        await dispose.WithTimeout();
        var statistics = batcher.GetStatistics();
        statistics.ItemsAccepted.Should().Be(2);
        statistics.ItemsProcessed.Should().Be(2);
    }

    [Fact]
    public async Task DisposeAsync_with_DrainTimeout_cancels_running_batches_and_drops_the_rest()
    {
        var dropped = new ConcurrentQueue<int>();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var batcher = new Batcher<int>(
            async (_, token) =>
            {
                started.TrySetResult();
                await Task.Delay(Timeout.Infinite, token);
            },
            Options(o =>
            {
                o.MaxBatchSize = 1;
                o.DrainTimeout = TimeSpan.FromSeconds(5);
                o.OnDropped = batch => batch.ToList().ForEach(dropped.Enqueue);
            }));
        for (var i = 0; i < 3; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await started.Task.WithTimeout();
        var dispose = batcher.DisposeAsync().AsTask();
        await AsyncAssert.StillPendingAsync(dispose);
        _time.Advance(TimeSpan.FromSeconds(5));
        await dispose.WithTimeout();

        dropped.Should().BeEquivalentTo([1, 2]);
        await batcher.Completion.WithTimeout();
        var statistics = batcher.GetStatistics();
        statistics.ItemsFailed.Should().Be(1, "the running batch saw its token cancelled");
        statistics.ItemsDropped.Should().Be(2);
        statistics.BatchesDropped.Should().Be(2);
    }

    [Fact]
    public async Task Statistics_add_up_by_trigger()
    {
        await using var batcher = new Batcher<int>((_, _) => default, Options(o => o.MaxBatchSize = 3));
        for (var i = 0; i < 4; i++)
        {
            await batcher.AddAsync(i).WithTimeout(); // one size batch, one item left
        }

        _time.Advance(Delay); // age
        await batcher.AddAsync(4).WithTimeout();
        await batcher.FlushAsync().WithTimeout(); // flush
        await batcher.AddAsync(5).WithTimeout();
        await batcher.DrainAsync().WithTimeout(); // drain

        var statistics = batcher.GetStatistics();
        statistics.BatchesEmitted.Should().Be(4);
        (statistics.BatchesBySize, statistics.BatchesByAge, statistics.BatchesByFlush, statistics.BatchesByDrain, statistics.BatchesByWeight)
            .Should().Be((1L, 1L, 1L, 1L, 0L));
        statistics.ItemsAccepted.Should().Be(6);
        statistics.ItemsProcessed.Should().Be(6);
        statistics.ItemsPending.Should().Be(0);
        statistics.BatchesProcessed.Should().Be(4);
    }

    private static void InterlockedMax(ref int target, int value)
    {
        var current = Volatile.Read(ref target);
        while (value > current)
        {
            var seen = Interlocked.CompareExchange(ref target, value, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }

    /// <summary>A batcher that records each batch's items and the fake time at which it was processed.</summary>
    private Batcher<int> Recording(ConcurrentQueue<(int[] Items, TimeSpan At)> batches, BatcherOptions<int> options) =>
        new(
            (batch, _) =>
            {
                batches.Enqueue((batch.ToArray(), _time.Elapsed));
                return default;
            },
            options);

    private BatcherOptions<int> Options(Action<BatcherOptions<int>>? configure = null)
    {
        var options = new BatcherOptions<int> { MaxBatchSize = 100, MaxDelay = Delay, TimeProvider = _time };
        configure?.Invoke(options);
        return options;
    }
}
