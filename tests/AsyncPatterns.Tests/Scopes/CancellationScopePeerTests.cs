using AsyncPatterns.Tests.TestSupport;

namespace AsyncPatterns.Tests.Scopes;

/// <summary>
/// Peer scenarios not ported in <see cref="CancellationScopeRunAsyncTests"/>: CPython's <c>test_taskgroups.py</c> and
/// <c>test_timeouts.py</c>, Trio's <c>test_run.py</c> (nurseries, cancel scopes). Names cite the original.
/// </summary>
public sealed class CancellationScopePeerTests
{
    private static CancellationScopeOptions On(ManualTimeProvider clock, TimeSpan? timeout = null) =>
        new() { TimeProvider = clock, Timeout = timeout };

    /// <summary>Waits (inside a body or child) until <paramref name="scope"/> is cancelled, swallowing the cancellation.</summary>
    private static async Task UntilCancelledAsync(CancellationScope scope)
    {
        try
        {
            await Task.Delay(Timeout.Infinite, scope.Token);
        }
        catch (OperationCanceledException)
        {
        }
    }

    [Fact] // Trio's start_soon into a nursery that is cancelled at once: the child still runs and sees the cancellation
    public async Task A_child_started_just_before_the_scope_ends_always_runs_and_sees_the_cancellation()
    {
        for (var i = 0; i < 200; i++)
        {
            var sawCancellation = 0;
            await using (var scope = new CancellationScope())
            {
                _ = scope.Run(async ct =>
                {
                    try
                    {
                        await Task.Delay(Timeout.Infinite, ct);
                    }
                    catch (OperationCanceledException)
                    {
                        Interlocked.Increment(ref sawCancellation);
                        throw;
                    }
                });
            }

            sawCancellation.Should().Be(1, "leaving the block cancels the child, which was started (round {0})", i);
        }
    }

    [Fact]
    public async Task A_child_accepted_before_a_failure_cancels_the_nursery_is_still_invoked()
    {
        for (var i = 0; i < 200; i++)
        {
            var invoked = 0;
            var error = new InvalidOperationException("fails at once");
            var act = () => CancellationScope.RunAsync(scope =>
            {
                _ = scope.Run(_ => throw error);
                _ = scope.Run(ct =>
                {
                    Interlocked.Increment(ref invoked);
                    return Task.Delay(Timeout.Infinite, ct);
                });
                return Task.CompletedTask;
            });

            (await act.Should().ThrowExactlyAsync<InvalidOperationException>().WithTimeout()).Which.Should().BeSameAs(error);
            invoked.Should().Be(1, "every accepted child runs (round {0})", i);
        }
    }

    [Fact] // the README's nursery example: the body awaits a child that fails and lets its exception escape
    public async Task A_body_that_awaits_a_failing_child_reports_the_one_failure_as_itself()
    {
        var error = new InvalidOperationException("profile service down");
        var act = () => CancellationScope.RunAsync(async scope =>
        {
            var profile = scope.Run<string>(async _ =>
            {
                await Task.Yield();
                throw error;
            });
            var history = scope.Run(ct => Task.Delay(Timeout.Infinite, ct));
            await profile; // rethrows the child's own exception instance
            await history;
        });

        for (var i = 0; i < 50; i++)
        {
            (await act.Should().ThrowExactlyAsync<InvalidOperationException>().WithTimeout()).Which.Should().BeSameAs(error);
        }
    }

    [Fact]
    public async Task A_child_that_awaits_a_failing_sibling_reports_the_one_failure_as_itself()
    {
        var error = new TimeoutException("upstream");
        var act = () => CancellationScope.RunAsync(scope =>
        {
            var first = scope.Run(async _ =>
            {
                await Task.Yield();
                throw error;
            });
            _ = scope.Run(async _ => await first);
            return Task.CompletedTask;
        });

        for (var i = 0; i < 50; i++)
        {
            (await act.Should().ThrowExactlyAsync<TimeoutException>().WithTimeout()).Which.Should().BeSameAs(error);
        }
    }

