using System.Collections;
using System.Runtime.CompilerServices;

namespace AsyncPatterns;

/// <summary>Why a batch went: the value of the <c>asyncpatterns.batcher.trigger</c> tag.</summary>
internal enum BatchTrigger
{
    Size,
    Age,
    Weight,
    Flush,
    Drain,
}

/// <summary>
/// One batch: the items (and, for a batcher with results, each caller's completion) in the order they were accepted,
/// exposed to <c>processBatch</c> as an exact-size read-only list.
/// </summary>
/// <remarks>
/// Buffers are pooled by their engine and reused once a batch has finished, which is why the list a user receives is
/// valid only while <c>processBatch</c> (or a callback) runs. Not thread-safe: the engine fills a buffer under its
/// lock and hands it to exactly one worker after sealing it.
/// </remarks>
internal sealed class BatchBuffer<T> : IReadOnlyList<T>, IList<T>
{
    private readonly int _maxSize;
    private T[] _items;
    private object?[]? _completions;
    private int _count;

    public BatchBuffer(int maxSize, bool withCompletions)
    {
        _maxSize = maxSize;
        var initial = Math.Min(maxSize, 256);
        _items = new T[initial];
        _completions = withCompletions ? new object?[initial] : null;
    }

    public int Count => _count;

    /// <summary>The sum of the items' weights (0 without a weight limit).</summary>
    public long Weight { get; private set; }

    /// <summary>The <see cref="TimeProvider"/> timestamp at which the first item was accepted.</summary>
    public long FirstItemTimestamp { get; set; }

    /// <summary>The batch's number in emission order, from 1; 0 while the batch is still open.</summary>
    public long Sequence { get; set; }

    public BatchTrigger Trigger { get; set; }

    /// <summary>What <c>processBatch</c> returned, kept until the batch's accounting is done (batchers with results).</summary>
    public object? Results { get; set; }

    bool ICollection<T>.IsReadOnly => true;

    public T this[int index]
    {
        get
        {
            if ((uint)index >= (uint)_count)
            {
                ThrowIndexOutOfRange(index);
            }

            return _items[index];
        }
    }

    T IList<T>.this[int index]
    {
        get => this[index];
        set => throw ReadOnly();
    }

    public object? CompletionAt(int index) => _completions![index];

    public void Add(T item, object? completion, long weight)
    {
        if (_count == _items.Length)
        {
            Grow();
        }

        _items[_count] = item;
        if (_completions is not null)
        {
            _completions[_count] = completion;
        }

        _count++;
        Weight += weight;
    }

    /// <summary>Empties the buffer for reuse, releasing its references to items and completions.</summary>
    public void Reset()
    {
        if (RuntimeHelpers.IsReferenceOrContainsReferences<T>())
        {
            Array.Clear(_items, 0, _count);
        }

        if (_completions is not null)
        {
            Array.Clear(_completions, 0, _count);
        }

        _count = 0;
        Weight = 0;
        Sequence = 0;
        Results = null;
    }

    public IEnumerator<T> GetEnumerator()
    {
        for (var i = 0; i < _count; i++)
        {
            yield return _items[i];
        }
    }

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    public int IndexOf(T item) => Array.IndexOf(_items, item, 0, _count);

    public bool Contains(T item) => IndexOf(item) >= 0;

    public void CopyTo(T[] array, int arrayIndex) => Array.Copy(_items, 0, array, arrayIndex, _count);

    void ICollection<T>.Add(T item) => throw ReadOnly();

    void ICollection<T>.Clear() => throw ReadOnly();

    bool ICollection<T>.Remove(T item) => throw ReadOnly();

    void IList<T>.Insert(int index, T item) => throw ReadOnly();

    void IList<T>.RemoveAt(int index) => throw ReadOnly();

    private static NotSupportedException ReadOnly() => new("A batch is read-only.");

    private static void ThrowIndexOutOfRange(int index) =>
        throw new ArgumentOutOfRangeException(nameof(index), index, "The index must be 0 or more and less than the batch's Count.");

    private void Grow()
    {
        var size = (int)Math.Min((long)_items.Length * 2, _maxSize);
        Array.Resize(ref _items, size);
        if (_completions is not null)
        {
            Array.Resize(ref _completions, size);
        }
    }
}
