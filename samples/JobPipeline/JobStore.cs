using Microsoft.Data.Sqlite;

namespace AsyncPatterns.Samples.JobPipeline;

/// <summary>An application after enrichment, as stored.</summary>
internal sealed record StoredApplication(long Id, string Candidate, string Role, string? Profile, string? Skills, string? History);

/// <summary>The embedded SQLite database the batcher writes to: one transaction per batch.</summary>
internal sealed class JobStore : IAsyncDisposable
{
    private readonly SqliteConnection _connection;

    private JobStore(SqliteConnection connection, string path)
    {
        _connection = connection;
        Path = path;
    }

    public string Path { get; }

    public static async Task<JobStore> OpenAsync(string path)
    {
        var connection = new SqliteConnection($"Data Source={path};Pooling=False");
        await connection.OpenAsync();
        await using var create = connection.CreateCommand();
        create.CommandText = """
            PRAGMA journal_mode = WAL;
            DROP TABLE IF EXISTS applications;
            CREATE TABLE applications (
                id         INTEGER PRIMARY KEY,   -- a second insert of the same job would fail the batch
                candidate  TEXT NOT NULL,
                role       TEXT NOT NULL,
                profile    TEXT,
                skills     TEXT,
                history    TEXT,
                enriched   INTEGER NOT NULL
            );
            """;
        await create.ExecuteNonQueryAsync();
        return new JobStore(connection, path);
    }

    /// <summary>Writes one batch in one transaction, with one prepared statement.</summary>
    public async ValueTask WriteBatchAsync(IReadOnlyList<StoredApplication> batch, CancellationToken cancellationToken)
    {
        await using var transaction = (SqliteTransaction)await _connection.BeginTransactionAsync(cancellationToken);
        await using var insert = _connection.CreateCommand();
        insert.Transaction = transaction;
        insert.CommandText = "INSERT INTO applications (id, candidate, role, profile, skills, history, enriched) VALUES ($id, $candidate, $role, $profile, $skills, $history, $enriched)";
        var id = insert.Parameters.Add("$id", SqliteType.Integer);
        var candidate = insert.Parameters.Add("$candidate", SqliteType.Text);
        var role = insert.Parameters.Add("$role", SqliteType.Text);
        var profile = insert.Parameters.Add("$profile", SqliteType.Text);
        var skills = insert.Parameters.Add("$skills", SqliteType.Text);
        var history = insert.Parameters.Add("$history", SqliteType.Text);
        var enriched = insert.Parameters.Add("$enriched", SqliteType.Integer);
        foreach (var a in batch)
        {
            id.Value = a.Id;
            candidate.Value = a.Candidate;
            role.Value = a.Role;
            profile.Value = (object?)a.Profile ?? DBNull.Value;
            skills.Value = (object?)a.Skills ?? DBNull.Value;
            history.Value = (object?)a.History ?? DBNull.Value;
            enriched.Value = a.Profile is null ? 0 : 1;
            await insert.ExecuteNonQueryAsync(cancellationToken);
        }

        await transaction.CommitAsync(cancellationToken);
    }

    /// <summary>Reads the table back: rows, distinct ids, enriched rows, and every id.</summary>
    public async Task<(long Rows, long DistinctIds, long Enriched, HashSet<long> Ids)> ReadBackAsync()
    {
        await using var count = _connection.CreateCommand();
        count.CommandText = "SELECT COUNT(*), COUNT(DISTINCT id), COALESCE(SUM(enriched), 0) FROM applications";
        long rows, distinct, enrichedRows;
        await using (var reader = await count.ExecuteReaderAsync())
        {
            await reader.ReadAsync();
            rows = reader.GetInt64(0);
            distinct = reader.GetInt64(1);
            enrichedRows = reader.GetInt64(2);
        }

        var ids = new HashSet<long>();
        await using var all = _connection.CreateCommand();
        all.CommandText = "SELECT id FROM applications";
        await using (var reader = await all.ExecuteReaderAsync())
        {
            while (await reader.ReadAsync())
            {
                ids.Add(reader.GetInt64(0));
            }
        }

        return (rows, distinct, enrichedRows, ids);
    }

    public ValueTask DisposeAsync() => _connection.DisposeAsync();
}
