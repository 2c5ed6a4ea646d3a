using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using Xunit.Abstractions;
using Xunit.Sdk;

[assembly: TestFramework("AsyncPatterns.Tests.TestSupport.GuardedTestFramework", "AsyncPatterns.Tests")]

namespace AsyncPatterns.Tests.TestSupport;

/// <summary>
/// Records every <see cref="TaskScheduler.UnobservedTaskException"/> raised while the tests run.
/// </summary>
/// <remarks>
/// A task that faults and is never awaited is a bug in a concurrency library: an error nobody saw.
/// <see cref="GuardedTestFramework"/> forces the finalizers to run at the end of the test run and fails the
/// run if anything was recorded.
/// </remarks>
public static class UnobservedTaskExceptionGuard
{
    private static readonly ConcurrentQueue<Exception> Recorded = new();

    /// <summary>The exceptions recorded so far.</summary>
    public static IReadOnlyCollection<Exception> Exceptions => Recorded;

    [ModuleInitializer]
    internal static void Install() =>
        TaskScheduler.UnobservedTaskException += (_, e) =>
        {
            Recorded.Enqueue(e.Exception);
            e.SetObserved();
        };

    /// <summary>Collects garbage so that unobserved faulted tasks are finalized and reported.</summary>
    public static void Flush()
    {
        for (var i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
    }
}

/// <summary>The xunit framework with <see cref="UnobservedTaskExceptionGuard"/> checked at the end of the run.</summary>
public sealed class GuardedTestFramework(IMessageSink messageSink) : XunitTestFramework(messageSink)
{
    /// <inheritdoc />
    protected override ITestFrameworkExecutor CreateExecutor(System.Reflection.AssemblyName assemblyName) =>
        new GuardedExecutor(assemblyName, SourceInformationProvider, DiagnosticMessageSink);

    private sealed class GuardedExecutor(
        System.Reflection.AssemblyName assemblyName,
        ISourceInformationProvider sourceInformationProvider,
        IMessageSink diagnosticMessageSink)
        : XunitTestFrameworkExecutor(assemblyName, sourceInformationProvider, diagnosticMessageSink)
    {
#pragma warning disable VSTHRD100 // xunit's executor API is async void; the runner reports its own failures.
        protected override async void RunTestCases(
            IEnumerable<IXunitTestCase> testCases,
            IMessageSink executionMessageSink,
            ITestFrameworkExecutionOptions executionOptions)
        {
            using var runner = new GuardedAssemblyRunner(TestAssembly, testCases, DiagnosticMessageSink, executionMessageSink, executionOptions);
            await runner.RunAsync();
        }
#pragma warning restore VSTHRD100
    }

    private sealed class GuardedAssemblyRunner(
        ITestAssembly testAssembly,
        IEnumerable<IXunitTestCase> testCases,
        IMessageSink diagnosticMessageSink,
        IMessageSink executionMessageSink,
        ITestFrameworkExecutionOptions executionOptions)
        : XunitTestAssemblyRunner(testAssembly, testCases, diagnosticMessageSink, executionMessageSink, executionOptions)
    {
        protected override async Task<RunSummary> RunTestCollectionsAsync(IMessageBus messageBus, CancellationTokenSource cancellationTokenSource)
        {
            var summary = await base.RunTestCollectionsAsync(messageBus, cancellationTokenSource);
            UnobservedTaskExceptionGuard.Flush();
            var unobserved = UnobservedTaskExceptionGuard.Exceptions.ToArray();
            if (unobserved.Length > 0)
            {
                // Reported as a failed test, so `dotnet test` exits non-zero and names the culprit.
                var test = new XunitTest(TestCases.First(), "UnobservedTaskExceptionGuard: no task exception may be left unobserved");
                var detail = string.Join(Environment.NewLine + "---" + Environment.NewLine, unobserved.Select(e => e.ToString()));
                messageBus.QueueMessage(new TestStarting(test));
                messageBus.QueueMessage(new TestFailed(test, 0, null, [typeof(InvalidOperationException).FullName!],
                    [$"{unobserved.Length} task exception(s) were never observed during the test run:{Environment.NewLine}{detail}"],
                    [string.Empty], [-1]));
                messageBus.QueueMessage(new TestFinished(test, 0, null));
                summary.Total++;
                summary.Failed++;
            }

            return summary;
        }
    }
}
