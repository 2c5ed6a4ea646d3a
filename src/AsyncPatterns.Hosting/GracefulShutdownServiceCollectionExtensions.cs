using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace AsyncPatterns;

/// <summary>
/// Registers a <see cref="GracefulShutdown"/> that the .NET Generic Host runs when it stops.
/// </summary>
public static class GracefulShutdownServiceCollectionExtensions
{
    /// <summary>
    /// Adds a singleton <see cref="GracefulShutdown"/> and a hosted service that ties it to the host's lifetime.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="configure">Sets the options; <see cref="AsyncPatternsOptions.LoggerFactory"/> and
    /// <see cref="AsyncPatternsOptions.TimeProvider"/> left null are taken from the container when it has them.</param>
    /// <returns><paramref name="services"/>, for chaining.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="services"/> is <see langword="null"/>.</exception>
    /// <remarks>
    /// <para>
    /// When the host begins to stop (<see cref="IHostedLifecycleService.StoppingAsync"/>, before any hosted service's
    /// <see cref="IHostedService.StopAsync"/>), the shutdown starts: <see cref="GracefulShutdown.StoppingToken"/>
    /// fires and the drains begin. The host's <see cref="IHostedService.StopAsync"/> then waits for the report; if the
    /// host's own stop timeout (<c>HostOptions.ShutdownTimeout</c>) fires first, the drain is aborted
    /// (<see cref="GracefulShutdown.Abort"/>) and the cleanups still run within their bound. Set
    /// <see cref="GracefulShutdownOptions.DrainTimeout"/> below the host's timeout to end the drain on your own terms.
    /// </para>
    /// <para>
    /// The other way round, a shutdown started by the application (<see cref="GracefulShutdown.ShutdownAsync"/>)
    /// stops the host through <see cref="IHostApplicationLifetime.StopApplication"/>.
    /// </para>
    /// <para>
    /// Leave <see cref="GracefulShutdownOptions.HandleSignals"/> off: the host already handles SIGINT and SIGTERM.
    /// Register components and tracked work on the resolved <see cref="GracefulShutdown"/>. Calling this method again
    /// adds nothing.
    /// </para>
    /// </remarks>
    public static IServiceCollection AddGracefulShutdown(this IServiceCollection services, Action<GracefulShutdownOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.TryAddSingleton(provider =>
        {
            var options = new GracefulShutdownOptions();
            configure?.Invoke(options);
            options.LoggerFactory ??= provider.GetService<ILoggerFactory>();
            options.TimeProvider ??= provider.GetService<TimeProvider>();
            return new GracefulShutdown(options);
        });
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, GracefulShutdownHostedService>());
        return services;
    }
}
