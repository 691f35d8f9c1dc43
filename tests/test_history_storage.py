"""
The history of writes in the store (issue 14), for every provider: the
events the views record (C{write_with_event}, C{delete_with_event}), the
store's C{history} (whole revisions, C{max_events}, C{HistoryCompacted}
checked in the same read), compaction, a failed commit undone with its
events, snapshots that carry the history with equal bytes on both
providers, and (LMDB) reopening and converting a data directory from
before the history.  Transfers and backups: L{tests.test_history_transfer}.

The commits here apply a script (L{ScriptMachine}) in place of the state
machine, so that what is pinned is the store's side of the contract: each
batch is one revision, its commands C{put k=v}, C{put- k=v} (no previous
record asked for), C{del k}, C{at N put k=v} (the event's index given),
C{compact N}, C{auth k=v} (an auth table entry) and C{boom}.
"""

from __future__ import annotations

import lmdb
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kvpaxos.encoding import state as encoded
from kvpaxos.encoding.history import encode_event, encode_history_key
from kvpaxos.encoding.state import decode_snapshot, encode_snapshot
from kvpaxos.kv.commands import KeyValue
from kvpaxos.kv.history import EventKind, HistoryCompacted, delete_event, put_event
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import Batch, Snapshot
from kvpaxos.storage import apply as apply_module
from kvpaxos.storage.interfaces import Commit, INodeStore, IStateView
from kvpaxos.storage.lmdb import STORE_FORMAT, LMDBStore
from kvpaxos.storage.memory import MemoryStore
from tests.test_storage import CONFIG, TEST_MAP_BYTES, LMDBProvider, MemoryStoreProvider, _ProviderFixture


class ScriptMachine:
    """
    Stands in for L{kvpaxos.kv.machine} in L{kvpaxos.storage.apply}: each
    batch is one revision of the commands in the module docstring.  Keeps
    what the view methods returned (C{returned}) and the views (C{views}).
    """

    def __init__(self) -> None:
        self.returned: list = []
        self.views: list = []

    def apply_batch(self, view, commands, slot, limits, decoded=None) -> list:
        self.views.append(view)
        revision = view.revision() + 1
        index = 0
        for command in commands:
            words = command.split(b" ")
            if words[0] == b"at":
                index = int(words[1])
                words = words[2:]
            op = words[0]
            if op in (b"put", b"put-"):
                key, _, value = words[1].partition(b"=")
                self.returned.append(view.write_with_event(key, value, revision, index, op == b"put"))
                index += 1
            elif op == b"del":
                prev = view.delete_with_event(words[1], revision, index)
                self.returned.append(prev)
                index += prev is not None
            elif op == b"compact":
                view.compact_history(int(words[1]))
            elif op == b"auth":
                view.auth_put(*words[1].split(b"="))
            else:
                assert op == b"boom", command
                raise RuntimeError("disk on fire")
        if index:
            view.set_revision(revision)
        return []


def record(key: bytes, value: bytes, version: int, created: int, modified: int) -> KeyValue:
    return KeyValue(key, value, version, created, modified)


class HistoryFixture(_ProviderFixture):
    """A store of C{provider} whose commits apply L{ScriptMachine} scripts."""

    def setUp(self):
        super().setUp()
        self.script = ScriptMachine()
        self.patch(apply_module, "machine", self.script)

    def write(self, *revisions, store=None) -> None:
        """Commit each of C{revisions} (a list of script commands) as the next slot, in one commit."""
        store = store or self.store
        first = store.applied_index() + 1
        committed = [(first + i, Batch(tuple(commands))) for i, commands in enumerate(revisions)]
        store.commit(Commit(committed=committed))

    def other_store(self, provider=None):
        return (provider or self.provider).open(self, Config(frozenset()))


