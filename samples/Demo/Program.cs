Console.WriteLine("AsyncPatterns demo: coming with the WorkQueue.");
