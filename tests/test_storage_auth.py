"""
The auth table of the replicated state (C{bytes -> bytes}, in key order):
the transaction view's C{auth_get}, C{auth_put}, C{auth_delete} and
C{auth_items} and the store's C{auth_items}, run against every
L{INodeStore} provider (L{AuthContractMixin}); its place in a snapshot
(L{kvpaxos.encoding.state}, format 4, format 3 still read); and LMDB
particulars: keys past LMDB's 511-byte limit, a data directory made
before the auth sub-database.

Nothing here knows what the table means (that is L{kvpaxos.kv.auth}): a
test writes entries through the view the state machine applies through,
by standing in for C{machine.apply_batch} inside a real commit.
"""

from __future__ import annotations

import struct

import lmdb
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.encoding.errors import CorruptState, EncodeError
from kvpaxos.encoding.state import (
    AUTH_KEY_MAX_BYTES,
    AUTH_VALUE_MAX_BYTES,
    SNAPSHOT_FORMAT,
    SnapshotState,
    decode_auth_group,
    decode_snapshot,
    encode_auth_group,
    encode_record_of,
    encode_snapshot,
)
from kvpaxos.kv import machine
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import Snapshot
from kvpaxos.storage.interfaces import Commit
from kvpaxos.storage.lmdb import LMDBStore
from kvpaxos.storage.memory import MemoryState, MemoryStore
from tests.test_storage import (
    CONFIG,
    NODE_STORE_PROVIDERS,
    TEST_MAP_BYTES,
    _ProviderFixture,
    batch,
    put,
)

#: LMDB's longest key, and auth keys around it that share its first bytes.
LONG = b"L" * 511
#: Auth keys in key order: short ones, keys at and past LMDB's key limit
#: (some sharing their first 511 bytes), and the longest.
KEYS = sorted([
    b"\x00", b"a", b"a\xff", b"b" * 510, LONG[:-1], LONG, LONG + b"\x00", LONG + b"\xff",
    LONG[:-1] + b"M", LONG[:-1] + b"K" + b"\x01", b"z" * AUTH_KEY_MAX_BYTES,
])


def value_of(key: bytes) -> bytes:
    """A value told apart by its key."""
    return b"v" + key[-3:] + bytes([len(key) % 256])


def write_auth(testcase, store, slot: int, changes, fail: bool = False) -> list:
    """
    Commit slot C{slot} with a store's real commit, its apply making
    C{changes} to the auth table through the transaction view: C{(key,
    value)} puts, C{(key, None)} deletes.  C{fail}: then the apply raises,
    as a failing command would.  Return what the view's C{auth_items} and
    C{auth_get} of each key changed said inside the transaction.
    """
    original = machine.apply_batch
    seen = []

    def apply_batch(view, commands, at, *rest, **options):
        for key, value in changes:
            if value is None:
                view.auth_delete(key)
            else:
                view.auth_put(key, value)
        seen.append(list(view.auth_items()))
        seen.append([view.auth_get(key) for key, _ in changes])
        if fail:
            raise RuntimeError("disk on fire")
        return original(view, commands, at, *rest, **options)

    patcher = testcase.patch(machine, "apply_batch", apply_batch)
    try:
        store.commit(Commit(None, [], None, False, [(slot, batch(put(b"k%d" % slot, b"x")))]))
    finally:
        patcher.restore()
    return seen