class HistoryContractMixin(HistoryFixture):
    """What every provider does with the history of writes."""

    def test_interfaces(self):
        """The store provides INodeStore, and the view inside a commit IStateView, history methods included."""
        self.assertTrue(verifyObject(INodeStore, self.store))
        self.write([b"put a=1"])
        self.assertTrue(verifyObject(IStateView, self.script.views[0]))

    def test_new_store(self):
        """A new store has compacted revision 0 and an empty history."""
        self.assertEqual(self.store.compacted_revision(), 0)
        self.assertEqual(self.store.history(0, 10), [])

    def test_put_events(self):
        """A put records a PUT of the new record with the one it replaced, and returns what write returns."""
        self.write([b"put a=1"], [b"put a=22"])
        self.assertEqual(self.store.history(0, 10), [
            (1, put_event(record(b"a", b"1", 1, 1, 1), None)),
            (2, put_event(record(b"a", b"22", 2, 1, 2), record(b"a", b"1", 1, 1, 1))),
        ])
        self.assertEqual(self.script.returned, [(False, None), (True, record(b"a", b"1", 1, 1, 1))])
        self.assertEqual(self.store.get_record(b"a"), record(b"a", b"22", 2, 1, 2))

    def test_put_without_prev_asked_records_it_anyway(self):
        """A put that does not want the previous record still records it in its event."""
        self.write([b"put a=1"], [b"put- a=2"])
        self.assertEqual(self.script.returned[1][0], True)
        self.assertEqual(self.store.history(2, 1), [(2, put_event(record(b"a", b"2", 2, 1, 2),
                                                                   record(b"a", b"1", 1, 1, 1)))])

    def test_delete_events(self):
        """A delete records a DELETE (key, empty value, the deleting revision) with the record it deleted."""
        self.write([b"put a=1"], [b"del a"])
        old = record(b"a", b"1", 1, 1, 1)
        self.assertEqual(self.script.returned[1], old)
        self.assertIsNone(self.store.get(b"a"))
        (found,) = self.store.history(2, 10)
        self.assertEqual(found, (2, delete_event(old, 2)))
        self.assertEqual(found[1].kind, EventKind.DELETE)
        self.assertEqual(found[1].kv, KeyValue(b"a", b"", 0, 0, 2))

    def test_delete_of_a_missing_key_changes_nothing(self):
        """Deleting a key that has no record records nothing and returns None."""
        self.write([b"put a=1"])
        before = self.store.snapshot_data()
        self.write([b"del b"])
        self.assertEqual(self.script.returned[-1], None)
        self.assertEqual(self.store.snapshot_data(), before)
        self.assertEqual(len(self.store.history(0, 10)), 1)

    def test_events_of_one_revision_in_apply_order(self):
        """The events of one revision are kept in index order, each with what its key held before it."""
        self.write([b"put b=1", b"put a=1", b"put b=2", b"del a"])
        history = self.store.history(1, 1)
        self.assertEqual([(revision, event.kind, event.key) for revision, event in history], [
            (1, EventKind.PUT, b"b"), (1, EventKind.PUT, b"a"), (1, EventKind.PUT, b"b"), (1, EventKind.DELETE, b"a"),
        ])
        self.assertEqual(history[2][1].prev, record(b"b", b"1", 1, 1, 1))
        self.assertEqual(history[3][1].prev, record(b"a", b"1", 1, 1, 1))

    def test_whole_revisions(self):
        """history() stops at the first revision boundary at or after max_events events, never inside one."""
        self.write([b"put a=1", b"put b=1", b"put c=1"], [b"put a=2"], [b"put b=2", b"put c=2"])

        def revisions(start, max_events):
            return [revision for revision, _ in self.store.history(start, max_events)]

        self.assertEqual(revisions(0, 1), [1, 1, 1])
        self.assertEqual(revisions(0, 3), [1, 1, 1])
        self.assertEqual(revisions(0, 4), [1, 1, 1, 2])
        self.assertEqual(revisions(0, 5), [1, 1, 1, 2, 3, 3])
        self.assertEqual(revisions(2, 1), [2])
        self.assertEqual(revisions(2, 100), [2, 3, 3])
        self.assertEqual(revisions(3, 0), [3, 3])
        self.assertEqual(revisions(4, 100), [])

    def test_compaction_drops_exactly_the_revisions_below(self):
        """compact_history(r) drops every event below r, keeps r on, and history() below r raises HistoryCompacted(r)."""
        self.write([b"put a=1"], [b"put a=2", b"put b=1"], [b"put a=3"])
        self.write([b"compact 2"])
        self.assertEqual(self.store.compacted_revision(), 2)
        self.assertEqual([revision for revision, _ in self.store.history(2, 100)], [2, 2, 3])
        for start in (0, 1):
            with self.assertRaises(HistoryCompacted) as raised:
                self.store.history(start, 100)
            self.assertEqual(raised.exception.compacted_revision, 2)
        self.write([b"compact 4"])
        self.assertEqual(self.store.history(4, 100), [])
        self.assertRaises(HistoryCompacted, self.store.history, 3, 100)
        self.assertEqual(decode_snapshot(self.store.snapshot_data()).compacted, 4)

    def test_failed_commit_undoes_the_history(self):
        """A commit that fails after recording events and compacting leaves history and compacted revision as they were."""
        self.write([b"put a=1"], [b"put b=1"])
        before = (self.store.history(0, 100), self.store.compacted_revision(), self.store.snapshot_data())
        self.assertRaises(RuntimeError, self.write, [b"put a=2", b"del b"], [b"compact 3", b"put c=1"], [b"boom"])
        after = (self.store.history(0, 100), self.store.compacted_revision(), self.store.snapshot_data())
        self.assertEqual(after, before)
        store = self.reopened()
        self.assertEqual((store.history(0, 100), store.compacted_revision(), store.snapshot_data()), before)
        self.write([b"put a=2"])
        self.assertEqual(len(self.store.history(0, 100)), 3)

    def test_out_of_order_event_is_a_broken_invariant(self):
        """An event that does not follow the history's last stops the commit (AssertionError); nothing changes."""
        self.write([b"put a=1", b"put b=1"])
        before = self.store.snapshot_data()
        self.assertRaises(AssertionError, self.write, [b"put c=1", b"at 0 put d=1"])
        self.assertEqual(self.store.snapshot_data(), before)

    def test_snapshot_carries_the_history(self):
        """snapshot_data holds the compacted revision and the events; installed elsewhere it gives the same history."""
        self.write([b"put a=1", b"put b=1"], [b"del a"], [b"put b=2"], [b"compact 2"])
        data = self.store.snapshot_data()
        found = decode_snapshot(data)
        self.assertEqual(found.compacted, 2)
        self.assertEqual([(revision, event) for revision, _, event in found.events], self.store.history(2, 100))
        self.assertEqual([(revision, index) for revision, index, _ in found.events], [(2, 0), (3, 0)])
        for provider in (MemoryStoreProvider, LMDBProvider):
            other = self.other_store(provider())
            self.write([b"put z=9"], store=other)
            other.commit(Commit(snapshot=Snapshot(9, CONFIG, data), install=True))
            self.assertEqual(other.snapshot_data(), data)
            self.assertEqual(other.history(2, 100), self.store.history(2, 100))
            self.assertEqual(other.compacted_revision(), 2)

    def test_snapshot_without_history_installs_compacted_at_revision_plus_one(self):
        """A format-4 snapshot (no history) installs with no events and compacted revision = its revision + 1."""
        self.write([b"put z=9"])
        data = encode_snapshot(3, 1, [(b"a", encoded.encode_record_of(b"v", 1, 3, 3))], [], [])
        assert data.endswith(bytes(32))  # compacted, nevents, nleases, nattached
        old = bytes([4]) + data[1:-32]
        self.store.commit(Commit(snapshot=Snapshot(4, CONFIG, old), install=True))
        self.assertEqual(self.store.compacted_revision(), 4)
        self.assertEqual(self.store.history(4, 10), [])
        self.assertRaises(HistoryCompacted, self.store.history, 3, 10)
        self.write([b"put a=w"])
        self.assertEqual([r for r, _ in self.store.history(4, 10)], [4])

    def test_reopen_keeps_the_history(self):
        """The history and the compacted revision survive a restart."""
        self.write([b"put a=1"], [b"put a=2"], [b"compact 2"])
        before = self.store.history(2, 100)
        store = self.reopened()
        self.assertEqual(store.history(2, 100), before)
        self.assertEqual(store.compacted_revision(), 2)


