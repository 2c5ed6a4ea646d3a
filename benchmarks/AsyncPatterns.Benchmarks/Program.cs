using BenchmarkDotNet.Running;

// One class per pattern, each with its baselines. Run one with, for example:
//   dotnet run -c Release --project benchmarks/AsyncPatterns.Benchmarks -- --filter '*WorkQueue*' --job short
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