    [Fact] // taskgroup_no_create_task_after_failure: a cancelled child that tries to start work is refused
    public async Task A_child_that_starts_work_after_a_failure_is_refused_and_only_the_failure_is_reported()
    {
        var error = new DivideByZeroException("1 / 0");
        var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Exception? refused = null;
        var run = CancellationScope.RunAsync(scope =>
        {
            _ = scope.Run(async ct =>
            {
                waiting.SetResult();
                await UntilCancelledAsync(scope);
                refused = Record.Exception(() => { _ = scope.Run(_ => Task.CompletedTask); });
            });
            _ = scope.Run(async _ =>
            {
                await waiting.Task; // a child cancelled before it starts never runs: let the first one start
                throw error;
            });
            return Task.CompletedTask;
        });

        (await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<DivideByZeroException>()).Which.Should().BeSameAs(error);
        refused.Should().BeOfType<InvalidOperationException>();
    }

    [Fact] // the same, when the refusal escapes the body (on a thread pool a child can fail while the body still starts siblings)
    public async Task A_refusal_escaping_the_body_after_a_child_failed_is_not_a_second_failure()
    {
        var error = new DivideByZeroException("1 / 0");
        var run = CancellationScope.RunAsync(async scope =>
        {
            _ = scope.Run(_ => throw error);
            await UntilCancelledAsync(scope);
            _ = scope.Run(_ => Task.CompletedTask); // throws InvalidOperationException out of the body
        });

        var thrown = await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<DivideByZeroException>();
        thrown.Which.Should().BeSameAs(error);
    }

    [Fact]
    public async Task A_refusal_escaping_a_child_after_a_sibling_failed_is_not_a_second_failure()
    {
        var error = new DivideByZeroException("1 / 0");
        CancellationScope? escaped = null;
        var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = CancellationScope.RunAsync(scope =>
        {
            escaped = scope;
            _ = scope.Run(async ct =>
            {
                waiting.SetResult();
                await UntilCancelledAsync(scope);
                _ = scope.Run(_ => Task.CompletedTask); // escapes: this child fails with the refusal
            });
            _ = scope.Run(async _ =>
            {
                await waiting.Task;
                throw error;
            });
            return Task.CompletedTask;
        });

        (await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<DivideByZeroException>()).Which.Should().BeSameAs(error);
        escaped!.GetFailures().Should().HaveCount(2, "the refusal is still the child's recorded outcome; it is just not rethrown");
    }

    [Fact]
    public async Task A_refusal_escaping_the_body_after_the_callers_cancellation_is_OperationCanceledException()
    {
        using var caller = new CancellationTokenSource();
        var run = CancellationScope.RunAsync(async scope =>
        {
            await UntilCancelledAsync(scope);
            _ = scope.Run(_ => Task.CompletedTask);
        }, cancellationToken: caller.Token);
        caller.Cancel();

        (await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowAsync<OperationCanceledException>())
            .Which.CancellationToken.Should().Be(caller.Token);
    }

    [Fact]
    public async Task A_refusal_escaping_the_body_after_the_deadline_is_TimeoutException()
    {
        var clock = new ManualTimeProvider();
        var run = CancellationScope.RunAsync(async scope =>
        {
            await UntilCancelledAsync(scope);
            _ = scope.Run(_ => Task.CompletedTask);
        }, On(clock, TimeSpan.FromSeconds(1)));
        clock.Advance(TimeSpan.FromSeconds(1));

        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TimeoutException>();
    }

    [Fact] // after a quiet Cancel() the refusal is the only error there is
    public async Task A_refusal_after_a_quiet_Cancel_is_still_reported()
    {
        var run = CancellationScope.RunAsync(scope =>
        {
            scope.Cancel();
            _ = scope.Run(_ => Task.CompletedTask);
            return Task.CompletedTask;
        });

        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<InvalidOperationException>().WithMessage("*cancelled or has ended*");
    }

    [Fact] // a refusal from another (nested, finished) scope is a real failure of this one
    public async Task A_refusal_from_another_scope_is_a_real_failure()
    {
        var other = new CancellationScope();
        await other.DisposeAsync();
        var error = new DivideByZeroException("1 / 0");
        var run = CancellationScope.RunAsync(async scope =>
        {
            _ = scope.Run(_ => throw error);
            await UntilCancelledAsync(scope);
            _ = other.Run(_ => Task.CompletedTask);
        });

        var thrown = await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<AggregateException>();
        thrown.Which.InnerExceptions.Should().HaveCount(2);
        thrown.Which.InnerExceptions[0].Should().BeSameAs(error);
        thrown.Which.InnerExceptions[1].Should().BeOfType<InvalidOperationException>();
    }

