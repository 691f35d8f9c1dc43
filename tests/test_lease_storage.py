"""
The leases (issue 14) in the store, for every provider, through the real
state machine (L{kvpaxos.kv.machine.apply_batch} over encoded requests):
grants, attachments, detachments and revokes as the views keep them, the
store's lease reads, a failed commit undone whole, snapshots (equal bytes
on both providers; hostile bytes refused), transfers (tables 6 and 7,
checked as staged; hostile chunks refused), backup files, and (LMDB)
reopening, the stored layout and a data directory from before the leases.
"""

from __future__ import annotations

import os

import lmdb
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kvpaxos.api.backup import CHUNK_BYTES_MAX, SnapshotHeader, SnapshotWriter
from kvpaxos.encoding import values
from kvpaxos.encoding.commands import encode_request
from kvpaxos.encoding.errors import CorruptState
from kvpaxos.encoding.reader import U64
from kvpaxos.encoding.state import decode_snapshot, encode_record_of, encode_snapshot
from kvpaxos.encoding.transfer import (
    TABLE_HISTORY,
    TABLE_LEASE_KEYS,
    TABLE_LEASES,
    TABLE_RECORDS,
    decode_records,
    encode_records,
)
from kvpaxos.kv import machine
from kvpaxos.kv.commands import MAX_KEY_BYTES, DeleteRange, Op, Put, Request, Txn
from kvpaxos.kv.history import EventKind
from kvpaxos.kv.leases import LeaseError, LeaseGranted, LeaseRefused, LeaseRevoked
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import Batch, Snapshot
from kvpaxos.storage import apply as apply_module
from kvpaxos.storage import lmdb_leases
from kvpaxos.storage.interfaces import Commit, INodeStore, IStateView
from kvpaxos.storage.lmdb import LMDBStore
from kvpaxos.storage.memory import MemoryState, MemoryStore
from kvpaxos.storage.staging import snapshot_of_chunks
from tests.test_storage import CONFIG, TEST_MAP_BYTES, LMDBProvider, MemoryStoreProvider, _ProviderFixture
from tests.test_storage_transfer import TRANSFER, stream_chunks


def grant(lease: int, ttl: int = 60) -> bytes:
    return encode_request(Request(Op.LEASE_GRANT, lease=lease, ttl=ttl))


def revoke(lease: int) -> bytes:
    return encode_request(Request(Op.LEASE_REVOKE, lease=lease))


def put(key: bytes, value: bytes = b"v", lease: int = 0) -> bytes:
    return encode_request(Request(Op.PUT, key, value, lease=lease))


def delete(key: bytes) -> bytes:
    return encode_request(Request(Op.DELETE, key))


def txn(*ops) -> bytes:
    return encode_request(Request(Op.TXN, txn=Txn((), tuple(ops), ())))


def record(value: bytes = b"v", revision: int = 1) -> bytes:
    return encode_record_of(value, 1, revision, revision)


def lease_state(store) -> tuple:
    """What a store says of its leases: the table, and each lease's keys."""
    items = store.lease_items()
    return items, [(lease, store.lease_keys(lease)) for lease, _ in items]


class LeaseFixture(_ProviderFixture):
    """A store of C{provider}, written through the state machine."""

    def apply(self, *commands, store=None) -> list:
        """Commit C{commands} as one batch in the next slot; return their results."""
        store = store or self.store
        slot = store.applied_index() + 1
        return [result for _, result in store.commit(Commit(committed=[(slot, Batch(tuple(commands)))]))]

    def fill(self, store=None) -> None:
        self.apply(grant(7), grant(3, 10), grant(9, 90), store=store)
        self.apply(put(b"b", lease=7), put(b"a", b"x" * 3000, lease=7), put(b"c", lease=3), put(b"z"),
                   store=store)

    def other_store(self, provider):
        return provider.open(self, Config(frozenset()))

    def in_commit(self, work) -> None:
        """Run C{work(view)} in place of the state machine, inside one commit."""
        self.patch(apply_module, "machine", _Calls(work))
        try:
            self.store.commit(Commit(committed=[(self.store.applied_index() + 1, Batch((b"",)))]))
        finally:
            self.patch(apply_module, "machine", machine)


