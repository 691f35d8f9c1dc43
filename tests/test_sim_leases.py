"""
KV leases in the node simulator (issue 14, L{kvpaxos.testing.simlease}
and L{kvpaxos.testing.simleasecheck}): the lease model follows the chosen
log apart from the state machine's tables; lease clients under seeded
faults grant, keep alive, let lapse, revoke and attach keys, and every
lease check holds; and each plant that re-opens a lease bug
(L{kvpaxos.testing.leaseplants}) is caught at the seeds listed for it
(found with C{python -m kvpaxos.testing.sim --seeds N --plant NAME}; a
change to what the simulator draws moves them, as in C{tests/test_sim.py}).
"""

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv import machine
from kvpaxos.kv.commands import DeleteRange, Op, Put, Request, Txn
from kvpaxos.storage.memory import MemoryState
from kvpaxos.testing import plants
from kvpaxos.testing.sim import run_seed
from kvpaxos.testing.simdisk import InjectedDiskFailure
from kvpaxos.testing.simleasecheck import LeaseModel, min_ttl
from kvpaxos.testing.simwatch import ReferenceHistory

#: Seeds the clean run takes (about a second each here).
CLEAN_SEEDS = range(8)
#: Seeds that catch each plant (the first of each catches it).
CAUGHT_AT = {
    "follower-expires-leases": (0, 1),
    "no-promotion-extension": (0, 1),
    "keepalive-unconfirmed": (1, 19),
    "lease-on-wall-clock": (3, 7),
    "attached-keys-survive": (0, 1),
}


class ModelTests(SynchronousTestCase):
    """L{LeaseModel} follows the log's leases and attachments, and says where a state machine differs."""

    def setUp(self):
        self.state, self.history, self.model = MemoryState(), ReferenceHistory(), LeaseModel()
        self.slot = 0

    def apply(self, *requests):
        """Apply C{requests} as one slot to the state and the model; return the model's problems."""
        self.slot += 1
        steps = []
        for request in requests:
            before = self.state.revision()
            result = machine.apply(self.state, request, self.slot)
            steps.append((request, result, before, self.state.revision()))
        self.history.applied(self.slot, self.state, float(self.slot))
        problems = []
        for step in steps:
            problem, _ = self.model.applied(*step, float(self.slot), self.events_at)
            problems.append(problem)
        return problems

    def events_at(self, revision):
        return [e for r, e in zip(self.history.revisions, self.history.events) if r == revision]

    def test_follows_grants_attachments_and_revokes(self):
        """Grants, puts with and without a lease, a transaction's delete and a revoke are followed exactly."""
        self.assertEqual(self.apply(Request(Op.LEASE_GRANT, lease=7, ttl=2),
                                    Request(Op.PUT, b"k0", b"a", lease=7),
                                    Request(Op.PUT, b"k1", b"b", lease=7),
                                    Request(Op.PUT, b"k2", b"c", lease=7)), [None] * 4)
        txn = Txn((), (Put(b"k3", b"d", lease=7), DeleteRange(b"k2")), ())
        self.assertEqual(self.apply(Request(Op.PUT, b"k1", b"e"), Request(Op.TXN, txn=txn)), [None, None])
        self.assertEqual(self.model.keys_of(7), [b"k0", b"k3"])
        self.assertIsNone(self.model.differs(self.state.leases, self.state.key_leases))
        self.assertEqual(self.apply(Request(Op.LEASE_EXPIRE, lease=7), Request(Op.PUT, b"k4", b"f", lease=7)),
                         [None, None])
        self.assertEqual((self.model.table, self.model.attached, self.model.ended_at), ({}, {}, {7: 3.0}))
        self.assertIsNone(self.model.differs(self.state.leases, self.state.key_leases))

    def test_keys_kept_by_a_revoke_are_caught(self):
        """A revoke that leaves its keys in place is a problem, named with the keys."""
        self.apply(Request(Op.LEASE_GRANT, lease=7, ttl=2), Request(Op.PUT, b"k0", b"a", lease=7))
        before = self.state.revision()
        self.state.lease_detach(b"k0")
        self.state.lease_remove(7)
        from kvpaxos.kv.leases import LeaseRevoked

        problem, _ = self.model.applied(Request(Op.LEASE_REVOKE, lease=7), LeaseRevoked(7, 0, before),
                                        before, before, 3.0, self.events_at)
        self.assertIn("deleted 0 keys; 1 were attached", problem)

    def test_differences_named(self):
        """A lease table or an attachment the log does not give is named."""
        self.apply(Request(Op.LEASE_GRANT, lease=7, ttl=2))
        self.assertIn("lacks [(7, 2)]", self.model.differs({}, {}))
        self.assertIn("has [(b'k0', 7)]", self.model.differs({7: 2}, {b"k0": 7}))

    def test_least_ttl(self):
        """The least TTL a node grants is 1.5 election timeouts rounded up to a second, at least 1 s."""
        self.assertEqual([min_ttl(tick) for tick in (0.01, 0.05, 0.1)], [1, 1, 2])


