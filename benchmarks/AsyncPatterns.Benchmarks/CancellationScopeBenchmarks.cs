using AsyncPatterns;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;

namespace AsyncPatterns.Benchmarks;

/// <summary>
/// Spawn + join of 10,000 trivial children (category Spawn) and a bounded-concurrency map over 10,000 items
/// (category Map), each against the baseline a user would write instead.
/// </summary>
[MemoryDiagnoser]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class CancellationScopeBenchmarks
{
    private const int N = 10_000;
    private const int MaxConcurrency = 8;
    private readonly int[] _items = Enumerable.Range(0, N).ToArray();
    private readonly Task[] _tasks = new Task[N];

    /// <summary>Whether each child (or map call) yields once, instead of completing synchronously.</summary>
    [Params(false, true)]
    public bool Yield { get; set; }

    [Benchmark(Baseline = true, Description = "Task.Run + Task.WhenAll")]
    [BenchmarkCategory("Spawn")]
    public async Task RawWhenAll()
    {
        var tasks = _tasks;
        var yield = Yield;
        for (var i = 0; i < N; i++)
        {
            tasks[i] = Task.Run(() => ChildAsync(yield, CancellationToken.None));
        }

        await Task.WhenAll(tasks);
    }

    [Benchmark(Description = "Seeds: HashSet<Task> + done-callbacks + WhenAll")]
    [BenchmarkCategory("Spawn")]
    public async Task SeedsHashSet()
    {
        var set = new HashSet<Task>();
        var yield = Yield;
        for (var i = 0; i < N; i++)
        {
            var task = Task.Run(() => ChildAsync(yield, CancellationToken.None));
            lock (set)
            {
                set.Add(task);
            }

            _ = task.ContinueWith(
                static (t, state) =>
                {
                    var tasks = (HashSet<Task>)state!;
                    lock (tasks)
                    {
                        tasks.Remove(t);
                    }
                },
                set,
                CancellationToken.None,
                TaskContinuationOptions.ExecuteSynchronously,
                TaskScheduler.Default);
        }

        Task[] pending;
        lock (set)
        {
            pending = [.. set];
        }

        await Task.WhenAll(pending);
    }

    [Benchmark(Description = "CancellationScope.RunAsync (nursery)")]
    [BenchmarkCategory("Spawn")]
    public Task ScopeRunAsync()
    {
        var yield = Yield;
        return CancellationScope.RunAsync(scope =>
        {
            Func<CancellationToken, Task> child = yield ? YieldingChild : TrivialChild;
            for (var i = 0; i < N; i++)
            {
                _ = scope.Run(child);
            }

            return Task.CompletedTask;
        });
    }

    [Benchmark(Description = "await using CancellationScope + Task.WhenAll")]
    [BenchmarkCategory("Spawn")]
    public async Task ScopeAwaitUsing()
    {
        await using var scope = new CancellationScope();
        var tasks = _tasks;
        Func<CancellationToken, Task> child = Yield ? YieldingChild : TrivialChild;
        for (var i = 0; i < N; i++)
        {
            tasks[i] = scope.Run(child);
        }

        await Task.WhenAll(tasks);
    }

    [Benchmark(Baseline = true, Description = "Parallel.ForEachAsync into results[]")]
    [BenchmarkCategory("Map")]
    public async Task<int[]> ParallelForEach()
    {
        var results = new int[N];
        var yield = Yield;
        await Parallel.ForEachAsync(
            _items,
            new ParallelOptions { MaxDegreeOfParallelism = MaxConcurrency },
            async (i, ct) => results[i] = await SelectorAsync(i, yield, ct));
        return results;
    }

    [Benchmark(Description = "CancellationScope.SelectAsync")]
    [BenchmarkCategory("Map")]
    public Task<int[]> SelectAsync()
    {
        var yield = Yield;
        return CancellationScope.SelectAsync(_items, (i, ct) => SelectorAsync(i, yield, ct), MaxConcurrency);
    }

    private static Task ChildAsync(bool yield, CancellationToken ct) => yield ? YieldingChild(ct) : TrivialChild(ct);

    private static Task TrivialChild(CancellationToken ct) => Task.CompletedTask;

    private static async Task YieldingChild(CancellationToken ct) => await Task.Yield();

    private static ValueTask<int> SelectorAsync(int i, bool yield, CancellationToken ct) =>
        yield ? YieldingSelectorAsync(i) : ValueTask.FromResult(i * 2);

    private static async ValueTask<int> YieldingSelectorAsync(int i)
    {
        await Task.Yield();
        return i * 2;
    }
}
