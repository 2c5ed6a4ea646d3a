using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;
using Microsoft.Extensions.Logging;

namespace AsyncPatterns.Tests.Batching;

public sealed class BatcherLoggingAndFlushTests
{
    private readonly ManualTimeProvider _time = new();

    [Fact]
    public async Task Failures_drops_and_drains_are_logged_with_event_ids_in_the_batcher_range()
    {
        var provider = new CapturingLoggerProvider();
        using var factory = LoggerFactory.Create(b => b.SetMinimumLevel(LogLevel.Trace).AddProvider(provider));
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var batcher = new Batcher<int>(
            async (batch, token) =>
            {
                if (batch[0] == 0)
                {
                    throw new InvalidDataException("boom");
                }

                started.TrySetResult();
                await Task.Delay(Timeout.Infinite, token);
            },
            new BatcherOptions<int> { Name = "logged", MaxBatchSize = 1, LoggerFactory = factory, TimeProvider = _time });
        await batcher.AddAsync(0).WithTimeout();
        await batcher.AddAsync(1).WithTimeout();
        await batcher.AddAsync(2).WithTimeout();
        await started.Task.WithTimeout();

        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();
        await FluentActions.Awaiting(() => batcher.DrainAsync(cts.Token)).Should().ThrowAsync<OperationCanceledException>();
        await batcher.Completion.WithTimeout();

        var ids = provider.Entries.Select(e => e.Id).ToArray();
        ids.Should().OnlyContain(id => id >= 1400 && id <= 1499);
        ids.Should().Contain([1400, 1401, 1404, 1405, 1406, 1407]);
        provider.Entries.Single(e => e.Id == 1401).Message.Should().Contain("'logged'").And.Contain("1 items");
    }

    [Fact]
    public async Task Cancelling_FlushAsync_abandons_only_the_wait()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var batcher = new Batcher<int>(async (_, _) => await gate.Task, new BatcherOptions<int> { TimeProvider = _time });
        await batcher.AddAsync(1).WithTimeout();
        using var cts = new CancellationTokenSource();

        var flush = batcher.FlushAsync(cts.Token);
        await cts.CancelAsync();

        await FluentActions.Awaiting(() => flush.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        batcher.GetStatistics().BatchesByFlush.Should().Be(1, "the batch was emitted regardless");
        gate.SetResult();
        await batcher.FlushAsync().WithTimeout();
        batcher.GetStatistics().ItemsProcessed.Should().Be(1);
    }

    [Fact]
    public async Task A_flush_waiting_on_batches_that_a_cut_short_drain_drops_completes()
    {
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var batcher = new Batcher<int>(
            async (_, token) =>
            {
                started.TrySetResult();
                await Task.Delay(Timeout.Infinite, token);
            },
            new BatcherOptions<int> { MaxBatchSize = 1, TimeProvider = _time });
        await batcher.AddAsync(1).WithTimeout();
        await batcher.AddAsync(2).WithTimeout();
        await started.Task.WithTimeout();
        var flush = batcher.FlushAsync();

        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();
        await FluentActions.Awaiting(() => batcher.DrainAsync(cts.Token)).Should().ThrowAsync<OperationCanceledException>();

        await flush.WithTimeout();
        var statistics = batcher.GetStatistics();
        (statistics.ItemsFailed, statistics.ItemsDropped).Should().Be((1L, 1L));
    }

    private sealed class CapturingLoggerProvider : ILoggerProvider
    {
        public ConcurrentQueue<(int Id, string Message)> Entries { get; } = new();

        public ILogger CreateLogger(string categoryName) => new Logger(this);

        public void Dispose()
        {
        }

        private sealed class Logger(CapturingLoggerProvider owner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                owner.Entries.Enqueue((eventId.Id, formatter(state, exception)));
        }
    }
}
