using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;
using Polly;
using Polly.Retry;

namespace AsyncPatterns.Tests.Batching;

public sealed class BatcherWithResultsTests
{
    private readonly ManualTimeProvider _time = new();

    [Fact]
    public async Task Each_SubmitAsync_gets_the_result_at_its_own_index()
    {
        await using var batcher = new Batcher<int, string>(
            (batch, _) => new ValueTask<IReadOnlyList<string>>(batch.Select(i => $"r{i}").ToArray()),
            Options(o => o.MaxBatchSize = 10));

        var submits = Enumerable.Range(0, 25).Select(i => batcher.SubmitAsync(i)).ToArray();
        await batcher.FlushAsync().WithTimeout();

        var results = await Task.WhenAll(submits).WithTimeout();
        results.Should().Equal(Enumerable.Range(0, 25).Select(i => $"r{i}"));
        batcher.GetStatistics().ItemsProcessed.Should().Be(25);
    }

    [Fact]
    public async Task A_throwing_processBatch_faults_every_item_of_that_batch_and_no_other()
    {
        var onError = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int, int>(
            (batch, _) => batch[0] == 10
                ? throw new InvalidDataException("batch 2 failed")
                : new ValueTask<IReadOnlyList<int>>(batch.Select(i => -i).ToArray()),
            Options(o =>
            {
                o.MaxBatchSize = 10;
                o.OnError = (batch, _) => onError.Enqueue(batch.ToArray());
            }));

        var submits = Enumerable.Range(0, 30).Select(i => batcher.SubmitAsync(i)).ToArray();
        await batcher.FlushAsync().WithTimeout();

        for (var i = 0; i < 30; i++)
        {
            if (i is >= 10 and < 20)
            {
                await FluentActions.Awaiting(() => submits[i]).Should().ThrowAsync<InvalidDataException>().WithMessage("batch 2 failed");
            }
            else
            {
                (await submits[i]).Should().Be(-i);
            }
        }

        onError.Should().ContainSingle().Which.Should().Equal(Enumerable.Range(10, 10));
        batcher.GetStatistics().ItemsFailed.Should().Be(10);
    }

    [Fact]
    public async Task A_wrong_result_count_faults_that_batch_with_an_InvalidOperationException_giving_both_counts()
    {
        await using var batcher = new Batcher<int, int>(
            (batch, _) => new ValueTask<IReadOnlyList<int>>(batch.Skip(batch[0] == 0 ? 1 : 0).ToArray()),
            Options(o => o.MaxBatchSize = 4));

        var submits = Enumerable.Range(0, 8).Select(i => batcher.SubmitAsync(i)).ToArray();
        await batcher.FlushAsync().WithTimeout();

        foreach (var submit in submits.Take(4))
        {
            var error = await FluentActions.Awaiting(() => submit).Should().ThrowAsync<InvalidOperationException>();
            error.Which.Message.Should().Contain("expected 4 results").And.Contain("returned 3 results");
        }

        (await Task.WhenAll(submits.Skip(4))).Should().Equal(4, 5, 6, 7);
        var statistics = batcher.GetStatistics();
        statistics.ItemsFailed.Should().Be(4);
        statistics.ItemsProcessed.Should().Be(4);
    }

    [Fact]
    public async Task A_null_result_list_is_a_wrong_count_too()
    {
        await using var batcher = new Batcher<int, int>(
            (_, _) => new ValueTask<IReadOnlyList<int>>((IReadOnlyList<int>)null!),
            Options());

        var submit = batcher.SubmitAsync(1);
        await batcher.FlushAsync().WithTimeout();

        (await FluentActions.Awaiting(() => submit).Should().ThrowAsync<InvalidOperationException>()).Which.Message.Should().Contain("null");
    }

    [Fact]
    public async Task A_Polly_retry_pipeline_wraps_processBatch()
    {
        var attempts = 0;
        var errors = 0;
        await using var batcher = new Batcher<int, int>(
            (batch, _) => Interlocked.Increment(ref attempts) < 3
                ? throw new TimeoutException("transient")
                : new ValueTask<IReadOnlyList<int>>(batch.ToArray()),
            Options(o =>
            {
                o.Pipeline = new ResiliencePipelineBuilder()
                    .AddRetry(new RetryStrategyOptions { MaxRetryAttempts = 2, Delay = TimeSpan.Zero })
                    .Build();
                o.OnError = (_, _) => Interlocked.Increment(ref errors);
            }));

        var submit = batcher.SubmitAsync(7);
        await batcher.FlushAsync().WithTimeout();

        (await submit.WithTimeout()).Should().Be(7);
        attempts.Should().Be(3);
        errors.Should().Be(0);
        batcher.GetStatistics().ItemsProcessed.Should().Be(1);
    }

