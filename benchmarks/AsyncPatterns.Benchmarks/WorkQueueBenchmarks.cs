using System.Threading.Channels;
using System.Threading.Tasks.Dataflow;
using BenchmarkDotNet.Attributes;

namespace AsyncPatterns.Benchmarks;

/// <summary>
/// One producer pushes 1,000,000 items through a bounded buffer (capacity 1024) to <see cref="MaxConcurrency"/>
/// consumers running the same trivial synchronous handler, then waits until every item is handled.
/// Results are per item (OperationsPerInvoke).
/// </summary>
/// <remarks>
/// Baselines: a raw bounded <see cref="Channel{T}"/> with N reader loops (the practical limit),
/// <see cref="ActionBlock{TInput}"/> with BoundedCapacity and MaxDegreeOfParallelism (what a user would pick
/// instead), and the seeds' naive approach: a <see cref="SemaphoreSlim"/> and a <c>Task.Run</c> per item.
/// </remarks>
[MemoryDiagnoser]
public class WorkQueueBenchmarks
{
    private const int Items = 1_000_000;
    private const int Capacity = 1024;

    private static readonly Func<int, CancellationToken, ValueTask> Handler = static (item, _) =>
    {
        Sink = item;
        return ValueTask.CompletedTask;
    };

    /// <summary>Workers (reader loops, degree of parallelism, semaphore permits).</summary>
    [Params(1, 4)]
    public int MaxConcurrency { get; set; }

    private static int Sink { get; set; }

    [Benchmark(Baseline = true, OperationsPerInvoke = Items)]
    public async Task RawBoundedChannel()
    {
        // The same channel as the queue's: capacity, Wait mode, asynchronous continuations, multiple-writer/-reader
        // options. (BoundedChannel has no single-reader/-writer specialisation, so the flags do not change its speed.)
        var channel = Channel.CreateBounded<int>(new BoundedChannelOptions(Capacity) { SingleWriter = false, SingleReader = false });
        var readers = new Task[MaxConcurrency];
        for (var r = 0; r < readers.Length; r++)
        {
            readers[r] = Task.Run(async () =>
            {
                var reader = channel.Reader;
                while (await reader.WaitToReadAsync())
                {
                    while (reader.TryRead(out var item))
                    {
                        await Handler(item, CancellationToken.None);
                    }
                }
            });
        }

        var writer = channel.Writer;
        for (var i = 0; i < Items; i++)
        {
            await writer.WriteAsync(i);
        }

        writer.Complete();
        await Task.WhenAll(readers);
    }

    [Benchmark(OperationsPerInvoke = Items)]
    public async Task WorkQueue()
    {
        var queue = new WorkQueue<int>(Handler, new WorkQueueOptions<int> { Capacity = Capacity, MaxConcurrency = MaxConcurrency });
        for (var i = 0; i < Items; i++)
        {
            await queue.EnqueueAsync(i);
        }

        await queue.DrainAsync();
    }

    [Benchmark(OperationsPerInvoke = Items)]
    public async Task ActionBlock()
    {
        var block = new ActionBlock<int>(
            HandleSynchronously, // the Action<T> form: ActionBlock's fastest path for a synchronous handler
            new ExecutionDataflowBlockOptions { BoundedCapacity = Capacity, MaxDegreeOfParallelism = MaxConcurrency, SingleProducerConstrained = true });
        for (var i = 0; i < Items; i++)
        {
            await block.SendAsync(i);
        }

        block.Complete();
        await block.Completion;
    }

    private static void HandleSynchronously(int item)
    {
        var handled = Handler(item, CancellationToken.None);
        if (handled.IsCompleted)
        {
            handled.GetAwaiter().GetResult();
        }
        else
        {
            handled.AsTask().GetAwaiter().GetResult();
        }
    }

    [Benchmark(OperationsPerInvoke = Items)]
    public async Task NaiveSemaphoreTaskRun()
    {
        using var semaphore = new SemaphoreSlim(MaxConcurrency);
        for (var i = 0; i < Items; i++)
        {
            await semaphore.WaitAsync();
            var item = i;
            _ = Task.Run(async () =>
            {
                try
                {
                    await Handler(item, CancellationToken.None);
                }
                finally
                {
                    semaphore.Release();
                }
            });
        }

        for (var p = 0; p < MaxConcurrency; p++)
        {
            await semaphore.WaitAsync();
        }
    }
}
