using System.Diagnostics.Metrics;
using Polly.CircuitBreaker;

namespace AsyncPatterns;

/// <summary>
/// The circuit breaker's instruments, created once on the library's meter (<c>asyncpatterns.circuitbreaker.*</c>).
/// </summary>
internal static class CircuitBreakerMetrics
{
    public const string OutcomeTag = "outcome";
    public const string StateTag = "state";
    public const string FromTag = "from";
    public const string ToTag = "to";

    public static readonly KeyValuePair<string, object?> Success = new(OutcomeTag, "success");
    public static readonly KeyValuePair<string, object?> Failure = new(OutcomeTag, "failure");
    public static readonly KeyValuePair<string, object?> Ignored = new(OutcomeTag, "ignored");

    private static readonly Lock RegistryLock = new();
    private static readonly List<WeakReference<CircuitBreaker>> Registry = [];
    private static int _pruneAt = 16;

    /// <summary>Calls that ran, tagged <c>outcome</c> = success, failure or ignored.</summary>
    public static readonly Counter<long> Calls = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.circuitbreaker.calls",
        unit: "{call}",
        description: "Calls that ran through a circuit breaker, by outcome: success, failure (counted against the circuit) or ignored (caller cancellation, or an exception ShouldHandle declined).");

    /// <summary>Calls refused without running, tagged with the <c>state</c> that refused them.</summary>
    public static readonly Counter<long> Rejections = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.circuitbreaker.rejections",
        unit: "{call}",
        description: "Calls a circuit breaker refused without running them, by the state that refused them (open, half_open, isolated).");

    /// <summary>State changes, tagged <c>from</c> and <c>to</c>.</summary>
    public static readonly Counter<long> Transitions = AsyncPatternsDiagnostics.Meter.CreateCounter<long>(
        "asyncpatterns.circuitbreaker.transitions",
        unit: "{transition}",
        description: "Circuit breaker state changes, by previous (from) and new (to) state.");

    /// <summary>The state of every live breaker: 0 closed, 1 open, 2 half-open, 3 isolated (Polly's CircuitState values).</summary>
    public static readonly ObservableGauge<int> State = AsyncPatternsDiagnostics.Meter.CreateObservableGauge(
        "asyncpatterns.circuitbreaker.state",
        ObserveStates,
        unit: "{state}",
        description: "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 isolated.");

    public static string StateName(CircuitState state) => state switch
    {
        CircuitState.Closed => "closed",
        CircuitState.Open => "open",
        CircuitState.HalfOpen => "half_open",
        CircuitState.Isolated => "isolated",
        _ => "unknown",
    };

    /// <summary>Adds a breaker to the state gauge; it leaves when it is garbage collected (a breaker has no Dispose).</summary>
    public static void Register(CircuitBreaker breaker)
    {
        lock (RegistryLock)
        {
            if (Registry.Count >= _pruneAt)
            {
                Registry.RemoveAll(static w => !w.TryGetTarget(out _));
                _pruneAt = Math.Max(16, Registry.Count * 2);
            }

            Registry.Add(new WeakReference<CircuitBreaker>(breaker));
        }
    }

    private static List<Measurement<int>> ObserveStates()
    {
        lock (RegistryLock)
        {
            var measurements = new List<Measurement<int>>(Registry.Count);
            Registry.RemoveAll(static w => !w.TryGetTarget(out _));
            foreach (var reference in Registry)
            {
                if (reference.TryGetTarget(out var breaker))
                {
                    measurements.Add(new Measurement<int>((int)breaker.State, breaker.NameTag));
                }
            }

            return measurements;
        }
    }
}
