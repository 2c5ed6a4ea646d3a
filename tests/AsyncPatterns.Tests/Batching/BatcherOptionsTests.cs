using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Batching;

public sealed class BatcherOptionsTests
{
    private readonly ManualTimeProvider _time = new();

    public static TheoryData<string, Action<BatcherOptions<int>>> BadOptions => new()
    {
        { "MaxBatchSize", o => o.MaxBatchSize = 0 },
        { "MaxBatchSize", o => o.MaxBatchSize = -1 },
        { "MaxDelay", o => o.MaxDelay = TimeSpan.Zero },
        { "MaxDelay", o => o.MaxDelay = TimeSpan.FromSeconds(-1) },
        { "Capacity", o => { o.MaxBatchSize = 10; o.Capacity = 9; } },
        { "Capacity", o => o.Capacity = -1 },
        { "MaxConcurrentBatches", o => o.MaxConcurrentBatches = 0 },
        { "MaxConcurrentBatches", o => o.MaxConcurrentBatches = -2 },
        { "MaxBatchWeight", o => { o.MaxBatchWeight = 0; o.WeightSelector = i => i; } },
        { "DrainTimeout", o => o.DrainTimeout = TimeSpan.Zero },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public void Invalid_options_throw_naming_the_option_and_the_allowed_range(string option, Action<BatcherOptions<int>> configure)
    {
        var options = new BatcherOptions<int>();
        configure(options);

        var plain = () => new Batcher<int>((_, _) => default, options);
        var withResults = () => new Batcher<int, int>((b, _) => new ValueTask<IReadOnlyList<int>>(b.ToArray()), options);

        plain.Should().Throw<ArgumentOutOfRangeException>().Which.ParamName.Should().Be(option);
        withResults.Should().Throw<ArgumentOutOfRangeException>().Which.Message.Should().Contain(option + " must be");
    }

    [Fact]
    public void A_weight_limit_needs_both_MaxBatchWeight_and_WeightSelector()
    {
        var onlyLimit = () => new Batcher<int>((_, _) => default, new BatcherOptions<int> { MaxBatchWeight = 10 });
        var onlySelector = () => new Batcher<int>((_, _) => default, new BatcherOptions<int> { WeightSelector = i => i });

        onlyLimit.Should().Throw<ArgumentException>().WithMessage("*WeightSelector is missing*").Which.ParamName.Should().Be("WeightSelector");
        onlySelector.Should().Throw<ArgumentException>().WithMessage("*MaxBatchWeight is missing*").Which.ParamName.Should().Be("MaxBatchWeight");
    }

    [Fact]
    public void Null_delegates_throw_ArgumentNullException()
    {
        var plain = () => new Batcher<int>(null!);
        var withResults = () => new Batcher<int, int>(null!);

        plain.Should().Throw<ArgumentNullException>().Which.ParamName.Should().Be("processBatch");
        withResults.Should().Throw<ArgumentNullException>().Which.ParamName.Should().Be("processBatch");
    }

    [Fact]
    public async Task Capacity_defaults_to_ten_times_MaxBatchSize_and_options_are_copied()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var options = new BatcherOptions<int> { MaxBatchSize = 3, TimeProvider = _time };
        await using var batcher = new Batcher<int>(async (_, _) => await gate.Task, options);
        options.MaxBatchSize = 1000;

        for (var i = 0; i < 30; i++)
        {
            await batcher.AddAsync(i).WithTimeout();
        }

        var waiting = batcher.AddAsync(30).AsTask();
        await AsyncAssert.StillPendingAsync(waiting, "30 items = 10 × MaxBatchSize are pending");
        batcher.GetStatistics().BatchesBySize.Should().Be(10, "MaxBatchSize stayed 3 after the options changed");
        gate.SetResult();
        await waiting.WithTimeout();
    }

