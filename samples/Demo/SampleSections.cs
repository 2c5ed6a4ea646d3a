using AsyncPatterns.Samples.ApiGateway;
using AsyncPatterns.Samples.JobPipeline;

namespace AsyncPatterns.Demo;

/// <summary>The job pipeline sample (samples/JobPipeline) as a demo section.</summary>
internal sealed class JobPipelineSection : IDemoSection
{
    public string Title => "Job pipeline: producers → WorkQueue → enrichment in a CancellationScope → Batcher → SQLite, under GracefulShutdown";

    public async Task<bool> RunAsync(TimeSpan duration, CancellationToken stop)
    {
        var path = Path.Combine(Path.GetTempPath(), $"asyncpatterns-demo-{Environment.ProcessId}.db");
        try
        {
            return await PipelineScenario.RunAsync(new PipelineRunOptions(duration, path), stop) == 0;
        }
        finally
        {
            foreach (var file in new[] { path, path + "-wal", path + "-shm" })
            {
                File.Delete(file);
            }
        }
    }
}

/// <summary>The API gateway sample (samples/ApiGateway) as a demo section.</summary>
internal sealed class ApiGatewaySection : IDemoSection
{
    public string Title => "API gateway: PriorityScheduler + GcraRateLimiter + CircuitBreaker per upstream + Polly retry/timeout, against a real HTTP upstream";

    public async Task<bool> RunAsync(TimeSpan duration, CancellationToken stop) =>
        await GatewayScenario.RunAsync(new GatewayRunOptions(duration, PermitsPerSecond: 150), stop) == 0;
}
