using System.Runtime.InteropServices;

namespace AsyncPatterns;

/// <summary>SIGINT, SIGTERM and SIGQUIT handling (<see cref="GracefulShutdownOptions.HandleSignals"/>).</summary>
public sealed partial class GracefulShutdown
{
    private readonly PosixSignalRegistration?[]? _signals;
    private int _signalCount;

    private PosixSignalRegistration?[] RegisterSignals() =>
        [TryRegister(PosixSignal.SIGINT), TryRegister(PosixSignal.SIGTERM), TryRegister(PosixSignal.SIGQUIT)];

    private PosixSignalRegistration? TryRegister(PosixSignal signal)
    {
        try
        {
            return PosixSignalRegistration.Create(signal, OnSignal);
        }
        catch (PlatformNotSupportedException ex)
        {
            ShutdownLog.SignalUnsupported(_context.Logger, _context.Name, SignalName(signal), ex);
            return null;
        }
    }

    private void OnSignal(PosixSignalContext context)
    {
        var name = SignalName(context.Signal);
        var count = Interlocked.Increment(ref _signalCount);
        if (count >= 3)
        {
            // The escape hatch: let the platform's default action end a process whose shutdown is stuck.
            ShutdownLog.ThirdSignal(_context.Logger, _context.Name, name);
            context.Cancel = false;
            return;
        }

        // Keep the process alive: the shutdown ends it, by letting Main return.
        context.Cancel = true;
        if (count == 1)
        {
            ShutdownLog.SignalReceived(_context.Logger, _context.Name, name);
        }
        else
        {
            ShutdownLog.SecondSignal(_context.Logger, _context.Name, name);
        }

        // Off the runtime's signal thread: StoppingToken's callbacks are user code. The second signal also starts
        // the shutdown, in case it overtakes the first one's work item.
        ThreadPool.UnsafeQueueUserWorkItem(
            static state =>
            {
                if (!state.Abort)
                {
                    state.Self.Start(state.Name);
                }
                else if (!state.Self.Start(state.Name, "second signal (" + state.Name + ")"))
                {
                    state.Self.FireAbort("second signal (" + state.Name + ")");
                }
            },
            (Self: this, Name: name, Abort: count == 2),
            preferLocal: false);
    }

    private void DisposeSignals()
    {
        if (_signals is null)
        {
            return;
        }

        foreach (var registration in _signals)
        {
            registration?.Dispose();
        }
    }

    private static string SignalName(PosixSignal signal) => signal switch
    {
        PosixSignal.SIGINT => "SIGINT",
        PosixSignal.SIGTERM => "SIGTERM",
        PosixSignal.SIGQUIT => "SIGQUIT",
        _ => signal.ToString(),
    };
}
