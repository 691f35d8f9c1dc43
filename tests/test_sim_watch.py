"""
Watch and the history's compaction in the node simulator (issue 14,
L{kvpaxos.testing.simwatch}): the reference's history is the chosen log's
events, whole; watch clients under seeded faults are sent exactly those
events, told L{kvpaxos.node.watchers.Compacted} only where the log
compacted, and catch up after the heal; and each plant that re-opens a
watch or compaction bug is caught at the seeds listed for it (found with
C{python -m kvpaxos.testing.sim --seeds N --plant NAME}; a change to what
the simulator draws moves them, as in C{tests/test_sim.py}).
"""

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv import machine
from kvpaxos.kv.commands import TO_THE_END, DeleteRange, Op, Put, Request, Txn
from kvpaxos.kv.history import EventKind
from kvpaxos.node.watchers import WatchSpec
from kvpaxos.storage.memory import MemoryState
from kvpaxos.testing import plants
from kvpaxos.testing.sim import run_seed
from kvpaxos.testing.simdisk import InjectedDiskFailure
from kvpaxos.testing.simwatch import ReferenceHistory, spec_matches

#: Seeds the clean run takes (about 0.3 s each).
CLEAN_SEEDS = range(12)
#: Seeds that catch each plant (each a memory seed: LMDB's history has no
#: plant of its own here).
CAUGHT_AT = {
    "watch-skips-on-full": (0, 4),
    "watch-splits-revision": (1, 3),
    "history-dropped-in-snapshot": (4, 6),
    "follower-compacts": (0, 1),
    "compaction-on-wall-clock": (18, 44),
}


def applied(state, history, requests, slot, at=0.0):
    for request in requests:
        machine.apply(state, request, slot)
    return history.applied(slot, state, at)


class ReferenceHistoryTests(SynchronousTestCase):
    """L{ReferenceHistory} keeps the chosen log's events whole, past the reference's compactions."""

    def setUp(self):
        self.state, self.history = MemoryState(), ReferenceHistory()
        txn = Txn((), (Put(b"k1", b"b"), DeleteRange(b"k0")), ())
        self.assertIsNone(applied(self.state, self.history, [Request(Op.PUT, b"k0", b"a")], 1, 0.5))
        self.assertIsNone(applied(self.state, self.history, [Request(Op.TXN, txn=txn)], 2, 0.7))
        self.assertIsNone(applied(self.state, self.history, [Request(Op.COMPACT, compact_revision=2)], 3, 0.9))

    def test_events_kept_past_compaction(self):
        """Events the reference's state compacted away are still there, in order, with their previous records."""
        spec = WatchSpec(b"k", b"l", prev_kv=True)
        events = self.history.between(spec, 1, 2)
        self.assertEqual([(e.revision, e.kind, e.key) for e in events],
                         [(1, EventKind.PUT, b"k0"), (2, EventKind.PUT, b"k1"), (2, EventKind.DELETE, b"k0")])
        self.assertEqual(events[2].prev.value, b"a")
        self.assertEqual(self.history.chosen_at, {1: 0.5, 2: 0.7})

    def test_spec_filters_and_prev(self):
        """A spec's keys, filters and prev_kv choose what it is sent."""
        self.assertEqual(len(self.history.between(WatchSpec(b"k0"), 1, 2)), 2)
        self.assertEqual(len(self.history.between(WatchSpec(b"k0", no_delete=True), 1, 2)), 1)
        self.assertEqual(len(self.history.between(WatchSpec(b"k1", TO_THE_END), 1, 2)), 1)
        self.assertEqual(self.history.between(WatchSpec(b"k", b"l"), 2, 2)[1].prev, None)
        self.assertEqual(self.history.between(WatchSpec(b"k0"), 2, 1), ())
        self.assertFalse(spec_matches(WatchSpec(b"k1", b"k2"), self.history.events[0]))

    def test_compacted_by_slot(self):
        """The compacted revision the log gives is known at every slot."""
        self.assertEqual([self.history.compacted_at(slot) for slot in (0, 1, 2, 3, 9)], [0, 0, 0, 2, 2])


class CleanSeedTests(SynchronousTestCase):
    """The product passes the watch checks under faults, and every watch path runs."""

    def test_seeds(self):
        """Every clean seed passes; batches, progress, compactions, full sinks, lost and given-up streams all happen."""
        failures, ops, faults = [], Counter(), Counter()
        for seed in CLEAN_SEEDS:
            result = run_seed(seed)
            ops.update(result.ops)
            faults.update(result.faults)
            if not result.ok:
                failures.append(f"seed {seed}: {result.violation}; replay with: {result.replay()}")
        self.flushLoggedErrors(InjectedDiskFailure)
        self.assertEqual(failures, [])
        for kind in ("watch created", "watch batches", "watch events", "watch progress", "watch compacted",
                     "history compacted"):
            self.assertGreater(ops[kind], 0, kind)
        for kind in ("watch sink full", "watch stream lost", "watch given up", "watch cancelled"):
            self.assertGreater(faults[kind], 0, kind)


class PlantTests(SynchronousTestCase):
    """Each watch or compaction plant is caught at the seeds listed for it."""

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

    def test_watch_skips_on_full(self):
        """A watcher that moves its cursor past what a full sink could not take leaves a gap, and is caught."""
        result = self.assertCaught("watch-skips-on-full")
        self.assertEqual(result.violation.kind, "watch")

    def test_watch_splits_revision(self):
        """A step read cut inside a revision and sent as whole loses that revision's other events, and is caught."""
        result = self.assertCaught("watch-splits-revision")
        self.assertEqual(result.violation.kind, "watch")

    def test_history_dropped_in_snapshot(self):
        """A snapshot installed without its history (its compacted revision kept) is caught."""
        self.assertCaught("history-dropped-in-snapshot")

    def test_follower_compacts(self):
        """A follower that proposes compactions from its own clock is caught: retention is the leader's."""
        result = self.assertCaught("follower-compacts")
        self.assertIn("not the leader", result.violation.detail)

    def test_compaction_on_wall_clock(self):
        """A leader that counts the history's age on its wall clock compacts too early when it steps, and is caught."""
        result = self.assertCaught("compaction-on-wall-clock")
        self.assertIn("keeping less than", result.violation.detail)

    def test_every_watch_plant_listed(self):
        """Every plant this module tests is in the registry, with seeds."""
        self.assertEqual(set(CAUGHT_AT) - set(plants.names()), set())
