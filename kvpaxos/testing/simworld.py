"""
What the node simulator (L{kvpaxos.testing.sim}) puts around a real
L{kvpaxos.node.service.ReplicaService}: virtual time, and one process per
boot of a node with its own reactor, clocks and thread pool.  The simulated
disk behind the store's commit is in L{kvpaxos.testing.simdisk}, the peer
links that behave like TCP in L{kvpaxos.testing.simnet}; both run on the
event queue and in the processes defined here.

Only the clock, the network and the disk are simulated; everything else is
the product.  Everything runs in one thread on one event queue
(L{VirtualTime}); nothing here reads the wall clock, sleeps, starts a thread
or opens a port.  Every random choice comes from a C{random.Random} handed
in by the simulation, and nothing iterates a set or a dict whose order
depends on hashing.

  - L{Process}: one boot of a node.  Events meant for it (timers of its
    reactor, arriving messages and calls, disk callbacks, client requests)
    run in its context; while it is frozen they are held, and on resume
    they run in the order the freeze implies: after a I{pause} (SIGSTOP)
    the overdue timers (the tick) first, then the I/O; after a I{stall} (a
    long GC, a long call in the reactor) the I/O first, then the timers.
  - L{NodeReactor}: the C{IReactorTime} the service uses (C{seconds},
    C{callLater}, C{getDelayedCalls}), C{running} and C{stop}.  Its
    C{seconds()} is the node's wall clock, which can drift and be stepped;
    timers are kept in wall time, as Twisted's reactor keeps them, so a
    step moves them.
  - L{MonotonicClock}: the node's monotonic clock (C{seconds()}), for the
    service's C{clock=}: it drifts with the wall clock and only ever steps
    forward.
  - L{SimThreadPool}: the reactor's thread pool (C{deferToThreadPool}),
    on the process's pool thread where the simulation has threads.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from typing import Callable, Optional

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer


#: How long a forward or read index call waits (as PeerNetwork's timeout_s).
#: The least virtual time a timer with a positive delay takes.
MIN_DELAY_S = 1e-6


class VirtualTime:
    """One event queue; the clock jumps to the next event."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list = []
        self._seq = itertools.count()

    def at(self, when: float, call: Callable, *args) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), call, args))

    def later(self, delay: float, call: Callable, *args) -> None:
        self.at(self.now + delay, call, *args)

    def pop(self):
        """Return the next C{(call, args)} and move the clock to it, or None."""
        if not self._queue:
            return None
        when, _, call, args = heapq.heappop(self._queue)
        self.now = when
        return call, args

    def __len__(self) -> int:
        return len(self._queue)


class MachineClock:
    """
    One machine's oscillator and wall clock: local time runs at C{rate}
    against virtual time (within the drift allowance), and the wall clock
    can be stepped (NTP, an operator).  Kept across process restarts.
    """

    def __init__(self, rate: float, wall_offset: float) -> None:
        self.rate = rate
        self.wall_offset = wall_offset

    def wall(self, now: float) -> float:
        return now * self.rate + self.wall_offset

    def virtual_of_wall(self, wall: float) -> float:
        return (wall - self.wall_offset) / self.rate


class MonotonicClock:
    """A process's monotonic clock: C{seconds()}; drifts with its machine, steps only forward."""

    def __init__(self, world: VirtualTime, machine: MachineClock, base: float) -> None:
        self._world = world
        self._machine = machine
        self.offset = base

    def seconds(self) -> float:
        return self._world.now * self._machine.rate + self.offset

    def virtual_of(self, seconds: float) -> float:
        """The virtual time at which this clock shows C{seconds}."""
        return (seconds - self.offset) / self._machine.rate