class AuthContractMixin(_ProviderFixture):
    """What every L{INodeStore} provider does with the auth table."""

    def test_put_get_delete_in_one_transaction(self):
        """Within a commit the view reads its own auth writes; a delete of a missing key is no error."""
        seen = write_auth(self, self.store, 1, [(b"b", b"2"), (b"a", b"1"), (b"gone", None), (b"b", b"3")])
        self.assertEqual(seen, [[(b"a", b"1"), (b"b", b"3")], [b"3", b"1", None, b"3"]])
        self.assertEqual(self.store.auth_items(), [(b"a", b"1"), (b"b", b"3")])
        write_auth(self, self.store, 2, [(b"a", None)])
        self.assertEqual(self.store.auth_items(), [(b"b", b"3")])

    def test_fresh_store_has_no_auth_entries(self):
        """A fresh store's auth table is empty, and its snapshot data is still the empty state's."""
        self.assertEqual(self.store.auth_items(), [])
        self.assertEqual(self.store.snapshot_data(), b"")

    def test_items_in_key_order(self):
        """auth_items lists every entry once, in byte order of the keys, long keys included."""
        write_auth(self, self.store, 1, [(key, value_of(key)) for key in reversed(KEYS)])
        self.assertEqual(self.store.auth_items(), [(key, value_of(key)) for key in KEYS])

    def test_keys_at_the_limits(self):
        """Keys of 510 to 512 bytes that share their start are kept apart: read, replaced and deleted one by one."""
        write_auth(self, self.store, 1, [(key, value_of(key)) for key in KEYS])
        seen = write_auth(self, self.store, 2, [(LONG, b"new"), (LONG + b"\x00", None), (LONG + b"\x01", b"")])
        expected = {key: value_of(key) for key in KEYS}
        expected.update({LONG: b"new", LONG + b"\x01": b""})
        del expected[LONG + b"\x00"]
        self.assertEqual(seen[1], [b"new", None, b""])
        store = self.reopened()
        self.assertEqual(store.auth_items(), sorted(expected.items()))
        write_auth(self, store, 3, [(key, None) for key in KEYS] + [(LONG + b"\x01", None)])
        self.assertEqual(store.auth_items(), [])

    def test_bounds(self):
        """A 512-byte key and a 64 KiB value are kept; an empty or longer key, a longer value, non-bytes are refused."""
        biggest = (b"k" * AUTH_KEY_MAX_BYTES, b"v" * AUTH_VALUE_MAX_BYTES)
        write_auth(self, self.store, 1, [biggest, (b"empty", b"")])
        self.assertEqual(self.reopened().auth_items(), [(b"empty", b""), biggest])
        for key, value, error in ((b"", b"v", EncodeError), (b"k" * (AUTH_KEY_MAX_BYTES + 1), b"v", EncodeError),
                                  (b"k", b"v" * (AUTH_VALUE_MAX_BYTES + 1), EncodeError), ("k", b"v", TypeError),
                                  (b"k", bytearray(b"v"), TypeError)):
            self.assertRaises(error, write_auth, self, self.store, 2, [(key, value)])
        self.assertEqual(self.store.auth_items(), [(b"empty", b""), biggest])
        self.assertEqual(self.store.applied_index(), 1)

    def test_failed_commit_loses_auth_writes(self):
        """A commit whose apply fails after writing the auth table leaves it as it was, after a restart too."""
        write_auth(self, self.store, 1, [(b"a", b"1"), (LONG, b"2")])
        before = (self.store.auth_items(), self.store.snapshot_data(), self.store.applied_index())
        self.assertRaises(RuntimeError, write_auth, self, self.store, 2,
                          [(b"a", b"changed"), (b"b", b"new"), (LONG, None), (LONG + b"x", b"3")], fail=True)
        self.assertEqual((self.store.auth_items(), self.store.snapshot_data(), self.store.applied_index()), before)
        store = self.reopened()
        self.assertEqual((store.auth_items(), store.snapshot_data(), store.applied_index()), before)

    def test_snapshot_data_carries_the_auth_table(self):
        """snapshot_data holds the auth table; installed on another store it replaces that store's own."""
        write_auth(self, self.store, 1, [(key, value_of(key)) for key in KEYS])
        data = self.store.snapshot_data()
        self.assertEqual(decode_snapshot(data).auth, tuple((key, value_of(key)) for key in KEYS))
        other = self.provider.open(self, Config(frozenset()))
        write_auth(self, other, 1, [(b"mine", b"x"), (LONG + b"y", b"y")])
        other.commit(Commit(None, [], Snapshot(5, CONFIG, data), True, []))
        self.assertEqual(other.auth_items(), self.store.auth_items())
        self.assertEqual(other.snapshot_data(), data)
        self.assertEqual(other.snapshot_now(), (5, data))

    def test_install_without_auth_empties_the_table(self):
        """A snapshot without an auth table (format 3) installs as an empty one."""
        write_auth(self, self.store, 1, [(b"a", b"1")])
        data = format_3(encode_snapshot(1, 1, [(b"r", encode_record_of(b"v", 1, 1, 1))], [], []))
        self.store.commit(Commit(None, [], Snapshot(4, CONFIG, data), True, []))
        self.assertEqual(self.store.auth_items(), [])
        self.assertEqual(self.store.get(b"r"), b"v")