class CleanSeedTests(SynchronousTestCase):
    """The product passes the lease checks under faults, and every lease path runs."""

    def test_seeds(self):
        """Every clean seed passes; grants, keep-alives, lapses, expiries, revokes and deleted keys all happen."""
        failures, ops, faults = [], Counter(), Counter()
        for seed in CLEAN_SEEDS:
            result = run_seed(seed)
            ops.update(result.ops)
            faults.update(result.faults)
            if not result.ok:
                failures.append(f"seed {seed}: {result.violation}; replay with: {result.replay()}")
        self.flushLoggedErrors(InjectedDiskFailure)
        self.assertEqual(failures, [])
        for kind in ("lease granted", "lease kept alive", "lease refreshed", "lease let lapse", "lease expired",
                     "lease revoked", "lease revoked after the heal", "lease keys deleted", "lease put",
                     "lease time-to-live"):
            self.assertGreater(ops[kind], 0, kind)
        self.assertGreater(faults["lease: the leader stalls with a keep-alive"], 0)


class PlantTests(SynchronousTestCase):
    """Each lease plant is caught at the seeds listed for it."""

    def assertCaught(self, plant):
        catches = plants.get(plant).catches
        seen = []
        for seed in CAUGHT_AT[plant]:
            result = run_seed(seed, plant=plant)
            if not result.ok and result.violation.kind in catches:
                return result
            seen.append(f"seed {seed}: {result.violation}")
        self.flushLoggedErrors(InjectedDiskFailure)
        self.fail(f"{plant} not caught: {seen}")

    def test_follower_expires_leases(self):
        """A deposed leader that expires leases from its old deadlines, forwarded to the leader, is caught."""
        result = self.assertCaught("follower-expires-leases")
        self.assertIn("while it was not the leader", result.violation.detail)

    def test_no_promotion_extension(self):
        """A new leader that gives leases only their TTL from its promotion is caught expiring one too soon."""
        result = self.assertCaught("no-promotion-extension")
        self.assertIn("TTL + election timeout", result.violation.detail)

    def test_keepalive_unconfirmed(self):
        """A stalled leader that answers a queued keep-alive without confirming it still leads is caught."""
        result = self.assertCaught("keepalive-unconfirmed")
        self.assertIn("had begun", result.violation.detail)

    def test_lease_on_wall_clock(self):
        """A lessor counting on the wall clock, which steps, runs a lease out too early or too late, and is caught."""
        result = self.assertCaught("lease-on-wall-clock")
        self.assertEqual(result.violation.kind, "lease")

    def test_attached_keys_survive(self):
        """A revoke or expiry that leaves its lease's keys in place is caught by the lease model."""
        result = self.assertCaught("attached-keys-survive")
        self.assertIn("were attached", result.violation.detail)

    def test_every_lease_plant_listed(self):
        """Every plant this module tests is in the registry, with seeds."""
        self.assertEqual(set(CAUGHT_AT) - set(plants.names()), set())
