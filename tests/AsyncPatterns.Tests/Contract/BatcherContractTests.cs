using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Contract;

/// <summary>Black-box tests of the Batcher contract in DESIGN.md.</summary>
public sealed class BatcherContractTests
{
    private readonly ManualTimeProvider _clock = new();
    private readonly ConcurrentQueue<int[]> _batches = new();

    private Batcher<int> Create(int maxBatchSize = 3, TimeSpan? maxDelay = null, Func<IReadOnlyList<int>, Task>? process = null, Action<BatcherOptions<int>>? configure = null)
    {
        var options = new BatcherOptions<int> { MaxBatchSize = maxBatchSize, MaxDelay = maxDelay ?? TimeSpan.FromSeconds(1), TimeProvider = _clock };
        configure?.Invoke(options);
        return new Batcher<int>(
            async (batch, _) =>
            {
                _batches.Enqueue(batch.ToArray());
                if (process is not null)
                {
                    await process(batch);
                }
            },
            options);
    }

    [Fact]
    public void Options_have_the_documented_defaults()
    {
        var options = new BatcherOptions<int>();
        options.MaxBatchSize.Should().Be(100);
        options.MaxDelay.Should().Be(TimeSpan.FromSeconds(1));
        options.MaxConcurrentBatches.Should().Be(1);
        options.Pipeline.Should().BeNull();
        options.OnError.Should().BeNull();
    }

    [Theory]
    [InlineData(nameof(BatcherOptions<int>.MaxBatchSize))]
    [InlineData(nameof(BatcherOptions<int>.MaxDelay))]
    [InlineData(nameof(BatcherOptions<int>.MaxConcurrentBatches))]
    [InlineData(nameof(BatcherOptions<int>.Capacity))]
    public void Invalid_options_throw_ArgumentOutOfRangeException_naming_the_option(string option)
    {
        var options = new BatcherOptions<int>();
        switch (option)
        {
            case nameof(BatcherOptions<int>.MaxBatchSize): options.MaxBatchSize = 0; break;
            case nameof(BatcherOptions<int>.MaxDelay): options.MaxDelay = TimeSpan.Zero; break;
            case nameof(BatcherOptions<int>.MaxConcurrentBatches): options.MaxConcurrentBatches = 0; break;
            default: options.Capacity = -1; break;
        }

        FluentActions.Invoking(() => new Batcher<int>((_, _) => ValueTask.CompletedTask, options))
            .Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(option);
    }

