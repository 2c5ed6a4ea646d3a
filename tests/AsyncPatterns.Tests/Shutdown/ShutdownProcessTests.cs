using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Threading.Channels;

namespace AsyncPatterns.Tests.Shutdown;

/// <summary>
/// The shutdown in a real process: the probe program (tests/AsyncPatterns.ShutdownProbe) feeds a
/// <see cref="WorkQueue{T}"/> continuously under HandleSignals; these tests send it real SIGTERMs through libc's kill
/// and read the report it prints (the queue's statistics and the <see cref="ShutdownReport"/>).
/// </summary>
public class ShutdownProcessTests
{
    private const int SigTerm = 15;
    private static readonly TimeSpan LineTimeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task SIGTERM_drains_everything_and_the_process_exits_0_with_accepted_equal_to_handled()
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS())
        {
            return; // POSIX signals only; PosixSignalRegistration maps them to console events on Windows.
        }

        await using var probe = Probe.Start("normal");
        await probe.WaitForLineAsync("READY");

        probe.Signal(SigTerm);
        await probe.WaitForLineAsync("STOPPING");
        var report = await probe.WaitForReportAsync();
        var exitCode = await probe.WaitForExitAsync(TimeSpan.FromSeconds(30));

        exitCode.Should().Be(0, "the process ends by itself after the shutdown, not killed by the signal");
        report["reason"].Should().Be("SIGTERM");
        report["timedOut"].Should().Be("False");
        long.Parse(report["accepted"], CultureInfo.InvariantCulture).Should().BeGreaterThan(0);
        report["handled"].Should().Be(report["accepted"], "every accepted item was processed: nothing lost");
        report["failed"].Should().Be("0");
        report["dropped"].Should().Be("0");
        report["tasksCompleted"].Should().Be("1", "the producer stopped on StoppingToken");
        var accepted = long.Parse(report["accepted"], CultureInfo.InvariantCulture);
        var confirmed = long.Parse(report["confirmed"], CultureInfo.InvariantCulture);
        (accepted - confirmed).Should().BeInRange(0, 1,
            "every EnqueueAsync that returned was accepted; at most the one cancelled by StoppingToken may have gone in " +
            "anyway (a BoundedChannel.WriteAsync cancellation race in the runtime), and it was handled, not lost");
        report["tasksAbandoned"].Should().Be("0");
        report["errors"].Should().Be("0");
    }

    [Fact]
    public async Task A_second_SIGTERM_during_a_slow_drain_aborts_it_and_the_process_exits_promptly_with_TimedOut()
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS())
        {
            return;
        }

        await using var probe = Probe.Start("slow");
        await probe.WaitForLineAsync("READY");

        probe.Signal(SigTerm);
        await probe.WaitForLineAsync("STOPPING");
        await Task.Delay(500);
        probe.HasExited.Should().BeFalse("the drain is deliberately slow: minutes of queued work");

        var aborted = Stopwatch.StartNew();
        probe.Signal(SigTerm);
        var report = await probe.WaitForReportAsync();
        var exitCode = await probe.WaitForExitAsync(TimeSpan.FromSeconds(30));

        aborted.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(15), "the second signal cuts the drain short at once");
        exitCode.Should().Be(0);
        report["timedOut"].Should().Be("True");
        var accepted = long.Parse(report["accepted"], CultureInfo.InvariantCulture);
        var handled = long.Parse(report["handled"], CultureInfo.InvariantCulture);
        var failed = long.Parse(report["failed"], CultureInfo.InvariantCulture);
        var dropped = long.Parse(report["dropped"], CultureInfo.InvariantCulture);
        handled.Should().BeLessThan(accepted, "the drain was cut short");
        (handled + failed + dropped).Should().Be(accepted, "what was not processed is reported as dropped, not lost");
        dropped.Should().BeGreaterThan(0);
    }

    // DllImport rather than LibraryImport: the generator needs AllowUnsafeBlocks in the whole test project.
#pragma warning disable SYSLIB1054
    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
#pragma warning restore SYSLIB1054

    private sealed class Probe : IAsyncDisposable
    {
        private readonly Process _process;
        private readonly Channel<string> _lines = Channel.CreateUnbounded<string>();
        private readonly List<string> _seen = [];

        private Probe(Process process)
        {
            _process = process;
        }

        public bool HasExited => _process.HasExited;

        public static Probe Start(string mode)
        {
            var path = typeof(ShutdownProcessTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
                .Single(a => a.Key == "ShutdownProbePath").Value!;
            File.Exists(path).Should().BeTrue($"the probe is built with the tests ({path})");
            var info = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            info.ArgumentList.Add(path);
            info.ArgumentList.Add(mode);
            var process = new Process { StartInfo = info };
            var probe = new Probe(process);
            process.OutputDataReceived += (_, e) =>
            {
                if (e.Data is null)
                {
                    probe._lines.Writer.TryComplete();
                }
                else
                {
                    probe._lines.Writer.TryWrite(e.Data);
                }
            };
            process.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is not null)
                {
                    probe._lines.Writer.TryWrite("stderr: " + e.Data);
                }
            };
            process.Start();
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            return probe;
        }

        public void Signal(int signal) =>
            Kill(_process.Id, signal).Should().Be(0, "kill(2) must deliver the signal");

        public async Task<string> WaitForLineAsync(string prefix)
        {
            using var cts = new CancellationTokenSource(LineTimeout);
            try
            {
                while (await _lines.Reader.WaitToReadAsync(cts.Token))
                {
                    while (_lines.Reader.TryRead(out var line))
                    {
                        _seen.Add(line);
                        if (line.StartsWith(prefix, StringComparison.Ordinal))
                        {
                            return line;
                        }
                    }
                }
            }
            catch (OperationCanceledException) when (cts.IsCancellationRequested)
            {
                throw new Xunit.Sdk.XunitException($"No '{prefix}' line within {LineTimeout}. Output so far:\n{string.Join('\n', _seen)}");
            }

            throw new Xunit.Sdk.XunitException($"The probe ended without a '{prefix}' line. Output:\n{string.Join('\n', _seen)}");
        }

        public async Task<Dictionary<string, string>> WaitForReportAsync()
        {
            var line = await WaitForLineAsync("REPORT ");
            return line["REPORT ".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries)
                .Select(pair => pair.Split('=', 2))
                .ToDictionary(kv => kv[0], kv => kv[1]);
        }

        public async Task<int> WaitForExitAsync(TimeSpan timeout)
        {
            using var cts = new CancellationTokenSource(timeout);
            try
            {
                await _process.WaitForExitAsync(cts.Token);
            }
            catch (OperationCanceledException) when (cts.IsCancellationRequested)
            {
                throw new Xunit.Sdk.XunitException($"The probe did not exit within {timeout}. Output:\n{string.Join('\n', _seen)}");
            }

            return _process.ExitCode;
        }

        public async ValueTask DisposeAsync()
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true); // only when a test failed: never leave a probe behind
                await _process.WaitForExitAsync();
            }

            _process.Dispose();
        }
    }
}
