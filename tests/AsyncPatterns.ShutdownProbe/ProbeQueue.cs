using System.Threading.Channels;

namespace AsyncPatterns.ShutdownProbe;

/// <summary>
/// A bounded queue with one worker that follows the IDrainable contract and counts everything: a stand-in for
/// <c>WorkQueue&lt;T&gt;</c> until that primitive is available.
/// </summary>
internal sealed class ProbeQueue : IDrainable
{
    private readonly Channel<long> _channel;
    private readonly Func<long, CancellationToken, Task> _handler;
    private readonly CancellationTokenSource _inFlight = new();
    private readonly Task _worker;
    private long _accepted;
    private long _handled;
    private long _failed;
    private long _dropped;

    public ProbeQueue(Func<long, CancellationToken, Task> handler, int capacity)
    {
        _handler = handler;
        _channel = Channel.CreateBounded<long>(new BoundedChannelOptions(capacity) { SingleReader = true });
        _worker = Task.Run(WorkAsync);
    }

    public long Accepted => Interlocked.Read(ref _accepted);

    public long Handled => Interlocked.Read(ref _handled);

    public long Failed => Interlocked.Read(ref _failed);

    public long Dropped => Interlocked.Read(ref _dropped);

    public int Count => _channel.Reader.Count;

    /// <summary>Completes when every accepted item is handled, failed or dropped.</summary>
    public Task Completion => _worker;

    public async ValueTask EnqueueAsync(long item, CancellationToken cancellationToken)
    {
        // WaitToWriteAsync + TryWrite rather than WriteAsync(item, token): on .NET 10.0.12 a cancelled
        // BoundedChannel.WriteAsync can throw OperationCanceledException after the item went in (seen about once in
        // 20 runs), which would make an accepted item look refused. Here the token only ever cancels the wait.
        while (true)
        {
            // Counted before the write so that a worker never handles an item not yet counted as accepted.
            Interlocked.Increment(ref _accepted);
            if (_channel.Writer.TryWrite(item))
            {
                return;
            }

            Interlocked.Decrement(ref _accepted);
            if (!await _channel.Writer.WaitToWriteAsync(cancellationToken))
            {
                throw new InvalidOperationException("The queue is closed.");
            }
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
            throw;
        }
    }

    private async Task WorkAsync()
    {
        await foreach (var item in _channel.Reader.ReadAllAsync())
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
