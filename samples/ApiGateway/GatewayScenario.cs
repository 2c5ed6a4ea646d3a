using System.Globalization;
using System.Threading.RateLimiting;
using Spectre.Console;

namespace AsyncPatterns.Samples.ApiGateway;

/// <summary>Settings for one run of the gateway scenario.</summary>
/// <param name="Duration">How long clients send requests.</param>
/// <param name="PermitsPerSecond">The gateway's rate limit (GCRA); clients offer 1.5× this.</param>
public sealed record GatewayRunOptions(TimeSpan Duration, double PermitsPerSecond);

/// <summary>
/// The seeds' async API proxy as a real program: clients send a mixed stream of interactive (priority 1) and
/// batch (priority 5) requests faster than the gateway may forward them; the gateway puts every request through a
/// <see cref="PriorityScheduler"/> (concurrency cap, priority-aware shedding) whose rate limiter is a
/// <see cref="GcraRateLimiter"/>, then through retry + a per-upstream <see cref="CircuitBreaker"/> + timeout to a
/// real HTTP upstream. Ctrl+C or SIGTERM (or the end of the run) starts a <see cref="GracefulShutdown"/>.
/// </summary>
public static class GatewayScenario
{
    public static async Task<int> RunAsync(GatewayRunOptions options, CancellationToken stop = default)
    {
        var (server, baseAddress) = await LocalHttpServer.StartAsync(app => Upstream.Map(app, options.Duration));
        await using var serverLifetime = server;
        Console.WriteLine($"Upstream listening on {baseAddress} (catalog: fast, search: slow, payments: flaky, inventory: down from 30% to 60% of the run)");
        Console.WriteLine($"Gateway: rate limit {options.PermitsPerSecond:0}/s (GCRA), 32 concurrent calls, 100 queued, clients offer {options.PermitsPerSecond * 1.5:0}/s for {options.Duration.TotalSeconds:0} s. Ctrl+C stops gracefully.");
        Console.WriteLine();

        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions
        {
            Name = "gateway",
            HandleSignals = true,
            DrainTimeout = TimeSpan.FromSeconds(5),
        });
        await using var stopping = stop.Register(() => _ = shutdown.ShutdownAsync("stopped by the caller"));
        using var gateway = new Gateway(baseAddress, breakDuration: TimeSpan.FromSeconds(Math.Clamp(options.Duration.TotalSeconds / 10, 0.5, 2)));
        using var limiter = new GcraRateLimiter(new GcraRateLimiterOptions
        {
            Name = "gateway",
            PermitsPerSecond = options.PermitsPerSecond,
            Burst = 10,
            QueueLimit = 64,
        });
        var scheduler = new PriorityScheduler(new PrioritySchedulerOptions
        {
            Name = "gateway",
            MaxConcurrency = 32,
            Capacity = 100,
            AgingInterval = TimeSpan.FromSeconds(5),
            RateLimiter = limiter,
        });
        shutdown.Register(scheduler);

        PriorityStats[] classes = [new(1, "interactive"), new(5, "batch")];
        var observers = new List<Task>();
        var started = TimeProvider.System.GetTimestamp();

