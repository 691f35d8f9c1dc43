"""
What the node simulator (L{kvpaxos.testing.sim}) puts around a real
L{kvpaxos.node.service.ReplicaService}: virtual time, one process per boot
of a node with its own reactor and clocks, a simulated disk behind the
store's commit, and peer links that behave like TCP.

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
  - L{Disk}: the injected C{run_commit} and C{read_snapshot}.  A commit
    takes a latency drawn per seed (0 to seconds); a crash loses every
    commit not finished; a failing disk (C{Disk.failing}) fails the next
    commit with an I/O error.  See L{Disk.commit} for the two providers.
  - L{Network} and L{SimTransport} (an L{IPeerTransport}): one connection
    per ordered pair of nodes, opened by the first (as a node's
    C{PeerNetwork} opens one link per peer), ordered in each direction; a
    dropped connection loses what is in flight and fails its pending
    calls; the opener reconnects with backoff.  A blocked direction (a
    partition, one-way or not) holds the bytes, as TCP retransmits them,
    until it heals or the connection is dropped.  In adversarial seeds
    Paxos messages (only) are dropped, duplicated and reordered as
    datagrams; forwards and read indexes stay exactly-once per call.
"""

from __future__ import annotations

import copy
import functools
import heapq
import itertools
import threading
from typing import Callable, Optional

from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from kvpaxos.node.interfaces import IPeerTransport, NotLeaderError
from kvpaxos.node.peer_commands import ForwardFailed, PeerRequestError, PeerUnreachable
from kvpaxos.storage.state_machine import StateMachineView

#: How long a forward or read index call waits (as PeerNetwork's timeout_s).
CALL_TIMEOUT_S = 5.0
#: Reconnect backoff: first delay, cap (ClientService with backoffPolicy).
#: The product waits 0.1 s, then up to 1 s, at its default tick of 50 ms;
#: the simulation ticks every 10 ms, so its backoff is a fifth of that.
#: What matters is the backoff against the lease and the election timeout:
#: at 0.1 s here a restarted node was unreachable for longer than any
#: lease, and hole 5 of issue 9 (a Prepare in a restarted node's start
#: window) could not happen in the simulator.
BACKOFF_FIRST_S = 0.02
BACKOFF_MAX_S = 0.2
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


# --- the disk ------------------------------------------------------------------


def copy_memory_store(store):
    """
    Return a copy of a L{kvpaxos.storage.memory.MemoryStore} that shares
    nothing mutable with it (its records and sessions are immutable values).
    Uses the store's private attributes: the seam wanted is a
    C{MemoryStore.copy()}.
    """
    new = copy.copy(store)
    storage = copy.copy(store.storage)
    storage._entries = dict(store.storage._entries)
    new.storage = storage
    state = copy.copy(store._state)
    state.records = dict(state.records)
    state.keys = list(state.keys)
    state.sessions = dict(state.sessions)
    state.by_use = list(state.by_use)
    state.journal = None
    new._state = state
    new._lock = threading.Lock()
    new.state_machine = StateMachineView(new)
    return new


def adopt_memory_store(store, copied) -> None:
    """Make C{store} hold what C{copied} (from L{copy_memory_store}) holds now."""
    store.storage = copied.storage
    store._state = copied._state
    store._applied = copied._applied


class InjectedDiskFailure(OSError):
    """The I/O error a failing simulated disk (C{Disk.failing}) gives a commit."""


