using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Scopes;

/// <summary>10,000 children with random delays, faults and cancellations, repeated; exact accounting afterwards.</summary>
public sealed class CancellationScopeStressTests
{
    private const int Children = 10_000;
    private static readonly TimeSpan HardTimeout = TimeSpan.FromSeconds(20);

    private enum Kind
    {
        Quick,
        Yield,
        Delay,
        Fault,
        FaultAfterYield,
        WaitForCancel,
    }

    [Fact]
    public async Task Await_using_scope_never_leaves_a_child_running_and_accounts_for_every_child()
    {
        for (var round = 0; round < 4; round++)
        {
            var random = new Random(round);
            var kinds = Enumerable.Range(0, Children).Select(_ => (Kind)random.Next(6)).ToArray();
            var counters = new Counters();
            var tasks = new Task[Children];
            var scope = new CancellationScope(new CancellationScopeOptions { MaxConcurrency = round % 2 == 0 ? int.MaxValue : 64 });
            for (var i = 0; i < Children; i++)
            {
                var kind = kinds[i];
                tasks[i] = scope.Run(ct => ChildAsync(kind, counters, ct));
            }

            await Task.Delay(random.Next(0, 5));
            await scope.DisposeAsync().WithTimeout(HardTimeout);

            counters.Running.Should().Be(0, "no child is still running after its scope ends (round {0})", round);
            tasks.Should().OnlyContain(t => t.IsCompleted);
            var stats = scope.GetStatistics();
            stats.Accepted.Should().Be(Children);
            (stats.Succeeded + stats.Failed + stats.Cancelled).Should().Be(Children);
            stats.Failed.Should().Be(counters.Thrown);
            stats.Succeeded.Should().Be(counters.Returned);
            stats.Pending.Should().Be(0);
            scope.GetFailures().Should().HaveCount(counters.Thrown);
            tasks.Count(t => t.IsFaulted).Should().Be(counters.Thrown);
            tasks.Count(t => t.IsCompletedSuccessfully).Should().Be(counters.Returned);
        }
    }

    [Fact]
    public async Task Nursery_fails_fast_waits_for_everything_and_reports_every_failure()
    {
        for (var round = 0; round < 4; round++)
        {
            var random = new Random(100 + round);
            var kinds = Enumerable.Range(0, Children).Select(_ => random.Next(1000) == 0 ? Kind.FaultAfterYield : (Kind)random.Next(3)).ToArray();
            var counters = new Counters();
            var tasks = new Task[Children];
            CancellationScope? escaped = null;
            var run = CancellationScope.RunAsync(scope =>
            {
                escaped = scope;
                for (var i = 0; i < Children; i++)
                {
                    var kind = kinds[i];
                    try
                    {
                        tasks[i] = scope.Run(ct => ChildAsync(kind, counters, ct));
                    }
                    catch (InvalidOperationException)
                    {
                        tasks[i] = Task.CompletedTask; // refused: the scope was already cancelled by a failure
                    }
                }

                return Task.CompletedTask;
            }, new CancellationScopeOptions { MaxConcurrency = round % 2 == 0 ? int.MaxValue : 32 });

            Exception? thrown = null;
            try
            {
                await run.WithTimeout(HardTimeout);
            }
            catch (Exception ex)
            {
                thrown = ex;
            }

            counters.Running.Should().Be(0);
            tasks.Should().OnlyContain(t => t.IsCompleted);
            var stats = escaped!.GetStatistics();
            (stats.Succeeded + stats.Failed + stats.Cancelled).Should().Be(stats.Accepted);
            stats.Failed.Should().Be(counters.Thrown);
            if (counters.Thrown == 0)
            {
                thrown.Should().BeNull();
            }
            else if (counters.Thrown == 1)
            {
                thrown.Should().BeOfType<TestException>();
            }
            else
            {
                thrown.Should().BeOfType<AggregateException>().Which.InnerExceptions.Should().HaveCount(counters.Thrown);
            }
        }
    }

    [Fact]
    public async Task Nursery_under_random_caller_cancellation_ends_cleanly()
    {
        for (var round = 0; round < 6; round++)
        {
            var random = new Random(200 + round);
            using var caller = new CancellationTokenSource();
            var counters = new Counters();
            var run = CancellationScope.RunAsync(async scope =>
            {
                for (var i = 0; i < Children; i++)
                {
                    var kind = (Kind)random.Next(3);
                    if (i == 5_000)
                    {
                        caller.CancelAfter(random.Next(0, 3));
                    }

                    if (scope.IsCancellationRequested)
                    {
                        break;
                    }

                    try
                    {
                        _ = scope.Run(ct => ChildAsync(kind, counters, ct));
                    }
                    catch (InvalidOperationException)
                    {
                        break;
                    }
                }

                await Task.Delay(Timeout.Infinite, scope.Token);
            }, cancellationToken: caller.Token);

            await FluentActions.Awaiting(() => run.WithTimeout(HardTimeout)).Should().ThrowAsync<OperationCanceledException>();
            counters.Running.Should().Be(0);
            counters.Thrown.Should().Be(0);
        }
    }

    [Fact]
    public async Task SelectAsync_over_ten_thousand_items_with_random_faults()
    {
        for (var round = 0; round < 4; round++)
        {
            var random = new Random(300 + round);
            var faultAt = round % 2 == 0 ? -1 : random.Next(Children);
            var running = 0;
            var run = CancellationScope.SelectAsync(Enumerable.Range(0, Children).ToArray(), async (i, ct) =>
            {
                Interlocked.Increment(ref running);
                try
                {
                    if (i % 7 == 0)
                    {
                        await Task.Yield();
                    }

                    return i == faultAt ? throw new TestException("item " + i) : i * 2;
                }
                finally
                {
                    Interlocked.Decrement(ref running);
                }
            }, maxConcurrency: 16);

            if (faultAt < 0)
            {
                (await run.WithTimeout(HardTimeout)).Should().Equal(Enumerable.Range(0, Children).Select(i => i * 2));
            }
            else
            {
                (await FluentActions.Awaiting(() => run.WithTimeout(HardTimeout)).Should().ThrowExactlyAsync<TestException>())
                    .Which.Message.Should().Be("item " + faultAt);
            }

            running.Should().Be(0);
        }
    }

    private static async Task ChildAsync(Kind kind, Counters counters, CancellationToken ct)
    {
        Interlocked.Increment(ref counters.RunningField);
        try
        {
            switch (kind)
            {
                case Kind.Quick:
                    break;
                case Kind.Yield:
                    await Task.Yield();
                    break;
                case Kind.Delay:
                    await Task.Delay(Random.Shared.Next(0, 3), ct);
                    break;
                case Kind.Fault:
                    counters.AddThrown();
                    throw new TestException("fault");
                case Kind.FaultAfterYield:
                    await Task.Yield();
                    counters.AddThrown();
                    throw new TestException("fault after yield");
                case Kind.WaitForCancel:
                    await Task.Delay(Timeout.Infinite, ct);
                    break;
            }

            counters.AddReturned();
        }
        finally
        {
            Interlocked.Decrement(ref counters.RunningField);
        }
    }

    private sealed class Counters
    {
        public int RunningField;
        private int _thrown;
        private int _returned;

        public int Running => Volatile.Read(ref RunningField);

        public int Thrown => Volatile.Read(ref _thrown);

        public int Returned => Volatile.Read(ref _returned);

        public void AddThrown() => Interlocked.Increment(ref _thrown);

        public void AddReturned() => Interlocked.Increment(ref _returned);
    }
}