    [Fact] // taskgroup_25: children keep spawning children until a sibling fails
    public async Task Hydra_children_spawning_children_stop_at_the_first_failure()
    {
        var hydras = 0;
        var run = CancellationScope.RunAsync(scope =>
        {
            Func<CancellationToken, Task> hydra = null!;
            hydra = async ct =>
            {
                if (Interlocked.Increment(ref hydras) > 100_000)
                {
                    return; // a safety cap; the failure stops the growth long before
                }

                await Task.Yield();
                _ = scope.Run(hydra); // no cancellation check: a refusal after the failure is not reported
                _ = scope.Run(hydra);
            };
            _ = scope.Run(hydra);
            _ = scope.Run(async ct =>
            {
                while (Volatile.Read(ref hydras) < 10)
                {
                    await Task.Yield();
                }

                throw new DivideByZeroException("hercules");
            });
            return Task.CompletedTask;
        });

        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<DivideByZeroException>();
        hydras.Should().BeGreaterThanOrEqualTo(10);
    }

    [Fact] // gh-128550 test_cancels_task_if_created_during_creation
    public async Task A_grandchild_failure_cancels_the_child_that_started_it()
    {
        var error = new TestException("third task failed");
        var ran = false;
        var run = CancellationScope.RunAsync(scope =>
        {
            _ = scope.Run(async ct =>
            {
                _ = scope.Run(_ => throw error);
                var cancelled = await FluentActions.Awaiting(() => Task.Delay(Timeout.Infinite, ct)).Should().ThrowAsync<OperationCanceledException>();
                ran = cancelled is not null;
            });
            return Task.CompletedTask;
        });

        (await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TestException>()).Which.Should().BeSameAs(error);
        ran.Should().BeTrue();
    }

    [Fact] // trio test_cancel_inheritance: cancelling a nursery reaches the leaves of nested nurseries at once
    public async Task Cancel_reaches_every_leaf_of_nested_scopes_started_by_children()
    {
        var record = new System.Collections.Concurrent.ConcurrentDictionary<string, bool>();
        var leavesWaiting = 0;
        await CancellationScope.RunAsync(async scope =>
        {
            foreach (var worker in new[] { "w1", "w2" })
            {
                _ = scope.Run(ct => CancellationScope.RunAsync(inner =>
                {
                    foreach (var leaf in new[] { "-l1", "-l2" })
                    {
                        _ = inner.Run(async leafToken =>
                        {
                            Interlocked.Increment(ref leavesWaiting);
                            try
                            {
                                await Task.Delay(Timeout.Infinite, leafToken);
                            }
                            catch (OperationCanceledException)
                            {
                                record[worker + leaf] = true;
                                throw;
                            }
                        });
                    }

                    return Task.CompletedTask;
                }, cancellationToken: ct));
            }

            await AsyncAssert.EventuallyAsync(() => Volatile.Read(ref leavesWaiting) == 4);
            scope.Cancel();
        }).WithTimeout();

        record.Keys.Should().BeEquivalentTo("w1-l1", "w1-l2", "w2-l1", "w2-l2");
    }

    [Fact] // trio test_nursery_collapse (strict_exception_groups=False): a nested scope's single failure is not wrapped
    public async Task An_outer_failure_and_a_nested_failure_are_reported_flat_in_order()
    {
        var outerGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var innerGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var innerStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var a = new KeyNotFoundException("outer child");
        var b = new ArgumentException("inner child");
        CancellationScope? outerScope = null;
        var run = CancellationScope.RunAsync(async g1 =>
        {
            outerScope = g1;
            _ = g1.Run(async _ =>
            {
                await outerGate.Task;
                throw a;
            });
            await CancellationScope.RunAsync(g2 =>
            {
                _ = g2.Run(async _ =>
                {
                    innerStarted.SetResult();
                    await innerGate.Task; // ignores cancellation, then fails
                    throw b;
                });
                return Task.CompletedTask;
            }, cancellationToken: g1.Token);
        });

        await innerStarted.Task.WithTimeout();
        outerGate.SetResult();
        await AsyncAssert.EventuallyAsync(() => outerScope!.IsCancellationRequested);
        innerGate.SetResult();

        var thrown = await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<AggregateException>();
        thrown.Which.InnerExceptions.Should().Equal(a, b);
    }

