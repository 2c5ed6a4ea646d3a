using AsyncPatterns.Samples;
using AsyncPatterns.Samples.JobPipeline;

var cli = CommandLine.Parse(args, ["--duration", "--quick"], out var error);
if (cli.Help || error is not null)
{
    if (error is not null)
    {
        Console.Error.WriteLine(error);
    }

    Console.WriteLine("""
        JobPipeline — the seeds' job-application pipeline on AsyncPatterns, with a real HTTP enrichment service
        on 127.0.0.1 and a real SQLite database.

        4 producers → WorkQueue (bounded: producers wait when it is full) → enrichment: profile, skills and
        history fetched at once in a CancellationScope under a 250 ms deadline → Batcher (100 rows or 200 ms)
        writing one SQLite transaction per batch → GracefulShutdown (Ctrl+C / SIGTERM, or the end of the run).
        At the end it reads the database back and proves every accepted job is stored exactly once.

        Usage: dotnet run --project samples/JobPipeline [-- options]
          --duration SECONDS   how long producers run (default 10)
          --quick              a 2-second run (CI smoke test)
          --help               this text
        """);
    return error is null ? 0 : 2;
}

var path = Path.Combine(Path.GetTempPath(), $"asyncpatterns-jobs-{Environment.ProcessId}.db");
try
{
    return await PipelineScenario.RunAsync(new PipelineRunOptions(cli.Duration(TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(2)), path));
}
finally
{
    foreach (var file in new[] { path, path + "-wal", path + "-shm" })
    {
        File.Delete(file);
    }
}
