"""
L{kvpaxos.node.watchers}: a member's watchers fed from its history, in
order, without gaps or duplicates, atomic per revision, across catch-up,
slow sinks, compaction and future starts.  Against a fake history (a list)
and a fake reactor turn (a queue run by hand): deterministic.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv.commands import TO_THE_END, KeyValue
from kvpaxos.kv.history import EventKind, delete_event, put_event
from kvpaxos.node.watchers import Batch, Compacted, WatchSpec, Watchers


class History:
    """A member's history: C{(revision, event)} pairs, and its compacted revision."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.revision = 0
        self.compacted = 0
        self.records: dict[bytes, KeyValue] = {}
        self.reads: list[tuple] = []

    def write(self, *changes) -> int:
        """Apply one revision: C{(key, value)} puts, C{(key, None)} deletes (of keys that exist)."""
        self.revision += 1
        for key, value in changes:
            prev = self.records.get(key)
            if value is None:
                del self.records[key]
                self.events.append((self.revision, delete_event(prev, self.revision)))
            else:
                kv = KeyValue(key, value, prev.version + 1 if prev else 1,
                              prev.create_revision if prev else self.revision, self.revision)
                self.records[key] = kv
                self.events.append((self.revision, put_event(kv, prev)))
        return self.revision

    def read(self, start: int, max_events: int) -> list:
        """Whole revisions from C{start}, at most about C{max_events}."""
        self.reads.append((start, max_events))
        out = []
        for revision, event in self.events:
            if revision < start:
                continue
            if len(out) >= max_events and out[-1][0] != revision:
                break
            out.append((revision, event))
        return out


class Sink:
    """A sink that takes batches while C{room}, and records the end."""

    def __init__(self, room: bool = True) -> None:
        self.batches: list[Batch] = []
        self.room = room
        self.ended = None

    def send(self, batch: Batch) -> bool:
        if not self.room:
            return False
        self.batches.append(batch)
        return True

    def end(self, reason) -> None:
        self.ended = reason

    def revisions(self) -> list[int]:
        return [event.revision for batch in self.batches for event in batch.events]

    def keys(self) -> list[bytes]:
        return [event.key for batch in self.batches for event in batch.events]


class WatchersTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.history = History()
        self.turns: list = []
        self.watchers = self.make()

    def make(self, step_events: int = 1000) -> Watchers:
        h = self.history
        return Watchers(h.read, lambda: h.compacted, lambda: h.revision, self.turns.append, step_events)

    def run_turns(self, limit: int = 1000) -> int:
        """Run every reactor turn asked for; return how many ran."""
        ran = 0
        while self.turns:
            self.turns.pop(0)()
            ran += 1
            self.assertLess(ran, limit, "the watchers never settle")
        return ran

    def apply(self, *changes) -> int:
        revision = self.history.write(*changes)
        self.watchers.applied()
        return revision

    def test_follows_the_present_from_the_next_revision(self) -> None:
        self.apply((b"a", b"0"))
        sink = Sink()
        self.watchers.add(WatchSpec(b"a"), sink)
        self.run_turns()
        self.assertEqual(sink.batches, [])
        self.apply((b"a", b"1"))
        self.apply((b"b", b"x"))
        self.apply((b"a", b"2"))
        self.run_turns()
        self.assertEqual(sink.revisions(), [2, 4])
        self.assertEqual([e.kv.value for b in sink.batches for e in b.events], [b"1", b"2"])

    def test_starts_in_the_past_then_follows_without_a_gap_or_a_duplicate(self) -> None:
        for i in range(5):
            self.history.write((b"k", b"%d" % i))
        sink = Sink()
        self.watchers.add(WatchSpec(b"k", start=2), sink)
        self.run_turns()
        self.assertEqual(sink.revisions(), [2, 3, 4, 5])
        self.apply((b"k", b"5"))
        self.run_turns()
        self.assertEqual(sink.revisions(), [2, 3, 4, 5, 6])

    def test_a_long_catch_up_goes_in_bounded_steps_while_writes_go_on(self) -> None:
        """Steps of at most 3 events; writes applied between steps; every revision once, in order."""
        self.watchers = self.make(step_events=3)
        for i in range(20):
            self.history.write((b"k", b"%d" % i))
        sink = Sink()
        self.watchers.add(WatchSpec(b"k", start=1), sink)
        steps = 0
        while self.turns:
            self.turns.pop(0)()
            steps += 1
            if steps % 2 == 0 and self.history.revision < 30:
                self.apply((b"k", b"more"))
        self.assertEqual(sink.revisions(), list(range(1, self.history.revision + 1)))
        self.assertGreater(steps, 6)
        self.assertTrue(all(n <= 3 for _, n in self.history.reads))

    def test_the_events_of_one_revision_stay_together(self) -> None:
        self.watchers = self.make(step_events=2)
        self.history.write((b"a", b"1"))
        self.history.write((b"a", b"2"), (b"b", b"2"), (b"c", b"2"))  # one txn: three events
        self.history.write((b"b", b"3"))
        sink = Sink()
        self.watchers.add(WatchSpec(b"a", TO_THE_END, start=1), sink)
        self.run_turns()
        by_batch = [[e.revision for e in batch.events] for batch in sink.batches]
        self.assertIn([2, 2, 2], [[r for r in b if r == 2] for b in by_batch])
        self.assertEqual(sink.revisions(), [1, 2, 2, 2, 3])
        for batch in by_batch:
            if 2 in batch:
                self.assertEqual(batch.count(2), 3)

    def test_a_full_sink_pauses_and_reads_on_from_the_history(self) -> None:
        sink = Sink()
        watcher = self.watchers.add(WatchSpec(b"k"), sink)
        self.run_turns()
        self.apply((b"k", b"1"))
        self.run_turns()
        sink.room = False
        for i in range(2, 6):
            self.apply((b"k", b"%d" % i))
            self.run_turns()
        self.assertTrue(watcher.paused)
        self.assertFalse(self.watchers.caught_up(watcher))
        sink.room = True
        self.watchers.ready(watcher)
        self.run_turns()
        self.assertEqual(sink.revisions(), [1, 2, 3, 4, 5])
        self.assertTrue(self.watchers.caught_up(watcher))

    def test_a_compacted_start_ends_the_watcher(self) -> None:
        for i in range(6):
            self.history.write((b"k", b"%d" % i))
        self.history.compacted = 4
        sink = Sink()
        self.watchers.add(WatchSpec(b"k", start=3), sink)
        self.run_turns()
        self.assertEqual(sink.ended, Compacted(4))
        self.assertEqual(sink.batches, [])
        self.assertEqual(len(self.watchers), 0)
        resumed = Sink()
        self.watchers.add(WatchSpec(b"k", start=4), resumed)
        self.run_turns()
        self.assertEqual(resumed.revisions(), [4, 5, 6])

    def test_a_paused_watcher_overtaken_by_compaction_ends(self) -> None:
        sink = Sink(room=False)
        watcher = self.watchers.add(WatchSpec(b"k"), sink)
        for i in range(5):
            self.apply((b"k", b"%d" % i))
        self.run_turns()
        self.history.compacted = 3
        sink.room = True
        self.watchers.ready(watcher)
        self.run_turns()
        self.assertEqual(sink.ended, Compacted(3))

    def test_a_commit_between_the_revision_and_the_read_is_not_sent_twice(self) -> None:
        """The read may see a revision the applied revision did not count yet: it waits its turn."""
        shown = {"lag": 0}
        h = self.history
        self.watchers = Watchers(h.read, lambda: h.compacted, lambda: h.revision - shown["lag"], self.turns.append)
        sink = Sink()
        self.watchers.add(WatchSpec(b"k", start=1), sink)
        h.write((b"k", b"1"))
        h.write((b"k", b"2"))
        shown["lag"] = 1  # revision 2 is committed, but the member counts 1 applied
        self.watchers.applied()
        self.run_turns()
        self.assertEqual(sink.revisions(), [1])
        shown["lag"] = 0
        self.watchers.applied()
        self.run_turns()
        self.assertEqual(sink.revisions(), [1, 2])

    def test_a_future_start_waits_for_its_revision(self) -> None:
        sink = Sink()
        self.watchers.add(WatchSpec(b"k", start=3), sink)
        self.apply((b"k", b"1"))
        self.apply((b"k", b"2"))
        self.run_turns()
        self.assertEqual(sink.batches, [])
        self.apply((b"k", b"3"))
        self.run_turns()
        self.assertEqual(sink.revisions(), [3])

    def test_ranges_filters_and_prev_kv(self) -> None:
        self.history.write((b"a/1", b"x"), (b"b", b"x"))
        specs = {
            "prefix": WatchSpec(b"a/", b"a0"),
            "from": WatchSpec(b"b", TO_THE_END),
            "no put": WatchSpec(b"a/", b"a0", no_put=True),
            "no delete, prev": WatchSpec(b"a/", b"a0", no_delete=True, prev_kv=True),
        }
        sinks = {name: Sink() for name in specs}
        for name, spec in specs.items():
            self.watchers.add(WatchSpec(spec.key, spec.end, 1, spec.prev_kv, spec.no_put, spec.no_delete), sinks[name])
        self.apply((b"a/1", b"y"))
        self.apply((b"a/1", None))
        self.run_turns()
        self.assertEqual(sinks["prefix"].keys(), [b"a/1"] * 3)
        self.assertEqual(sinks["from"].keys(), [b"b"])
        kinds = [e.kind for b in sinks["no put"].batches for e in b.events]
        self.assertEqual(kinds, [EventKind.DELETE])
        with_prev = [e for b in sinks["no delete, prev"].batches for e in b.events]
        self.assertEqual([(e.kv.value, e.prev and e.prev.value) for e in with_prev], [(b"x", None), (b"y", b"x")])
        without = [e for b in sinks["prefix"].batches for e in b.events]
        self.assertEqual([e.prev for e in without], [None, None, None])

    def test_watchers_at_one_cursor_share_one_read(self) -> None:
        sinks = [Sink() for _ in range(10)]
        for sink in sinks:
            self.watchers.add(WatchSpec(b"k"), sink)
        self.run_turns()
        self.history.reads.clear()
        self.apply((b"k", b"1"))
        self.run_turns()
        self.assertEqual(len(self.history.reads), 1)
        self.assertEqual([s.revisions() for s in sinks], [[1]] * 10)

    def test_cancel_and_stop(self) -> None:
        sink, other = Sink(), Sink()
        watcher = self.watchers.add(WatchSpec(b"k"), sink)
        self.watchers.add(WatchSpec(b"k"), other)
        self.watchers.cancel(watcher)
        self.apply((b"k", b"1"))
        self.run_turns()
        self.assertEqual((sink.batches, other.revisions()), ([], [1]))
        self.watchers.stop()
        self.apply((b"k", b"2"))
        self.run_turns()
        self.assertEqual(other.revisions(), [1])

    def test_random_interleavings_keep_every_watcher_exact(self) -> None:
        """Seeded: writes, slow sinks, late starts; each watcher gets exactly its keys' events from its start."""
        for seed in range(20):
            rng = random.Random(seed)
            self.history, self.turns = History(), []
            self.watchers = self.make(step_events=rng.choice([1, 2, 5, 1000]))
            watched = []
            for step in range(200):
                roll = rng.random()
                if roll < 0.5:
                    changes = [(rng.choice([b"a", b"b", b"c"]), b"%d" % step) for _ in range(rng.randint(1, 3))]
                    changes = list(dict(changes).items())
                    self.apply(*changes)
                elif roll < 0.6:
                    key = rng.choice([b"a", b"b"])
                    start = rng.randint(0, self.history.revision + 2)
                    sink = Sink()
                    self.watchers.add(WatchSpec(key, start=start), sink)
                    watched.append((key, start or self.history.revision + 1, sink))
                elif roll < 0.8 and watched:
                    _, _, sink = rng.choice(watched)
                    sink.room = not sink.room
                elif self.turns:
                    self.turns.pop(0)()
            for _, _, sink in watched:
                sink.room = True
            for watcher in list(self.watchers._watchers.values()):
                self.watchers.ready(watcher)
            self.run_turns()
            for key, start, sink in watched:
                expected = [r for r, e in self.history.events if e.key == key and r >= start]
                self.assertEqual(sink.revisions(), expected, f"seed {seed}")