        var clients = shutdown.Run(async stoppingToken =>
        {
            // Offer 1.5× the rate limit in 10 ms ticks, 30% interactive, 70% batch, spread over the upstreams.
            var perTick = options.PermitsPerSecond * 1.5 / 100;
            var owed = 0.0;
            using var ticker = new PeriodicTimer(TimeSpan.FromMilliseconds(10));
            while (!stoppingToken.IsCancellationRequested && TimeProvider.System.GetElapsedTime(started) < options.Duration)
            {
                for (owed += perTick; owed >= 1; owed--)
                {
                    var stats = Random.Shared.NextDouble() < 0.3 ? classes[0] : classes[1];
                    var service = Upstream.Services[Random.Shared.Next(Upstream.Services.Length)];
                    Task<string> request;
                    try
                    {
                        request = scheduler.RunAsync(ct => gateway.CallAsync(service, ct), stats.Priority);
                    }
                    catch (InvalidOperationException)
                    {
                        return; // the scheduler closed: shutdown has begun
                    }

                    Interlocked.Increment(ref stats.Issued);
                    lock (observers)
                    {
                        observers.Add(stats.ObserveAsync(request, TimeProvider.System.GetTimestamp()));
                    }
                }

                try
                {
                    await ticker.WaitForNextTickAsync(stoppingToken);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        });

        var finished = Task.WhenAny(clients, shutdown.Completion);
        await LiveView.RunAsync(
            finished,
            () => Live(classes, gateway, scheduler, started),
            () => Plain(classes, gateway, scheduler, started));

        var report = await shutdown.ShutdownAsync("run finished");
        Task[] pending;
        lock (observers)
        {
            pending = [.. observers];
        }

        await Task.WhenAll(pending);
        var elapsed = TimeProvider.System.GetElapsedTime(started);

        Console.WriteLine();
        LiveView.PrintTable(
            $"Requests by priority ({elapsed.TotalSeconds:0.0} s)",
            ["priority", "issued", "ok", "shed", "circuit open", "failed", "cancelled", "p50", "p95", "ok/s"],
            classes.Select(c => c.Row(elapsed)));
        Console.WriteLine();
        LiveView.PrintTable(
            "Upstreams",
            ["upstream", "attempts", "retries", "breaker now", "breaker transitions"],
            gateway.Routes.Select(r => new[]
            {
                r.Service,
                r.Attempts.ToString(CultureInfo.InvariantCulture),
                r.Retries.ToString(CultureInfo.InvariantCulture),
                r.Breaker.State.ToString(),
                r.Transitions.IsEmpty ? "-" : string.Join(", ", r.Transitions.GroupBy(t => t).Select(g => $"{g.Key} ×{g.Count()}")),
            }));

        var totalOk = classes.Sum(c => c.Succeeded);
        var limiterStats = limiter.GetStatistics();
        Console.WriteLine();
        Console.WriteLine($"Achieved rate: {totalOk / elapsed.TotalSeconds:0.0} ok/s against a limit of {options.PermitsPerSecond:0}/s; rate limiter granted {limiterStats?.TotalSuccessfulLeases ?? 0} permits and told callers to wait {limiterStats?.TotalFailedLeases ?? 0} times (paced by RetryAfter, no request refused).");
        Console.WriteLine($"Shutdown: {report.Reason}, {report.Elapsed.TotalMilliseconds:0} ms, timed out: {report.TimedOut}, errors: {report.Errors.Count}.");

        var issued = classes.Sum(c => c.Issued);
        var accounted = classes.Sum(c => c.Finished);
        var ok = issued == accounted;
        Console.WriteLine(ok
            ? $"Nothing lost: issued {issued} = ok {totalOk} + shed {classes.Sum(c => c.Shed)} + circuit open {classes.Sum(c => c.CircuitOpen)} + failed {classes.Sum(c => c.Failed)} + cancelled {classes.Sum(c => c.Cancelled)}"
            : $"LOST REQUESTS: issued {issued}, accounted for {accounted}");
        return ok ? 0 : 1;
    }

    private static Table Live(PriorityStats[] classes, Gateway gateway, PriorityScheduler scheduler, long started)
    {
        var elapsed = TimeProvider.System.GetElapsedTime(started);
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"API gateway — {elapsed.TotalSeconds:0.0} s, queued {scheduler.QueuedCount}, running {scheduler.RunningCount}");
        foreach (var h in new[] { "priority", "issued", "ok", "shed", "circuit open", "failed", "p50", "p95", "ok/s" })
        {
            table.AddColumn(new TableColumn(h).RightAligned());
        }

        foreach (var c in classes)
        {
            var r = c.Row(elapsed);
            table.AddRow(r[0], r[1], $"[green]{r[2]}[/]", $"[yellow]{r[3]}[/]", $"[red]{r[4]}[/]", $"[red]{r[5]}[/]", r[7], r[8], r[9]);
        }

        table.Caption(string.Join("   ", gateway.Routes.Select(r => $"{r.Service}: {State(r.Breaker.State)}")));
        return table;
    }

    private static string State(Polly.CircuitBreaker.CircuitState state) => state switch
    {
        Polly.CircuitBreaker.CircuitState.Closed => "[green]closed[/]",
        Polly.CircuitBreaker.CircuitState.HalfOpen => "[yellow]half-open[/]",
        _ => "[red]" + state.ToString().ToLowerInvariant() + "[/]",
    };

    private static string Plain(PriorityStats[] classes, Gateway gateway, PriorityScheduler scheduler, long started)
    {
        var elapsed = TimeProvider.System.GetElapsedTime(started);
        return $"[{elapsed.TotalSeconds,5:0.0} s] queued {scheduler.QueuedCount,3} running {scheduler.RunningCount,2} | " +
            string.Join(" | ", classes.Select(c => $"p{c.Priority}: ok {c.Succeeded} shed {c.Shed} open {c.CircuitOpen} failed {c.Failed}")) + " | " +
            string.Join(" ", gateway.Routes.Select(r => $"{r.Service}={r.Breaker.State}"));
    }
}