class _Calls:
    def __init__(self, work) -> None:
        self.work = work

    def apply_batch(self, view, commands, slot, limits, decoded=None) -> list:
        self.work(view)
        return []


class LeaseContractMixin(LeaseFixture):
    """What every provider does with the leases."""

    def test_interfaces(self):
        """The store, and the view inside a commit, provide their interfaces, lease methods included."""
        self.assertTrue(verifyObject(INodeStore, self.store))
        views = []
        self.in_commit(views.append)
        self.assertTrue(verifyObject(IStateView, views[0]))

    def test_new_store_has_no_leases(self):
        """A new store has no leases, no lease keys, and its snapshot is still empty."""
        self.assertEqual((self.store.lease_items(), self.store.lease_keys(7), self.store.lease_ttl(7)),
                         ([], [], None))
        self.assertEqual(self.store.snapshot_data(), b"")

    def test_grant(self):
        """A grant makes the lease (TTL as granted, ids listed in order); granting an id again is refused."""
        self.assertEqual(self.apply(grant(7), grant(3, 10), grant(9, 90)),
                         [LeaseGranted(7, 60, 0), LeaseGranted(3, 10, 0), LeaseGranted(9, 90, 0)])
        self.assertEqual(self.store.lease_items(), [(3, 10), (7, 60), (9, 90)])
        self.assertEqual((self.store.lease_ttl(7), self.store.lease_ttl(8)), (60, None))
        self.assertEqual(self.apply(grant(7, 5)), [LeaseRefused(LeaseError.EXISTS, 7, 0)])
        self.assertEqual(self.store.lease_ttl(7), 60)

    def test_put_attaches_in_key_order(self):
        """A put with a lease attaches its key; a lease's keys come in key order."""
        self.fill()
        self.assertEqual(lease_state(self.store)[1], [(3, [b"c"]), (7, [b"a", b"b"]), (9, [])])
        self.assertEqual(self.store.get(b"a"), b"x" * 3000)

    def test_put_with_a_missing_lease_refused(self):
        """A put whose lease is not there is refused and changes nothing: no record, no event, no revision."""
        self.fill()
        before = self.store.snapshot_data()
        self.assertEqual(self.apply(put(b"new", lease=8)), [LeaseRefused(LeaseError.NOT_FOUND, 8, 4)])
        self.assertEqual(self.store.snapshot_data(), before)
        self.assertIsNone(self.store.get(b"new"))

    def test_put_moves_or_detaches(self):
        """A put with another lease moves the key to it; a put without one detaches it; the same lease keeps it."""
        self.fill()
        self.apply(put(b"a", lease=9), put(b"b"), put(b"c", lease=3))
        self.assertEqual(lease_state(self.store)[1], [(3, [b"c"]), (7, []), (9, [b"a"])])

    def test_delete_detaches(self):
        """A delete detaches its key: a revoke then deletes nothing and leaves the revision."""
        self.fill()
        self.apply(delete(b"a"), delete(b"b"))
        self.assertEqual(self.store.lease_keys(7), [])
        revision = self.store.revision()
        self.assertEqual(self.apply(revoke(7)), [LeaseRevoked(7, 0, revision)])
        self.assertEqual((self.store.revision(), self.store.lease_ttl(7)), (revision, None))

    def test_revoke_deletes_its_keys_in_one_revision(self):
        """A revoke deletes its keys in key order, in one revision with one event each, then the lease."""
        self.fill()
        self.apply(put(b"d", lease=7))
        revision = self.store.revision() + 1
        self.assertEqual(self.apply(revoke(7)), [LeaseRevoked(7, 3, revision)])
        self.assertEqual(self.store.revision(), revision)
        self.assertEqual([(r, e.kind, e.key) for r, e in self.store.history(revision, 100)],
                         [(revision, EventKind.DELETE, key) for key in (b"a", b"b", b"d")])
        self.assertEqual([self.store.get(key) for key in (b"a", b"b", b"c", b"d", b"z")],
                         [None, None, b"v", None, b"v"])
        self.assertEqual(self.store.lease_items(), [(3, 10), (9, 90)])
        self.assertEqual(self.apply(revoke(7)), [LeaseRefused(LeaseError.NOT_FOUND, 7, revision)])

    def test_expire_revokes(self):
        """LEASE_EXPIRE (the leader's) deletes the lease and its keys as a revoke does."""
        self.fill()
        self.apply(encode_request(Request(Op.LEASE_EXPIRE, lease=3)))
        self.assertEqual((self.store.get(b"c"), self.store.lease_ttl(3)), (None, None))

    def test_txn_puts_attach_and_deletes_detach(self):
        """A Txn put with a lease attaches, one whose lease is missing refuses the whole Txn, a range delete detaches."""
        self.fill()
        self.apply(txn(Put(b"x", b"1", lease=9), Put(b"y", b"2")))
        self.assertEqual(self.store.lease_keys(9), [b"x"])
        before = self.store.snapshot_data()
        (refused,) = self.apply(txn(Put(b"w", b"1"), Put(b"q", b"2", lease=4)))
        self.assertEqual(refused, LeaseRefused(LeaseError.NOT_FOUND, 4, self.store.revision()))
        self.assertEqual(self.store.snapshot_data(), before)
        self.apply(txn(DeleteRange(b"a", b"c")))
        self.assertEqual(lease_state(self.store)[1], [(3, [b"c"]), (7, []), (9, [b"x"])])

    def test_failed_commit_undoes_the_leases(self):
        """A commit that fails after granting, attaching, moving and revoking leaves every lease table as it was."""
        self.fill()
        before = (self.store.snapshot_data(), lease_state(self.store))
        first = self.store.applied_index() + 1
        work = [(first, Batch((grant(5), put(b"a", lease=5), put(b"c"), revoke(7), put(b"n", lease=9)))),
                (first + 2, Batch((put(b"never"),)))]  # a slot out of order: the commit fails
        self.assertRaises(AssertionError, self.store.commit, Commit(committed=work))
        self.assertEqual((self.store.snapshot_data(), lease_state(self.store)), before)
        store = self.reopened()
        self.assertEqual((store.snapshot_data(), lease_state(store)), before)

    def test_removing_a_lease_with_keys_is_a_broken_invariant(self):
        """lease_remove of a lease that still has a key, or attaching a key twice, stops the commit."""
        self.fill()
        before = self.store.snapshot_data()
        self.assertRaises(AssertionError, self.in_commit, lambda view: view.lease_remove(7))
        self.assertRaises(AssertionError, self.in_commit, lambda view: view.lease_attach(b"a", 9))
        self.assertEqual(self.store.snapshot_data(), before)

    def test_view_reads(self):
        """Inside a commit the view answers key_lease (0: none), lease_keys and lease_items."""
        self.fill()
        seen = []
        self.in_commit(lambda view: seen.append((view.key_lease(b"a"), view.key_lease(b"z"),
                                                 view.key_lease(b"nope"), list(view.lease_keys(7)),
                                                 list(view.lease_items()))))
        self.assertEqual(seen, [(7, 0, 0, [b"a", b"b"], [(3, 10), (7, 60), (9, 90)])])

    def test_snapshot_carries_the_leases(self):
        """The snapshot holds the lease table and the attachments; installed on either provider it gives the same store."""
        self.fill()
        data = self.store.snapshot_data()
        found = decode_snapshot(data)
        self.assertEqual((found.leases, found.attached), (((3, 10), (7, 60), (9, 90)),
                                                          ((b"a", 7), (b"b", 7), (b"c", 3))))
        self.assertEqual(MemoryState.from_snapshot(data).snapshot_data(), data)
        for provider in (MemoryStoreProvider(), LMDBProvider()):
            other = self.other_store(provider)
            self.apply(grant(1), put(b"mine", lease=1), store=other)
            other.commit(Commit(snapshot=Snapshot(9, CONFIG, data), install=True))
            self.assertEqual(other.snapshot_data(), data)
            self.assertEqual(lease_state(other), lease_state(self.store))
            self.apply(revoke(7), store=other)
            self.assertEqual((other.get(b"a"), other.lease_items()), (None, [(3, 10), (9, 90)]))

    def test_hostile_snapshot_refused(self):
        """A snapshot attaching a key without a record or to a lease not in the table, or with unsound leases, is refused; nothing changes."""
        self.fill()
        before = self.store.snapshot_data()
        records = [(b"a", record()), (b"c", record())]
        for leases, attached in (
            ([(7, 60)], [(b"b", 7)]),  # no record
            ([(7, 60)], [(b"a", 8)]),  # no such lease
            ([(7, 60)], [(b"zz", 7)]),  # past the last record
            ([(7, 60), (7, 60)], []),
            ([(8, 60), (7, 60)], []),
            ([(0, 60)], []),
            ([(2**63, 60)], []),
            ([(7, 0)], []),
            ([(7, 9_000_000_001)], []),
            ([(7, 60)], [(b"c", 7), (b"a", 7)]),
            ([(7, 60)], [(b"a", 7), (b"a", 7)]),
        ):
            data = encode_snapshot(1, 1, records, [], [], 0, [], leases, attached)
            self.assertRaises(CorruptState, decode_snapshot, data)
            self.assertRaises(ValueError, self.store.commit,
                              Commit(snapshot=Snapshot(9, CONFIG, data), install=True))
        self.assertEqual(self.store.snapshot_data(), before)
        sound = encode_snapshot(1, 1, records, [], [], 0, [], [(7, 60), (8, 1)], [(b"a", 7), (b"c", 8)])
        self.assertEqual(decode_snapshot(sound).attached, ((b"a", 7), (b"c", 8)))

    def test_every_truncation_of_the_leases_refused(self):
        """Every proper prefix of a snapshot with leases is refused, and so is a byte after it."""
        self.apply(grant(7), put(b"a", lease=7))
        data = self.store.snapshot_data()
        for end in range(1, len(data)):
            self.assertRaises(CorruptState, decode_snapshot, data[:end])
        self.assertRaises(CorruptState, decode_snapshot, data + b"\0")

    def test_leases_alone_are_not_the_empty_state(self):
        """A state of one lease (nothing else) encodes to bytes that decode to it."""
        self.apply(grant(7))
        found = decode_snapshot(self.store.snapshot_data())
        self.assertEqual((found.revision, found.leases), (0, ((7, 60),)))

    # --- transfers ---

    def transfer(self, target, chunks=None, max_bytes=400) -> list:
        stream, streamed = stream_chunks(self.store, max_bytes)
        target.staging.begin(TRANSFER, stream.revision, stream.next_client_id)
        for chunk in streamed if chunks is None else chunks:
            target.staging.stage(TRANSFER, chunk)
        staged = target.staging.finish(TRANSFER)
        target.commit(Commit(snapshot=Snapshot(stream.index, CONFIG, staged), install=True))
        return streamed

    def test_transfer_carries_the_leases(self):
        """Tables 6 and 7 stream after the history and install with the rest, on either provider."""
        self.fill()
        for n in range(40):
            self.apply(put(b"k%02d" % n, lease=9))
        for provider in (MemoryStoreProvider(), LMDBProvider()):
            target = self.other_store(provider)
            self.apply(grant(1), put(b"mine", lease=1), store=target)
            chunks = self.transfer(target)
            tables = [decode_records(chunk)[0] for chunk in chunks]
            self.assertEqual(tables, sorted(tables))
            self.assertEqual(tables[-1], TABLE_LEASE_KEYS)
            self.assertGreater(tables.count(TABLE_LEASE_KEYS), 1)
            self.assertEqual(tables[tables.index(TABLE_LEASES) - 1], TABLE_HISTORY)
            self.assertEqual(target.snapshot_data(), self.store.snapshot_data())
            self.assertEqual(lease_state(target), lease_state(self.store))
            self.assertEqual(snapshot_of_chunks(self.store.revision(), 1, chunks), self.store.snapshot_data())

    def test_transfer_without_lease_tables_installs_none(self):
        """A transfer without tables 6 and 7 (an older member's) installs no leases."""
        self.fill()
        target = self.other_store(self.provider)
        self.apply(grant(1), put(b"mine", lease=1), store=target)
        _, chunks = stream_chunks(self.store, 60_000)
        self.transfer(target, [c for c in chunks if decode_records(c)[0] < TABLE_LEASES])
        self.assertEqual((target.lease_items(), target.lease_keys(1), target.get(b"a")), ([], [], b"x" * 3000))

    def test_hostile_transfer_refused(self):
        """Staging refuses attachments to keys not staged or leases not staged, unsound leases and tables out of order."""
        stage = self.store.staging
        u64 = U64.pack

        def records(*keys):
            return encode_records(TABLE_RECORDS, [(key, record(), False) for key in keys])

        def leases(*pairs):
            return encode_records(TABLE_LEASES, [(u64(lease), u64(ttl), False) for lease, ttl in pairs])

        def attached(*pairs, raw=False):
            return encode_records(TABLE_LEASE_KEYS, [(key, lease if raw else u64(lease), False)
                                                     for key, lease in pairs])

        for chunks in ([records(b"a"), leases((7, 60)), attached((b"b", 7))],
                       [records(b"a"), leases((7, 60)), attached((b"a", 8))],
                       [records(b"a"), attached((b"a", 7))],
                       [records(b"a"), attached((b"a", 7)), leases((7, 60))],
                       [leases((7, 60), (3, 60))], [leases((7, 60), (7, 60))], [leases((0, 60))],
                       [leases((7, 0))], [leases((2**63, 1))],
                       [encode_records(TABLE_LEASES, [(b"\0" * 7, u64(1), False)])],
                       [encode_records(TABLE_LEASES, [(u64(7), b"\0" * 9, False)])],
                       [records(b"a"), leases((7, 60)), attached((b"a", b"\0\0", ), raw=True)],
                       [records(b"a", b"b"), leases((7, 60)), attached((b"b", 7), (b"a", 7))],
                       [records(b"a"), leases((7, 60)), attached((b"a", 7)), records(b"b")]):
            stage.begin(TRANSFER, 4, 1)
            with self.assertRaises(CorruptState, msg=repr(chunks)):
                for chunk in chunks:
                    stage.stage(TRANSFER, chunk)
            stage.discard()
        stage.begin(TRANSFER, 4, 1)
        for chunk in (records(b"a", b"b", b"c"), leases((3, 1), (7, 60)), attached((b"a", 7), (b"c", 3))):
            stage.stage(TRANSFER, chunk)
        self.store.commit(Commit(snapshot=Snapshot(1, CONFIG, stage.finish(TRANSFER)), install=True))
        self.assertEqual(lease_state(self.store), ([(3, 1), (7, 60)], [(3, [b"c"]), (7, [b"a"])]))

    # --- restarts and backups ---

    def test_reopen_keeps_the_leases(self):
        """The lease tables survive a restart, and revoking afterwards works."""
        self.fill()
        before = (self.store.snapshot_data(), lease_state(self.store))
        store = self.reopened()
        self.assertEqual((store.snapshot_data(), lease_state(store)), before)
        self.apply(revoke(7))
        self.assertEqual(store.lease_keys(7), [])


