"""
The lock recipe in the node simulator (issue 14, L{kvpaxos.testing.simlock}):
lock clients drive the product's L{kvpaxos.client.concurrency_core.Contender}
against the simulated nodes under seeded faults, and mutual exclusion holds
on the chosen log (every write under the lock is its owner's, no increment
is lost); the check bites on a hand-made log; and each plant that re-opens
a recipe bug (L{kvpaxos.testing.lockplants}) is caught at the seeds listed
for it (found with C{python -m kvpaxos.testing.sim --seeds N --scenario
locks --plant NAME}; a change to what the simulator draws moves them).
"""

import random
from collections import Counter
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv.commands import KeyValue
from kvpaxos.kv.history import Event, EventKind
from kvpaxos.testing import plants, simlock
from kvpaxos.testing.sim import run_seed
from kvpaxos.testing.simdisk import InjectedDiskFailure
from kvpaxos.testing.simlock import COUNTER, PREFIX, LocksMixin, LockWorkload

#: Seeds of scenario C{locks} the clean run takes (about a second each here;
#: C{tests/test_sim_holes.py} runs seeds 0-3 of every scenario on memory).
CLEAN_SEEDS = range(4, 10)
#: Seeds (of scenario C{locks}) that catch each plant (the first of each catches it).
CAUGHT_AT = {
    "unfenced-guard": (11, 22),
    "queue-by-key": (0, 1),
}


def put(key: bytes, value: bytes, created: int, revision: int) -> Event:
    return Event(EventKind.PUT, KeyValue(key, value, 1, created, revision), None)


def delete(key: bytes, revision: int) -> Event:
    return Event(EventKind.DELETE, KeyValue(key, b"", 0, 0, revision), None)


class _Log(LocksMixin):
    """Just the lock check of a simulation, fed a hand-made log."""

    def __init__(self, revisions):
        self.revisions = revisions
        self.violation = None
        self.locks = LockWorkload(SimpleNamespace(fault_s=4.0), random.Random(0))

    def _lease_events_at(self, revision):
        return self.revisions[revision]

    def fail(self, kind, detail):
        self.violation = (kind, detail)

    def follow(self):
        for revision in sorted(self.revisions):
            self._lock_revision(revision)
            if self.violation is not None:
                break
        return self.violation


class CheckTests(SynchronousTestCase):
    """The lock check follows the lock's queue through the log and names what is wrong."""

    a, b = PREFIX + b"a", PREFIX + b"b"

    def test_owners_incrementing_in_turn_pass(self):
        log = _Log({
            1: [put(self.b, b"", 1, 1)], 2: [put(self.a, b"", 2, 2)],
            3: [put(COUNTER, b"1 " + self.b, 3, 3)], 4: [delete(self.b, 4)],
            5: [put(COUNTER, b"2 " + self.a, 3, 5)],
        })
        self.assertIsNone(log.follow())
        self.assertEqual(log.locks.counter, 2)

    def test_a_write_by_a_contender_that_is_not_first_is_caught(self):
        """The owner is the lowest create revision, whatever the keys' order."""
        log = _Log({1: [put(self.b, b"", 1, 1)], 2: [put(self.a, b"", 2, 2)],
                    3: [put(COUNTER, b"1 " + self.a, 3, 3)]})
        kind, detail = log.follow()
        self.assertEqual(kind, "lock")
        self.assertIn(f"{self.a!r} wrote the counter while {self.b!r} owned the lock", detail)

    def test_a_write_by_a_holder_whose_key_is_gone_is_caught(self):
        log = _Log({1: [put(self.a, b"", 1, 1)], 2: [delete(self.a, 2)],
                    3: [put(COUNTER, b"1 " + self.a, 3, 3)]})
        kind, detail = log.follow()
        self.assertIn("while None owned the lock", detail)

    def test_a_lost_increment_is_caught(self):
        log = _Log({1: [put(self.a, b"", 1, 1)], 2: [put(COUNTER, b"1 " + self.a, 2, 2)],
                    3: [put(COUNTER, b"1 " + self.a, 2, 3)]})
        kind, detail = log.follow()
        self.assertEqual(kind, "lock")
        self.assertIn("the counter went from 1 to 1: an increment under the lock was lost", detail)


class DrawTests(SynchronousTestCase):
    def test_a_share_of_the_plain_seeds_run_the_lock_clients(self):
        """About one plain seed in seven draws the workload; seeds with a scenario or auth never do."""
        drawn = 0
        for seed in range(400):
            sim = SimpleNamespace(seed=seed, auth=None, scenario=None, random_faults=True, fault_s=4.0,
                                  locks=None, result=SimpleNamespace(faults=Counter()))
            simlock.draw(sim, True)
            drawn += sim.locks is not None
            other = SimpleNamespace(seed=seed, auth=object(), scenario=None, random_faults=True, fault_s=4.0,
                                    locks=None, result=SimpleNamespace(faults=Counter()))
            simlock.draw(other, True)
            self.assertIsNone(other.locks)
        self.assertTrue(30 <= drawn <= 90, drawn)


class CleanSeedTests(SynchronousTestCase):
    """The recipe keeps mutual exclusion under faults, and every path of it runs."""

    def test_seeds(self):
        """Every clean seed passes; acquisitions, waits, increments, releases, stalls and losses all happen."""
        failures, ops, faults = [], Counter(), Counter()
        for seed in CLEAN_SEEDS:
            result = run_seed(seed, scenario="locks")
            ops.update(result.ops)
            faults.update(result.faults)
            if not result.ok:
                failures.append(f"seed {seed}: {result.violation}; replay with: {result.replay()}")
        self.flushLoggedErrors(InjectedDiskFailure)
        self.assertEqual(failures, [])
        for kind in ("lock session", "lock acquired", "lock increment", "lock released", "lock watch",
                     "lock watch deleted", "lock final round"):
            self.assertGreater(ops[kind], 0, kind)
        for kind in ("lock holder stalls before its write", "lock session run out (as its client counts)",
                     "lock write outcome unknown"):
            self.assertGreater(faults[kind], 0, kind)


class PlantTests(SynchronousTestCase):
    """Each lock plant is caught at the seeds listed for it."""

    def assertCaught(self, plant):
        catches = plants.get(plant).catches
        seen = []
        for seed in CAUGHT_AT[plant]:
            result = run_seed(seed, plant=plant, scenario="locks")
            if not result.ok and result.violation.kind in catches:
                return result
            seen.append(f"seed {seed}: {result.violation}")
        self.flushLoggedErrors(InjectedDiskFailure)
        self.fail(f"{plant} not caught: {seen}")

    def test_unfenced_guard(self):
        """A holder that stalled past its lease and writes without the fencing compare is caught."""
        result = self.assertCaught("unfenced-guard")
        self.assertIn("owned the lock", result.violation.detail)

    def test_queue_by_key(self):
        """A queue ordered by key lets a later contender take the lock from its holder: caught."""
        result = self.assertCaught("queue-by-key")
        self.assertIn("owned the lock", result.violation.detail)

    def test_every_lock_plant_listed(self):
        self.assertEqual(set(CAUGHT_AT) - set(plants.names()), set())
