"""
A snapshot read for a peer (O(state), in a pool thread) never makes the
reactor thread wait: reads and commits go on while it runs, and in LMDB a
commit that fills the map grows it after waiting only for one bounded step
of the snapshot read, never for the whole of it (issue 9, hole 7).

These tests use real threads, as the node does (the snapshot in a pool
thread, commits on the writer thread, reads on the reactor thread).  Every
handshake is a L{threading.Event} or the gate's own condition; every wait is
bounded, and a bound that runs out fails the test instead of hanging it.
Nothing waits for time to pass.
"""

from __future__ import annotations

import threading

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.encoding import state as snapshot_format
from kvpaxos.kv.commands import TO_THE_END, Op, Range, Request
from kvpaxos.encoding.commands import encode_request
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import Batch
from kvpaxos.storage import lmdb as lmdb_store
from kvpaxos.storage.interfaces import Commit
from kvpaxos.storage.lmdb import LMDBStore
from kvpaxos.storage.memory import MemoryStore

CONFIG = Config(frozenset({1, 2, 3}))

#: LMDB's map in these tests: a commit of L{BIG} does not fit in it.
MAP_BYTES = 256 << 10

#: A value twice the map: committing it takes the map-full path.
BIG = b"x" * (2 * MAP_BYTES)

#: How long any one wait may take before the test calls it stuck.  Generous:
#: a correct store answers in microseconds; a stuck one never does.
BOUND_S = 10.0

#: How long a paused step stays paused unless resumed: past every bound
#: above, so that a stuck store fails the test before the pause gives way.
PAUSE_S = 6 * BOUND_S


def put(*keys: bytes, value: bytes = b"v") -> Batch:
    """Return a slot value holding a put of C{value} to each of C{keys}."""
    return Batch(tuple(encode_request(Request(Op.PUT, key, value)) for key in keys))


def commit_big(store) -> list:
    """Commit a put of L{BIG} at slot 2 of C{store}: past LMDB's map in these tests."""
    return store.commit(Commit(None, [], None, False, [(2, put(b"big", value=BIG))]))


class _Call:
    """C{function()} run in a thread of its own; what it returned or raised."""

    def __init__(self, function) -> None:
        self.result = self.error = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = function()
            except BaseException as error:
                self.error = error
            finally:
                self.done.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def finished(self, timeout_s: float = BOUND_S) -> bool:
        """Wait (at most C{timeout_s}) for the call to end; say whether it did."""
        return self.done.wait(timeout_s)

    def outcome(self):
        """The call's result, or what it raised, raised again; the call must have ended."""
        assert self.done.is_set()
        if self.error is not None:
            raise self.error
        return self.result


class _Calls:
    """
    The calls a test starts.  At cleanup (before the store closes: closing
    an LMDB environment under a live write transaction of another thread
    waits for it) the pause is resumed and every call waited for, bounded.
    """

    def __init__(self, testcase, pause) -> None:
        self._calls: list = []
        self._pause = pause
        testcase.addCleanup(self._finish)

    def start(self, function) -> _Call:
        """Start C{function()} in a thread of its own and return its L{_Call}."""
        call = _Call(function)
        self._calls.append(call)
        return call

    def _finish(self) -> None:
        self._pause.resume.set()
        for call in self._calls:
            call.finished()


class _Pause:
    """
    Stands in for C{wrapped}: the first call signals C{paused} and waits
    (bounded) for C{resume} before calling through; later calls go straight
    through.  A pause gives way by itself after L{PAUSE_S}.
    """

    def __init__(self, wrapped) -> None:
        self.wrapped = wrapped
        self.paused = threading.Event()
        self.resume = threading.Event()

    def __call__(self, *args, **kwargs):
        if not self.paused.is_set():
            self.paused.set()
            self.resume.wait(PAUSE_S)
        return self.wrapped(*args, **kwargs)


