using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace AsyncPatterns.Samples.JobPipeline;

/// <summary>
/// The real HTTP service the pipeline enriches applications from: the seed's candidate profile, resume skills and
/// employment history lookups. History is occasionally very slow, so some enrichments miss their deadline.
/// </summary>
internal static class EnrichmentService
{
    public static void Map(WebApplication app)
    {
        app.MapGet("/profile/{candidate}", async (string candidate, CancellationToken ct) =>
        {
            await Task.Delay(Random.Shared.Next(2, 20), ct);
            return Results.Ok(new { candidate, seniority = Random.Shared.Next(1, 6) });
        });

        app.MapGet("/skills/{candidate}", async (string candidate, CancellationToken ct) =>
        {
            await Task.Delay(Random.Shared.Next(5, 30), ct);
            string[] all = ["csharp", "sql", "kubernetes", "react", "python", "go"];
            return Results.Ok(new { candidate, skills = all.Where(_ => Random.Shared.NextDouble() < 0.4).ToArray() });
        });

        app.MapGet("/history/{candidate}", async (string candidate, CancellationToken ct) =>
        {
            // 3% of lookups hang far past the enrichment deadline.
            await Task.Delay(Random.Shared.NextDouble() < 0.03 ? 2_000 : Random.Shared.Next(2, 25), ct);
            return Results.Ok(new { candidate, employers = Random.Shared.Next(1, 8) });
        });
    }
}