@implementer(IReactorTime)
class NodeReactor:
    """
    The reactor of one process: wall-clock time, timers in wall time,
    C{running}/C{stop()} (a stop is what a node does on a fatal error).
    As a real reactor, it reads the time only through C{self.seconds}: the
    simulator moves its timers onto the process's monotonic clock with the
    product's own L{kvpaxos.node.clock.run_timers_on}, as C{makeService}
    does, and a wall-clock step then moves none of them.
    """

    def __init__(self, process: "Process") -> None:
        self._process = process
        self._world = process.world
        self._machine = process.machine
        self._pending: dict = {}  # DelayedCall -> None, in creation order
        self._version = 0
        self.running = True
        self.stop_requested = False

    def seconds(self) -> float:
        return self._machine.wall(self._world.now)

    def callLater(self, delay, f, *args, **kw) -> DelayedCall:
        call = DelayedCall(
            self.seconds() + delay, f, args, kw, self._cancelled, self._push,
            seconds=self.seconds,
        )
        self._pending[call] = None
        # Due in virtual time from the delay itself, not from the wall time
        # (wall times near 1.5e9 s absorb tiny delays), and never sooner
        # than a microsecond for a positive delay: a real reactor always
        # takes some time, and code that polls a deadline relies on it.
        if delay > 0:
            delay = max(delay, MIN_DELAY_S)
        self._world.at(self._world.now + delay / self._machine.rate,
                       self._process.timer_due, self._version, call, call.time)
        return call

    def getDelayedCalls(self) -> list:
        return list(self._pending)

    def callFromThread(self, f, *args, **kw) -> None:
        self._process.io(0, functools.partial(f, *args, **kw))

    def getThreadPool(self) -> "SimThreadPool":
        return SimThreadPool(self._process)

    def callWhenRunning(self, f, *args, **kw):
        return f(*args, **kw)

    def stop(self) -> None:
        self.running = False
        self.stop_requested = True

    def _cancelled(self, call) -> None:
        self._pending.pop(call, None)

    def _on_monotonic(self) -> bool:
        return getattr(self.seconds, "__self__", None) is self._process.mono

    def _push(self, call) -> None:
        if self._on_monotonic():
            when = self._process.mono.virtual_of(call.time)
        else:
            when = self._machine.virtual_of_wall(call.time)
        self._world.at(when, self._process.timer_due, self._version, call, call.time)

    def is_current(self, version: int, call, time: float) -> bool:
        return version == self._version and call in self._pending and call.time == time

    def take(self, call) -> bool:
        """Remove C{call} to run it; False if it no longer should."""
        if self._pending.pop(call, 1) is not None or call.cancelled or call.called:
            return False
        call.called = 1
        return True

    def due(self, call) -> bool:
        return call.time <= self.seconds()

    def clock_stepped(self) -> None:
        """The wall clock moved: timers kept in wall time move with it."""
        if not self._on_monotonic():
            self._repush()

    def monotonic_stepped(self) -> None:
        """The monotonic clock moved: timers kept on it move with it."""
        if self._on_monotonic():
            self._repush()

    def _repush(self) -> None:
        self._version += 1
        for call in list(self._pending):
            self._push(call)

    def abandon(self) -> None:
        """The process died: nothing it scheduled runs."""
        self._version += 1
        self._pending.clear()
        self.running = False


class SimThreadPool:
    """
    The reactor's thread pool (C{deferToThreadPool}): the call runs on the
    process's pool thread where the simulation has threads (LMDB seeds),
    else a little later on the reactor's.  Either way its result comes back
    through C{callFromThread}.
    """

    #: How long a call waits for a pool thread where there are none.
    DELAY_S = 0.001

    def __init__(self, process: "Process") -> None:
        self._process = process

    def callInThreadWithCallback(self, on_result, f, *args, **kw) -> None:
        process = self._process
        call = functools.partial(f, *args, **kw)
        disk = getattr(process, "disk", None)
        if disk is not None and disk.pool_thread is not None:
            disk.run_in_pool(call, lambda outcome: on_result(*outcome))
            return

        def run() -> None:
            if not process.alive:
                return
            try:
                result = (True, call())
            except BaseException:
                result = (False, Failure())
            on_result(*result)

        process.world.later(self.DELAY_S, run)


class Process:
    """
    One boot of a node: its reactor, monotonic clock and service, and what
    a freeze holds back.  C{run} is the simulation's hook that runs a call
    in this process's context (catching what escapes it).
    """

    def __init__(self, world: VirtualTime, node_id: int, epoch: int, machine: MachineClock,
                 mono_base: float, run: Callable) -> None:
        self.world = world
        self.node_id = node_id
        self.epoch = epoch
        self.machine = machine
        self.reactor = NodeReactor(self)
        self.mono = MonotonicClock(world, machine, mono_base)
        self.service = None
        self.alive = True
        self.frozen: Optional[str] = None  # "pause" or "stall"
        self._held_io: list = []
        self._held_timers: list = []
        self._run = run

    def io(self, delay: float, call: Callable, *args) -> None:
        """Have C{call(*args)} happen in this process after C{delay} (I/O, a thread's callback)."""
        self.world.later(delay, self._io, call, args)

    def _io(self, call, args) -> None:
        if not self.alive:
            return
        if self.frozen:
            self._held_io.append((call, args))
            return
        self._run(self, call, args)

    def timer_due(self, version, call, time) -> None:
        if not self.alive or not self.reactor.is_current(version, call, time):
            return
        if self.frozen:
            self._held_timers.append(call)
            return
        if self.reactor.take(call):
            self._run(self, call.func, call.args, call.kw)

    def freeze(self, mode: str) -> None:
        self.frozen = mode

    def resume(self) -> None:
        """Run what the freeze held, in the order its kind implies."""
        if not self.alive or not self.frozen:
            return
        mode, self.frozen = self.frozen, None
        io, self._held_io = self._held_io, []
        timers, self._held_timers = self._held_timers, []
        timers.sort(key=lambda c: c.time)  # stable: creation order within a time
        if mode == "pause":
            self._run_timers(timers)
            self._run_io(io)
        else:
            self._run_io(io)
            self._run_timers(timers)

    def _run_timers(self, timers) -> None:
        for call in timers:
            if not self.alive:
                return
            if self.reactor.due(call):
                if self.reactor.take(call):
                    self._run(self, call.func, call.args, call.kw)
            elif call in self.reactor._pending:
                self.reactor._push(call)

    def _run_io(self, io) -> None:
        for call, args in io:
            if not self.alive:
                return
            self._run(self, call, args)

    def die(self) -> None:
        self.alive = False
        self.frozen = None
        self._held_io = []
        self._held_timers = []
        self.reactor.abandon()