for _provider in NODE_STORE_PROVIDERS:
    _name = f"{_provider.name}AuthContractTests"
    globals()[_name] = type(
        _name,
        (AuthContractMixin, SynchronousTestCase),
        {"provider": _provider, "__module__": __name__},
    )
del _provider, _name


class ProvidersAgreeOnAuthTests(SynchronousTestCase):
    """The LMDB and in-memory stores hold the same auth table after the same commits."""

    def test_same_snapshot(self):
        """The same auth writes give the same snapshot bytes and auth_items on both providers."""
        lmdb_store = LMDBStore(self.mktemp(), CONFIG, map_bytes=TEST_MAP_BYTES)
        self.addCleanup(lmdb_store.close)
        stores = (lmdb_store, MemoryStore(CONFIG))
        for store in stores:
            write_auth(self, store, 1, [(key, value_of(key)) for key in KEYS])
            write_auth(self, store, 2, [(KEYS[1], None), (LONG, b""), (LONG + b"\x00", None)])
        self.assertEqual(stores[0].snapshot_data(), stores[1].snapshot_data())
        self.assertEqual(stores[0].auth_items(), stores[1].auth_items())


class LMDBAuthTests(SynchronousTestCase):
    """The auth sub-database of an LMDB store."""

    def test_directory_without_auth_opens(self):
        """A data directory made before the auth table (no auth, no staged_auth) opens with an empty one."""
        directory = self.mktemp()
        store = LMDBStore(directory, CONFIG, map_bytes=TEST_MAP_BYTES)
        store.commit(Commit(None, [], None, False, [(1, batch(put(b"k", b"v")))]))
        store.close()
        env = lmdb.open(directory, max_dbs=16)
        try:
            with env.begin(write=True) as txn:
                for name in (b"auth", b"staged_auth"):
                    txn.drop(env.open_db(name, txn=txn), delete=True)
            with env.begin() as txn:
                names = {key for key, _ in txn.cursor()}
        finally:
            env.close()
        self.assertNotIn(b"auth", names)
        store = LMDBStore(directory, CONFIG, map_bytes=TEST_MAP_BYTES)
        self.addCleanup(store.close)
        self.assertEqual((store.auth_items(), store.get(b"k"), store.applied_index()), ([], b"v", 1))
        write_auth(self, store, 2, [(b"a", b"1")])
        self.assertEqual(store.auth_items(), [(b"a", b"1")])

    def test_long_keys_grouped(self):
        """Keys of 511 bytes and more are stored in one group under their first 511 bytes, shorter ones as they are."""
        store = LMDBStore(self.mktemp(), CONFIG, map_bytes=TEST_MAP_BYTES)
        self.addCleanup(store.close)
        write_auth(self, store, 1, [(b"a", b"1"), (LONG, b"2"), (LONG + b"\x07", b"3")])
        with store._env.begin() as txn:
            stored = list(txn.cursor(db=store._auth))
        self.assertEqual(stored, [(LONG, encode_auth_group([(b"", b"2"), (b"\x07", b"3")])), (b"a", b"1")])


def format_3(data: bytes) -> bytes:
    """
    Return snapshot C{data} (of the current format, with an empty auth
    table, compacted revision 0, no events and no leases) as format 3 wrote
    it (no auth count, no history, no leases).
    """
    assert data[0] == SNAPSHOT_FORMAT and data.endswith(struct.pack(">QQQQQ", 0, 0, 0, 0, 0))
    return bytes([3]) + data[1:-40]


