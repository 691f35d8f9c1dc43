"""
Time for the node: a monotonic clock, and a reactor whose timed calls run on
it.

Twisted's reactors keep their timed calls (C{callLater}, and so
C{LoopingCall}, C{Deferred.addTimeout}, C{ClientService}'s reconnect
backoff) on C{reactor.seconds()}, which is C{time.time}: wall time.  A step
of the wall clock (an NTP correction, an operator's C{date -s}, a VM
resumed from a snapshot) then moves every timer: stepped back by a minute,
no tick, heartbeat, timeout or reconnect fires for a minute; forward, they
all fire at once.  A consensus node must not depend on the wall clock
(issue 9, hole 3), so the node counts its ticks, lease and deadlines on a
L{MonotonicClock}, and L{run_timers_on} moves the reactor's timed calls onto
the same clock before anything is scheduled.

What must not live here: anything that decides; this is plumbing.
"""

from __future__ import annotations

import time
from typing import Callable


class MonotonicClock:
    """A clock whose C{seconds()} is C{time.monotonic}: it never steps."""

    def seconds(self) -> float:
        return time.monotonic()


def run_timers_on(reactor, seconds: Callable[[], float] = time.monotonic) -> None:
    """
    Make C{reactor} keep its timed calls on C{seconds} (by default
    C{time.monotonic}) instead of the wall clock.

    Twisted's C{ReactorBase} reads the time only through C{self.seconds()}
    (to schedule a call, to compute how long to wait, to run what is due),
    so replacing that method on the reactor moves every timed call at once.
    Calls already scheduled are moved to the same instant on the new clock.
    Call it before the reactor runs (L{kvpaxos.tap.makeService} does).  What
    still reads the wall clock is what should: log timestamps
    (C{time.time}).

    @param reactor: a reactor providing C{IReactorTime} whose delayed calls
        read the time through C{reactor.seconds} (every Twisted reactor; the
        simulator's too).
    @param seconds: the clock to run timed calls on.
    """
    old = reactor.seconds
    shift = seconds() - old()
    for call in reactor.getDelayedCalls():
        call.time += shift
        call.seconds = seconds
    reactor.seconds = seconds