    [Fact]
    public void Null_processBatch_throws_ArgumentNullException()
    {
        FluentActions.Invoking(() => new Batcher<int>(null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => new Batcher<int, int>(null!)).Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public async Task A_batch_goes_when_it_reaches_MaxBatchSize()
    {
        await using var batcher = Create(maxBatchSize: 3);
        for (var i = 1; i <= 7; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => _batches.Count == 2);
        _batches.Should().BeEquivalentTo(new[] { new[] { 1, 2, 3 }, new[] { 4, 5, 6 } }, o => o.WithStrictOrdering());
    }

    [Fact]
    public async Task A_batch_goes_MaxDelay_after_its_first_item_and_later_items_do_not_restart_the_delay()
    {
        await using var batcher = Create(maxBatchSize: 100, maxDelay: TimeSpan.FromSeconds(1));
        await batcher.AddAsync(1).WithTimeout();
        _clock.Advance(TimeSpan.FromMilliseconds(600));
        await batcher.AddAsync(2).WithTimeout();
        _clock.Advance(TimeSpan.FromMilliseconds(399));
        await Task.Delay(20);
        _batches.Should().BeEmpty();

        _clock.Advance(TimeSpan.FromMilliseconds(1));

        await AsyncAssert.EventuallyAsync(() => _batches.Count == 1);
        _batches.Single().Should().Equal(1, 2);
    }

    [Fact]
    public async Task A_batch_is_never_empty()
    {
        await using var batcher = Create();
        _clock.Advance(TimeSpan.FromSeconds(10));
        await batcher.FlushAsync().WithTimeout();
        await batcher.DrainAsync().WithTimeout();

        _batches.Should().BeEmpty();
    }

    [Fact]
    public async Task Items_keep_their_order_within_and_across_batches()
    {
        var batcher = Create(maxBatchSize: 4, process: async _ => await Task.Yield());
        for (var i = 0; i < 50; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await batcher.DrainAsync().WithTimeout();

        _batches.SelectMany(b => b).Should().Equal(Enumerable.Range(0, 50));
        _batches.Should().OnlyContain(b => b.Length > 0 && b.Length <= 4);
    }

    [Fact]
    public async Task FlushAsync_emits_now_and_completes_when_earlier_items_are_processed()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var batcher = Create(maxBatchSize: 100, process: _ => gate.Task);
        await batcher.AddAsync(1).WithTimeout();
        await batcher.AddAsync(2).WithTimeout();

        var flush = batcher.FlushAsync();

        await AsyncAssert.EventuallyAsync(() => _batches.Count == 1);
        await AsyncAssert.StillPendingAsync(flush, "the batch is still being processed");
        gate.SetResult();
        await flush.WithTimeout();
        _batches.Single().Should().Equal(1, 2);
    }

    [Fact]
    public async Task AddAsync_waits_while_Capacity_items_are_pending()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var batcher = Create(maxBatchSize: 2, process: _ => gate.Task, configure: o => o.Capacity = 4);
        for (var i = 0; i < 4; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        var fifth = batcher.AddAsync(4).AsTask();

        await AsyncAssert.StillPendingAsync(fifth, "Capacity items are pending");
        gate.SetResult();
        await fifth.WithTimeout();
    }

    [Fact]
    public async Task Default_Capacity_is_ten_times_MaxBatchSize()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var batcher = Create(maxBatchSize: 2, process: _ => gate.Task);
        for (var i = 0; i < 20; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        var next = batcher.AddAsync(20).AsTask();

        await AsyncAssert.StillPendingAsync(next, "20 = 10 x MaxBatchSize items are pending");
        gate.SetResult();
        await next.WithTimeout();
    }

    [Fact]
    public async Task AddAsync_with_an_already_cancelled_token_is_cancelled_and_not_accepted()
    {
        var batcher = Create();

        var add = batcher.AddAsync(1, new CancellationToken(true));

        add.IsCanceled.Should().BeTrue();
        await batcher.DrainAsync().WithTimeout();
        _batches.Should().BeEmpty();
        batcher.GetStatistics().ItemsAccepted.Should().Be(0);
    }

    [Fact]
    public async Task AddAsync_after_DrainAsync_throws_InvalidOperationException_naming_the_batcher()
    {
        var batcher = Create(configure: o => o.Name = "writes");
        await batcher.DrainAsync().WithTimeout();

        var thrown = await FluentActions.Awaiting(() => batcher.AddAsync(1).AsTask().WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        thrown.Which.Message.Should().Contain("writes");
    }

    [Fact]
    public async Task DisposeAsync_and_DrainAsync_flush_everything_accepted()
    {
        var batcher = Create(maxBatchSize: 10);
        await batcher.AddAsync(1).WithTimeout();
        await batcher.AddAsync(2).WithTimeout();

        await batcher.DisposeAsync().AsTask().WithTimeout();

        _batches.SelectMany(b => b).Should().Equal(1, 2);
        var stats = batcher.GetStatistics();
        stats.ItemsAccepted.Should().Be(2);
        stats.ItemsProcessed.Should().Be(2);
    }

    [Fact]
    public async Task A_failed_batch_goes_to_OnError_and_is_counted_then_accepted_equals_processed_failed_dropped()
    {
        var errors = new ConcurrentQueue<(int[] Batch, Exception Error)>();
        var batcher = Create(
            maxBatchSize: 2,
            process: batch => batch[0] == 0 ? Task.FromException(new FormatException()) : Task.CompletedTask,
            configure: o => o.OnError = (batch, error) => errors.Enqueue((batch.ToArray(), error)));
        for (var i = 0; i < 6; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await batcher.DrainAsync().WithTimeout();

        errors.Should().ContainSingle();
        errors.Single().Batch.Should().Equal(0, 1);
        errors.Single().Error.Should().BeOfType<FormatException>();
        var stats = batcher.GetStatistics();
        stats.ItemsAccepted.Should().Be(6);
        stats.ItemsFailed.Should().Be(2);
        stats.ItemsProcessed.Should().Be(4);
        (stats.ItemsProcessed + stats.ItemsFailed + stats.ItemsDropped).Should().Be(stats.ItemsAccepted);
    }

    [Fact]
    public async Task With_one_concurrent_batch_batches_never_overlap()
    {
        var current = 0;
        var peak = 0;
        var batcher = Create(maxBatchSize: 2, process: async _ =>
        {
            var now = Interlocked.Increment(ref current);
            lock (_batches)
            {
                peak = Math.Max(peak, now);
            }

            await Task.Delay(2);
            Interlocked.Decrement(ref current);
        });
        for (var i = 0; i < 20; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await batcher.DrainAsync().WithTimeout();

        peak.Should().Be(1);
    }

    [Fact]
    public async Task Submit_returns_each_items_own_result()
    {
        await using var batcher = new Batcher<int, string>(
            (batch, _) => new ValueTask<IReadOnlyList<string>>(batch.Select(i => "r" + i).ToArray()),
            new BatcherOptions<int> { MaxBatchSize = 3, TimeProvider = _clock });

        var submitted = Enumerable.Range(0, 7).Select(i => batcher.SubmitAsync(i)).ToList();
        await batcher.FlushAsync().WithTimeout();
        var results = await Task.WhenAll(submitted).WithTimeout();

        results.Should().Equal(Enumerable.Range(0, 7).Select(i => "r" + i));
    }

    [Fact]
    public async Task A_wrong_result_count_faults_every_item_of_the_batch_with_InvalidOperationException()
    {
        await using var batcher = new Batcher<int, int>(
            (batch, _) => new ValueTask<IReadOnlyList<int>>(new[] { 1 }),
            new BatcherOptions<int> { MaxBatchSize = 2, TimeProvider = _clock });

        var first = batcher.SubmitAsync(1);
        var second = batcher.SubmitAsync(2);

        await FluentActions.Awaiting(() => first.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        await FluentActions.Awaiting(() => second.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
    }

    [Fact]
    public async Task A_thrown_exception_faults_every_item_of_the_batch()
    {
        var error = new FormatException();
        await using var batcher = new Batcher<int, int>(
            (_, _) => ValueTask.FromException<IReadOnlyList<int>>(error),
            new BatcherOptions<int> { MaxBatchSize = 2, TimeProvider = _clock });

        var first = batcher.SubmitAsync(1);
        var second = batcher.SubmitAsync(2);

        (await FluentActions.Awaiting(() => first.WithTimeout()).Should().ThrowAsync<FormatException>()).Which.Should().BeSameAs(error);
        (await FluentActions.Awaiting(() => second.WithTimeout()).Should().ThrowAsync<FormatException>()).Which.Should().BeSameAs(error);
    }

    [Fact]
    public async Task SubmitAsync_after_drain_throws_InvalidOperationException()
    {
        var batcher = new Batcher<int, int>((batch, _) => new ValueTask<IReadOnlyList<int>>(batch.ToArray()), new BatcherOptions<int> { TimeProvider = _clock });
        var pending = batcher.SubmitAsync(5);

        await batcher.DrainAsync().WithTimeout();

        (await pending.WithTimeout()).Should().Be(5, "a drain flushes what was accepted");
        await FluentActions.Awaiting(() => batcher.SubmitAsync(6).WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
    }

    [Fact]
    public async Task A_cut_short_drain_cancels_the_running_batch_drops_the_rest_and_throws()
    {
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var dropped = new ConcurrentQueue<int>();
        var batcher = new Batcher<int>(
            async (_, ct) => { started.TrySetResult(); await Task.Delay(Timeout.Infinite, ct); },
            new BatcherOptions<int> { MaxBatchSize = 2, TimeProvider = _clock, OnDropped = batch => { foreach (var i in batch) { dropped.Enqueue(i); } } });
        for (var i = 0; i < 6; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await started.Task.WithTimeout();
        using var cts = new CancellationTokenSource();
        var drain = batcher.DrainAsync(cts.Token);
        await cts.CancelAsync();

        await FluentActions.Awaiting(() => drain.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await batcher.Completion.WithTimeout();
        dropped.Should().BeEquivalentTo(new[] { 2, 3, 4, 5 });
        var stats = batcher.GetStatistics();
        (stats.ItemsProcessed + stats.ItemsFailed + stats.ItemsDropped).Should().Be(stats.ItemsAccepted);
        stats.ItemsAccepted.Should().Be(6);
    }
}
