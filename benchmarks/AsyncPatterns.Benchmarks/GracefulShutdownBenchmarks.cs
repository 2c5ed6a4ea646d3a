using BenchmarkDotNet.Attributes;

namespace AsyncPatterns.Benchmarks;

/// <summary>
/// The cost of tracking background work until a shutdown: start <see cref="Tasks"/> tracked tasks that finish
/// asynchronously, then shut down and wait for them. Per operation = per tracked task.
/// </summary>
/// <remarks>
/// Baselines: the seeds' <c>GracefulApp</c> (a set of tasks under a lock, each removing itself when done, then
/// <c>Task.WhenAll</c> with a timeout), and bare <c>Task.WhenAll</c> with no tracking at all.
/// </remarks>
[MemoryDiagnoser]
public class GracefulShutdownBenchmarks
{
    private const int Tasks = 1000;

    private static async Task WorkAsync(CancellationToken cancellationToken)
    {
        await Task.Yield();
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Tasks, Description = "seeds' GracefulApp: HashSet + lock + WhenAll/timeout")]
    public async Task HandRolled()
    {
        var set = new HashSet<Task>();
        var gate = new object();
        using var stopping = new CancellationTokenSource();
        for (var i = 0; i < Tasks; i++)
        {
            var task = WorkAsync(stopping.Token);
            lock (gate)
            {
                set.Add(task);
            }

            _ = task.ContinueWith(
                t =>
                {
                    lock (gate)
                    {
                        set.Remove(t);
                    }
                },
                CancellationToken.None,
                TaskContinuationOptions.ExecuteSynchronously,
                TaskScheduler.Default);
        }

        await stopping.CancelAsync();
        Task[] pending;
        lock (gate)
        {
            pending = [.. set];
        }

        await Task.WhenAll(pending).WaitAsync(TimeSpan.FromSeconds(30));
    }

    [Benchmark(OperationsPerInvoke = Tasks, Description = "Task.WhenAll, no tracking, no report")]
    public async Task BareWhenAll()
    {
        using var stopping = new CancellationTokenSource();
        var tasks = new Task[Tasks];
        for (var i = 0; i < Tasks; i++)
        {
            tasks[i] = WorkAsync(stopping.Token);
        }

        await stopping.CancelAsync();
        await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(30));
    }

    [Benchmark(OperationsPerInvoke = Tasks, Description = "GracefulShutdown.Run + ShutdownAsync (report)")]
    public async Task<int> GracefulShutdownRun()
    {
        var shutdown = new GracefulShutdown();
        for (var i = 0; i < Tasks; i++)
        {
            _ = shutdown.Run(WorkAsync);
        }

        var report = await shutdown.ShutdownAsync();
        return report.TasksCompleted;
    }
}