class _SnapshotBesideWork:
    """
    What every store must do: while a snapshot is being encoded (held in
    the middle by a hook), a commit of L{BIG} and the reactor's reads
    finish.  Mixed into a L{SynchronousTestCase} that says how to C{open} a
    store and what to C{check_commit} afterwards.
    """

    def open(self):
        """Return a new store, closed at cleanup."""
        raise NotImplementedError()

    def check_commit(self):
        """Check what is particular to the provider once the commit of L{BIG} is done."""
        raise NotImplementedError()

    def setUp(self):
        self.store = self.open()
        self.store.commit(Commit(None, [], None, False, [(1, put(b"a"))]))
        self.before = self.store.snapshot_data()
        self.encoding = _Pause(snapshot_format.encode_snapshot)
        self.patch(snapshot_format, "encode_snapshot", self.encoding)
        self.calls = _Calls(self, self.encoding)

    def test_commit_and_reads_beside_snapshot(self):
        """A commit and the reactor's reads finish while a snapshot for a peer is being encoded."""
        snapshot = self.calls.start(self.store.snapshot_now)
        self.assertTrue(self.encoding.paused.wait(BOUND_S), "the snapshot never encoded")

        commit = self.calls.start(lambda: commit_big(self.store))
        committed = commit.finished()
        read = self.calls.start(
            lambda: self.store.read_ranges([Range(b"big"), Range(b"a", TO_THE_END)])
        )
        self.assertTrue(read.finished(), "a reactor read waited behind the snapshot")
        self.assertTrue(committed, "a commit waited behind the snapshot")
        commit.outcome()
        self.check_commit()
        big, everything = read.outcome()
        self.assertEqual([kv.value for kv in big.kvs], [BIG])
        self.assertEqual(everything.count, 2)

        self.encoding.resume.set()
        self.assertTrue(snapshot.finished())
        # The snapshot is the state it read, before the commit.
        self.assertEqual(snapshot.outcome(), (1, self.before))


class LMDBSnapshotBesideWorkTests(_SnapshotBesideWork, SynchronousTestCase):
    """L{LMDBStore}: the commit fills the map, and the map grows beside the snapshot."""

    def open(self):
        store = LMDBStore(self.mktemp(), CONFIG, map_bytes=MAP_BYTES)
        self.addCleanup(store.close)
        return store

    def check_commit(self):
        self.assertGreater(self.store.map_growths, 0)


class MemorySnapshotBesideWorkTests(_SnapshotBesideWork, SynchronousTestCase):
    """L{MemoryStore}: its lock is not held while the snapshot is encoded."""

    def open(self):
        return MemoryStore(CONFIG)

    def check_commit(self):
        pass


class LMDBSnapshotStepTests(SynchronousTestCase):
    """
    L{LMDBStore} copies the state for a snapshot in bounded steps of one
    read transaction; a map growth waits for one step, not for the copy.
    """

    def setUp(self):
        self.store = LMDBStore(self.mktemp(), CONFIG, map_bytes=MAP_BYTES)
        self.addCleanup(self.store.close)
        self.store.commit(Commit(None, [], None, False, [(1, put(b"a", b"b", b"c"))]))
        self.before = self.store.snapshot_data()
        self.copies: list = []
        from kvpaxos.storage import lmdb_transfer

        copy_state = lmdb_transfer._copy_state

        def counted(store, txn, step_bytes):
            self.copies.append(True)
            return copy_state(store, txn, step_bytes)

        self.patch(lmdb_transfer, "_copy_state", counted)
        # One record per step, and the first step held until resumed.
        self.patch(lmdb_store, "SNAPSHOT_STEP_BYTES", 1)
        self.gate = self.store._gate
        self.step = _Pause(self.gate.asked)
        self.patch(self.gate, "asked", self.step)
        self.calls = _Calls(self, self.step)

    def test_growth_waits_for_one_step(self):
        """A map-full commit waits for the snapshot copy's step, reads do not, and the copy starts over."""
        snapshot = self.calls.start(self.store.snapshot_now)
        self.assertTrue(self.step.paused.wait(BOUND_S), "the snapshot never stepped")
        commit = self.calls.start(lambda: commit_big(self.store))
        with self.gate._condition:
            self.assertTrue(
                self.gate._condition.wait_for(self.step.wrapped, BOUND_S),
                "the commit never asked for the gate",
            )

        # The writer waits for the snapshot's step; the reactor does not.
        read = self.calls.start(lambda: self.store.read_ranges([Range(b"a", TO_THE_END)]))
        self.assertTrue(read.finished(), "a reactor read waited while the writer asked")
        [found] = read.outcome()
        self.assertEqual([kv.key for kv in found.kvs], [b"a", b"b", b"c"])
        self.assertEqual(self.store.map_growths, 0)

        self.step.resume.set()
        self.assertTrue(commit.finished(), "the commit waited for more than one step")
        commit.outcome()
        self.assertTrue(snapshot.finished())
        self.assertGreater(self.store.map_growths, 0)
        # The copy left and started over, in a new read transaction: one
        # consistent state, before the commit or after it.  It starts over
        # at most once per growth (the commit may grow the map more than
        # once, and a copy started meanwhile leaves again).
        self.assertGreaterEqual(len(self.copies), 2)
        self.assertLessEqual(len(self.copies), 1 + self.store.map_growths)
        after = self.store.snapshot_data()
        self.assertIn(snapshot.outcome(), [(1, self.before), (2, after)])
