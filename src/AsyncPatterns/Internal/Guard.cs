using System.Diagnostics.CodeAnalysis;
using System.Globalization;

namespace AsyncPatterns;

/// <summary>
/// Argument checks with messages that name the option, say what is allowed and what was given.
/// </summary>
/// <remarks>
/// Partial so that a pattern can keep checks only it needs beside its own code
/// (<c>Internal/Guard.&lt;Pattern&gt;.cs</c>). Throws live in small <see cref="DoesNotReturnAttribute"/> helpers
/// so the checks inline cheaply on hot paths.
/// </remarks>
internal static partial class Guard
{
    /// <summary>Requires <paramref name="value"/> &gt; 0.</summary>
    public static void Positive(int value, string name)
    {
        if (value <= 0)
        {
            ThrowOutOfRange(name, value, "greater than 0");
        }
    }

    /// <summary>Requires <paramref name="value"/> &gt;= 0.</summary>
    public static void NotNegative(int value, string name)
    {
        if (value < 0)
        {
            ThrowOutOfRange(name, value, "0 or greater");
        }
    }

    /// <summary>Requires <paramref name="min"/> &lt;= <paramref name="value"/> &lt;= <paramref name="max"/>.</summary>
    public static void InRange(int value, int min, int max, string name)
    {
        if (value < min || value > max)
        {
            ThrowOutOfRange(name, value, string.Create(CultureInfo.InvariantCulture, $"between {min} and {max}"));
        }
    }

    /// <summary>Requires a finite <paramref name="value"/> &gt; 0.</summary>
    public static void PositiveFinite(double value, string name)
    {
        if (!(value > 0) || double.IsInfinity(value))
        {
            ThrowOutOfRange(name, value, "a finite number greater than 0");
        }
    }

    /// <summary>Requires a positive, finite <see cref="TimeSpan"/>.</summary>
    public static void Positive(TimeSpan value, string name)
    {
        if (value <= TimeSpan.Zero)
        {
            ThrowOutOfRange(name, value, "greater than TimeSpan.Zero");
        }
    }

    /// <summary>Requires a positive <see cref="TimeSpan"/> or <see cref="Timeout.InfiniteTimeSpan"/>.</summary>
    public static void PositiveOrInfinite(TimeSpan value, string name)
    {
        if (value <= TimeSpan.Zero && value != Timeout.InfiniteTimeSpan)
        {
            ThrowOutOfRange(name, value, "greater than TimeSpan.Zero, or Timeout.InfiniteTimeSpan");
        }
    }

    /// <summary>Requires a positive <see cref="TimeSpan"/> when one is given; null passes.</summary>
    public static void PositiveOrNull(TimeSpan? value, string name)
    {
        if (value is { } v && v <= TimeSpan.Zero)
        {
            ThrowOutOfRange(name, v, "greater than TimeSpan.Zero, or null");
        }
    }

    /// <summary>Requires a named member of <typeparamref name="TEnum"/>.</summary>
    public static void Defined<TEnum>(TEnum value, string name)
        where TEnum : struct, Enum
    {
        if (!Enum.IsDefined(value))
        {
            ThrowOutOfRange(name, value, "one of " + string.Join(", ", Enum.GetNames<TEnum>()));
        }
    }

    /// <summary>Throws the exception for a primitive that no longer accepts work.</summary>
    /// <param name="primitive">The primitive's kind, for example <c>WorkQueue</c>.</param>
    /// <param name="name">The instance's name from its options.</param>
    [DoesNotReturn]
    public static void ThrowClosed(string primitive, string name) =>
        throw ClosedException(primitive, name);

    /// <summary>Builds the exception for a primitive that no longer accepts work, for callers that fault a task with it.</summary>
    public static InvalidOperationException ClosedException(string primitive, string name) =>
        new(primitive == name
            ? $"The {primitive} is closed: it was completed, drained or disposed, so it accepts no new work."
            : $"The {primitive} '{name}' is closed: it was completed, drained or disposed, so it accepts no new work.");

    [DoesNotReturn]
    public static void ThrowOutOfRange(string name, object? actual, string allowed) =>
        throw new ArgumentOutOfRangeException(
            name,
            actual,
            string.Create(CultureInfo.InvariantCulture, $"{name} must be {allowed}; it was {actual}."));
}
