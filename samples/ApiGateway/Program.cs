using AsyncPatterns.Samples;
using AsyncPatterns.Samples.ApiGateway;

var cli = CommandLine.Parse(args, ["--duration", "--rate", "--quick"], out var error);
if (cli.Help || error is not null)
{
    if (error is not null)
    {
        Console.Error.WriteLine(error);
    }

    Console.WriteLine("""
        ApiGateway — the seeds' async API proxy on AsyncPatterns, against a real HTTP upstream on 127.0.0.1.

        Clients send interactive (priority 1) and batch (priority 5) requests at 1.5x the gateway's rate limit.
        Each request goes through a PriorityScheduler (32 concurrent, 100 queued, sheds the least urgent first,
        GCRA rate limiter), then Polly retry with jittered backoff, a CircuitBreaker per upstream and a Polly
        timeout, to four upstreams: fast, slow, flaky (500s) and one that is down for a while.
        Ctrl+C or SIGTERM shuts down gracefully. The final table gives p50/p95 latency per priority,
        retries, breaker transitions, the achieved rate and rejections.

        Usage: dotnet run --project samples/ApiGateway [-- options]
          --duration SECONDS   how long clients send requests (default 20)
          --rate PER_SECOND    the gateway's rate limit (default 150)
          --quick              a 4-second run (CI smoke test)
          --help               this text
        """);
    return error is null ? 0 : 2;
}

return await GatewayScenario.RunAsync(new GatewayRunOptions(
    cli.Duration(TimeSpan.FromSeconds(20), TimeSpan.FromSeconds(4)),
    cli.GetDouble("--rate", 150)));