class AuthSnapshotTests(SynchronousTestCase):
    """The auth table in snapshot data: after the sessions, in key order, checked as hostile."""

    def test_round_trip(self):
        """A snapshot's auth entries decode as they were encoded, in key order."""
        auth = [(key, value_of(key)) for key in KEYS] + [(b"{", b"v" * AUTH_VALUE_MAX_BYTES)]
        data = encode_snapshot(0, 1, [], [], auth)
        self.assertEqual(data[0], SNAPSHOT_FORMAT)
        self.assertEqual(decode_snapshot(data), SnapshotState(auth=tuple(auth)))
        self.assertEqual(MemoryState.from_snapshot(data).snapshot_data(), data)

    def test_empty(self):
        """The empty state encodes to no bytes; an auth table alone is not empty."""
        self.assertEqual(encode_snapshot(0, 1, [], [], []), b"")
        self.assertEqual(decode_snapshot(b"").auth, ())
        self.assertNotEqual(encode_snapshot(0, 1, [], [], [(b"a", b"")]), b"")

    def test_out_of_order_refused(self):
        """Auth keys not in strictly increasing order are refused."""
        for auth in ([(b"b", b""), (b"a", b"")], [(b"a", b""), (b"a", b"")], [(LONG + b"\x01", b""), (LONG, b"")]):
            self.assertRaises(CorruptState, decode_snapshot, encode_snapshot(0, 1, [], [], auth))

    def test_out_of_bounds_refused(self):
        """An empty or over-long auth key, or an over-long value, is refused."""
        for key, value in ((b"", b"v"), (b"k" * (AUTH_KEY_MAX_BYTES + 1), b"v"),
                           (b"k", b"v" * (AUTH_VALUE_MAX_BYTES + 1))):
            data = encode_snapshot(0, 1, [], [], [(key, value)])
            self.assertRaises(CorruptState, decode_snapshot, data)

    def test_every_truncation(self):
        """Every proper non-empty prefix of a snapshot with auth entries is refused."""
        data = encode_snapshot(1, 1, [(b"r", encode_record_of(b"v", 1, 1, 1))], [], [(b"a", b"1"), (b"b", b"")])
        for end in range(1, len(data)):
            self.assertRaises(CorruptState, decode_snapshot, data[:end])
        self.assertRaises(CorruptState, decode_snapshot, data + b"\x00")

    def test_huge_count_refused_cheaply(self):
        """An auth count the bytes cannot hold is refused before reading entries."""
        data = encode_snapshot(1, 1, [], [], [])[:-40] + struct.pack(">QQQQQ", 2**40, 0, 0, 0, 0)
        self.assertRaises(CorruptState, decode_snapshot, data)

    def test_format_3_read(self):
        """A format-3 snapshot (no auth table) is read, with an empty one; followed by an auth count it is refused."""
        record = encode_record_of(b"v", 1, 1, 1)
        data = format_3(encode_snapshot(1, 1, [(b"r", record)], [], []))
        found = decode_snapshot(data)
        self.assertEqual((found.revision, [kv.key for kv in found.records], found.auth), (1, [b"r"], ()))
        self.assertRaises(CorruptState, decode_snapshot, data + struct.pack(">Q", 0))
        self.assertRaises(CorruptState, decode_snapshot, bytes([2]) + data[1:])

    def test_auth_group_round_trip(self):
        """An LMDB auth group decodes to its members; members out of order or cut short are refused."""
        members = [(b"", b"1"), (b"\x00", b""), (b"\xff", b"3" * 100)]
        self.assertEqual(decode_auth_group(encode_auth_group(members)), members)
        self.assertRaises(CorruptState, decode_auth_group, encode_auth_group(members[::-1]))
        data = encode_auth_group(members)
        for end in range(len(data)):
            self.assertRaises(CorruptState, decode_auth_group, data[:end])
