using System.Diagnostics.Metrics;

namespace AsyncPatterns;

/// <summary>
/// Names to subscribe to the library's telemetry, for example with OpenTelemetry's <c>AddMeter</c>.
/// </summary>
/// <remarks>
/// The library has one <see cref="Meter"/>, named <see cref="MeterName"/>. Its instruments are named
/// <c>asyncpatterns.&lt;pattern&gt;.&lt;measure&gt;</c> and tagged with <see cref="NameTag"/>, the
/// primitive's <see cref="AsyncPatternsOptions.Name"/>.
/// </remarks>
public static class AsyncPatternsDiagnostics
{
    /// <summary>The name of the library's one <see cref="Meter"/>: <c>AsyncPatterns</c>.</summary>
    public const string MeterName = "AsyncPatterns";

    /// <summary>The tag that carries a primitive's name on every measurement: <c>asyncpatterns.name</c>.</summary>
    public const string NameTag = "asyncpatterns.name";

    /// <summary>The library's one meter. Instruments are created once, as static fields, by each pattern.</summary>
    internal static readonly Meter Meter = new(MeterName, typeof(AsyncPatternsDiagnostics).Assembly.GetName().Version?.ToString(3));
}