    [Fact]
    public async Task Weight_limit_closes_a_batch_before_it_overflows_and_sends_a_heavy_item_alone()
    {
        var batches = new ConcurrentQueue<int[]>();
        await using var batcher = new Batcher<int>(
            (batch, _) =>
            {
                batches.Enqueue(batch.ToArray());
                return default;
            },
            new BatcherOptions<int> { MaxBatchWeight = 10, WeightSelector = i => i, TimeProvider = _time });

        foreach (var item in new[] { 3, 4, 5, 5, 25, 1 })
        {
            await batcher.AddAsync(item).WithTimeout();
        }

        await AsyncAssert.EventuallyAsync(() => batches.Count == 3);
        batcher.GetStatistics().ItemsBuffered.Should().Be(1, "the last item waits for its age or a flush");
        await batcher.FlushAsync().WithTimeout();

        batches.Should().BeEquivalentTo(new[] { new[] { 3, 4 }, [5, 5], [25], [1] }, o => o.WithStrictOrdering());
        var statistics = batcher.GetStatistics();
        statistics.BatchesByWeight.Should().Be(3, "[3,4] would overflow, [5,5] reached the limit, [25] is heavier than it");
        statistics.BatchesByFlush.Should().Be(1);
    }

    [Fact]
    public async Task A_negative_weight_is_refused()
    {
        await using var batcher = new Batcher<int>(
            (_, _) => default,
            new BatcherOptions<int> { MaxBatchWeight = 10, WeightSelector = i => -i, TimeProvider = _time });

        var add = () => batcher.AddAsync(5).AsTask();

        await add.Should().ThrowAsync<ArgumentOutOfRangeException>();
        batcher.GetStatistics().ItemsAccepted.Should().Be(0);
    }

    [Fact]
    public async Task Metrics_tag_each_batch_with_its_trigger_and_record_batch_sizes()
    {
        var name = "metrics-" + Guid.NewGuid().ToString("N");
        var triggers = new ConcurrentQueue<string>();
        var sizes = new ConcurrentQueue<int>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == AsyncPatternsDiagnostics.MeterName && instrument.Name.StartsWith("asyncpatterns.batcher.", StringComparison.Ordinal))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        var pending = new ConcurrentQueue<long>();
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            if (!HasName(tags, name))
            {
                return;
            }

            if (instrument.Name == "asyncpatterns.batcher.batches")
            {
                triggers.Enqueue((string)tags.ToArray().Single(t => t.Key == "asyncpatterns.batcher.trigger").Value!);
            }
            else if (instrument.Name == "asyncpatterns.batcher.items.pending")
            {
                pending.Enqueue(value);
            }
        });
        listener.SetMeasurementEventCallback<int>((instrument, value, tags, _) =>
        {
            if (instrument.Name == "asyncpatterns.batcher.batch.size" && HasName(tags, name))
            {
                sizes.Enqueue(value);
            }
        });
        listener.Start();

        var batcher = new Batcher<int>(
            (_, _) => default,
            new BatcherOptions<int> { Name = name, MaxBatchSize = 2, MaxBatchWeight = 100, WeightSelector = i => i, TimeProvider = _time });
        await batcher.AddAsync(1).WithTimeout();
        await batcher.AddAsync(1).WithTimeout(); // size
        await batcher.AddAsync(1).WithTimeout();
        _time.Advance(TimeSpan.FromSeconds(1)); // age
        await batcher.AddAsync(150).WithTimeout(); // weight
        await batcher.AddAsync(1).WithTimeout();
        await batcher.FlushAsync().WithTimeout(); // flush
        await batcher.AddAsync(1).WithTimeout();
        listener.RecordObservableInstruments();
        await batcher.DisposeAsync(); // drain
        listener.RecordObservableInstruments();

        triggers.Should().Equal("size", "age", "weight", "flush", "drain");
        sizes.Should().Equal(2, 1, 1, 1, 1);
        pending.Should().Equal([1L], "the open batch held one item; a drained batcher is no longer observed");
    }

    private static bool HasName(ReadOnlySpan<KeyValuePair<string, object?>> tags, string name)
    {
        foreach (var tag in tags)
        {
            if (tag.Key == AsyncPatternsDiagnostics.NameTag && (string?)tag.Value == name)
            {
                return true;
            }
        }

        return false;
    }
}