class Disk:
    """
    The simulated disk of one process, injected as the service's
    C{run_commit} and C{read_snapshot}.

    @param latency: () -> seconds a commit takes.
    @param observe: (process, args) called as each commit is asked for
        (the simulation's checker looks at what the node says is chosen).
    @param durable: (process, results) called once a commit is durable.
    """

    def __init__(self, process: Process, store, provider: str, rng, latency: Callable,
                 observe: Callable, durable: Callable, threads=None) -> None:
        self.process = process
        self.store = store
        self.provider = provider
        self.rng = rng
        self.latency = latency
        self._observe = observe
        self._durable = durable
        #: lmdb with L{kvpaxos.testing.simthreads}: commits run on a writer
        #: thread and snapshot reads on a pool thread, in turn with the
        #: reactor, through the store's real read gate.
        self._threads = threads
        self._writer = self._pool = None
        if threads is not None and provider != "memory":
            from kvpaxos.testing.simthreads import SimReadGate

            self._writer = threads.worker(f"node {process.node_id} writer")
            self._pool = threads.worker(f"node {process.node_id} pool", long=True)
            store._gate = SimReadGate(threads, lambda: rng.uniform(*threads.step_s))
        #: Commits asked for, and finished (durable), in this process.
        self.commits = 0
        self.finished = 0
        #: A fault: the next commit fails (an I/O error), and it did.
        self.failing = False
        self.failed = False

    def commit(self, *args) -> defer.Deferred:
        """
        C{run_commit(work, on_applied)} (C{work} a
        L{kvpaxos.storage.interfaces.Commit}): a Deferred that fires with
        the results once the commit is durable.

        memory: the commit runs on a copy of the store at a random point
        within its latency (the results, and so the early answer through
        C{on_applied}, are known then) and the copy becomes the store when
        the commit finishes: a crash before that leaves the store as it
        was, so a restart sees only durable state.

        lmdb: the real commit (one write transaction) runs when the
        latency is over, atomically; its early answer and the Deferred
        reach the reactor after a further delay (the writer thread's
        hand-off), so a crash may also fall after durability and before
        the node learns of it.
        """
        self.commits += 1
        process = self.process
        self._observe(process, args)
        d = defer.Deferred()
        latency = self.latency()
        world = process.world
        if self.failing:
            # The disk fails this commit (EIO, a full or read-only file
            # system): nothing of it is written.
            self.failing = False
            world.later(latency, self._fail, d)
            return d
        if self.provider == "memory":
            run_at = self.rng.random() * latency
            world.later(run_at, self._run_memory, d, args, latency - run_at)
        else:
            world.later(latency, self._run_lmdb, d, args)
        return d

    def _fail(self, d) -> None:
        if self.process.alive:
            self.failed = True
            self.process.io(0, d.errback, Failure(InjectedDiskFailure(5, "injected disk failure")))

    def _run_memory(self, d, args, remaining: float) -> None:
        process = self.process
        if not process.alive:
            return
        work, on_applied = args
        copied = copy_memory_store(self.store)
        try:
            results = copied.commit(work, self._early(on_applied))
        except Exception:
            failure = Failure()
            process.io(0, d.errback, failure)
            return
        process.world.later(remaining, self._finish_memory, d, copied, results)

    def _finish_memory(self, d, copied, results) -> None:
        process = self.process
        if not process.alive:
            return  # crashed first: the commit never became durable
        adopt_memory_store(self.store, copied)
        self.finished += 1
        self._durable(process, results)
        process.io(0, d.callback, results)

    @property
    def pool_thread(self):
        return self._pool

    def run_in_pool(self, call: Callable, done: Callable) -> None:
        """C{call()} on the pool thread; C{done((ok, value or Failure))} after, if still alive."""
        process = self.process

        def finished(outcome) -> None:
            if process.alive:
                done(outcome)

        self._threads.submit(self._pool, call, finished)

    def stop(self) -> None:
        """The process crashed: its threads end (L{simthreads.Threads.kill})."""
        if self._threads is not None and self._writer is not None:
            self._threads.kill([self._writer, self._pool])

    def _run_lmdb(self, d, args) -> None:
        process = self.process
        if not process.alive:
            return
        work, on_applied = args
        hand_off = self.rng.random() * 0.002
        if self._writer is not None:
            def done(outcome) -> None:
                if not process.alive:
                    return
                ok, value = outcome
                if not ok:
                    process.io(hand_off, d.errback, value)
                    return
                self.finished += 1
                self._durable(process, value)
                process.io(hand_off * 2, d.callback, value)

            early = self._early(on_applied, hand_off)
            self._threads.submit(self._writer, lambda: self.store.commit(work, early), done)
            return
        try:
            results = self.store.commit(work, self._early(on_applied, hand_off))
        except Exception:
            failure = Failure()
            process.io(hand_off, d.errback, failure)
            return
        self.finished += 1
        self._durable(process, results)
        process.io(hand_off * 2, d.callback, results)

    def _early(self, on_applied, delay: float = 0.0):
        if on_applied is None:
            return None
        process = self.process

        def from_writer(results) -> None:
            process.io(delay, on_applied, results)  # reactor.callFromThread

        return from_writer

    def read_snapshot(self) -> defer.Deferred:
        """C{read_snapshot()}: the state as a pool thread reads it, a little later."""
        d = defer.Deferred()
        self.process.world.later(self.rng.random() * 0.02, self._snapshot_now, d)
        return d

    def _snapshot_now(self, d) -> None:
        process = self.process
        if not process.alive:
            return
        if self._pool is not None:
            def done(outcome) -> None:
                ok, value = outcome
                if process.alive:
                    process.io(0, d.callback if ok else d.errback, value)

            self._threads.submit(self._pool, self.store.state_machine.snapshot_now, done)
            return
        try:
            value = self.store.state_machine.snapshot_now()
        except Exception:
            failure = Failure()
            process.io(0, d.errback, failure)
            return
        process.io(0, d.callback, value)