class MemoryHistoryTests(HistoryContractMixin, SynchronousTestCase):
    provider = MemoryStoreProvider


class LMDBHistoryTests(HistoryContractMixin, SynchronousTestCase):
    provider = LMDBProvider

    def test_events_stored_as_encoded(self):
        """The history sub-database holds encode_event bytes under (revision, index) keys."""
        self.write([b"put a=1"], [b"put a=2", b"del a"])
        with self.store._env.begin() as txn:
            stored = list(txn.cursor(db=self.store._history))
        expected = [(encode_history_key(revision, index), encode_event(event))
                    for revision, index, event in decode_snapshot(self.store.snapshot_data()).events]
        self.assertEqual(stored, expected)
        self.assertEqual([key for key, _ in stored],
                         [encode_history_key(1, 0), encode_history_key(2, 0), encode_history_key(2, 1)])

    def test_put_decodes_only_a_wanted_previous_record(self):
        """write_with_event decodes no record when the previous one is not wanted, and only that one when it is."""
        self.write([b"put a=1"])
        decoded = []
        original = encoded.decode_record

        def counting(key, data):
            decoded.append(key)
            return original(key, data)

        self.patch(encoded, "decode_record", counting)
        self.write([b"put- a=2"])
        self.assertEqual(decoded, [])
        self.write([b"put a=3"])
        self.assertEqual(decoded, [b"a"])

    def test_directory_from_before_the_history_is_converted(self):
        """A kvpaxos-lmdb-5 directory (no compacted key, no history) opens with compacted revision = revision + 1."""
        self.write([b"put a=1"], [b"put b=1"])
        directory = self.store.directory
        self.store.close()
        env = lmdb.open(directory, max_dbs=16)
        try:
            meta, history = env.open_db(b"meta"), env.open_db(b"history")
            with env.begin(write=True) as txn:
                txn.put(b"format", b"kvpaxos-lmdb-5", db=meta)
                txn.delete(b"compacted", db=meta)
                txn.drop(history, delete=True)
        finally:
            env.close()
        store = LMDBStore(directory, map_bytes=TEST_MAP_BYTES)
        self.addCleanup(store.close)
        self.assertEqual((store.revision(), store.compacted_revision()), (2, 3))
        self.assertEqual(store.history(3, 10), [])
        self.assertRaises(HistoryCompacted, store.history, 2, 10)
        self.assertEqual(store.get(b"b"), b"1")
        with store._env.begin() as txn:
            self.assertEqual(txn.get(b"format", db=store._meta), STORE_FORMAT)
        self.assertEqual(decode_snapshot(store.snapshot_data()).compacted, 3)
        self.write([b"put c=1"], store=store)
        self.assertEqual([r for r, _ in store.history(3, 10)], [3])


