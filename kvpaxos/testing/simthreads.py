"""
The node's threads, in the simulation: the LMDB writer thread that runs
commits and the pool thread that copies a snapshot for a peer run as real
threads, but one at a time, handed the turn by the simulation's main thread
(the reactor's), so a seed replays exactly.

A worker runs until it waits on the store's read gate (L{SimCondition}),
pauses between two steps of a long read (L{Threads.pause}: virtual time
passes), or finishes its task; then the turn comes back.  What a worker
waits for wakes it: a notify marks it ready, and ready workers run as soon
as the thread that woke them lets go of the gate's lock, or after the
event.

The check (DESIGN.md: "the reactor thread never blocks"): the reactor's
thread may find the gate shut only for what the writer does with it shut,
which takes no steps; if it would wait while a long read takes a step, the
simulation fails the seed.  In this model the product's gate never lets the
reactor wait at all (the writer shuts the gate only once no long read is
open, and does nothing that yields while it is shut); a gate that shut it
behind a long read (issue 9, hole 7) makes it wait a step at a time.

Nothing here reads the wall clock; the real threads only ever run in turn.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from typing import Callable, Optional

from twisted.python.failure import Failure

from kvpaxos.storage.gate import ReadGate as _ReadGate


class Worker:
    """One thread of a process (the writer, or the pool): tasks run one at a time."""

    def __init__(self, threads: "Threads", name: str, long: bool) -> None:
        self.threads = threads
        self.name = name
        #: A long reader: its pauses are steps of an O(state) read.
        self.long = long
        self.id = next(threads._ids)
        #: "idle", "running", "waiting" (on a condition), "paused", "ready", "done".
        self.state = "idle"
        self.killed = False
        self.wake_at = 0.0
        self._tasks: deque = deque()
        self._go = threading.Semaphore(0)
        self.finished: list = []
        self._thread = threading.Thread(target=self._loop, name=f"sim-{name}", daemon=True)
        self._thread.start()
        threads._by_ident[self._thread.ident] = self

    def _loop(self) -> None:
        threads = self.threads
        self._go.acquire()
        try:
            while not self.killed:
                if not self._tasks:
                    self.state = "idle"
                    threads._give_back(self)
                    continue
                call, done = self._tasks.popleft()
                self.state = "running"
                try:
                    outcome = (True, call())
                except BaseException:
                    outcome = (False, Failure())
                if not self.killed:
                    self.finished.append((done, outcome))
                    self.state = "ready"
                    threads._give_back(self)
        finally:
            self.state = "done"
            threads._back.release()


class Threads:
    """
    The simulation's worker threads, all handed the turn by the main
    thread.  C{blocked(reason)} is called (on the main thread) when the
    reactor's thread would wait behind a long read.
    """

    def __init__(self, world, blocked: Callable[[str], None]) -> None:
        self.world = world
        self._blocked = blocked
        self._main = threading.get_ident()
        self._back = threading.Semaphore(0)
        self._ids = itertools.count(1)
        self._by_ident: dict = {}
        self.workers: list[Worker] = []
        self.current: Optional[Worker] = None
        #: Main-thread reads made by the simulation's checker, not the reactor.
        self.checking = 0
        self._depth = 0
        #: How long one step of a long read takes (a scenario may slow it).
        self.step_s = (0.0005, 0.003)

    # --- the main thread's side ---

    def worker(self, name: str, long: bool = False) -> Worker:
        worker = Worker(self, name, long)
        self.workers.append(worker)
        return worker

    def submit(self, worker: Worker, call: Callable, done: Callable) -> None:
        """Queue C{call()} on C{worker}; C{done((ok, value or Failure))} runs on the main thread after."""
        worker._tasks.append((call, done))
        if worker.state == "idle":
            worker.state = "ready"
        self.drain()

    def drain(self) -> None:
        """Run every ready worker (lowest id first) until none is ready."""
        if self.current is not None or threading.get_ident() != self._main or self._depth:
            return
        while True:
            ready = [w for w in self.workers if w.state == "ready"]
            if not ready:
                return
            self._run(min(ready, key=lambda w: w.id))

    def _run(self, worker: Worker) -> None:
        self.current = worker
        worker._go.release()
        self._back.acquire()
        self.current = None
        if worker.state == "done":
            self.workers.remove(worker)
            self._by_ident.pop(worker._thread.ident, None)
        finished, worker.finished = worker.finished, []
        for done, outcome in finished:
            done(outcome)

    def _wake(self, worker: Worker) -> None:
        if worker.state == "paused":
            worker.state = "ready"
            self.drain()

    def kill(self, workers) -> None:
        """
        End C{workers}: their process crashed.  Queued tasks are dropped; a
        task under way runs to its end at once, unseen (its outcome is
        dropped: as if the crash came just after it), so that no LMDB
        transaction is left open on a thread that is gone.
        """
        workers = [w for w in workers if w.state != "done"]
        for worker in workers:
            worker.killed = True
            worker._tasks.clear()
        while True:
            left = [w for w in workers if w.state != "done"]
            if not left:
                return
            movable = [w for w in left if w.state != "waiting"]
            if not movable:
                raise RuntimeError("the threads of a crashed process wait on each other")
            worker = min(movable, key=lambda w: w.id)
            worker.state = "ready"
            self._run(worker)

    def main_wait(self) -> None:
        """
        The main thread would wait on a condition: run what can make
        progress instead.  A long read's step taken while the reactor
        waits is the violation.
        """
        ready = [w for w in self.workers if w.state == "ready"]
        if ready:
            self._run(min(ready, key=lambda w: w.id))
            return
        paused = [w for w in self.workers if w.state == "paused"]
        if not paused:
            raise RuntimeError("the main thread waits on the read gate and no thread can wake it")
        worker = min(paused, key=lambda w: (w.wake_at, w.id))
        if worker.long and not self.checking:
            self._blocked(
                f"the reactor thread waited on the store's read gate while the {worker.name}"
                " thread took a step of a long read"
            )
        worker.state = "ready"
        self._run(worker)

    # --- a worker's side ---

    def _give_back(self, worker: Worker) -> None:
        self._back.release()
        worker._go.acquire()

    def in_worker(self) -> Optional[Worker]:
        return self._by_ident.get(threading.get_ident())

    def pause(self, seconds: float) -> None:
        """In a worker: let C{seconds} of virtual time pass (a step of its work); else nothing."""
        worker = self.in_worker()
        if worker is None or worker.killed:
            return
        worker.state = "paused"
        worker.wake_at = self.world.now + seconds
        self.world.later(seconds, self._wake, worker)
        self._give_back(worker)

    def wait(self, condition: "SimCondition") -> None:
        worker = self.in_worker()
        if worker is None:
            self.main_wait()
            return
        worker.state = "waiting"
        condition._waiters.append(worker)
        self._give_back(worker)


class SimCondition:
    """
    The read gate's C{threading.Condition}, for threads that run in turn:
    its lock is the turn itself; C{wait} hands the turn back.
    """

    def __init__(self, threads: Threads) -> None:
        self._threads = threads
        self._waiters: list[Worker] = []

    def __enter__(self):
        if self._threads.in_worker() is None:
            self._threads._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        threads = self._threads
        if threads.in_worker() is None:
            threads._depth -= 1
            threads.drain()

    def wait(self, timeout: Optional[float] = None) -> bool:
        threads = self._threads
        if threads.in_worker() is None:
            # The main thread cannot hand itself the turn: it lets go of
            # the lock while others run, as Condition.wait does.
            depth, threads._depth = threads._depth, 0
            try:
                threads.main_wait()
            finally:
                threads._depth = depth
            return True
        threads.wait(self)
        return True

    def wait_for(self, predicate, timeout: Optional[float] = None):
        while not predicate():
            self.wait()
        return predicate()

    def notify_all(self) -> None:
        for worker in self._waiters:
            if worker.state == "waiting":
                worker.state = "ready"
        self._waiters = []

    def notify(self, n: int = 1) -> None:
        woken, self._waiters = self._waiters[:n], self._waiters[n:]
        for worker in woken:
            if worker.state == "waiting":
                worker.state = "ready"


class SimReadGate(_ReadGate):
    """
    The product's read gate on a L{SimCondition}; a long read's check
    between two steps (C{asked}) is where its step's virtual time passes.
    """

    def __init__(self, threads: Threads, step_s: Callable[[], float]) -> None:
        super().__init__()
        self._condition = SimCondition(threads)
        self.threads = threads
        self.step_s = step_s

    def asked(self) -> bool:
        self.threads.pause(self.step_s())
        return super().asked()
