using Microsoft.Extensions.Hosting;

namespace AsyncPatterns;

/// <summary>
/// Runs the <see cref="GracefulShutdown"/> when the host stops, and stops the host when the shutdown starts first.
/// </summary>
internal sealed class GracefulShutdownHostedService : IHostedLifecycleService
{
    /// <summary>The reason recorded in the report when the host's stop starts the shutdown.</summary>
    internal const string HostStoppingReason = "host stopping";

    private readonly GracefulShutdown _shutdown;
    private readonly IHostApplicationLifetime _lifetime;
    private CancellationTokenRegistration _stopHost;

    public GracefulShutdownHostedService(GracefulShutdown shutdown, IHostApplicationLifetime lifetime)
    {
        _shutdown = shutdown;
        _lifetime = lifetime;
    }

    public Task StartingAsync(CancellationToken cancellationToken)
    {
        _stopHost = _shutdown.StoppingToken.Register(static state => ((IHostApplicationLifetime)state!).StopApplication(), _lifetime);
        return Task.CompletedTask;
    }

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppingAsync(CancellationToken cancellationToken)
    {
        // Start now, before the hosted services' StopAsync calls, and wait in StopAsync: the drains overlap with
        // the other services stopping instead of delaying them.
        _ = _shutdown.ShutdownAsync(HostStoppingReason);
        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        var completion = _shutdown.ShutdownAsync(HostStoppingReason);
        try
        {
            await completion.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // The host's stop timeout passed: cut the drain short; the cleanups still run, each within its bound.
            _shutdown.Abort();
            await completion.ConfigureAwait(false);
        }
    }

    public Task StoppedAsync(CancellationToken cancellationToken)
    {
        _stopHost.Unregister(); // not Dispose: it would wait for a StopApplication callback in progress
        return Task.CompletedTask;
    }
}
