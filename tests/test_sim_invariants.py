"""
Tests for the node simulator's rule checks (L{kvpaxos.testing.invariants}):
each refuses exactly what breaks its rule.
"""

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import Accepted, Ballot, Batch, Config, Prepare, Promise
from kvpaxos.paxos.messages import Snapshot
from kvpaxos.paxos.state import Entry, HardState
from kvpaxos.storage.memory import MemoryStorage
from kvpaxos.testing.invariants import durability_problem, lease_problem

B1, B2 = Ballot(1, 1), Ballot(2, 2)
VOTERS = Config(frozenset({1, 2, 3}))


class DurableBeforeSentTests(SynchronousTestCase):
    """durability_problem: a message may leave only once what it states is durable."""

    def setUp(self):
        self.store = MemoryStorage(VOTERS)

    def test_prepare_and_promise(self):
        """A Prepare or Promise of a ballot above the durable promise is refused; at or below it passes."""
        for message in (Prepare(2, 1, B2, 1), Promise(2, 1, B2, 1, ())):
            self.assertIn("durable promise was", durability_problem(self.store, message))
        self.store.save(HardState(B2, 0), [], None)
        for message in (Prepare(2, 1, B2, 1), Promise(2, 1, B2, 1, ()), Promise(2, 1, B1, 1, ())):
            self.assertIsNone(durability_problem(self.store, message))

    def test_accepted(self):
        """An Accepted needs every slot it reports durable in its ballot (or a higher one)."""
        self.store.save(HardState(B2, 0), [(1, Entry(B2, Batch((b"a",))))], None)
        self.assertIsNone(durability_problem(self.store, Accepted(1, 2, B2, 1, 1, 0)))
        self.assertIsNone(durability_problem(self.store, Accepted(1, 2, B1, 1, 1, 0)))
        problem = durability_problem(self.store, Accepted(1, 2, B2, 1, 2, 0))
        self.assertIn("slot 2 was durably empty", problem)
        self.store.save(None, [(2, Entry(B1, Batch((b"b",))))], None)
        problem = durability_problem(self.store, Accepted(1, 2, B2, 2, 1, 0))
        self.assertIn("slot 2 was durably accepted in", problem)

    def test_accepted_below_the_snapshot(self):
        """Slots compacted into the snapshot are durably chosen: an Accepted of them passes."""
        self.store.save(HardState(B2, 5), [], Snapshot(5, VOTERS, b""))
        self.assertIsNone(durability_problem(self.store, Accepted(1, 2, B2, 3, 3, 5)))
        self.assertIsNotNone(durability_problem(self.store, Accepted(1, 2, B2, 5, 2, 5)))


class LeaseOverlapTests(SynchronousTestCase):
    """lease_problem: no quorum promises above a ballot whose leader holds a lease."""

    def test_quorum_above(self):
        """Two of three promised above the lease holder's ballot: an overlap."""
        problem = lease_problem({1: (B1, VOTERS)}, {1: B1, 2: B2, 3: B2})
        self.assertIn("node 1 holds a read lease", problem)

    def test_one_above(self):
        """One of three promised above it (a candidate with no quorum yet): no overlap."""
        self.assertIsNone(lease_problem({1: (B1, VOTERS)}, {1: B1, 2: B2, 3: B1}))

    def test_equal_is_not_above(self):
        """Promises of the lease holder's own ballot are its quorum, not an overlap."""
        self.assertIsNone(lease_problem({1: (B2, VOTERS)}, {1: B2, 2: B2, 3: B2}))
