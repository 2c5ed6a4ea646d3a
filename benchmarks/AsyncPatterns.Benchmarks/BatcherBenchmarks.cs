using System.Threading.Channels;
using System.Threading.Tasks.Dataflow;
using AsyncPatterns;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;

namespace AsyncPatterns.Benchmarks;

/// <summary>
/// 1M items through a batcher, per item. Two categories, each with its own baseline:
/// <list type="bullet">
/// <item><c>Add</c>: one producer awaiting every add, batches of 100, a trivial consumer. <c>Batcher&lt;T&gt;</c> vs
/// <c>BatchBlock(100)</c> linked to a bounded <c>ActionBlock</c> [baseline] vs a raw bounded <c>Channel&lt;T&gt;</c>
/// reader loop cutting batches of 100.</item>
/// <item><c>Submit</c>: windows of 1,000 submits, each awaiting its own result. <c>Batcher&lt;T, TResult&gt;</c> vs a
/// bounded channel reader loop cutting batches of up to 100 and completing a <c>TaskCompletionSource</c> per item
/// [baseline].</item>
/// </list>
/// </summary>
[MemoryDiagnoser]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class BatcherBenchmarks
{
    private const int Items = 1_000_000;
    private const int BatchSize = 100;
    private const int Buffered = 10 * BatchSize;
    private const int Window = 1_000;

    private long _sum;

    [Benchmark(Baseline = true, OperationsPerInvoke = Items)]
    [BenchmarkCategory("Add")]
    public async Task BatchBlock_to_ActionBlock()
    {
        var batches = new BatchBlock<int>(BatchSize, new GroupingDataflowBlockOptions { BoundedCapacity = Buffered });
        var consumer = new ActionBlock<int[]>(
            batch => _sum += batch.Length,
            new ExecutionDataflowBlockOptions { BoundedCapacity = Buffered / BatchSize });
        batches.LinkTo(consumer, new DataflowLinkOptions { PropagateCompletion = true });
        for (var i = 0; i < Items; i++)
        {
            await batches.SendAsync(i);
        }

        batches.Complete();
        await consumer.Completion;
    }

    [Benchmark(OperationsPerInvoke = Items)]
    [BenchmarkCategory("Add")]
    public async Task Batcher_AddAsync()
    {
        var batcher = new Batcher<int>(
            (batch, _) =>
            {
                _sum += batch.Count;
                return default;
            },
            new BatcherOptions<int> { MaxBatchSize = BatchSize, Capacity = Buffered });
        for (var i = 0; i < Items; i++)
        {
            await batcher.AddAsync(i);
        }

        await batcher.DrainAsync();
    }

    [Benchmark(OperationsPerInvoke = Items)]
    [BenchmarkCategory("Add")]
    public async Task Channel_reader_loop()
    {
        var channel = Channel.CreateBounded<int>(new BoundedChannelOptions(Buffered) { SingleReader = true, SingleWriter = true });
        var reader = Task.Run(async () =>
        {
            var batch = new int[BatchSize];
            var count = 0;
            while (await channel.Reader.WaitToReadAsync())
            {
                while (channel.Reader.TryRead(out var item))
                {
                    batch[count++] = item;
                    if (count == BatchSize)
                    {
                        _sum += count;
                        count = 0;
                    }
                }
            }

            _sum += count;
        });
        for (var i = 0; i < Items; i++)
        {
            await channel.Writer.WriteAsync(i);
        }

        channel.Writer.Complete();
        await reader;
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Items)]
    [BenchmarkCategory("Submit")]
    public async Task Channel_TaskCompletionSource_per_item()
    {
        var channel = Channel.CreateBounded<(int Item, TaskCompletionSource<int> Result)>(new BoundedChannelOptions(Buffered) { SingleReader = true });
        var reader = Task.Run(async () =>
        {
            var batch = new List<(int Item, TaskCompletionSource<int> Result)>(BatchSize);
            while (await channel.Reader.WaitToReadAsync())
            {
                while (batch.Count < BatchSize && channel.Reader.TryRead(out var entry))
                {
                    batch.Add(entry);
                }

                var results = Compute(batch.Count, i => batch[i].Item);
                for (var i = 0; i < batch.Count; i++)
                {
                    batch[i].Result.TrySetResult(results[i]);
                }

                batch.Clear();
            }
        });

        await RunCallers(async item =>
        {
            var result = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
            await channel.Writer.WriteAsync((item, result));
            return await result.Task;
        });
        channel.Writer.Complete();
        await reader;
    }

    [Benchmark(OperationsPerInvoke = Items)]
    [BenchmarkCategory("Submit")]
    public async Task Batcher_SubmitAsync()
    {
        var batcher = new Batcher<int, int>(
            (batch, _) => new ValueTask<IReadOnlyList<int>>(Compute(batch.Count, i => batch[i])),
            new BatcherOptions<int> { MaxBatchSize = BatchSize, Capacity = Buffered, MaxDelay = TimeSpan.FromMilliseconds(1) });
        await RunCallers(item => batcher.SubmitAsync(item));
        await batcher.DrainAsync();
    }

    private static int[] Compute(int count, Func<int, int> item)
    {
        var results = new int[count];
        for (var i = 0; i < count; i++)
        {
            results[i] = item(i) * 2;
        }

        return results;
    }

    /// <summary>
    /// One caller fans out a window of 1,000 submits (ten full batches) and awaits them all, a thousand times: the
    /// DataLoader shape. Windows that fill whole batches keep the measurement about per-item cost, not about
    /// <c>MaxDelay</c>: with fewer pending items than a batch the batcher waits for the age trigger by contract,
    /// whereas the channel loop sends whatever is there.
    /// </summary>
    private static async Task RunCallers(Func<int, Task<int>> submit)
    {
        var window = new Task<int>[Window];
        for (var first = 0; first < Items; first += Window)
        {
            for (var i = 0; i < Window; i++)
            {
                window[i] = submit(first + i);
            }

            for (var i = 0; i < Window; i++)
            {
                if (await window[i] != (first + i) * 2)
                {
                    throw new InvalidOperationException("Wrong result.");
                }
            }
        }
    }
}