class MemoryLeaseTests(LeaseContractMixin, SynchronousTestCase):
    provider = MemoryStoreProvider

    def test_rollback_restores_every_table(self):
        """MemoryState's journal undoes lease puts, removals, attachments and detachments, newest first."""
        state = MemoryState()
        machine.apply_batch(state, [grant(7), grant(9), put(b"a", lease=7), put(b"b", lease=9)], 1)
        tables = (dict(state.leases), dict(state.key_leases), list(state.lease_pairs), state.snapshot_data())
        state.journal = []
        machine.apply_batch(state, [grant(5), put(b"a", lease=5), put(b"b"), revoke(9), put(b"c", lease=7),
                                    revoke(7)], 2)
        state.rollback()
        self.assertEqual((dict(state.leases), dict(state.key_leases), list(state.lease_pairs),
                          state.snapshot_data()), tables)


class LMDBLeaseTests(LeaseContractMixin, SynchronousTestCase):
    provider = LMDBProvider

    def test_stored_layout(self):
        """leases holds id -> TTL, key_leases key -> lease, lease_keys each lease's keys as sorted duplicates."""
        self.fill()
        tables, u64 = self.store._leases, values.encode_u64
        with self.store._env.begin() as txn:
            self.assertEqual(list(txn.cursor(db=tables.leases)),
                             [(u64(3), u64(10)), (u64(7), u64(60)), (u64(9), u64(90))])
            self.assertEqual(list(txn.cursor(db=tables.key_leases)),
                             [(b"a", u64(7)), (b"b", u64(7)), (b"c", u64(3))])
            self.assertEqual(list(txn.cursor(db=tables.lease_keys)),
                             [(u64(3), b"c"), (u64(7), b"a"), (u64(7), b"b")])

    def test_longest_key_attaches(self):
        """A key of LMDB's longest (511 bytes) attaches, lists and revokes."""
        key = b"k" * MAX_KEY_BYTES
        self.apply(grant(7), put(key, lease=7), put(b"k", lease=7))
        self.assertEqual(self.store.lease_keys(7), [b"k", key])
        self.apply(revoke(7))
        self.assertIsNone(self.store.get(key))

    def test_no_lookup_while_nothing_is_attached(self):
        """While no key is attached the view answers key_lease with no lookup; once one is, it looks up."""
        looked = []
        original = lmdb_leases.key_lease
        self.patch(lmdb_leases, "key_lease", lambda *a: looked.append(a[-1]) or original(*a))
        self.apply(grant(7), put(b"a"), put(b"b"), delete(b"a"))
        self.assertEqual(looked, [])
        self.apply(put(b"c", lease=7), put(b"d"))  # c: nothing was attached yet
        self.apply(put(b"e"))
        self.assertEqual(looked, [b"d", b"e"])

    def test_directory_from_before_the_leases_is_converted(self):
        """A kvpaxos-lmdb-5 directory (no history, no lease databases) opens with no leases, and grants work."""
        self.apply(put(b"a"))
        directory = self.store.directory
        self.store.close()
        env = lmdb.open(directory, max_dbs=24)
        try:
            meta = env.open_db(b"meta")
            with env.begin(write=True) as txn:
                txn.put(b"format", b"kvpaxos-lmdb-5", db=meta)
                txn.delete(b"compacted", db=meta)
                for name in (b"history", b"leases", b"key_leases", b"staged_leases", b"staged_key_leases"):
                    txn.drop(env.open_db(name, txn=txn), delete=True)
                txn.drop(env.open_db(b"lease_keys", txn=txn, dupsort=True), delete=True)
        finally:
            env.close()
        store = LMDBStore(directory, map_bytes=TEST_MAP_BYTES)
        self.addCleanup(store.close)
        self.assertEqual((store.lease_items(), store.get(b"a"), store.compacted_revision()), ([], b"v", 2))
        self.apply(grant(7), put(b"a", lease=7), store=store)
        self.assertEqual(store.lease_keys(7), [b"a"])

    def test_chunk_redone_after_the_map_grew_is_checked_once(self):
        """A chunk of attachments whose write is redone (the map grew) stages what its one check passed."""
        self.fill()
        target = self.other_store(self.provider)
        transact, redone = target._transact, []

        def full_once(work):
            def first_fails(txn):
                result = work(txn)
                if not redone:
                    redone.append(True)
                    raise lmdb.MapFullError("full")
                return result
            return transact(first_fails)

        _, chunks = stream_chunks(self.store, 60_000)
        target.staging.begin(TRANSFER, self.store.revision(), 1)
        for chunk in chunks:
            if decode_records(chunk)[0] == TABLE_LEASE_KEYS:
                self.patch(target, "_transact", full_once)
            target.staging.stage(TRANSFER, chunk)
        staged = target.staging.finish(TRANSFER)
        target.commit(Commit(snapshot=Snapshot(self.store.applied_index(), CONFIG, staged), install=True))
        self.assertEqual((redone, target.map_growths), ([True], 1))
        self.assertEqual(target.snapshot_data(), self.store.snapshot_data())

    def test_backup_round_trip(self):
        """A backup file of a store with leases restores them into a new data directory."""
        from kvpaxos.config import NodeConfig
        from kvpaxos.restore import restore

        self.fill()
        stream, chunks = stream_chunks(self.store, CHUNK_BYTES_MAX)
        path = self.mktemp()
        with open(path, "wb") as out:
            writer = SnapshotWriter(out, SnapshotHeader(member_id=1, cluster_id=7, index=stream.index,
                                                        revision=stream.revision,
                                                        next_client_id=stream.next_client_id))
            for chunk in chunks:
                writer.chunk(chunk)
            writer.finish()
        directory = os.path.abspath(self.mktemp())
        restore(path, NodeConfig(data=directory, cluster_token="restored"))
        store = LMDBStore(directory)
        self.addCleanup(store.close)
        self.assertEqual(store.snapshot_data(), self.store.snapshot_data())
        self.assertEqual(lease_state(store), lease_state(self.store))