class ProvidersAgreeOnHistoryTests(SynchronousTestCase):
    """The same scripts on both providers give the same history and snapshot bytes."""

    def setUp(self):
        self.script = ScriptMachine()
        self.patch(apply_module, "machine", self.script)

    def test_same_history_and_bytes(self):
        """Puts, deletes and compactions committed alike on LMDB and in memory leave equal snapshots and histories."""
        lmdb_store = LMDBStore(self.mktemp(), CONFIG, map_bytes=TEST_MAP_BYTES)
        self.addCleanup(lmdb_store.close)
        stores = (lmdb_store, MemoryStore(CONFIG))
        revisions = [[b"put a=1", b"put b=" + b"x" * 3000], [b"del a", b"put- b=2"], [b"compact 2"],
                     [b"put c=3", b"del b", b"del zz"], [b"compact 3"], [b"put a=4"]]
        for store in stores:
            store.commit(Commit(committed=[(slot, Batch(tuple(c))) for slot, c in enumerate(revisions, 1)]))
        self.assertEqual(stores[0].snapshot_data(), stores[1].snapshot_data())
        self.assertEqual(stores[0].snapshot_now(), stores[1].snapshot_now())
        self.assertEqual(stores[0].history(3, 100), stores[1].history(3, 100))
        self.assertEqual(len(stores[0].history(3, 100)), 3)
