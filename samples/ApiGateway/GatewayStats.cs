using System.Collections.Concurrent;
using System.Globalization;
using Polly;
using Polly.CircuitBreaker;

namespace AsyncPatterns.Samples.ApiGateway;

/// <summary>What happened to the requests of one priority class.</summary>
internal sealed class PriorityStats(int priority, string label)
{
    public int Issued;
    public int Succeeded;
    public int Shed;
    public int CircuitOpen;
    public int Failed;
    public int Cancelled;

    public int Priority { get; } = priority;

    public string Label { get; } = label;

    public ConcurrentBag<double> LatenciesMs { get; } = [];

    public int Finished => Volatile.Read(ref Succeeded) + Volatile.Read(ref Shed) + Volatile.Read(ref CircuitOpen) + Volatile.Read(ref Failed) + Volatile.Read(ref Cancelled);

    /// <summary>Waits for one request's task and files its outcome. Never throws: every request ends in one bucket.</summary>
    public async Task ObserveAsync(Task<string> request, long startTimestamp)
    {
        try
        {
            await request;
            LatenciesMs.Add(TimeProvider.System.GetElapsedTime(startTimestamp).TotalMilliseconds);
            Interlocked.Increment(ref Succeeded);
        }
        catch (WorkRejectedException)
        {
            Interlocked.Increment(ref Shed); // the scheduler shed it: queue full of more urgent work
        }
        catch (ExecutionRejectedException ex) when (ex is BrokenCircuitException)
        {
            Interlocked.Increment(ref CircuitOpen); // refused fast by the breaker, the upstream was spared
        }
        catch (OperationCanceledException)
        {
            Interlocked.Increment(ref Cancelled); // the shutdown's deadline cut it short
        }
        catch (Exception)
        {
            Interlocked.Increment(ref Failed); // retries exhausted, timeout, rate limit refusal
        }
    }

    public string[] Row(TimeSpan elapsed)
    {
        var sorted = LatenciesMs.OrderBy(x => x).ToList();
        var rate = Succeeded / Math.Max(elapsed.TotalSeconds, 0.001);
        return
        [
            $"{Priority} ({Label})",
            Issued.ToString(CultureInfo.InvariantCulture),
            Succeeded.ToString(CultureInfo.InvariantCulture),
            Shed.ToString(CultureInfo.InvariantCulture),
            CircuitOpen.ToString(CultureInfo.InvariantCulture),
            Failed.ToString(CultureInfo.InvariantCulture),
            Cancelled.ToString(CultureInfo.InvariantCulture),
            Ms(LiveView.Percentile(sorted, 50)),
            Ms(LiveView.Percentile(sorted, 95)),
            rate.ToString("0.0", CultureInfo.InvariantCulture),
        ];
    }

    private static string Ms(double value) => double.IsNaN(value) ? "-" : value.ToString("0", CultureInfo.InvariantCulture) + " ms";
}
