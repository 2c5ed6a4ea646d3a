using AsyncPatterns.Tests.TestSupport;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace AsyncPatterns.Tests.Shutdown;

public class GracefulShutdownHostingTests
{
    private static IHost BuildHost(Action<GracefulShutdownOptions>? configure = null)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Services.AddGracefulShutdown(configure);
        builder.Services.AddGracefulShutdown(configure); // a second call adds nothing
        return builder.Build();
    }

    [Fact]
    public async Task Stopping_the_host_runs_the_shutdown_and_waits_for_its_report()
    {
        using var host = BuildHost(o => o.Name = "hosted");
        var shutdown = host.Services.GetRequiredService<GracefulShutdown>();
        host.Services.GetServices<IHostedService>().Should().ContainSingle();
        var log = new EventLog();
        shutdown.Register(new ScriptedDrainable("queue", log, async _ => { await Task.Delay(20); log.Add("drained"); }));
        _ = shutdown.Run(async stopping => { await stopping.WhenCancelled(); log.Add("task-stopped"); });
        await host.StartAsync().WithTimeout();
        shutdown.IsShuttingDown.Should().BeFalse();

        await host.StopAsync().WithTimeout();

        shutdown.Completion.IsCompletedSuccessfully.Should().BeTrue("StopAsync waited for the shutdown");
        var report = await shutdown.Completion;
        report.Reason.Should().Be("host stopping");
        report.TimedOut.Should().BeFalse();
        report.TasksCompleted.Should().Be(1);
        log.Events.Should().Equal("task-stopped", "drain:queue", "drained");
    }

    [Fact]
    public async Task A_shutdown_started_by_the_application_stops_the_host()
    {
        using var host = BuildHost();
        var shutdown = host.Services.GetRequiredService<GracefulShutdown>();
        await host.StartAsync().WithTimeout();
        var lifetime = host.Services.GetRequiredService<IHostApplicationLifetime>();

        var report = await shutdown.ShutdownAsync("fatal error").WithTimeout();

        await AsyncAssert.EventuallyAsync(() => lifetime.ApplicationStopping.IsCancellationRequested, "the host is told to stop");
        await host.WaitForShutdownAsync().WithTimeout();
        report.Reason.Should().Be("fatal error");
    }

    [Fact]
    public async Task When_the_hosts_stop_timeout_fires_first_the_drain_is_aborted()
    {
        using var host = BuildHost(o => o.DrainTimeout = TimeSpan.FromMinutes(10));
        var shutdown = host.Services.GetRequiredService<GracefulShutdown>();
        var log = new EventLog();
        var component = new ScriptedDrainable("stuck", log, ct => Task.Delay(Timeout.Infinite, ct));
        shutdown.Register(component);
        await host.StartAsync().WithTimeout();

        using var hostTimeout = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));
        await host.StopAsync(hostTimeout.Token).WithTimeout();

        var report = await shutdown.Completion.WithTimeout();
        report.TimedOut.Should().BeTrue();
        component.Token.IsCancellationRequested.Should().BeTrue();
        shutdown.AbortToken.IsCancellationRequested.Should().BeTrue();
    }

    [Fact]
    public async Task Options_left_null_are_taken_from_the_container()
    {
        var clock = new ManualTimeProvider();
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Services.AddSingleton<TimeProvider>(clock);
        builder.Services.AddGracefulShutdown(o => o.DrainTimeout = TimeSpan.FromSeconds(1));
        using var host = builder.Build();
        var shutdown = host.Services.GetRequiredService<GracefulShutdown>();

        _ = shutdown.Run(_ => Task.Delay(Timeout.Infinite)); // ignores its token
        var pending = shutdown.ShutdownAsync();
        clock.Advance(TimeSpan.FromSeconds(1));

        shutdown.AbortToken.IsCancellationRequested.Should().BeTrue("the deadline ran on the container's TimeProvider");
        (await pending.WithTimeout()).TasksAbandoned.Should().Be(1);
    }
}