    [Fact] // trio test_contextvar_multitask / asyncio task context: each child gets the context at Run
    public async Task Each_child_gets_the_execution_context_of_its_Run_call_and_changes_do_not_leak()
    {
        var local = new AsyncLocal<string>();
        local.Value = "hmmm";
        string? t1Saw = null, t2Saw = null, afterT1 = null;
        await CancellationScope.RunAsync(async scope =>
        {
            await scope.Run(_ =>
            {
                t1Saw = local.Value;
                local.Value = "changed by t1";
                return Task.CompletedTask;
            });
            afterT1 = local.Value;
            local.Value = "hmmmm";
            await scope.Run(_ =>
            {
                t2Saw = local.Value;
                return Task.CompletedTask;
            });
        }).WithTimeout();

        t1Saw.Should().Be("hmmm");
        afterT1.Should().Be("hmmm", "a child's change does not leak into the body");
        t2Saw.Should().Be("hmmmm");
    }

    [Fact] // test_timeout_basic (cm.expired()) and test_timeout_exception_cause
    public async Task Timeout_sets_TimedOut_and_the_TimeoutException_is_caused_by_the_cancellation()
    {
        var clock = new ManualTimeProvider();
        CancellationScope? escaped = null;
        var bodySawCancellation = false; // test_waiter_cancelled
        var run = CancellationScope.RunAsync(async scope =>
        {
            escaped = scope;
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(10), clock, scope.Token);
            }
            catch (OperationCanceledException)
            {
                bodySawCancellation = true;
                throw;
            }
        }, On(clock, TimeSpan.FromMilliseconds(10)));
        clock.AdvanceMilliseconds(10);

        var thrown = await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TimeoutException>();
        thrown.Which.InnerException.Should().BeAssignableTo<OperationCanceledException>()
            .Which.CancellationToken.Should().Be(escaped!.Token);
        escaped.TimedOut.Should().BeTrue();
        bodySawCancellation.Should().BeTrue();
    }

    [Fact] // test_foreign_exception_on_timeout: an error raised while unwinding from the timeout wins
    public async Task An_error_raised_while_unwinding_from_the_timeout_wins_over_the_timeout()
    {
        var clock = new ManualTimeProvider();
        var run = CancellationScope.RunAsync(async scope =>
        {
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(1), clock, scope.Token);
            }
            finally
            {
                throw new DivideByZeroException("1 / 0");
            }
        }, On(clock, TimeSpan.FromMilliseconds(10)));
        clock.AdvanceMilliseconds(10);

        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<DivideByZeroException>();
    }

    [Fact] // test_nested_timeouts: the same deadline for both; only the outer reports the timeout
    public async Task Nested_scopes_with_the_same_deadline_throw_one_TimeoutException()
    {
        var clock = new ManualTimeProvider();
        var innerCancelled = false;
        var run = CancellationScope.RunAsync(async outer =>
        {
            try
            {
                await CancellationScope.RunAsync(inner => Task.Delay(TimeSpan.FromSeconds(10), clock, inner.Token), On(clock, TimeSpan.FromMilliseconds(10)), outer.Token);
            }
            catch (OperationCanceledException)
            {
                innerCancelled = true;
                throw;
            }
        }, On(clock, TimeSpan.FromMilliseconds(10)));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 3);
        clock.AdvanceMilliseconds(10);

        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TimeoutException>();
        innerCancelled.Should().BeTrue("the outer deadline (created first, fired first) cancelled the inner scope as its caller");
    }

    [Fact] // test_nested_timeouts_loop_busy: a caught inner timeout leaves the outer deadline in force
    public async Task A_caught_inner_timeout_leaves_the_outer_deadline_in_force()
    {
        var clock = new ManualTimeProvider();
        CancellationScope? outerScope = null;
        var innerTimedOut = false;
        var run = CancellationScope.RunAsync(async outer =>
        {
            outerScope = outer;
            try
            {
                await CancellationScope.RunAsync(inner => Task.Delay(TimeSpan.FromSeconds(1), clock, inner.Token), On(clock, TimeSpan.FromMilliseconds(10)), outer.Token);
            }
            catch (TimeoutException)
            {
                innerTimedOut = true;
            }

            await Task.Delay(TimeSpan.FromSeconds(10), clock, outer.Token); // interrupted by the outer deadline
        }, On(clock, TimeSpan.FromMilliseconds(100)));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 3);
        clock.AdvanceMilliseconds(10);
        await AsyncAssert.EventuallyAsync(() => innerTimedOut && clock.ActiveTimerCount == 2);
        clock.AdvanceMilliseconds(90);

        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TimeoutException>();
        outerScope!.TimedOut.Should().BeTrue();
    }

    [Fact] // test_nested_timeout_in_finally: cleanup in its own (unlinked) scope gets its own deadline
    public async Task A_fresh_scope_in_the_finally_of_a_timed_out_body_has_its_own_deadline()
    {
        var clock = new ManualTimeProvider();
        var cleanupTimedOut = false;
        var run = CancellationScope.RunAsync(async scope =>
        {
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(1), clock, scope.Token);
            }
            finally
            {
                try
                {
                    await CancellationScope.RunAsync(cleanup => Task.Delay(TimeSpan.FromSeconds(10), clock, cleanup.Token), On(clock, TimeSpan.FromMilliseconds(10)));
                }
                catch (TimeoutException)
                {
                    cleanupTimedOut = true;
                }
            }
        }, On(clock, TimeSpan.FromMilliseconds(10)));
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 2);
        clock.AdvanceMilliseconds(10);
        await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 2, "the cleanup's deadline and delay");
        await AsyncAssert.StillPendingAsync(run, "the cleanup still runs: it is not linked to the timed-out scope");
        clock.AdvanceMilliseconds(10);

        await FluentActions.Awaiting(() => run.WithTimeout()).Should().ThrowExactlyAsync<TimeoutException>();
        cleanupTimedOut.Should().BeTrue();
    }

    [Fact] // taskgroup_23: finished children leave the scope while the body still runs
    public async Task Finished_children_are_no_longer_pending_while_the_body_runs()
    {
        var clock = new ManualTimeProvider();
        await CancellationScope.RunAsync(async scope =>
        {
            for (var i = 0; i < 5; i++)
            {
                _ = scope.Run(ct => Task.Delay(TimeSpan.FromMilliseconds(300), clock, ct));
            }

            await AsyncAssert.EventuallyAsync(() => clock.ActiveTimerCount == 5);
            scope.GetStatistics().Pending.Should().Be(5);
            clock.AdvanceMilliseconds(300);
            await AsyncAssert.EventuallyAsync(() => scope.GetStatistics().Pending == 0, "the children finished");
            scope.GetStatistics().Succeeded.Should().Be(5);
        }, On(clock)).WithTimeout();
    }

    [Fact] // DESIGN: DisposeAsync never throws and observes failures, also those raised in answer to its cancellation
    public async Task A_child_failing_in_answer_to_DisposeAsyncs_cancellation_is_observed_not_thrown()
    {
        var marker = "dispose-failure-" + Guid.NewGuid();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var scope = new CancellationScope();
        var child = scope.Run(async ct =>
        {
            started.SetResult();
            try
            {
                await Task.Delay(Timeout.Infinite, ct);
            }
            catch (OperationCanceledException)
            {
                throw new TestException(marker);
            }
        });
        await started.Task.WithTimeout();

        await FluentActions.Awaiting(() => scope.DisposeAsync().AsTask().WithTimeout()).Should().NotThrowAsync();
        child.IsFaulted.Should().BeTrue();
        scope.GetFailures().Should().ContainSingle().Which.Message.Should().Be(marker);

        UnobservedTaskExceptionGuard.Flush();
        UnobservedTaskExceptionGuard.Exceptions
            .SelectMany(e => e is AggregateException ag ? ag.Flatten().InnerExceptions : [e])
            .Should().NotContain(e => e.Message == marker);
    }
}
