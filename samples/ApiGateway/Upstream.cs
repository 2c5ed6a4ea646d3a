using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace AsyncPatterns.Samples.ApiGateway;

/// <summary>
/// The real HTTP upstream the gateway protects: four services with four personalities.
/// </summary>
internal static class Upstream
{
    /// <summary>The upstream services, in the order the report lists them.</summary>
    public static readonly string[] Services = ["catalog", "search", "payments", "inventory"];

    /// <param name="app">The Kestrel app to map the endpoints on.</param>
    /// <param name="run">How long the run lasts; inventory is down from 30% to 60% of it.</param>
    public static void Map(WebApplication app, TimeSpan run)
    {
        var started = DateTime.UtcNow;

        // catalog: fast and healthy.
        app.MapGet("/catalog", async (CancellationToken ct) =>
        {
            await Task.Delay(Random.Shared.Next(2, 10), ct);
            return Results.Ok("catalog");
        });

        // search: slow; one call in ten takes longer than the gateway's per-attempt timeout.
        app.MapGet("/search", async (CancellationToken ct) =>
        {
            var delay = Random.Shared.NextDouble() < 0.1 ? 600 : Random.Shared.Next(30, 150);
            await Task.Delay(delay, ct);
            return Results.Ok("search");
        });

        // payments: flaky, a quarter of calls fail with 500.
        app.MapGet("/payments", async (CancellationToken ct) =>
        {
            await Task.Delay(Random.Shared.Next(5, 25), ct);
            return Random.Shared.NextDouble() < 0.25 ? Results.StatusCode(500) : Results.Ok("payments");
        });

        // inventory: healthy, except down (503) for a while in the middle of the run.
        app.MapGet("/inventory", async (CancellationToken ct) =>
        {
            await Task.Delay(Random.Shared.Next(3, 15), ct);
            var at = (DateTime.UtcNow - started) / run;
            return at is >= 0.3 and < 0.6 ? Results.StatusCode(503) : Results.Ok("inventory");
        });
    }
}
