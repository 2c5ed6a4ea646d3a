using System.Collections.Concurrent;
using System.Threading.Channels;

namespace AsyncPatterns.Tests.Shutdown;

/// <summary>An ordered log of what happened, shared by the fakes of one test.</summary>
internal sealed class EventLog
{
    private readonly ConcurrentQueue<string> _events = new();

    public void Add(string entry) => _events.Enqueue(entry);

    public IReadOnlyList<string> Events => [.. _events];
}

/// <summary>A component whose drain the test controls: it records when it starts and what token it got.</summary>
internal sealed class ScriptedDrainable(string name, EventLog log, Func<CancellationToken, Task>? drain = null) : IDrainable
{
    public CancellationToken Token { get; private set; }

    public int Calls;

    public Task DrainAsync(CancellationToken cancellationToken = default)
    {
        Interlocked.Increment(ref Calls);
        Token = cancellationToken;
        log.Add("drain:" + name);
        return drain?.Invoke(cancellationToken) ?? Task.CompletedTask;
    }
}

/// <summary>
/// A small queue that follows the IDrainable contract (one worker, counts everything), for tests of the shutdown
/// that do not depend on the library's own primitives.
/// </summary>
internal sealed class ContractQueue : IDrainable
{
    private readonly Channel<int> _channel = Channel.CreateUnbounded<int>();
    private readonly Func<int, CancellationToken, Task> _handler;
    private readonly CancellationTokenSource _inFlight = new();
    private readonly Task _worker;
    private long _accepted;
    private long _handled;
    private long _failed;
    private long _dropped;

    public ContractQueue(Func<int, CancellationToken, Task> handler)
    {
        _handler = handler;
        _worker = Task.Run(WorkAsync);
    }

    public long Accepted => Interlocked.Read(ref _accepted);

    public long Handled => Interlocked.Read(ref _handled);

    public long Failed => Interlocked.Read(ref _failed);

    public long Dropped => Interlocked.Read(ref _dropped);

    public Task Completion => _worker;

    public void Enqueue(int item)
    {
        Interlocked.Increment(ref _accepted);
        if (!_channel.Writer.TryWrite(item))
        {
            Interlocked.Decrement(ref _accepted);
            throw new InvalidOperationException("The ContractQueue is closed.");
        }
    }

    public async Task DrainAsync(CancellationToken cancellationToken = default)
    {
        _channel.Writer.TryComplete();
        try
        {
            await _worker.WaitAsync(cancellationToken);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            await _inFlight.CancelAsync();
            while (_channel.Reader.TryRead(out _))
            {
                Interlocked.Increment(ref _dropped);
            }

            throw;
        }
    }

    private async Task WorkAsync()
    {
        while (await _channel.Reader.WaitToReadAsync())
        {
            while (_channel.Reader.TryRead(out var item))
            {
                if (_inFlight.IsCancellationRequested)
                {
                    Interlocked.Increment(ref _dropped);
                    continue;
                }

                try
                {
                    await _handler(item, _inFlight.Token);
                    Interlocked.Increment(ref _handled);
                }
                catch (Exception)
                {
                    Interlocked.Increment(ref _failed);
                }
            }
        }
    }
}
