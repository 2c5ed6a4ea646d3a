using Microsoft.Extensions.Logging;

namespace AsyncPatterns;

/// <summary>
/// Settings every primitive's options share: a name for logs and metrics, the clock and the logger factory.
/// </summary>
/// <remarks>
/// Options are read once, validated and copied by the primitive's constructor; changing an options object
/// afterwards has no effect on a primitive already built from it.
/// </remarks>
public abstract class AsyncPatternsOptions
{
    private protected AsyncPatternsOptions()
    {
    }

    /// <summary>
    /// Gets or sets the name used in log messages and as the <c>asyncpatterns.name</c> metric tag.
    /// </summary>
    /// <value>The default is <see langword="null"/>, which uses the primitive's type name.</value>
    public string? Name { get; set; }

    /// <summary>
    /// Gets or sets the clock used for every delay, deadline and duration.
    /// </summary>
    /// <value>The default is <see langword="null"/>, which means <see cref="System.TimeProvider.System"/>.</value>
    public TimeProvider? TimeProvider { get; set; }

    /// <summary>
    /// Gets or sets the logger factory used to create the primitive's logger.
    /// </summary>
    /// <value>The default is <see langword="null"/>, which means no logging.</value>
    public ILoggerFactory? LoggerFactory { get; set; }
}
