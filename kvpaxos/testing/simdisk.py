"""
The node simulator's disk (L{kvpaxos.testing.sim}): the injected
C{run_commit} and C{snapshot_io} (a transfer's reads and staging) behind a
node's store.

  - L{Disk}: a commit takes a latency drawn per seed (0 to seconds); a
    crash loses every commit not finished; a failing disk
    (C{Disk.failing}) fails the next commit with an I/O error
    (L{InjectedDiskFailure}).  See L{Disk.commit} for the two providers.
  - L{copy_memory_store}, L{adopt_memory_store}: how a memory store's
    commit is made on a copy and adopted only when it finishes.

Every random choice comes from the C{random.Random} the simulation hands
in; nothing here reads the wall clock or starts a thread of its own (an
LMDB store's threads are L{kvpaxos.testing.simthreads}).
"""

from __future__ import annotations

import copy
import threading
from typing import Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from kvpaxos.storage.state_machine import StateMachineView
from kvpaxos.testing.simworld import Process


def copy_memory_store(store):
    """
    Return a copy of a L{kvpaxos.storage.memory.MemoryStore} that shares
    nothing mutable with it (its records, sessions, auth values and
    events are immutable values; the history's list is copied, its
    compacted revision is an int; the lease tables are copied, their
    ids, TTLs and keys immutable).
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
    state.auth = dict(state.auth)
    state.auth_keys = list(state.auth_keys)
    state.history = list(state.history)
    state.leases = dict(state.leases)
    state.key_leases = dict(state.key_leases)
    state.lease_pairs = list(state.lease_pairs)
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
    C{run_commit} and C{snapshot_io} (L{in_pool}, L{on_writer}).

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
        #: Set the memory store's used_bytes after each commit (a quota in force).
        self.measure_use = False
        #: Commits asked for, and finished (durable), in this process.
        self.commits = 0
        self.finished = 0
        # A transfer's staging, in order (the writer thread's queue).
        self._writes: list = []
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
        if self.measure_use:
            self.store.used_bytes = len(self.store.snapshot_data())
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

    # --- a snapshot transfer's threads (the service's snapshot_io) ---

    def in_pool(self, call, *args) -> defer.Deferred:
        """C{call(*args)} as a pool thread runs it, a little later (a stream's read)."""
        d = defer.Deferred()
        self.process.world.later(self.rng.random() * 0.005, self._run_on, self._pool, d, call, args)
        return d

    def on_writer(self, call, *args) -> defer.Deferred:
        """
        C{call(*args)} as the writer thread runs it (a transfer's staging),
        after the disk's latency; FIFO with what went before.
        """
        d = defer.Deferred()
        self._writes.append((d, call, args))
        if len(self._writes) == 1:
            self.process.world.later(self.latency(), self._next_write)
        return d

    def _next_write(self) -> None:
        if not self.process.alive or not self._writes:
            return
        d, call, args = self._writes[0]

        def finished(outcome=None) -> None:
            self._writes.pop(0)
            if self._writes:
                self.process.world.later(self.latency(), self._next_write)

        d.addBoth(lambda result: (finished(), result)[1])
        self._run_on(self._writer, d, call, args)

    def _run_on(self, worker, d, call, args) -> None:
        process = self.process
        if not process.alive:
            return
        if worker is not None:
            def done(outcome) -> None:
                ok, value = outcome
                if process.alive:
                    process.io(0, d.callback if ok else d.errback, value)

            self._threads.submit(worker, lambda: call(*args), done)
            return
        try:
            value = call(*args)
        except Exception:
            failure = Failure()
            process.io(0, d.errback, failure)
            return
        process.io(0, d.callback, value)
