"""
L{ReactorCrossing}: how the gRPC thread reaches the reactor thread, many
calls per reactor turn.

A handler queues its call with the callback that takes its outcome; the
first call queued after a drain asks the reactor (C{callFromThread}) for
one drain, which runs every call queued by then.  So a burst of requests
costs one reactor wake-up, not one each (measured ~25% faster; see
DESIGN.md).  A queued call is a small L{Crossing} (no lock, no condition
of its own: the crossing's one lock guards the queue).  Nothing here knows
what the calls do.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger

_log = Logger()

#: What takes a call's outcome: C{done(True, value)} or C{done(False, error)}.
Done = Callable[[bool, Any], None]


class Crossing:
    """
    One call queued by L{ReactorCrossing.enqueue}.  L{cancel} before it has
    run keeps it from running (its C{done} is then never called).
    """

    __slots__ = ("call", "done", "cancelled", "settled")

    def __init__(self, call: Callable[[], Any], done: Done) -> None:
        self.call = call
        self.done = done
        self.cancelled = False
        self.settled = False

    def cancel(self) -> None:
        """Do not run the call if it has not run yet (from any thread)."""
        self.cancelled = True


class ReactorCrossing:
    """
    Carries calls from any thread into the reactor thread, many per reactor
    turn.

    L{enqueue} may be called from any thread; the queued calls run in the
    reactor thread, in the order queued, in a L{drain}.  A call returns a
    value or a Deferred; its outcome is handed once to the C{done} it was
    queued with, in the reactor thread.

    @ivar drains: how many drains ran at least one call (read it in the
        reactor thread).
    @ivar calls: how many calls the drains ran.
    """

    def __init__(self, reactor) -> None:
        """
        @param reactor: provides C{callFromThread}; nothing else is used.
        """
        self._reactor = reactor
        self._lock = threading.Lock()
        # Guarded by _lock:
        self._queued: list[Crossing] = []
        self._pending: set[Crossing] = set()  # queued or running, not yet settled
        self._drain_scheduled = False
        self._closed_error: Optional[Callable[[], BaseException]] = None
        # Reactor thread only:
        self.drains = 0
        self.calls = 0

    def enqueue(self, call: Callable[[], Any], done: Done) -> Crossing:
        """
        Queue C{call} to run in the reactor thread; C{done(ok, value)} gets
        its outcome (its result, or the exception it raised or its Deferred
        failed with).  After L{close}, C{done} is called at once, in this
        thread, with the close's error.
        """
        crossing = Crossing(call, done)
        with self._lock:
            closed_error = self._closed_error
            if closed_error is None:
                self._queued.append(crossing)
                self._pending.add(crossing)
                schedule = not self._drain_scheduled
                self._drain_scheduled = True
        if closed_error is not None:
            crossing.settled = True
            done(False, closed_error())
            return crossing
        if schedule:
            # Invariant: at most one drain is scheduled; every call queued
            # before it runs is run by it (it takes the whole queue).
            self._reactor.callFromThread(self.drain)
        return crossing

    def drain(self) -> None:
        """Run every queued call.  Called in the reactor thread."""
        with self._lock:
            batch, self._queued = self._queued, []
            self._drain_scheduled = False
        if not batch:
            return
        self.drains += 1
        settle = self._settle
        for crossing in batch:
            if crossing.cancelled or crossing.settled:
                if not crossing.settled:
                    with self._lock:
                        self._pending.discard(crossing)
                continue
            self.calls += 1
            try:
                result = crossing.call()
            except BaseException as error:
                settle(crossing, False, error)
                continue
            if isinstance(result, defer.Deferred):
                result.addCallbacks(lambda value, c=crossing: settle(c, True, value),
                                    lambda failure, c=crossing: settle(c, False, failure.value))
            else:
                settle(crossing, True, result)

    def _settle(self, crossing: Crossing, ok: bool, value: Any) -> None:
        with self._lock:
            if crossing.settled:
                return  # failed by a close while it ran: its outcome is dropped
            crossing.settled = True
            self._pending.discard(crossing)
        try:
            crossing.done(ok, value)
        except Exception:  # one taker's bug must not keep the rest of a drain from running
            _log.failure("a crossed call's outcome could not be handed over")

    def close(self, error: Callable[[], BaseException]) -> None:
        """
        Fail every queued or running call with C{error()}, and every later
        L{enqueue} too.  Calls already running in the reactor are left to
        finish; their outcome is dropped.
        """
        with self._lock:
            self._closed_error = error
            self._queued = []
            pending = [c for c in self._pending if not c.settled]
            self._pending.clear()
            for crossing in pending:
                crossing.settled = True
        for crossing in pending:
            crossing.done(False, error())


class LoopPost:
    """
    Carries outcomes from the reactor thread into an asyncio event loop
    (the gRPC thread's), many per loop wake-up: the first posted after a
    run asks the loop (C{call_soon_threadsafe}) for one run, which settles
    every future posted by then.
    """

    def __init__(self, loop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._queued: list = []

    def settle(self, future, ok: bool, value: Any) -> None:
        """Resolve asyncio C{future} with C{value} (C{ok}) or fail it with it, from any thread."""
        with self._lock:
            first = not self._queued
            self._queued.append((future, ok, value))
        if first:
            try:
                self.loop.call_soon_threadsafe(self._run)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def _run(self) -> None:
        with self._lock:
            batch, self._queued = self._queued, []
        for future, ok, value in batch:
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