# --- the network -----------------------------------------------------------------


class Connection:
    """
    One TCP connection, opened by C{src} to C{dst} (between two processes):
    direction 0 carries src -> dst, direction 1 the answers back.
    """

    _ids = itertools.count(1)

    def __init__(self, src: Process, dst: Process) -> None:
        self.id = next(self._ids)
        self.src = src
        self.dst = dst
        self.up = True
        self.last = [0.0, 0.0]  # the latest arrival scheduled per direction
        self.held: list[list] = [[], []]  # bytes held by a blocked direction
        self.calls: dict = {}  # call id -> (kind, Deferred, commands, timer)

    def ends(self, direction: int) -> tuple[int, int]:
        if direction == 0:
            return self.src.node_id, self.dst.node_id
        return self.dst.node_id, self.src.node_id

    def receiver(self, direction: int) -> Process:
        return self.dst if direction == 0 else self.src


class Network:
    """
    Every connection between the simulated processes.

    @param rng: this network's random stream.
    @param processes: node id -> its live L{Process} (or absent).
    @param faults: the adversarial datagram faults for Paxos messages, or
        None for TCP behaviour only.
    @param on_connect: (src process, dst process) when a connection comes
        up (the simulation tells both services the peer's timing).
    """

    def __init__(self, world: VirtualTime, rng, processes: dict, delay_s: tuple,
                 faults=None, on_connect: Optional[Callable] = None, log=None) -> None:
        self.world = world
        self.rng = rng
        self.processes = processes
        self.delay_s = delay_s
        self.faults = faults
        self._on_connect = on_connect
        self._log = log or (lambda text: None)
        self.conns: dict[tuple[int, int], Connection] = {}
        self.blocked: set = set()
        self._backoff: dict[tuple[int, int], float] = {}
        self._connecting: set = set()
        self._call_ids = itertools.count(1)
        self.counts = {"dropped_connections": 0, "reconnects": 0, "held": 0, "replies lost": 0}
        #: The chance that a connection is reset just as a call's answer
        #: is sent back (the window in which the caller learns nothing).
        self.reply_loss = 0.0

    # --- connections ---

    def _delay(self) -> float:
        return self.rng.uniform(*self.delay_s)

    def connect_later(self, src: Process, dst_id: int, delay: float) -> None:
        """Have C{src} try to open its connection to C{dst_id} after C{delay}."""
        attempt = (src.node_id, src.epoch, dst_id)
        if attempt in self._connecting:
            return
        self._connecting.add(attempt)
        src.io(delay, self._try_connect, src, dst_id)

    def _try_connect(self, src: Process, dst_id: int) -> None:
        key = (src.node_id, dst_id)
        self._connecting.discard((src.node_id, src.epoch, dst_id))
        if not src.alive or key in self.conns:
            return
        dst = self.processes.get(dst_id)
        if dst is None or not dst.alive or key in self.blocked or key[::-1] in self.blocked:
            backoff = self._backoff.get(key, BACKOFF_FIRST_S / 2) * 2
            backoff = min(backoff, BACKOFF_MAX_S)
            self._backoff[key] = backoff
            self.connect_later(src, dst_id, backoff + self.rng.random() * BACKOFF_MAX_S / 10)
            return
        self.world.later(2 * self._delay(), self._connected, src, dst)

    def _connected(self, src: Process, dst: Process) -> None:
        key = (src.node_id, dst.node_id)
        if not (src.alive and dst.alive) or key in self.conns:
            if src.alive:
                self.connect_later(src, dst.node_id, BACKOFF_FIRST_S)
            return
        self._backoff.pop(key, None)
        self.conns[key] = Connection(src, dst)
        self.counts["reconnects"] += 1
        if self._on_connect is not None:
            self._on_connect(src, dst)

    def drop(self, conn: Connection, why: str) -> None:
        """Drop C{conn}: what is in flight is lost, pending calls fail, the opener reconnects."""
        if not conn.up:
            return
        conn.up = False
        key = (conn.src.node_id, conn.dst.node_id)
        if self.conns.get(key) is conn:
            del self.conns[key]
        self.counts["dropped_connections"] += 1
        self._log(f"connection {key[0]}->{key[1]} dropped ({why})")
        calls, conn.calls = conn.calls, {}
        for call_id in sorted(calls):
            kind, d, commands, timer = calls[call_id]
            if timer.active():
                timer.cancel()
            lost = Failure(ConnectionLost(why))
            if kind == "forward":
                failure = Failure(ForwardFailed([], list(commands), lost))
            else:
                failure = lost
            conn.src.io(0, _errback, d, failure)
        if conn.src.alive:
            self.connect_later(conn.src, conn.dst.node_id, BACKOFF_FIRST_S)

    def process_died(self, process: Process) -> None:
        for key in sorted(self.conns):
            conn = self.conns[key]
            if conn.src is process or conn.dst is process:
                self.drop(conn, f"node {process.node_id} crashed")

    def drop_between(self, a: int, b: int, why: str) -> None:
        for key in ((a, b), (b, a)):
            conn = self.conns.get(key)
            if conn is not None:
                self.drop(conn, why)

    # --- partitions ---

    def block(self, src: int, dst: int) -> None:
        """Cut the direction src -> dst: its bytes are held; the connection may die of it."""
        if (src, dst) in self.blocked:
            return
        self.blocked.add((src, dst))
        for key in ((src, dst), (dst, src)):
            conn = self.conns.get(key)
            if conn is not None and self.rng.random() < 0.5:
                # TCP gives up (retransmission timeout, keepalive) while it lasts.
                self.world.later(self.rng.uniform(0.2, 2.0), self._give_up, conn, src, dst)

    def _give_up(self, conn: Connection, src: int, dst: int) -> None:
        if conn.up and (src, dst) in self.blocked:
            self.drop(conn, f"{src}->{dst} timed out")

    def heal(self, pairs=None) -> None:
        """Restore the blocked directions C{pairs} (all by default); held bytes flow, in order."""
        pairs = sorted(self.blocked) if pairs is None else sorted(pairs)
        for pair in pairs:
            self.blocked.discard(pair)
        for key in sorted(self.conns):
            conn = self.conns[key]
            for direction in (0, 1):
                if conn.held[direction] and conn.ends(direction) not in self.blocked:
                    held, conn.held[direction] = conn.held[direction], []
                    for call in held:
                        self._carry(conn, direction, call)

    # --- carrying ---

    def _carry(self, conn: Connection, direction: int, call: Callable) -> None:
        """Carry C{call(receiver process)} over C{conn}, in order."""
        if conn.ends(direction) in self.blocked:
            conn.held[direction].append(call)
            self.counts["held"] += 1
            return
        when = max(self.world.now + self._delay(), conn.last[direction])
        conn.last[direction] = when
        self.world.at(when, self._arrive, conn, direction, call)

    def _arrive(self, conn: Connection, direction: int, call: Callable) -> None:
        if conn.up:
            receiver = conn.receiver(direction)
            receiver.io(0, call, receiver)

    def _datagram(self, conn: Connection, call: Callable) -> None:
        """Adversarial seeds: a Paxos message lost, duplicated or reordered."""
        if conn.ends(0) in self.blocked:
            return
        rng, faults = self.rng, self.faults
        if faults.drop and rng.random() < faults.drop:
            return
        copies = 2 if faults.duplicate and rng.random() < faults.duplicate else 1
        for _ in range(copies):
            if faults.straggle and rng.random() < faults.straggle:
                delay = rng.uniform(*faults.straggle_s)
            else:
                delay = rng.uniform(*faults.delay_s)
            self.world.later(delay, self._arrive, conn, 0, call)

    def send(self, src: Process, message) -> bool:
        conn = self.conns.get((src.node_id, message.dst))
        if conn is None:
            return False

        def deliver(receiver) -> None:
            receiver.service.message_received(message)

        if self.faults is not None:
            self._datagram(conn, deliver)
        else:
            self._carry(conn, 0, deliver)
        return True

    def call(self, src: Process, node_id: int, kind: str, commands=None) -> defer.Deferred:
        """A forward or read index call from C{src} to C{node_id}, answered over the same connection."""
        conn = self.conns.get((src.node_id, node_id))
        if conn is None:
            return defer.fail(PeerUnreachable(f"no link to node {node_id}"))
        call_id = next(self._call_ids)
        d = defer.Deferred()
        timer = src.reactor.callLater(CALL_TIMEOUT_S, self._timed_out, conn, call_id)
        conn.calls[call_id] = (kind, d, commands, timer)

        def serve(receiver) -> None:
            service = receiver.service
            if kind == "forward":
                answer = defer.maybeDeferred(service.proposals_forwarded, commands)
            else:
                answer = defer.maybeDeferred(service.read_index_requested)

            def reply(outcome) -> None:
                if not conn.up:
                    return
                if self.reply_loss and self.rng.random() < self.reply_loss:
                    # The connection dies with the answer in flight: the
                    # caller cannot know what its call did.
                    self.counts["replies lost"] += 1
                    self.drop(conn, "reset with an answer in flight")
                    return
                self._carry(conn, 1, lambda _: self._answered(conn, call_id, outcome))

            answer.addBoth(reply)

        self._carry(conn, 0, serve)
        return d

    def _answered(self, conn: Connection, call_id: int, outcome) -> None:
        entry = conn.calls.pop(call_id, None)
        if entry is None:
            return
        kind, d, commands, timer = entry
        if timer.active():
            timer.cancel()
        if not isinstance(outcome, Failure):
            d.callback(None if kind == "forward" else outcome)
            return
        if outcome.check(NotLeaderError):
            error = NotLeaderError(outcome.value.leader)
            if kind == "forward":
                d.errback(Failure(ForwardFailed(list(commands), [], Failure(error))))
            else:
                d.errback(Failure(error))
            return
        what = PeerRequestError(f"{outcome.type.__name__}: {outcome.getErrorMessage()}")
        if kind == "forward":
            d.errback(Failure(ForwardFailed([], list(commands), Failure(what))))
        else:
            d.errback(Failure(what))

    def _timed_out(self, conn: Connection, call_id: int) -> None:
        entry = conn.calls.pop(call_id, None)
        if entry is None:
            return
        kind, d, commands, _ = entry
        timeout = Failure(defer.TimeoutError(f"no answer in {CALL_TIMEOUT_S} s"))
        if kind == "forward":
            d.errback(Failure(ForwardFailed([], list(commands), timeout)))
        else:
            d.errback(timeout)


def _errback(d: defer.Deferred, failure: Failure) -> None:
    if not d.called:
        d.errback(failure)


@implementer(IPeerTransport)
class SimTransport:
    """One process's peers, over the simulated L{Network}: what C{service.peers} is."""

    def __init__(self, network: Network, process: Process,
                 check: Optional[Callable] = None) -> None:
        self._network = network
        self._process = process
        #: (process, message) called as each message leaves, before the
        #: network has it (the simulation's durable-before-sent check).
        self._check = check
        #: Messages dropped for want of a connection.
        self.dropped_messages = 0

    def send(self, message) -> None:
        if self._check is not None:
            self._check(self._process, message)
        if not self._network.send(self._process, message):
            self.dropped_messages += 1

    def forward(self, node_id: int, commands: list) -> defer.Deferred:
        return self._network.call(self._process, node_id, "forward", list(commands))

    def read_index(self, node_id: int) -> defer.Deferred:
        return self._network.call(self._process, node_id, "read_index")
