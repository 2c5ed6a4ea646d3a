using System.Collections.Concurrent;
using System.Globalization;
using Spectre.Console;

namespace AsyncPatterns.Samples.JobPipeline;

/// <summary>A job application as it arrives.</summary>
internal sealed record Application(long Id, string Candidate, string Role);

/// <summary>Settings for one run of the pipeline.</summary>
public sealed record PipelineRunOptions(TimeSpan Duration, string DatabasePath);

/// <summary>
/// The seeds' job-application pipeline as a real program: producers → a backpressured <see cref="WorkQueue{T}"/>
/// → per-job enrichment, three concurrent HTTP lookups in a <see cref="CancellationScope"/> under a deadline →
/// a <see cref="Batcher{T}"/> writing to SQLite, one transaction per batch → <see cref="GracefulShutdown"/>.
/// At the end it reads the database back and proves every accepted job is stored exactly once.
/// </summary>
public static class PipelineScenario
{
    private static readonly string[] Roles = ["backend engineer", "data engineer", "SRE", "frontend engineer"];
    private static readonly TimeSpan EnrichmentDeadline = TimeSpan.FromMilliseconds(250);

    public static async Task<int> RunAsync(PipelineRunOptions options, CancellationToken stop = default)
    {
        var (server, baseAddress) = await LocalHttpServer.StartAsync(EnrichmentService.Map);
        await using var serverLifetime = server;
        await using var store = await JobStore.OpenAsync(options.DatabasePath);
        var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 128 }) { BaseAddress = baseAddress };
        Console.WriteLine($"Enrichment service on {baseAddress}; database {options.DatabasePath}");
        Console.WriteLine($"4 producers → WorkQueue (capacity 200, 16 workers) → enrichment (3 lookups, {EnrichmentDeadline.TotalMilliseconds:0} ms deadline) → Batcher (100 rows or 200 ms) → SQLite, for {options.Duration.TotalSeconds:0} s. Ctrl+C stops gracefully.");
        Console.WriteLine();

        var counters = new Counters();
        await using var shutdown = new GracefulShutdown(new GracefulShutdownOptions
        {
            Name = "pipeline",
            HandleSignals = true,
            DrainTimeout = TimeSpan.FromSeconds(15),
        });
        await using var stopping = stop.Register(() => _ = shutdown.ShutdownAsync("stopped by the caller"));

        var writer = new Batcher<StoredApplication>(
            async (batch, ct) =>
            {
                await store.WriteBatchAsync(batch, ct);
                Interlocked.Add(ref counters.Stored, batch.Count);
                Interlocked.Increment(ref counters.Batches);
            },
            new BatcherOptions<StoredApplication>
            {
                Name = "sqlite-writer",
                MaxBatchSize = 100,
                MaxDelay = TimeSpan.FromMilliseconds(200),
                OnError = (batch, ex) => Console.Error.WriteLine($"A batch of {batch.Count} failed to write: {ex.Message}"),
            });

        var queue = new WorkQueue<Application>(
            async (application, ct) =>
            {
                var enriched = await EnrichAsync(http, application, counters, ct);
                await writer.AddAsync(enriched, ct);
            },
            new WorkQueueOptions<Application>
            {
                Name = "applications",
                Capacity = 200,
                MaxConcurrency = 16,
                OnError = (application, ex) => Console.Error.WriteLine($"Application {application.Id} failed: {ex.Message}"),
            });

        // Drained in reverse order of registration: first the queue (its handlers feed the writer), then the writer.
        shutdown.Register(writer);
        shutdown.Register(queue);
        shutdown.Register(_ =>
        {
            http.Dispose();
            return Task.CompletedTask;
        });

        var accepted = new ConcurrentDictionary<long, byte>();
        var started = TimeProvider.System.GetTimestamp();
        var producers = Enumerable.Range(0, 4).Select(p => shutdown.Run(async stoppingToken =>
        {
            while (!stoppingToken.IsCancellationRequested && TimeProvider.System.GetElapsedTime(started) < options.Duration)
            {
                var id = Interlocked.Increment(ref counters.NextId);
                var application = new Application(id, $"candidate-{id % 997}", Roles[id % Roles.Length]);
                try
                {
                    var enqueue = queue.EnqueueAsync(application, stoppingToken);
                    if (!enqueue.IsCompleted)
                    {
                        // The queue is full: this producer now waits. That wait is the backpressure.
                        Interlocked.Increment(ref counters.ProducersWaiting);
                        Interlocked.Increment(ref counters.Waits);
                        try
                        {
                            await enqueue;
                        }
                        finally
                        {
                            Interlocked.Decrement(ref counters.ProducersWaiting);
                        }
                    }
                    else
                    {
                        await enqueue;
                    }

                    accepted[id] = 0;
                }
                catch (OperationCanceledException)
                {
                    return; // stopping: the item was not accepted
                }
                catch (InvalidOperationException)
                {
                    return; // the queue closed: shutdown has begun
                }
            }
        })).ToArray();

        await LiveView.RunAsync(
            Task.WhenAny(Task.WhenAll(producers), shutdown.Completion),
            () => Live(queue, counters, accepted.Count, started),
            () => Plain(queue, counters, accepted.Count, started));

        var report = await shutdown.ShutdownAsync("run finished");
        var queueStats = queue.GetStatistics();
        var (rows, distinct, enrichedRows, ids) = await store.ReadBackAsync();

        Console.WriteLine();
        LiveView.PrintTable(
            $"Pipeline ({TimeProvider.System.GetElapsedTime(started).TotalSeconds:0.0} s)",
            ["accepted", "handled", "failed", "dropped", "producer waits", "deadline misses", "batches", "rows", "distinct ids"],
            [[
                accepted.Count.ToString(CultureInfo.InvariantCulture),
                queueStats.Handled.ToString(CultureInfo.InvariantCulture),
                queueStats.Failed.ToString(CultureInfo.InvariantCulture),
                queueStats.Dropped.ToString(CultureInfo.InvariantCulture),
                counters.Waits.ToString(CultureInfo.InvariantCulture),
                counters.DeadlineMisses.ToString(CultureInfo.InvariantCulture),
                counters.Batches.ToString(CultureInfo.InvariantCulture),
                rows.ToString(CultureInfo.InvariantCulture),
                distinct.ToString(CultureInfo.InvariantCulture),
            ]]);
        Console.WriteLine($"Shutdown: {report.Reason}, {report.Elapsed.TotalMilliseconds:0} ms, timed out: {report.TimedOut}, tasks completed {report.TasksCompleted}, errors: {report.Errors.Count}.");

        var exactlyOnce = rows == accepted.Count && distinct == rows && ids.SetEquals(accepted.Keys);
        Console.WriteLine(exactlyOnce
            ? $"Nothing lost: accepted {accepted.Count} jobs = {rows} rows in SQLite, each id exactly once ({enrichedRows} enriched, {rows - enrichedRows} stored unenriched after missing the deadline)."
            : $"MISMATCH: accepted {accepted.Count} jobs, {rows} rows, {distinct} distinct ids, {accepted.Keys.Count(k => !ids.Contains(k))} accepted ids missing.");
        return exactlyOnce ? 0 : 1;
    }

    /// <summary>
    /// The seed's <c>enrich_application</c>: three lookups at once, all or nothing, under one deadline. A miss does
    /// not lose the job: it is stored unenriched (and could be re-enriched later).
    /// </summary>
    private static async Task<StoredApplication> EnrichAsync(HttpClient http, Application application, Counters counters, CancellationToken cancellationToken)
    {
        try
        {
            return await CancellationScope.RunAsync(
                async scope =>
                {
                    var profile = scope.Run(ct => http.GetStringAsync($"/profile/{application.Candidate}", ct));
                    var skills = scope.Run(ct => http.GetStringAsync($"/skills/{application.Candidate}", ct));
                    var history = scope.Run(ct => http.GetStringAsync($"/history/{application.Candidate}", ct));
                    return new StoredApplication(application.Id, application.Candidate, application.Role, await profile, await skills, await history);
                },
                EnrichmentDeadline,
                cancellationToken);
        }
        catch (Exception ex) when (ex is TimeoutException or HttpRequestException)
        {
            Interlocked.Increment(ref counters.DeadlineMisses);
            return new StoredApplication(application.Id, application.Candidate, application.Role, null, null, null);
        }
    }

    private static Table Live(WorkQueue<Application> queue, Counters c, int accepted, long started)
    {
        var elapsed = TimeProvider.System.GetElapsedTime(started);
        var depth = queue.Count;
        var bar = new string('█', depth * 30 / 200).PadRight(30, '·');
        return new Table().Border(TableBorder.Rounded).Title($"Job pipeline — {elapsed.TotalSeconds:0.0} s")
            .AddColumns("queue depth (200)", "in flight", "producers waiting", "accepted", "stored", "deadline misses", "batches")
            .AddRow($"{bar} {depth}", queue.InFlight.ToString(CultureInfo.InvariantCulture), $"[yellow]{Volatile.Read(ref c.ProducersWaiting)}[/] / 4",
                accepted.ToString(CultureInfo.InvariantCulture), $"[green]{Interlocked.Read(ref c.Stored)}[/]",
                Volatile.Read(ref c.DeadlineMisses).ToString(CultureInfo.InvariantCulture), Volatile.Read(ref c.Batches).ToString(CultureInfo.InvariantCulture));
    }

    private static string Plain(WorkQueue<Application> queue, Counters c, int accepted, long started) =>
        $"[{TimeProvider.System.GetElapsedTime(started).TotalSeconds,5:0.0} s] queue {queue.Count,3}/200, in flight {queue.InFlight,2}, " +
        $"producers waiting {Volatile.Read(ref c.ProducersWaiting)}/4, accepted {accepted}, stored {Interlocked.Read(ref c.Stored)}, " +
        $"deadline misses {Volatile.Read(ref c.DeadlineMisses)}, batches {Volatile.Read(ref c.Batches)}";

    private sealed class Counters
    {
        public long NextId;
        public long Stored;
        public int Batches;
        public int ProducersWaiting;
        public int Waits;
        public int DeadlineMisses;
    }
}
