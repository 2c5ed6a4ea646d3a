using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace AsyncPatterns;

/// <summary>
/// The shared settings of <see cref="AsyncPatternsOptions"/>, resolved once in a primitive's constructor:
/// a name (never null), a clock (never null), a logger (never null) and the metric tag for the name.
/// </summary>
internal sealed class PrimitiveContext
{
    private PrimitiveContext(string name, TimeProvider timeProvider, ILogger logger)
    {
        Name = name;
        TimeProvider = timeProvider;
        Logger = logger;
        NameTag = new KeyValuePair<string, object?>(AsyncPatternsDiagnostics.NameTag, name);
    }

    public string Name { get; }

    public TimeProvider TimeProvider { get; }

    public ILogger Logger { get; }

    /// <summary>The <c>asyncpatterns.name</c> tag to pass to every measurement.</summary>
    public KeyValuePair<string, object?> NameTag { get; }

    /// <summary>A tag list holding only <see cref="NameTag"/>.</summary>
    public TagList Tags => new() { NameTag };

    /// <summary>Resolves the shared settings; <paramref name="defaultName"/> is used when no name was given.</summary>
    /// <param name="options">The options; may be null, which means every default.</param>
    /// <param name="defaultName">The primitive's type name, for example <c>"WorkQueue"</c>.</param>
    /// <param name="category">The logger category, usually the primitive's full type name.</param>
    public static PrimitiveContext Create(AsyncPatternsOptions? options, string defaultName, string category)
    {
        var name = string.IsNullOrWhiteSpace(options?.Name) ? defaultName : options.Name;
        var timeProvider = options?.TimeProvider ?? TimeProvider.System;
        var logger = options?.LoggerFactory?.CreateLogger(category) ?? NullLogger.Instance;
        return new PrimitiveContext(name, timeProvider, logger);
    }
}
