using System.Threading.Channels;
using BenchmarkDotNet.Attributes;

namespace AsyncPatterns.Benchmarks;

/// <summary>
/// 100,000 work items with random priorities (0–9) through a concurrency cap of 1 and 4, each item's result
/// awaited through a task:
/// <list type="bullet">
/// <item><description><see cref="PriorityScheduler"/>;</description></item>
/// <item><description>baseline: <c>Channel.CreateUnboundedPrioritized</c> read by N reader loops that complete a
/// <see cref="TaskCompletionSource{TResult}"/> per item (unbounded, no FIFO among equal priorities);</description></item>
/// <item><description>the seeds' naive scheduler: a lock around a <see cref="PriorityQueue{TElement, TPriority}"/>
/// and a <see cref="SemaphoreSlim"/> for the cap, one pump per item started with <see cref="Task.Run(Func{Task})"/>
/// (as the seeds' <c>asyncio.create_task</c>: scheduled, never run inline on the submitter), which waits for a slot and
/// then runs the most urgent queued item.</description></item>
/// </list>
/// <c>Sync</c> work measures the scheduling overhead alone; <c>Yield</c> work (one thread-pool hop, and the work's own
/// async state machine, the same in every variant) is the usual case: asynchronous work queued faster than it runs.
/// Times and allocations are per item.
/// </summary>
[MemoryDiagnoser]
public class PrioritySchedulerBenchmarks
{
    private const int Items = 100_000;

    private static readonly Func<CancellationToken, ValueTask<int>> SyncWork = static _ => new ValueTask<int>(1);

    private static readonly Func<CancellationToken, ValueTask<int>> YieldingWork = static async _ =>
    {
        await Task.Yield();
        return 1;
    };

    private Func<CancellationToken, ValueTask<int>> _work = SyncWork;

    private readonly Task<int>[] _tasks = new Task<int>[Items];
    private int[] _priorities = [];
    private PriorityScheduler _scheduler = null!;
    private Channel<ChannelItem> _channel = null!;
    private Task[] _readers = [];
    private NaivePriorityScheduler _naive = null!;

    [Params(1, 4)]
    public int MaxConcurrency { get; set; }

    /// <summary><c>Sync</c>: the work returns a completed value; <c>Yield</c>: it awaits <see cref="Task.Yield"/> first.</summary>
    [Params("Sync", "Yield")]
    public string WorkKind { get; set; } = "Sync";

    [GlobalSetup]
    public void Setup()
    {
        _work = WorkKind == "Yield" ? YieldingWork : SyncWork;
        var random = new Random(42);
        _priorities = Enumerable.Range(0, Items).Select(_ => random.Next(10)).ToArray();
        _scheduler = new PriorityScheduler(new PrioritySchedulerOptions { MaxConcurrency = MaxConcurrency });
        _channel = Channel.CreateUnboundedPrioritized(new UnboundedPrioritizedChannelOptions<ChannelItem>
        {
            Comparer = Comparer<ChannelItem>.Create(static (a, b) => a.Priority.CompareTo(b.Priority)),
        });
        _readers = Enumerable.Range(0, MaxConcurrency).Select(_ => Task.Run(ReadLoopAsync)).ToArray();
        _naive = new NaivePriorityScheduler(MaxConcurrency);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _channel.Writer.Complete();
        Task.WaitAll(_readers);
        _scheduler.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Items)]
    public async Task PrioritizedChannel()
    {
        var writer = _channel.Writer;
        for (var i = 0; i < Items; i++)
        {
            var source = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
            writer.TryWrite(new ChannelItem(_priorities[i], _work, source));
            _tasks[i] = source.Task;
        }

        await AwaitAllAsync();
    }

    [Benchmark(OperationsPerInvoke = Items)]
    public async Task PriorityScheduler()
    {
        for (var i = 0; i < Items; i++)
        {
            _tasks[i] = _scheduler.RunAsync(_work, _priorities[i]);
        }

        await AwaitAllAsync();
    }

    [Benchmark(OperationsPerInvoke = Items)]
    public async Task NaiveLockPriorityQueueSemaphore()
    {
        for (var i = 0; i < Items; i++)
        {
            _tasks[i] = _naive.RunAsync(_work, _priorities[i]);
        }

        await AwaitAllAsync();
    }

    private async Task AwaitAllAsync()
    {
        var sum = 0;
        foreach (var task in _tasks)
        {
            sum += await task;
        }

        if (sum != Items)
        {
            throw new InvalidOperationException("Lost items.");
        }
    }

    private async Task ReadLoopAsync()
    {
        var reader = _channel.Reader;
        while (await reader.WaitToReadAsync())
        {
            while (reader.TryRead(out var item))
            {
                try
                {
                    item.Source.TrySetResult(await item.Work(CancellationToken.None));
                }
                catch (Exception exception)
                {
                    item.Source.TrySetException(exception);
                }
            }
        }
    }

    private readonly record struct ChannelItem(int Priority, Func<CancellationToken, ValueTask<int>> Work, TaskCompletionSource<int> Source);

    /// <summary>The seeds' approach: a lock, a priority queue and a semaphore for the cap; one pump task per submission.</summary>
    private sealed class NaivePriorityScheduler(int maxConcurrency)
    {
        private readonly object _gate = new();
        private readonly PriorityQueue<(Func<CancellationToken, ValueTask<int>> Work, TaskCompletionSource<int> Source), (int, long)> _queue = new();
        private readonly SemaphoreSlim _slots = new(maxConcurrency, maxConcurrency);
        private long _sequence;

        public Task<int> RunAsync(Func<CancellationToken, ValueTask<int>> work, int priority)
        {
            var source = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_gate)
            {
                _queue.Enqueue((work, source), (priority, _sequence++));
            }

            // As the seeds' asyncio.create_task: the pump is scheduled to run later, never inline on the submitter.
            _ = Task.Run(PumpAsync);
            return source.Task;
        }

        private async Task PumpAsync()
        {
            await _slots.WaitAsync();
            try
            {
                (Func<CancellationToken, ValueTask<int>> Work, TaskCompletionSource<int> Source) item;
                lock (_gate)
                {
                    if (!_queue.TryDequeue(out item, out _))
                    {
                        return;
                    }
                }

                try
                {
                    item.Source.TrySetResult(await item.Work(CancellationToken.None));
                }
                catch (Exception exception)
                {
                    item.Source.TrySetException(exception);
                }
            }
            finally
            {
                _slots.Release();
            }
        }
    }
}
