"""
Tests for the simulator's threads (L{kvpaxos.testing.simthreads}): the
LMDB store's writer and pool threads run in turn with the reactor's, through
the store's real read gate, and a reactor that would wait behind a long
read is reported.  Deterministic: virtual time, one thread at a time.
"""

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv.commands import Op, Request
from kvpaxos.encoding.commands import encode_request
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import Batch
from kvpaxos.storage import lmdb as lmdb_store
from kvpaxos.storage.interfaces import Commit
from kvpaxos.storage.lmdb import LMDBStore
from kvpaxos.testing.holes import LongReadHoldsGate
from kvpaxos.testing.simthreads import SimReadGate, Threads
from kvpaxos.testing.simworld import VirtualTime

MAP_BYTES = 256 << 10


def puts(slot: int, count: int, size: int) -> Commit:
    batch = Batch(tuple(
        encode_request(Request(Op.PUT, b"key%d.%d" % (slot, n), b"v" * size)) for n in range(count)
    ))
    return Commit(None, [], None, False, [(slot, batch)])


class GateTests(SynchronousTestCase):
    """A snapshot copy in steps, a commit that grows the map, and a reactor read, in turn."""

    def setUp(self):
        self.world = VirtualTime()
        self.blocked = []
        self.threads = Threads(self.world, self.blocked.append)
        self.store = LMDBStore(self.mktemp(), Config(frozenset({1})), map_bytes=MAP_BYTES)
        # A state of some records, copied a record or so per step.
        self.store.commit(puts(1, 20, 2000))
        step = lmdb_store.SNAPSHOT_STEP_BYTES
        lmdb_store.SNAPSHOT_STEP_BYTES = 1000
        self.addCleanup(setattr, lmdb_store, "SNAPSHOT_STEP_BYTES", step)
        self.writer = self.threads.worker("writer")
        self.pool = self.threads.worker("pool", long=True)
        self.addCleanup(self.store.close)
        self.addCleanup(self.threads.kill, [self.writer, self.pool])
        self.outcomes = {}

    def run_case(self, gate_class) -> int:
        """Run the three at once; return the applied index the copy saw."""
        self.store._gate = gate_class(self.threads, lambda: 0.001)
        done = self.outcomes.setdefault
        self.threads.submit(self.pool, self.store.state_machine.snapshot_now,
                            lambda outcome: done("copy", outcome))
        self.assertEqual(self.pool.state, "paused")  # one step in
        growths = self.store.map_growths
        # Larger than the map: the writer must grow it while the copy is open.
        self.threads.submit(self.writer, lambda: self.store.commit(puts(2, 1, 2 * MAP_BYTES)),
                            lambda outcome: done("commit", outcome))
        # The reactor's read, as the copy goes on.
        self.assertEqual(self.store.get(b"key1.3"), b"v" * 2000)
        while self.world:
            call, args = self.world.pop()
            call(*args)
        self.assertGreater(self.store.map_growths, growths)
        for what in ("copy", "commit"):
            ok, value = self.outcomes[what]
            self.assertTrue(ok, value)
        return self.outcomes["copy"][1][0]

    def test_the_product_never_blocks_the_reactor(self):
        """With the product's gate the copy leaves for the writer; the reactor never waits."""
        # The copy started over after the commit, so it saw it.
        self.assertEqual(self.run_case(SimReadGate), 2)
        self.assertEqual(self.blocked, [])

    def test_a_copy_holding_the_gate_blocks_it(self):
        """With the gate as it was (issue 9, hole 7) the reactor waits while the copy takes steps."""
        # The commit waited for the whole copy.
        self.assertEqual(self.run_case(LongReadHoldsGate), 1)
        self.assertNotEqual(self.blocked, [])
        self.assertIn("pool thread took a step of a long read", self.blocked[0])

    def test_kill_finishes_the_task_unseen(self):
        """A crash ends the threads: the task under way runs to its end, its outcome dropped."""
        self.store._gate = SimReadGate(self.threads, lambda: 0.001)
        self.threads.submit(self.pool, self.store.state_machine.snapshot_now,
                            lambda outcome: self.outcomes.setdefault("copy", outcome))
        self.assertEqual(self.pool.state, "paused")
        self.threads.kill([self.writer, self.pool])
        self.assertEqual((self.pool.state, self.writer.state), ("done", "done"))
        self.assertEqual(self.outcomes, {})