class ProvidersAgreeOnLeasesTests(SynchronousTestCase):
    """The same commands on both providers give the same lease tables and snapshot bytes."""

    def test_same_bytes(self):
        """Grants, attachments, moves, deletes and revokes leave equal snapshots on LMDB and in memory."""
        lmdb_store = LMDBStore(self.mktemp(), CONFIG, map_bytes=TEST_MAP_BYTES)
        self.addCleanup(lmdb_store.close)
        stores = (lmdb_store, MemoryStore(CONFIG))
        batches = [(grant(2**40), grant(7), grant(3, 1)),
                   (put(b"b", lease=7), put(b"a", lease=2**40), put(b"c", lease=3), put(b"d", lease=7)),
                   (put(b"b", lease=3), delete(b"d"), txn(Put(b"e", b"1", lease=7), DeleteRange(b"c"))),
                   (revoke(3), grant(4), put(b"f", lease=4))]
        for store in stores:
            store.commit(Commit(committed=[(slot, Batch(b)) for slot, b in enumerate(batches, 1)]))
        self.assertEqual(stores[0].snapshot_now(), stores[1].snapshot_now())
        self.assertEqual(lease_state(stores[0]), lease_state(stores[1]))
        self.assertEqual(lease_state(stores[0]), ([(4, 60), (7, 60), (2**40, 60)],
                                                  [(4, [b"f"]), (7, [b"e"]), (2**40, [b"a"])]))
