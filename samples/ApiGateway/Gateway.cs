using System.Collections.Concurrent;
using Polly;
using Polly.Retry;
using Polly.Timeout;

namespace AsyncPatterns.Samples.ApiGateway;

/// <summary>
/// The gateway's resilience stack for one call: Polly retry (exponential backoff with jitter) around this
/// library's circuit breaker (one per upstream) around a Polly per-attempt timeout, around <see cref="HttpClient"/>.
/// </summary>
internal sealed class Gateway : IDisposable
{
    private readonly HttpClient _http;
    private readonly Dictionary<string, Route> _routes = [];

    public Gateway(Uri upstream, TimeSpan breakDuration)
    {
        _http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 256 }) { BaseAddress = upstream };
        foreach (var service in Upstream.Services)
        {
            var route = new Route(service);
            route.Breaker = new CircuitBreaker(new CircuitBreakerOptions
            {
                Name = service,
                FailureThreshold = 5,
                BreakDuration = breakDuration,
                HalfOpenMaxCalls = 2,
                OnStateChanged = change =>
                {
                    route.Transitions.Enqueue($"{change.PreviousState}->{change.NewState}");
                    return ValueTask.CompletedTask;
                },
            });
            route.Pipeline = new ResiliencePipelineBuilder()
                .AddRetry(new RetryStrategyOptions
                {
                    ShouldHandle = new PredicateBuilder().Handle<HttpRequestException>().Handle<TimeoutRejectedException>(),
                    MaxRetryAttempts = 2,
                    Delay = TimeSpan.FromMilliseconds(40),
                    BackoffType = DelayBackoffType.Exponential,
                    UseJitter = true,
                    OnRetry = _ =>
                    {
                        Interlocked.Increment(ref route.Retries);
                        return ValueTask.CompletedTask;
                    },
                })
                .AddCircuitBreaker(route.Breaker)
                .AddTimeout(TimeSpan.FromMilliseconds(250))
                .Build();
            _routes[service] = route;
        }
    }

    public IReadOnlyCollection<Route> Routes => _routes.Values;

    /// <summary>Calls <paramref name="service"/> through its resilience stack; a 5xx is a failure.</summary>
    public ValueTask<string> CallAsync(string service, CancellationToken cancellationToken)
    {
        var route = _routes[service];
        return route.Pipeline.ExecuteAsync(
            static async (state, ct) =>
            {
                Interlocked.Increment(ref state.Route.Attempts);
                using var response = await state.Http.GetAsync(state.Route.Service, ct);
                response.EnsureSuccessStatusCode(); // 500/503 become HttpRequestException: retried, and counted by the breaker
                return await response.Content.ReadAsStringAsync(ct);
            },
            (Http: _http, Route: route),
            cancellationToken);
    }

    public void Dispose() => _http.Dispose();

    internal sealed class Route(string service)
    {
        public int Attempts;
        public int Retries;

        public string Service { get; } = service;

        public CircuitBreaker Breaker { get; set; } = null!;

        public ResiliencePipeline Pipeline { get; set; } = null!;

        public ConcurrentQueue<string> Transitions { get; } = new();
    }
}
