using System.Collections.Concurrent;
using AsyncPatterns.Tests.TestSupport;
using Polly;
using Polly.Retry;
using static AsyncPatterns.Tests.Contract.FlowBlackBox;

namespace AsyncPatterns.Tests.Contract;

/// <summary>
/// Black-box tests of <see cref="Batcher{T}"/> and <see cref="Batcher{T, TResult}"/> written from DESIGN.md ("Shared
/// rules" and "Batcher"), the README and the seeds, without reading the implementation.
/// </summary>
public sealed class BatcherBlackBoxTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    private static BatcherOptions<int> Opts(ManualTimeProvider clock, int maxBatchSize = 3, int delayMs = 100) => new()
    {
        MaxBatchSize = maxBatchSize,
        MaxDelay = TimeSpan.FromMilliseconds(delayMs),
        TimeProvider = clock,
    };

    private static Func<IReadOnlyList<int>, CancellationToken, ValueTask> Collect(ConcurrentQueue<int[]> batches) => (items, _) =>
    {
        batches.Enqueue(items.ToArray());
        return ValueTask.CompletedTask;
    };

    // ---------------------------------------------------------------- seeds / README

    [Fact]
    public async Task Seed_BatchProcessor_batch_size_5_and_final_partial_batch_on_dispose()
    {
        var clock = new ManualTimeProvider();
        var batches = new ConcurrentQueue<int[]>();
        var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                var copy = items.ToArray();
                await Task.Yield();
                batches.Enqueue(copy);
            },
            new BatcherOptions<int> { MaxBatchSize = 5, MaxDelay = TimeSpan.FromSeconds(2), TimeProvider = clock });

        for (var i = 0; i < 12; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await batcher.DisposeAsync().AsTask().WithTimeout();

        batches.Should().HaveCount(3);
        batches.SelectMany(b => b).Should().Equal(Enumerable.Range(0, 12));
        batches.Select(b => b.Length).Should().Equal(5, 5, 2);
        var s = batcher.GetStatistics();
        s.BatchesBySize.Should().Be(2);
        s.BatchesByDrain.Should().Be(1);
        s.ItemsProcessed.Should().Be(12);
    }

    [Fact]
    public async Task Readme_example_with_results_every_caller_gets_its_own_item_result()
    {
        await using var users = new Batcher<int, string>(
            async (ids, ct) =>
            {
                await Task.Yield();
                return ids.Select(id => "user" + id).ToArray();
            },
            new BatcherOptions<int> { MaxBatchSize = 100, MaxDelay = TimeSpan.FromMilliseconds(5) });

        var calls = Enumerable.Range(0, 250).Select(id => users.SubmitAsync(id)).ToArray();
        var results = await Task.WhenAll(calls).WithTimeout();

        results.Should().Equal(Enumerable.Range(0, 250).Select(id => "user" + id));
        (await users.SubmitAsync(42).WithTimeout()).Should().Be("user42");
    }

    // ---------------------------------------------------------------- options

    [Fact]
    public void Options_have_the_documented_defaults()
    {
        var o = new BatcherOptions<int>();
        o.MaxBatchSize.Should().Be(100);
        o.MaxDelay.Should().Be(TimeSpan.FromSeconds(1));
        o.Capacity.Should().Be(1000, "10 × MaxBatchSize");
        o.MaxConcurrentBatches.Should().Be(1);
        o.Pipeline.Should().BeNull();
        o.OnError.Should().BeNull();
        o.Name.Should().BeNull();
        o.TimeProvider.Should().BeNull();
        o.LoggerFactory.Should().BeNull();

        o.MaxBatchSize = 7;
        o.Capacity.Should().Be(70, "the default Capacity follows MaxBatchSize");
    }

    [Theory]
    [InlineData("MaxBatchSize", 0)]
    [InlineData("MaxBatchSize", -1)]
    [InlineData("MaxConcurrentBatches", 0)]
    [InlineData("MaxConcurrentBatches", -2)]
    [InlineData("Capacity", 5)]   // below MaxBatchSize (10)
    [InlineData("Capacity", -1)]
    public void Out_of_range_counts_throw_ArgumentOutOfRangeException_naming_the_option(string option, int value)
    {
        var o = new BatcherOptions<int> { MaxBatchSize = 10 };
        typeof(BatcherOptions<int>).GetProperty(option)!.SetValue(o, value);

        var create = () => new Batcher<int>((_, _) => ValueTask.CompletedTask, o);
        var createWithResults = () => new Batcher<int, int>((items, _) => new ValueTask<IReadOnlyList<int>>(items), o);

        create.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(option);
        createWithResults.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(option);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    public void Non_positive_MaxDelay_throws_naming_MaxDelay(int milliseconds)
    {
        var create = () => new Batcher<int>((_, _) => ValueTask.CompletedTask, new BatcherOptions<int> { MaxDelay = TimeSpan.FromMilliseconds(milliseconds) });

        create.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(nameof(BatcherOptions<int>.MaxDelay));
    }

    [Fact]
    public void Capacity_equal_to_MaxBatchSize_is_valid()
    {
        var create = () => new Batcher<int>((_, _) => ValueTask.CompletedTask, new BatcherOptions<int> { MaxBatchSize = 10, Capacity = 10 });
        create.Should().NotThrow();
    }

    [Fact]
    public void Null_processBatch_throws_ArgumentNullException()
    {
        var create = () => new Batcher<int>(null!);
        var createWithResults = () => new Batcher<int, int>(null!);
        create.Should().Throw<ArgumentNullException>();
        createWithResults.Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public async Task Options_are_copied_later_changes_have_no_effect()
    {
        var clock = new ManualTimeProvider();
        var batches = new ConcurrentQueue<int[]>();
        var options = Opts(clock, maxBatchSize: 2);
        options.Name = "copied-batcher";
        await using var batcher = new Batcher<int>(Collect(batches), options);
        options.MaxBatchSize = 100;
        options.MaxDelay = TimeSpan.FromHours(1);
        options.Name = "renamed";

        await batcher.AddAsync(1).WithTimeout();
        await batcher.AddAsync(2).WithTimeout();
        await AsyncAssert.EventuallyAsync(() => batches.Count == 1, "MaxBatchSize 2 was copied");
        await batcher.AddAsync(3).WithTimeout();
        clock.AdvanceMilliseconds(100);
        await AsyncAssert.EventuallyAsync(() => batches.Count == 2, "MaxDelay 100 ms was copied");

        await batcher.DrainAsync().WithTimeout();
        var ex = await FluentActions.Awaiting(() => batcher.AddAsync(4).AsTask()).Should().ThrowAsync<InvalidOperationException>();
        ex.Which.Message.Should().Contain("copied-batcher");
    }

    // ---------------------------------------------------------------- triggers

    [Fact]
    public async Task A_batch_goes_when_it_reaches_MaxBatchSize()
    {
        var clock = new ManualTimeProvider();
        var batches = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int>(Collect(batches), Opts(clock, maxBatchSize: 3, delayMs: 60_000));

        for (var i = 0; i < 7; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => batches.Count == 2);
        await Task.Delay(20);
        batches.Should().HaveCount(2, "the seventh item waits for more or for its age");
        batches.Should().BeEquivalentTo(new[] { new[] { 0, 1, 2 }, new[] { 3, 4, 5 } }, o => o.WithStrictOrdering());
        batcher.GetStatistics().ItemsBuffered.Should().Be(1);

        await batcher.FlushAsync().WithTimeout();
        batches.Last().Should().Equal(6);
        var s = batcher.GetStatistics();
        s.BatchesBySize.Should().Be(2);
        s.BatchesByFlush.Should().Be(1);
        s.BatchesEmitted.Should().Be(3);
    }

    [Fact]
    public async Task MaxDelay_counts_from_the_first_item_and_later_items_do_not_restart_it()
    {
        var clock = new ManualTimeProvider();
        var batches = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int>(Collect(batches), Opts(clock, maxBatchSize: 100, delayMs: 100));

        await batcher.AddAsync(1).WithTimeout();
        clock.AdvanceMilliseconds(60);
        await batcher.AddAsync(2).WithTimeout();
        clock.Advance(TimeSpan.FromMilliseconds(40) - TimeSpan.FromTicks(1));
        await Task.Delay(20);
        batches.Should().BeEmpty("the first item is not yet MaxDelay old");

        clock.Advance(TimeSpan.FromTicks(1));

        await AsyncAssert.EventuallyAsync(() => batches.Count == 1);
        batches.Single().Should().Equal(1, 2);
        batcher.GetStatistics().BatchesByAge.Should().Be(1);
    }

    [Fact]
    public async Task The_next_batch_has_its_own_age_counted_from_its_own_first_item()
    {
        var clock = new ManualTimeProvider();
        var batches = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int>(Collect(batches), Opts(clock, maxBatchSize: 100, delayMs: 100));

        await batcher.AddAsync(1).WithTimeout();
        clock.AdvanceMilliseconds(100);
        await AsyncAssert.EventuallyAsync(() => batches.Count == 1);

        clock.AdvanceMilliseconds(50);
        await batcher.AddAsync(2).WithTimeout(); // t = 150
        clock.AdvanceMilliseconds(99);           // t = 249
        await Task.Delay(20);
        batches.Should().HaveCount(1);
        clock.AdvanceMilliseconds(1);            // t = 250
        await AsyncAssert.EventuallyAsync(() => batches.Count == 2);
        batches.Last().Should().Equal(2);
    }

    [Fact]
    public async Task A_batch_sent_by_size_does_not_leave_a_stale_timer_that_cuts_the_next_batch_short()
    {
        var clock = new ManualTimeProvider();
        var batches = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int>(Collect(batches), Opts(clock, maxBatchSize: 2, delayMs: 100));

        await batcher.AddAsync(1).WithTimeout();   // t = 0: first batch's age starts
        await batcher.AddAsync(2).WithTimeout();   // full: goes by size
        await AsyncAssert.EventuallyAsync(() => batches.Count == 1);
        clock.AdvanceMilliseconds(50);
        await batcher.AddAsync(3).WithTimeout();   // t = 50: second batch's age starts
        clock.AdvanceMilliseconds(50);             // t = 100: the first batch's deadline, not this one's
        await Task.Delay(20);
        batches.Should().HaveCount(1, "the second batch is only 50 ms old");

        clock.AdvanceMilliseconds(50);             // t = 150
        await AsyncAssert.EventuallyAsync(() => batches.Count == 2);
        batches.Last().Should().Equal(3);
        var s = batcher.GetStatistics();
        s.BatchesBySize.Should().Be(1);
        s.BatchesByAge.Should().Be(1);
    }

    [Fact]
    public async Task A_batch_is_never_empty()
    {
        var clock = new ManualTimeProvider();
        var calls = 0;
        await using var batcher = new Batcher<int>(
            (items, _) =>
            {
                items.Should().NotBeEmpty();
                Interlocked.Increment(ref calls);
                return ValueTask.CompletedTask;
            },
            Opts(clock, maxBatchSize: 2, delayMs: 100));

        clock.AdvanceMilliseconds(1000);
        await batcher.FlushAsync().WithTimeout();
        await batcher.AddAsync(1).WithTimeout();
        await batcher.AddAsync(2).WithTimeout(); // by size
        await AsyncAssert.EventuallyAsync(() => Volatile.Read(ref calls) == 1);
        clock.AdvanceMilliseconds(1000);         // nothing buffered: no batch by age
        await batcher.FlushAsync().WithTimeout();
        await batcher.DrainAsync().WithTimeout();

        calls.Should().Be(1);
        batcher.GetStatistics().BatchesEmitted.Should().Be(1);
    }

    // ---------------------------------------------------------------- FlushAsync

    [Fact]
    public async Task FlushAsync_emits_now_and_completes_only_when_every_earlier_item_is_processed()
    {
        var clock = new ManualTimeProvider();
        var gate = Gate();
        var batches = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                var copy = items.ToArray();
                await gate.Task;
                batches.Enqueue(copy);
            },
            Opts(clock, maxBatchSize: 10, delayMs: 60_000));
        await batcher.AddAsync(1).WithTimeout();
        await batcher.AddAsync(2).WithTimeout();

        var flush = batcher.FlushAsync();
        await AsyncAssert.EventuallyAsync(() => batcher.GetStatistics().BatchesInFlight == 1, "the batch was emitted at once");
        await AsyncAssert.StillPendingAsync(flush, "the batch is not processed yet");

        gate.SetResult();
        await flush.WithTimeout();
        batches.Single().Should().Equal(1, 2);
    }

    [Fact]
    public async Task FlushAsync_waits_for_earlier_batches_still_running_in_other_slots()
    {
        var clock = new ManualTimeProvider();
        var slow = Gate();
        var processed = new ConcurrentQueue<int>();
        await using var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                var copy = items.ToArray();
                if (copy.Contains(0))
                {
                    await slow.Task;
                }

                foreach (var i in copy)
                {
                    processed.Enqueue(i);
                }
            },
            new BatcherOptions<int> { MaxBatchSize = 2, MaxDelay = TimeSpan.FromHours(1), MaxConcurrentBatches = 2, TimeProvider = clock });
        await batcher.AddAsync(0).WithTimeout();
        await batcher.AddAsync(1).WithTimeout();   // batch [0, 1] runs and waits
        await batcher.AddAsync(2).WithTimeout();   // buffered

        var flush = batcher.FlushAsync();          // emits [2], which finishes at once in the second slot
        await AsyncAssert.EventuallyAsync(() => processed.Contains(2));
        await AsyncAssert.StillPendingAsync(flush, "item 0 and 1 were added before the flush and are not processed");

        slow.SetResult();
        await flush.WithTimeout();
        processed.Should().BeEquivalentTo(new[] { 0, 1, 2 });
    }

    [Fact]
    public async Task FlushAsync_token_abandons_the_wait_but_the_batch_is_emitted_regardless()
    {
        var clock = new ManualTimeProvider();
        var gate = Gate();
        var seen = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                seen.Enqueue(items.ToArray());
                await gate.Task;
            },
            Opts(clock, maxBatchSize: 10, delayMs: 60_000));
        await batcher.AddAsync(1).WithTimeout();

        using var cts = new CancellationTokenSource();
        var flush = batcher.FlushAsync(cts.Token);
        await AsyncAssert.EventuallyAsync(() => seen.Count == 1);
        cts.Cancel();

        await FluentActions.Awaiting(() => flush.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        seen.Single().Should().Equal(1);
        gate.SetResult();
        await batcher.DrainAsync().WithTimeout();
        batcher.GetStatistics().ItemsProcessed.Should().Be(1);
    }

    // ---------------------------------------------------------------- capacity / backpressure

    [Fact]
    public async Task AddAsync_completes_synchronously_below_Capacity_and_waits_at_Capacity()
    {
        var clock = new ManualTimeProvider();
        var gate = Gate();
        var processed = new ConcurrentQueue<int>();
        await using var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                var copy = items.ToArray();
                await gate.Task;
                foreach (var i in copy)
                {
                    processed.Enqueue(i);
                }
            },
            new BatcherOptions<int> { MaxBatchSize = 2, Capacity = 4, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock });

        for (var i = 0; i < 4; i++)
        {
            var add = batcher.AddAsync(i);
            add.IsCompletedSuccessfully.Should().BeTrue($"item {i} fits in Capacity");
            await add;
        }

        var fifth = batcher.AddAsync(4).AsTask();
        await AsyncAssert.StillPendingAsync(fifth, "4 items are pending: one batch processing, one sealed");
        var s = batcher.GetStatistics();
        s.WaitingAdds.Should().Be(1);
        s.ItemsAccepted.Should().Be(4);
        s.ItemsPending.Should().Be(4);

        gate.SetResult();
        await fifth.WithTimeout();
        await batcher.DrainAsync().WithTimeout();
        processed.Should().Equal(0, 1, 2, 3, 4);
    }

    [Fact]
    public async Task The_AddAsync_token_abandons_only_the_wait_for_capacity()
    {
        var clock = new ManualTimeProvider();
        var gate = Gate();
        var processed = new ConcurrentQueue<int>();
        await using var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                var copy = items.ToArray();
                await gate.Task;
                foreach (var i in copy)
                {
                    processed.Enqueue(i);
                }
            },
            new BatcherOptions<int> { MaxBatchSize = 1, Capacity = 1, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock });
        await batcher.AddAsync(0).WithTimeout();

        using var cts = new CancellationTokenSource();
        var waiting = batcher.AddAsync(99, cts.Token).AsTask();
        await AsyncAssert.StillPendingAsync(waiting);
        cts.Cancel();

        var ex = await FluentActions.Awaiting(() => waiting.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        ex.Which.CancellationToken.Should().Be(cts.Token);
        batcher.GetStatistics().ItemsAccepted.Should().Be(1);
        batcher.GetStatistics().WaitingAdds.Should().Be(0);

        gate.SetResult();
        await batcher.AddAsync(1).WithTimeout();
        await batcher.DrainAsync().WithTimeout();
        processed.Should().Equal(0, 1);
    }

    [Fact]
    public async Task AddAsync_and_SubmitAsync_with_an_already_cancelled_token_are_cancelled_and_not_accepted()
    {
        var calls = 0;
        await using var batcher = new Batcher<int>((_, _) =>
        {
            Interlocked.Increment(ref calls);
            return ValueTask.CompletedTask;
        });
        await using var withResults = new Batcher<int, int>((items, _) => new ValueTask<IReadOnlyList<int>>(items.ToArray()));

        var add = batcher.AddAsync(1, new CancellationToken(true));
        var submit = withResults.SubmitAsync(1, new CancellationToken(true));

        await FluentActions.Awaiting(() => add.AsTask()).Should().ThrowAsync<OperationCanceledException>();
        await FluentActions.Awaiting(() => submit.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await batcher.DrainAsync().WithTimeout();
        await withResults.DrainAsync().WithTimeout();
        calls.Should().Be(0);
        batcher.GetStatistics().ItemsAccepted.Should().Be(0);
        withResults.GetStatistics().ItemsAccepted.Should().Be(0);
    }

    // ---------------------------------------------------------------- concurrency and order

    [Fact]
    public async Task Items_keep_their_order_within_and_across_batches_with_one_batch_at_a_time()
    {
        var clock = new ManualTimeProvider();
        var batches = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                var copy = items.ToArray();
                await Task.Yield();
                batches.Enqueue(copy);
            },
            new BatcherOptions<int> { MaxBatchSize = 7, Capacity = 21, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock });

        for (var i = 0; i < 1000; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await batcher.DrainAsync().WithTimeout();
        batches.SelectMany(b => b).Should().Equal(Enumerable.Range(0, 1000));
        batches.Should().OnlyContain(b => b.Length >= 1 && b.Length <= 7);
    }

    [Fact]
    public async Task At_most_MaxConcurrentBatches_batches_are_processed_at_once()
    {
        var clock = new ManualTimeProvider();
        var gate = Gate();
        int current = 0, max = 0;
        await using var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                var now = Interlocked.Increment(ref current);
                int seen;
                while ((seen = Volatile.Read(ref max)) < now && Interlocked.CompareExchange(ref max, now, seen) != seen)
                {
                }

                await gate.Task;
                Interlocked.Decrement(ref current);
            },
            new BatcherOptions<int> { MaxBatchSize = 1, MaxConcurrentBatches = 2, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock });

        for (var i = 0; i < 5; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => batcher.GetStatistics().BatchesInFlight == 2);
        await Task.Delay(30);
        Volatile.Read(ref max).Should().Be(2);
        batcher.GetStatistics().BatchesInFlight.Should().Be(2);

        gate.SetResult();
        await batcher.DrainAsync().WithTimeout();
        max.Should().Be(2);
        batcher.GetStatistics().ItemsProcessed.Should().Be(5);
    }

    [Fact]
    public async Task processBatch_never_runs_on_the_adding_thread()
    {
        using var release = new ManualResetEventSlim();
        await using var batcher = new Batcher<int>(
            (items, ct) =>
            {
                release.Wait(Wait); // blocks synchronously: AddAsync would hang if it ran the batch inline
                return ValueTask.CompletedTask;
            },
            new BatcherOptions<int> { MaxBatchSize = 1 });

        var add = Task.Factory.StartNew(() => batcher.AddAsync(1).AsTask(), CancellationToken.None, TaskCreationOptions.DenyChildAttach, TaskScheduler.Default).Unwrap();
        await add.WithTimeout(TimeSpan.FromSeconds(5));
        release.Set();
        await batcher.DrainAsync().WithTimeout();
    }

    [Fact]
    public async Task Concurrent_adders_lose_nothing()
    {
        var seen = new ConcurrentDictionary<int, int>();
        await using var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                foreach (var i in items)
                {
                    seen.AddOrUpdate(i, 1, (_, n) => n + 1);
                }

                await Task.Yield();
            },
            new BatcherOptions<int> { MaxBatchSize = 16, Capacity = 32, MaxConcurrentBatches = 2, MaxDelay = TimeSpan.FromMilliseconds(1) });

        await Task.WhenAll(Enumerable.Range(0, 4).Select(p => Task.Run(async () =>
        {
            for (var i = 0; i < 500; i++)
            {
                await batcher.AddAsync(p * 1000 + i);
            }
        }))).WithTimeout();
        await batcher.DrainAsync().WithTimeout();

        seen.Should().HaveCount(2000);
        seen.Values.Should().OnlyContain(n => n == 1);
        var s = batcher.GetStatistics();
        s.ItemsAccepted.Should().Be(2000);
        s.ItemsProcessed.Should().Be(2000);
        s.BatchesEmitted.Should().Be(s.BatchesBySize + s.BatchesByAge + s.BatchesByWeight + s.BatchesByFlush + s.BatchesByDrain);
    }

    // ---------------------------------------------------------------- failures

    [Fact]
    public async Task A_failing_batch_goes_to_OnError_and_later_batches_are_unaffected()
    {
        var clock = new ManualTimeProvider();
        var errors = new ConcurrentQueue<(int[] Items, Exception Error)>();
        var processed = new ConcurrentQueue<int>();
        await using var batcher = new Batcher<int>(
            (items, ct) =>
            {
                if (items.Contains(1))
                {
                    throw new InvalidOperationException("bulk insert failed"); // synchronous throw
                }

                foreach (var i in items)
                {
                    processed.Enqueue(i);
                }

                return ValueTask.CompletedTask;
            },
            new BatcherOptions<int> { MaxBatchSize = 2, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock, OnError = (items, ex) => errors.Enqueue((items.ToArray(), ex)) });

        for (var i = 0; i < 6; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await batcher.DrainAsync().WithTimeout();

        errors.Should().ContainSingle();
        errors.Single().Items.Should().Equal(0, 1);
        errors.Single().Error.Should().BeOfType<InvalidOperationException>().Which.Message.Should().Be("bulk insert failed");
        processed.Should().Equal(2, 3, 4, 5);
        var s = batcher.GetStatistics();
        s.ItemsFailed.Should().Be(2);
        s.ItemsProcessed.Should().Be(4);
        s.BatchesFailed.Should().Be(1);
        s.BatchesProcessed.Should().Be(2);
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
        batcher.Completion.IsCompletedSuccessfully.Should().BeTrue();
    }

    [Fact]
    public async Task With_results_a_thrown_exception_faults_every_item_of_that_batch_only()
    {
        var clock = new ManualTimeProvider();
        var boom = new TimeoutException("backend timed out");
        var errors = new ConcurrentQueue<(int[] Items, Exception Error)>();
        await using var batcher = new Batcher<int, int>(
            async (items, ct) =>
            {
                await Task.Yield();
                if (items.Contains(0))
                {
                    throw boom;
                }

                return items.Select(i => i * 10).ToArray();
            },
            new BatcherOptions<int> { MaxBatchSize = 3, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock, OnError = (items, ex) => errors.Enqueue((items.ToArray(), ex)) });

        var calls = Enumerable.Range(0, 6).Select(i => batcher.SubmitAsync(i)).ToArray();
        await Task.WhenAll(calls.Select(c => c.ContinueWith(t => _ = t.Exception, TaskScheduler.Default))).WithTimeout();

        for (var i = 0; i < 3; i++)
        {
            (await FluentActions.Awaiting(() => calls[i]).Should().ThrowAsync<TimeoutException>()).Which.Should().BeSameAs(boom);
        }

        (await Task.WhenAll(calls.Skip(3))).Should().Equal(30, 40, 50);
        errors.Should().ContainSingle().Which.Items.Should().Equal(0, 1, 2);
        batcher.GetStatistics().ItemsFailed.Should().Be(3);
        batcher.GetStatistics().ItemsProcessed.Should().Be(3);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    [InlineData(0)]
    public async Task With_results_a_wrong_count_faults_every_item_of_that_batch_with_InvalidOperationException(int returned)
    {
        var clock = new ManualTimeProvider();
        var errors = new ConcurrentQueue<(int[] Items, Exception Error)>();
        await using var batcher = new Batcher<int, int>(
            (items, ct) =>
            {
                IReadOnlyList<int> result = items.Contains(0) ? Enumerable.Range(0, returned).ToArray() : items.Select(i => -i).ToArray();
                return new ValueTask<IReadOnlyList<int>>(result);
            },
            new BatcherOptions<int> { MaxBatchSize = 3, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock, OnError = (items, ex) => errors.Enqueue((items.ToArray(), ex)) });

        var calls = Enumerable.Range(0, 6).Select(i => batcher.SubmitAsync(i)).ToArray();
        await Task.WhenAll(calls.Select(c => c.ContinueWith(t => _ = t.Exception, TaskScheduler.Default))).WithTimeout();

        for (var i = 0; i < 3; i++)
        {
            var ex = await FluentActions.Awaiting(() => calls[i]).Should().ThrowAsync<InvalidOperationException>();
            ex.Which.Message.Should().Contain("3").And.Contain(returned.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }

        (await Task.WhenAll(calls.Skip(3))).Should().Equal(-3, -4, -5);
        errors.Should().ContainSingle().Which.Items.Should().Equal(0, 1, 2);
        errors.Single().Error.Should().BeOfType<InvalidOperationException>();
        var s = batcher.GetStatistics();
        s.ItemsFailed.Should().Be(3);
        s.ItemsProcessed.Should().Be(3);
        s.BatchesFailed.Should().Be(1);
    }

    [Fact]
    public async Task With_results_a_null_result_list_faults_the_items_instead_of_hanging()
    {
        await using var batcher = new Batcher<int, int>(
            (items, ct) => new ValueTask<IReadOnlyList<int>>((IReadOnlyList<int>)null!),
            new BatcherOptions<int> { MaxBatchSize = 2 });

        var a = batcher.SubmitAsync(1);
        var b = batcher.SubmitAsync(2);

        await FluentActions.Awaiting(() => a.WithTimeout()).Should().ThrowAsync<Exception>();
        await FluentActions.Awaiting(() => b.WithTimeout()).Should().ThrowAsync<Exception>();
        await batcher.DrainAsync().WithTimeout();
        batcher.GetStatistics().ItemsFailed.Should().Be(2);
    }

    [Fact]
    public async Task OnError_that_throws_is_ignored()
    {
        var clock = new ManualTimeProvider();
        var processed = 0;
        await using var batcher = new Batcher<int>(
            (items, ct) =>
            {
                if (items[0] == 0)
                {
                    throw new InvalidOperationException();
                }

                Interlocked.Add(ref processed, items.Count);
                return ValueTask.CompletedTask;
            },
            new BatcherOptions<int> { MaxBatchSize = 1, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock, OnError = (_, _) => throw new ApplicationException("bad callback") });

        for (var i = 0; i < 4; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await batcher.DrainAsync().WithTimeout();
        processed.Should().Be(3);
        batcher.GetStatistics().ItemsFailed.Should().Be(1);
    }

    [Fact]
    public async Task Pipeline_retries_the_same_batch_with_the_same_items()
    {
        var clock = new ManualTimeProvider();
        var attempts = new ConcurrentQueue<int[]>();
        var pipeline = new ResiliencePipelineBuilder().AddRetry(new RetryStrategyOptions { MaxRetryAttempts = 2, Delay = TimeSpan.Zero }).Build();
        await using var batcher = new Batcher<int, int>(
            (items, ct) =>
            {
                attempts.Enqueue(items.ToArray());
                if (attempts.Count < 3)
                {
                    throw new InvalidOperationException("transient");
                }

                return new ValueTask<IReadOnlyList<int>>(items.Select(i => i + 100).ToArray());
            },
            new BatcherOptions<int> { MaxBatchSize = 2, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock, Pipeline = pipeline });

        var a = batcher.SubmitAsync(1);
        var b = batcher.SubmitAsync(2);

        (await a.WithTimeout()).Should().Be(101);
        (await b.WithTimeout()).Should().Be(102);
        attempts.Should().HaveCount(3);
        attempts.Should().OnlyContain(x => x.SequenceEqual(new[] { 1, 2 }));
        batcher.GetStatistics().ItemsProcessed.Should().Be(2);
        batcher.GetStatistics().ItemsFailed.Should().Be(0);
    }

    // ---------------------------------------------------------------- draining / closed state

    [Fact]
    public async Task DrainAsync_flushes_everything_accepted_then_refuses_new_items_naming_the_batcher()
    {
        var clock = new ManualTimeProvider();
        var name = UniqueName("writer");
        var batches = new ConcurrentQueue<int[]>();
        var batcher = new Batcher<int>(Collect(batches), new BatcherOptions<int> { MaxBatchSize = 10, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock, Name = name });
        await batcher.AddAsync(1).WithTimeout();
        await batcher.AddAsync(2).WithTimeout();

        await batcher.DrainAsync().WithTimeout();

        batches.Single().Should().Equal(1, 2);
        batcher.Completion.IsCompletedSuccessfully.Should().BeTrue();
        var ex = await FluentActions.Awaiting(() => batcher.AddAsync(3).AsTask()).Should().ThrowAsync<InvalidOperationException>();
        ex.Which.Message.Should().Contain(name);
        var s = batcher.GetStatistics();
        s.BatchesByDrain.Should().Be(1);
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
        s.ItemsPending.Should().Be(0);
        await batcher.DisposeAsync();
        await batcher.DrainAsync().WithTimeout();
    }

    [Fact]
    public async Task DisposeAsync_flushes_everything_accepted_and_SubmitAsync_afterwards_is_refused()
    {
        var clock = new ManualTimeProvider();
        var batcher = new Batcher<int, int>(
            async (items, ct) =>
            {
                await Task.Yield();
                return items.Select(i => i * 2).ToArray();
            },
            new BatcherOptions<int> { MaxBatchSize = 10, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock });
        var a = batcher.SubmitAsync(1);
        var b = batcher.SubmitAsync(2);

        await batcher.DisposeAsync().AsTask().WithTimeout();

        a.IsCompletedSuccessfully.Should().BeTrue();
        (await a).Should().Be(2);
        (await b).Should().Be(4);
        var ex = await FluentActions.Awaiting(() => batcher.SubmitAsync(3)).Should().ThrowAsync<InvalidOperationException>();
        ex.Which.Message.Should().Contain("Batcher");
    }

    [Fact]
    public async Task DrainAsync_refuses_adds_that_were_waiting_for_capacity()
    {
        var clock = new ManualTimeProvider();
        var gate = Gate();
        await using var batcher = new Batcher<int>(
            async (items, ct) => await gate.Task,
            new BatcherOptions<int> { MaxBatchSize = 1, Capacity = 1, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock });
        await batcher.AddAsync(0).WithTimeout();
        var waiting = batcher.AddAsync(1).AsTask();
        await AsyncAssert.StillPendingAsync(waiting);

        var drain = batcher.DrainAsync();

        await FluentActions.Awaiting(() => waiting.WithTimeout()).Should().ThrowAsync<InvalidOperationException>();
        gate.SetResult();
        await drain.WithTimeout();
        var s = batcher.GetStatistics();
        s.ItemsAccepted.Should().Be(1);
        s.ItemsProcessed.Should().Be(1);
    }

    [Fact]
    public async Task A_drain_cut_short_cancels_running_batches_and_reports_unstarted_ones_as_dropped()
    {
        var clock = new ManualTimeProvider();
        var started = Gate();
        var dropped = new ConcurrentQueue<int[]>();
        var errors = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int, int>(
            async (items, ct) =>
            {
                started.TrySetResult();
                await Task.Delay(Timeout.Infinite, ct);
                return items.ToArray();
            },
            new BatcherOptions<int>
            {
                MaxBatchSize = 1,
                MaxDelay = TimeSpan.FromHours(1),
                TimeProvider = clock,
                OnDropped = items => dropped.Enqueue(items.ToArray()),
                OnError = (items, _) => errors.Enqueue(items.ToArray()),
            });
        var calls = Enumerable.Range(0, 3).Select(i => batcher.SubmitAsync(i)).ToArray();
        await started.Task.WithTimeout();

        using var cts = new CancellationTokenSource();
        var drain = batcher.DrainAsync(cts.Token);
        await AsyncAssert.StillPendingAsync(drain);
        cts.Cancel();

        await FluentActions.Awaiting(() => drain.WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await batcher.Completion.WithTimeout();
        await FluentActions.Awaiting(() => calls[0].WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await FluentActions.Awaiting(() => calls[1].WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        await FluentActions.Awaiting(() => calls[2].WithTimeout()).Should().ThrowAsync<OperationCanceledException>();
        calls[1].IsCanceled.Should().BeTrue("a dropped caller's task is cancelled");
        dropped.SelectMany(d => d).Should().BeEquivalentTo(new[] { 1, 2 });
        var s = batcher.GetStatistics();
        s.ItemsDropped.Should().Be(2);
        s.ItemsFailed.Should().Be(1);
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
    }

    [Fact]
    public async Task Concurrent_drains_complete_together_and_IDrainable_drains()
    {
        var clock = new ManualTimeProvider();
        var gate = Gate();
        await using var batcher = new Batcher<int>(async (items, ct) => await gate.Task, Opts(clock, maxBatchSize: 10, delayMs: 60_000));
        await batcher.AddAsync(1).WithTimeout();
        IDrainable drainable = batcher;

        var d1 = drainable.DrainAsync();
        var d2 = batcher.DrainAsync();
        await AsyncAssert.StillPendingAsync(d1);
        d2.IsCompleted.Should().BeFalse();

        gate.SetResult();
        await Task.WhenAll(d1, d2).WithTimeout();
        batcher.GetStatistics().ItemsProcessed.Should().Be(1);
    }

    // ---------------------------------------------------------------- adversarial

    [Fact]
    public async Task DisposeAsync_cuts_the_drain_short_after_DrainTimeout_on_the_fake_clock_and_never_throws()
    {
        var clock = new ManualTimeProvider();
        var started = Gate();
        var dropped = new ConcurrentQueue<int>();
        var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                started.TrySetResult();
                await Task.Delay(Timeout.Infinite, ct);
            },
            new BatcherOptions<int>
            {
                MaxBatchSize = 1,
                MaxDelay = TimeSpan.FromHours(1),
                DrainTimeout = TimeSpan.FromSeconds(5),
                TimeProvider = clock,
                OnDropped = items => { foreach (var i in items) { dropped.Enqueue(i); } },
            });
        await batcher.AddAsync(0).WithTimeout();
        await batcher.AddAsync(1).WithTimeout();
        await started.Task.WithTimeout();

        var dispose = batcher.DisposeAsync().AsTask();
        await AsyncAssert.StillPendingAsync(dispose);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount > 0);
        clock.Advance(TimeSpan.FromSeconds(5));

        await dispose.WithTimeout();
        await batcher.Completion.WithTimeout();
        dropped.Should().Equal(1);
        var s = batcher.GetStatistics();
        s.ItemsFailed.Should().Be(1);
        s.ItemsDropped.Should().Be(1);
        (s.Handled + s.Failed + s.Dropped).Should().Be(s.Accepted);
    }

    [Fact]
    public async Task With_results_returning_the_input_list_itself_gives_each_caller_its_own_item()
    {
        await using var echo = new Batcher<int, int>(
            (items, ct) => new ValueTask<IReadOnlyList<int>>(items),
            new BatcherOptions<int> { MaxBatchSize = 8, MaxConcurrentBatches = 2, MaxDelay = TimeSpan.FromMilliseconds(1) });

        var calls = Enumerable.Range(0, 500).Select(i => echo.SubmitAsync(i)).ToArray();
        var results = await Task.WhenAll(calls).WithTimeout();

        results.Should().Equal(Enumerable.Range(0, 500));
    }

    [Fact]
    public async Task A_batch_that_comes_of_age_while_the_previous_one_runs_is_emitted_and_waits_its_turn()
    {
        var clock = new ManualTimeProvider();
        var gate = Gate();
        var batches = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                var copy = items.ToArray();
                if (copy[0] == 0)
                {
                    await gate.Task;
                }

                batches.Enqueue(copy);
            },
            Opts(clock, maxBatchSize: 2, delayMs: 100));
        await batcher.AddAsync(0).WithTimeout();
        await batcher.AddAsync(1).WithTimeout();   // [0, 1] by size; blocked
        await batcher.AddAsync(2).WithTimeout();
        clock.AdvanceMilliseconds(100);            // [2] by age, waits for the slot
        await AsyncAssert.EventuallyAsync(() => batcher.GetStatistics().BatchesByAge == 1);
        await batcher.AddAsync(3).WithTimeout();   // a new batch, not [2, 3]
        batcher.GetStatistics().ItemsBuffered.Should().Be(1);

        gate.SetResult();
        await batcher.FlushAsync().WithTimeout();
        batches.Should().BeEquivalentTo(new[] { new[] { 0, 1 }, new[] { 2 }, new[] { 3 } }, o => o.WithStrictOrdering());
    }

    [Fact]
    public async Task Adders_racing_a_drain_either_get_processed_or_refused()
    {
        for (var round = 0; round < 20; round++)
        {
            var processed = 0;
            var batcher = new Batcher<int>(
                async (items, ct) =>
                {
                    await Task.Yield();
                    Interlocked.Add(ref processed, items.Count);
                },
                new BatcherOptions<int> { MaxBatchSize = 5, Capacity = 10, MaxDelay = TimeSpan.FromMilliseconds(1) });
            var accepted = 0;
            var refused = 0;
            var go = Gate();
            var adders = Enumerable.Range(0, 4).Select(p => Task.Run(async () =>
            {
                await go.Task;
                for (var i = 0; i < 200; i++)
                {
                    try
                    {
                        await batcher.AddAsync(i);
                        Interlocked.Increment(ref accepted);
                    }
                    catch (InvalidOperationException)
                    {
                        Interlocked.Increment(ref refused);
                    }
                }
            })).ToArray();
            go.SetResult();
            await Task.Delay(1);
            await batcher.DrainAsync().WithTimeout();
            await Task.WhenAll(adders).WithTimeout();

            (accepted + refused).Should().Be(800);
            processed.Should().Be(accepted, $"round {round}");
            batcher.GetStatistics().ItemsAccepted.Should().Be(accepted);
        }
    }

    [Fact]
    public async Task Statistics_are_up_to_date_once_a_caller_has_its_result_or_FlushAsync_returns()
    {
        var clock = new ManualTimeProvider();
        await using var batcher = new Batcher<int, int>(
            async (items, ct) =>
            {
                await Task.Yield();
                return items.ToArray();
            },
            Opts(clock, maxBatchSize: 1));
        for (var i = 1; i <= 30; i++)
        {
            (await batcher.SubmitAsync(i).WithTimeout()).Should().Be(i);
            var s = batcher.GetStatistics();
            s.ItemsProcessed.Should().Be(i);
            s.ItemsPending.Should().Be(0);
            s.BatchesInFlight.Should().Be(0);
            s.BatchesProcessed.Should().Be(i);
        }

        await using var plain = new Batcher<int>((_, _) => ValueTask.CompletedTask, Opts(clock, maxBatchSize: 10));
        for (var i = 0; i < 5; i++)
        {
            await plain.AddAsync(i).WithTimeout();
        }

        await plain.FlushAsync().WithTimeout();
        var p = plain.GetStatistics();
        p.ItemsProcessed.Should().Be(5);
        p.ItemsPending.Should().Be(0);
        p.ItemsBuffered.Should().Be(0);
        p.BatchesInFlight.Should().Be(0);
        p.BatchesByFlush.Should().Be(1);
    }

    [Fact]
    public async Task Cancelling_the_SubmitAsync_token_after_acceptance_has_no_effect()
    {
        var clock = new ManualTimeProvider();
        var gate = Gate();
        await using var batcher = new Batcher<int, int>(
            async (items, ct) =>
            {
                await gate.Task;
                return items.Select(i => i + 1).ToArray();
            },
            Opts(clock, maxBatchSize: 10));
        using var cts = new CancellationTokenSource();
        var call = batcher.SubmitAsync(41, cts.Token);
        batcher.GetStatistics().ItemsAccepted.Should().Be(1);

        cts.Cancel();
        var flush = batcher.FlushAsync();
        gate.SetResult();

        (await call.WithTimeout()).Should().Be(42);
        await flush.WithTimeout();
    }

    [Fact]
    public async Task MaxBatchWeight_closes_a_batch_before_it_would_exceed_the_limit_and_a_heavy_item_goes_alone()
    {
        var clock = new ManualTimeProvider();
        var batches = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int>(Collect(batches), new BatcherOptions<int>
        {
            MaxBatchSize = 100,
            MaxDelay = TimeSpan.FromHours(1),
            TimeProvider = clock,
            MaxBatchWeight = 10,
            WeightSelector = i => i,
        });

        foreach (var w in new[] { 4, 4, 3, 6, 25, 1 })
        {
            await batcher.AddAsync(w).WithTimeout();
        }

        await batcher.FlushAsync().WithTimeout();
        batches.SelectMany(b => b).Should().Equal(4, 4, 3, 6, 25, 1);
        batches.Should().OnlyContain(b => b.Length == 1 || b.Sum() <= 10);
        batches.Should().ContainEquivalentOf(new[] { 25 });
        batches.First().Should().Equal(4, 4);
    }

    [Fact]
    public void MaxBatchWeight_and_WeightSelector_go_together()
    {
        var onlyWeight = () => new Batcher<int>((_, _) => ValueTask.CompletedTask, new BatcherOptions<int> { MaxBatchWeight = 10 });
        var onlySelector = () => new Batcher<int>((_, _) => ValueTask.CompletedTask, new BatcherOptions<int> { WeightSelector = i => i });
        onlyWeight.Should().Throw<ArgumentException>();
        onlySelector.Should().Throw<ArgumentException>();
    }

    [Fact]
    public async Task Result_tasks_run_their_continuations_asynchronously_so_a_blocking_continuation_cannot_stall_the_batcher()
    {
        var gate = Gate();
        using var nextProcessed = new ManualResetEventSlim();
        await using var batcher = new Batcher<int, int>(
            async (items, ct) =>
            {
                if (items[0] == 0)
                {
                    await gate.Task;
                }
                else
                {
                    nextProcessed.Set();
                }

                return items.ToArray();
            },
            new BatcherOptions<int> { MaxBatchSize = 1 });
        var first = batcher.SubmitAsync(0);
        var second = batcher.SubmitAsync(1);
        var continuation = first.ContinueWith(
            _ => nextProcessed.Wait(TimeSpan.FromSeconds(3)),
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);

        gate.SetResult();

        (await continuation.WithTimeout()).Should().BeTrue("the next batch runs while a synchronous continuation of the previous caller blocks");
        (await second.WithTimeout()).Should().Be(1);
    }

    [Fact]
    public async Task A_waiting_adders_continuation_does_not_run_inline_on_the_batch_loop()
    {
        var gate = Gate();
        using var nextProcessed = new ManualResetEventSlim();
        await using var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                if (items[0] == 0)
                {
                    await gate.Task;
                }
                else if (items[0] == 1)
                {
                    nextProcessed.Set();
                }
            },
            new BatcherOptions<int> { MaxBatchSize = 1, Capacity = 2 });
        await batcher.AddAsync(0).WithTimeout();
        await batcher.AddAsync(1).WithTimeout();
        var adder = Task.Run(async () =>
        {
            await batcher.AddAsync(2);
            return nextProcessed.Wait(TimeSpan.FromSeconds(3)); // blocks whatever thread resumed us
        });
        await AsyncAssert.EventuallyAsync(() => batcher.GetStatistics().WaitingAdds == 1);

        gate.SetResult();

        (await adder.WithTimeout()).Should().BeTrue();
        await batcher.DrainAsync().WithTimeout();
    }

    [Fact]
    public async Task Pipeline_timeout_reaches_processBatch_through_its_token()
    {
        var pipeline = new ResiliencePipelineBuilder().AddTimeout(TimeSpan.FromMilliseconds(50)).Build();
        await using var batcher = new Batcher<int, int>(
            async (items, ct) =>
            {
                await Task.Delay(Timeout.Infinite, ct);
                return items.ToArray();
            },
            new BatcherOptions<int> { MaxBatchSize = 1, Pipeline = pipeline });

        await FluentActions.Awaiting(() => batcher.SubmitAsync(1).WithTimeout(TimeSpan.FromSeconds(5))).Should().ThrowAsync<Polly.Timeout.TimeoutRejectedException>();
        await batcher.DrainAsync().WithTimeout();
        batcher.GetStatistics().ItemsFailed.Should().Be(1);
    }

    // ---------------------------------------------------------------- shared rules

    [Fact]
    public async Task Library_awaits_never_capture_the_callers_synchronization_context()
    {
        var processed = 0;
        var batcher = new Batcher<int>(
            async (items, ct) =>
            {
                await Task.Delay(1, ct).ConfigureAwait(false);
                Interlocked.Add(ref processed, items.Count);
            },
            new BatcherOptions<int> { MaxBatchSize = 2, Capacity = 2, MaxDelay = TimeSpan.FromMilliseconds(1) });
        var withResults = new Batcher<int, int>(
            async (items, ct) =>
            {
                await Task.Delay(1, ct).ConfigureAwait(false);
                return items.ToArray();
            },
            new BatcherOptions<int> { MaxBatchSize = 2, Capacity = 2, MaxDelay = TimeSpan.FromMilliseconds(1) });

        var posts = -1;
        await RunOnNonPumpingContext(context =>
        {
            for (var i = 0; i < 20; i++)
            {
                batcher.AddAsync(i).AsTask().Wait(Wait).Should().BeTrue("waiting for capacity must not need the caller's context");
            }

            batcher.FlushAsync().Wait(Wait).Should().BeTrue();
            withResults.SubmitAsync(1).Wait(Wait).Should().BeTrue();
            batcher.DrainAsync().Wait(Wait).Should().BeTrue();
            withResults.DisposeAsync().AsTask().Wait(Wait).Should().BeTrue();
            posts = context.Posts;
        }).WithTimeout(TimeSpan.FromSeconds(30));

        posts.Should().Be(0);
        processed.Should().Be(20);
    }

    [Fact]
    public async Task Metrics_are_published_on_the_AsyncPatterns_meter_tagged_with_the_batcher_name()
    {
        var clock = new ManualTimeProvider();
        var name = UniqueName("batcher-metrics");
        using var metrics = new MetricsCollector("asyncpatterns.batcher.", name);
        await using var batcher = new Batcher<int>((_, _) => ValueTask.CompletedTask, new BatcherOptions<int> { Name = name, MaxBatchSize = 3, MaxDelay = TimeSpan.FromHours(1), TimeProvider = clock });
        for (var i = 0; i < 7; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        await batcher.DrainAsync().WithTimeout();

        metrics.Measurements.Should().NotBeEmpty();
        metrics.Sum("asyncpatterns.batcher.batches").Should().Be(3);
        metrics.Sum("asyncpatterns.batcher.batch.size").Should().Be(7);
    }

    [Fact]
    public async Task Failures_are_logged_through_the_LoggerFactory()
    {
        using var provider = new CapturingLoggerProvider();
        using var factory = provider.CreateFactory();
        var name = UniqueName("batcher-logs");
        await using var batcher = new Batcher<int>(
            (_, _) => throw new InvalidOperationException("logged"),
            new BatcherOptions<int> { Name = name, MaxBatchSize = 1, LoggerFactory = factory });
        await batcher.AddAsync(1).WithTimeout();
        await batcher.DrainAsync().WithTimeout();

        provider.Entries.Should().Contain(e => e.Message.Contains(name));
        provider.Entries.Should().OnlyContain(e => e.EventId.Id != 0);
    }
}