    [Fact]
    public async Task A_retry_pipeline_that_gives_up_fails_the_batch_once()
    {
        var attempts = 0;
        var errors = new ConcurrentQueue<Exception>();
        await using var batcher = new Batcher<int>(
            (_, _) =>
            {
                Interlocked.Increment(ref attempts);
                throw new TimeoutException("always");
            },
            new BatcherOptions<int>
            {
                TimeProvider = _time,
                Pipeline = new ResiliencePipelineBuilder()
                    .AddRetry(new RetryStrategyOptions { MaxRetryAttempts = 2, Delay = TimeSpan.Zero })
                    .Build(),
                OnError = (_, error) => errors.Enqueue(error),
            });

        await batcher.AddAsync(1).WithTimeout();
        await batcher.DrainAsync().WithTimeout();

        attempts.Should().Be(3);
        errors.Should().ContainSingle().Which.Should().BeOfType<TimeoutException>();
        batcher.GetStatistics().ItemsFailed.Should().Be(1);
    }

    [Fact]
    public async Task SubmitAsync_after_drain_throws_InvalidOperationException_and_waiting_submits_are_refused()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var batcher = new Batcher<int, int>(
            async (batch, _) =>
            {
                await gate.Task;
                return batch.ToArray();
            },
            Options(o => { o.MaxBatchSize = 1; o.Capacity = 1; o.Name = "lookups"; }));
        var accepted = batcher.SubmitAsync(1);
        var waiting = batcher.SubmitAsync(2);
        await AsyncAssert.StillPendingAsync(waiting);

        var drain = batcher.DrainAsync();
        await FluentActions.Awaiting(() => waiting.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        gate.SetResult();
        await drain.WithTimeout();

        (await accepted).Should().Be(1);
        var submit = () => batcher.SubmitAsync(3);
        (await submit.Should().ThrowAsync<InvalidOperationException>()).Which.Message.Should().Contain("'lookups'");
        batcher.GetStatistics().ItemsAccepted.Should().Be(1);
    }

    [Fact]
    public async Task Cancelling_a_waiting_submit_cancels_its_task_and_the_item_is_never_batched()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var seen = new ConcurrentQueue<int>();
        await using var batcher = new Batcher<int, int>(
            async (batch, _) =>
            {
                await gate.Task;
                foreach (var item in batch)
                {
                    seen.Enqueue(item);
                }

                return batch.ToArray();
            },
            Options(o => { o.MaxBatchSize = 1; o.Capacity = 1; }));
        var first = batcher.SubmitAsync(1);
        using var cts = new CancellationTokenSource();
        var cancelled = batcher.SubmitAsync(2, cts.Token);

        await cts.CancelAsync();
        await FluentActions.Awaiting(() => cancelled.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        cancelled.IsCanceled.Should().BeTrue();

        gate.SetResult();
        (await first.WithTimeout()).Should().Be(1);
        await batcher.DrainAsync().WithTimeout();
        seen.Should().Equal(1);
    }

    [Fact]
    public async Task Items_dropped_by_a_drain_cut_short_get_cancelled_tasks()
    {
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var batcher = new Batcher<int, int>(
            async (batch, token) =>
            {
                started.TrySetResult();
                await Task.Delay(Timeout.Infinite, token);
                return batch.ToArray();
            },
            Options(o => o.MaxBatchSize = 1));
        var running = batcher.SubmitAsync(1);
        var queued = batcher.SubmitAsync(2);
        await started.Task.WithTimeout();

        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();
        await FluentActions.Awaiting(() => batcher.DrainAsync(cts.Token)).Should().ThrowAsync<OperationCanceledException>();

        await FluentActions.Awaiting(() => queued.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        queued.IsCanceled.Should().BeTrue();
        await FluentActions.Awaiting(() => running.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await batcher.Completion.WithTimeout();
        var statistics = batcher.GetStatistics();
        (statistics.ItemsFailed, statistics.ItemsDropped).Should().Be((1L, 1L));
    }

    private BatcherOptions<int> Options(Action<BatcherOptions<int>>? configure = null)
    {
        var options = new BatcherOptions<int> { MaxDelay = TimeSpan.FromSeconds(1), TimeProvider = _time };
        configure?.Invoke(options);
        return options;
    }
}
