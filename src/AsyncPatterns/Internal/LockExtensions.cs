using System.Diagnostics;

namespace AsyncPatterns;

/// <summary>Debug checks for methods that expect their lock held (their names end in <c>Locked</c>).</summary>
internal static class LockExtensions
{
    [Conditional("DEBUG")]
    public static void AssertHeld(this Lock gate)
    {
#if NET9_0_OR_GREATER
        Debug.Assert(gate.IsHeldByCurrentThread, "The caller must hold the lock.");
#else
        Debug.Assert(Monitor.IsEntered(gate), "The caller must hold the lock.");
#endif
    }
}
