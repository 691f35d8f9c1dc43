"""
Tests for L{kvpaxos.node.clock}: the reactor's timed calls run on the
monotonic clock, so a wall-clock step moves none of them (issue 9, hole 3).
"""

from twisted.internet.selectreactor import SelectReactor
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.node.clock import MonotonicClock, run_timers_on


class FakeTime:
    """A clock a test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RunTimersOnTests(SynchronousTestCase):
    """A real (not running) reactor, its timed calls moved to another clock."""

    def setUp(self):
        self.reactor = SelectReactor()
        self.addCleanup(self._close)

    def _close(self):
        for call in self.reactor.getDelayedCalls():
            call.cancel()
        self.reactor.waker.connectionLost(None)

    def test_calls_run_by_the_new_clock(self):
        """A call is due by the monotonic clock, whatever the wall clock says."""
        mono = FakeTime(100.0)
        run_timers_on(self.reactor, mono)
        ran = []
        self.reactor.callLater(5, ran.append, "tick")
        self.assertEqual(self.reactor.getDelayedCalls()[0].getTime(), 105.0)
        mono.now = 104.0
        self.reactor.runUntilCurrent()
        self.assertEqual(ran, [])
        mono.now = 105.0
        self.reactor.runUntilCurrent()
        self.assertEqual(ran, ["tick"])

    def test_calls_scheduled_before_are_moved(self):
        """A call scheduled on the wall clock keeps its delay on the new clock."""
        ran = []
        call = self.reactor.callLater(10, ran.append, "early")
        wall_due = call.getTime()
        left = wall_due - self.reactor.seconds()
        mono = FakeTime(7.0)
        run_timers_on(self.reactor, mono)
        self.assertAlmostEqual(call.getTime(), 7.0 + left, places=3)
        mono.now = 7.0 + left + 0.01
        self.reactor.runUntilCurrent()
        self.assertEqual(ran, ["early"])

    def test_reset_uses_the_new_clock(self):
        """Resetting a moved call counts from the new clock's now."""
        mono = FakeTime(50.0)
        run_timers_on(self.reactor, mono)
        call = self.reactor.callLater(1, lambda: None)
        mono.now = 60.0
        call.reset(2)
        self.reactor.runUntilCurrent()  # applies the reset
        self.assertEqual(call.getTime(), 62.0)

    def test_monotonic_clock(self):
        """MonotonicClock never goes backwards."""
        clock = MonotonicClock()
        first = clock.seconds()
        self.assertGreaterEqual(clock.seconds(), first)
