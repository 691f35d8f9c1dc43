"""
Tests for a snapshot transfer in chunks at the store (issue 11): the
sender's stream (C{open_snapshot_stream}), the receiver's staging
(C{store.staging}) and the atomic install of a staged state, for every
provider; and, on LMDB, a stream's read transaction against map growth.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.encoding import state as encoded
from kvpaxos.encoding.errors import CorruptState, MalformedMessage
from kvpaxos.encoding.state import AUTH_KEY_MAX_BYTES, AUTH_VALUE_MAX_BYTES
from kvpaxos.encoding.transfer import (
    TABLE_AUTH,
    TABLE_COMPACTED,
    TABLE_RECORDS,
    TABLE_SESSIONS,
    decode_records,
    encode_records,
)
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import Snapshot
from kvpaxos.storage.interfaces import Commit
from kvpaxos.storage.staging import ChunkCutter, StagedState, StagingCheck, StreamInterrupted
from tests.test_storage import (
    CONFIG,
    LMDBProvider,
    MemoryStoreProvider,
    _ProviderFixture,
    batch,
    put,
)

TRANSFER = (2, 7)


def stream_chunks(store, max_bytes: int) -> tuple:
    """Return C{(stream, [chunk, ...])}: the whole of C{store}'s stream."""
    stream = store.open_snapshot_stream()
    chunks = []
    while True:
        chunk = stream.next_chunk(max_bytes)
        if chunk is None:
            return stream, chunks
        chunks.append(chunk)


class TransferContractMixin(_ProviderFixture):
    """What every provider does with a transfer in chunks."""

    def fill(self, store, count: int, value_bytes: int = 100, first: int = 1):
        """Apply C{count} puts of distinct keys, one slot each, from slot C{first}."""
        committed = [
            (first + i, batch(put(b"key%05d" % i, bytes([i % 251]) * value_bytes)))
            for i in range(count)
        ]
        store.commit(Commit(None, [], None, False, committed))

    def other_store(self):
        return self.provider.open(self, Config(frozenset()))

    def transfer(self, source, target, max_bytes: int = 4_000) -> StagedState:
        """Stream C{source} into C{target}'s staging; return the handle."""
        stream, chunks = stream_chunks(source, max_bytes)
        target.staging.begin(TRANSFER, stream.revision, stream.next_client_id)
        for chunk in chunks:
            self.assertLessEqual(len(chunk), max_bytes)
            target.staging.stage(TRANSFER, chunk)
        self.stream, self.chunks = stream, chunks
        return target.staging.finish(TRANSFER)

    def install(self, target, index: int, staged) -> None:
        target.commit(Commit(None, [], Snapshot(index, CONFIG, staged), True, []))

    def test_transfer_installs_the_same_state(self):
        """A state streamed in chunks, staged and installed equals the sender's, at its index."""
        self.fill(self.store, 300)
        target = self.other_store()
        staged = self.transfer(self.store, target)
        self.assertGreater(len(self.chunks), 5)
        self.assertEqual(self.stream.index, 300)
        self.install(target, self.stream.index, staged)
        self.assertEqual(target.snapshot_data(), self.store.snapshot_data())
        self.assertEqual(target.applied_index(), 300)
        self.assertEqual(target.revision(), self.store.revision())
        # The store is its own snapshot: no copy of the data is kept.
        self.assertEqual(target.snapshot(), Snapshot(300, CONFIG, None))

    def test_value_larger_than_a_chunk(self):
        """A value larger than a chunk travels in pieces and is installed whole."""
        self.fill(self.store, 3, value_bytes=20_000)
        target = self.other_store()
        staged = self.transfer(self.store, target, max_bytes=6_000)
        self.assertGreater(len(self.chunks), 9)
        self.install(target, 3, staged)
        self.assertEqual(target.snapshot_data(), self.store.snapshot_data())

    def test_sessions_transfer(self):
        """The session table and next client id travel too."""
        from kvpaxos.kv.commands import Op, Request
        from kvpaxos.encoding.commands import encode_request

        opened = encode_request(Request(Op.OPEN_SESSION))
        self.store.commit(Commit(None, [], None, False, [(1, batch(opened, opened))]))
        target = self.other_store()
        staged = self.transfer(self.store, target)
        self.install(target, 1, staged)
        self.assertEqual(target.snapshot_data(), self.store.snapshot_data())

    def test_auth_table_transfers(self):
        """The auth table travels after the sessions, long keys and values in pieces, and replaces the receiver's."""
        from tests.test_storage_auth import KEYS, value_of, write_auth

        auth = [(key, value_of(key)) for key in KEYS] + [(b"{big", b"b" * AUTH_VALUE_MAX_BYTES)]
        write_auth(self, self.store, 1, auth)
        target = self.other_store()
        write_auth(self, target, 1, [(b"mine", b"x"), (b"z" * AUTH_KEY_MAX_BYTES, b"y")])
        staged = self.transfer(self.store, target, max_bytes=6_000)
        tables = [decode_records(chunk)[0] for chunk in self.chunks]
        self.assertEqual(tables, sorted(tables))
        # The auth table comes last of the state, before the history's tables.
        self.assertEqual(tables[tables.index(TABLE_COMPACTED) - 1], TABLE_AUTH)
        self.assertGreater(tables.count(TABLE_AUTH), 10)
        self.install(target, 1, staged)
        self.assertEqual(target.auth_items(), auth)
        self.assertEqual(target.snapshot_data(), self.store.snapshot_data())

    def test_stream_reads_one_state(self):
        """Commits after the stream opened are not in it: it reads one consistent state."""
        self.fill(self.store, 50)
        stream = self.store.open_snapshot_stream()
        first = stream.next_chunk(2_000)
        before = self.store.snapshot_data()
        self.fill(self.store, 50, first=51, value_bytes=7)
        chunks = [first]
        while (chunk := stream.next_chunk(2_000)) is not None:
            chunks.append(chunk)
        target = self.other_store()
        target.staging.begin(TRANSFER, stream.revision, stream.next_client_id)
        for chunk in chunks:
            target.staging.stage(TRANSFER, chunk)
        self.install(target, stream.index, target.staging.finish(TRANSFER))
        self.assertEqual(stream.index, 50)
        self.assertEqual(target.snapshot_data(), before)

    def test_corrupt_chunk_refused(self):
        """A chunk whose record does not decode is refused and the state stays as it was."""
        self.fill(self.store, 20)
        target = self.other_store()
        self.fill(target, 2)
        before = target.snapshot_data()
        stream, chunks = stream_chunks(self.store, 1_000)
        target.staging.begin(TRANSFER, stream.revision, stream.next_client_id)
        target.staging.stage(TRANSFER, chunks[0])
        _, items = decode_records(chunks[1])
        key, value, more = items[0]
        bad = encode_records(TABLE_RECORDS, [(key, value[:5], more)] + items[1:])
        self.assertRaises(CorruptState, target.staging.stage, TRANSFER, bad)
        self.assertRaises(MalformedMessage, target.staging.stage, TRANSFER, b"\x01\x00")
        target.staging.discard()
        self.assertRaises(ValueError, target.staging.finish, TRANSFER)
        self.assertRaises(
            ValueError, self.install, target, 20, StagedState(TRANSFER, 20, 1)
        )
        self.assertEqual(target.snapshot_data(), before)
        self.assertEqual(target.applied_index(), 2)

    def test_keys_out_of_order_refused(self):
        """Chunks whose keys do not ascend across chunks are refused."""
        self.fill(self.store, 20)
        target = self.other_store()
        stream, chunks = stream_chunks(self.store, 1_000)
        target.staging.begin(TRANSFER, stream.revision, stream.next_client_id)
        target.staging.stage(TRANSFER, chunks[1])
        self.assertRaises(CorruptState, target.staging.stage, TRANSFER, chunks[0])

    def test_impossible_revision_refused(self):
        """A record past the offered revision is refused."""
        self.fill(self.store, 5)
        target = self.other_store()
        stream, chunks = stream_chunks(self.store, 60_000)
        target.staging.begin(TRANSFER, 2, stream.next_client_id)
        self.assertRaises(CorruptState, target.staging.stage, TRANSFER, chunks[0])

    def test_new_transfer_discards_the_old(self):
        """Beginning a transfer discards what an unfinished one staged."""
        self.fill(self.store, 30)
        target = self.other_store()
        stream, chunks = stream_chunks(self.store, 1_000)
        target.staging.begin((2, 1), stream.revision, stream.next_client_id)
        target.staging.stage((2, 1), chunks[0])
        target.staging.stage((2, 1), chunks[1])
        self.assertRaises(ValueError, target.staging.stage, (2, 9), chunks[2])
        staged = self.transfer(self.store, target)
        self.install(target, stream.index, staged)
        self.assertEqual(target.snapshot_data(), self.store.snapshot_data())

    def test_cut_value_refused_at_finish(self):
        """A transfer whose last value was cut short cannot finish."""
        self.fill(self.store, 1, value_bytes=5_000)
        target = self.other_store()
        stream, chunks = stream_chunks(self.store, 2_000)
        target.staging.begin(TRANSFER, stream.revision, stream.next_client_id)
        target.staging.stage(TRANSFER, chunks[0])
        self.assertRaises(CorruptState, target.staging.finish, TRANSFER)

    def test_empty_state(self):
        """An empty state streams one chunk, its compacted revision (0), and installs as empty."""
        target = self.other_store()
        self.fill(target, 3)
        staged = self.transfer(self.store, target)
        self.assertEqual(self.chunks, [encode_records(TABLE_COMPACTED, [(b"", bytes(8), False)])])
        self.install(target, 4, staged)
        self.assertEqual(target.snapshot_data(), b"")


class MemoryTransferTests(TransferContractMixin, SynchronousTestCase):
    provider = MemoryStoreProvider


class LMDBTransferTests(TransferContractMixin, SynchronousTestCase):
    provider = LMDBProvider

    def test_restart_reads_installed_state(self):
        """An installed transfer survives a restart, with no snapshot copy stored."""
        self.fill(self.store, 40)
        target = self.other_store()
        staged = self.transfer(self.store, target)
        self.install(target, 40, staged)
        self.store, source = target, self.store
        reopened = self.reopened()
        self.assertEqual(reopened.snapshot(), Snapshot(40, CONFIG, None))
        self.assertEqual(reopened.snapshot_data(), source.snapshot_data())

    def test_map_growth_interrupts_an_idle_stream(self):
        """The map grows while a stream waits between chunks: the commit goes on, the stream starts over."""
        self.fill(self.store, 20)
        stream = self.store.open_snapshot_stream()
        self.assertIsNotNone(stream.next_chunk(1_000))
        growths = self.store.map_growths
        self.fill(self.store, 200, value_bytes=2_000, first=21)
        self.assertGreater(self.store.map_growths, growths)
        self.assertRaises(StreamInterrupted, stream.next_chunk, 1_000)
        stream.close()
        self.assertEqual(self.store.applied_index(), 220)

    def test_staging_emptied_on_open(self):
        """What a transfer staged before a restart is gone after it."""
        self.fill(self.store, 20)
        target = self.other_store()
        stream, chunks = stream_chunks(self.store, 1_000)
        target.staging.begin(TRANSFER, stream.revision, stream.next_client_id)
        target.staging.stage(TRANSFER, chunks[0])
        self.store = target
        reopened = self.reopened()
        with reopened._env.begin() as txn:
            self.assertEqual(txn.stat(reopened._staging._dbs[TABLE_RECORDS])["entries"], 0)


class StagingCheckAuthTests(SynchronousTestCase):
    """The receiver's check of a transfer's auth entries."""

    def take(self, *chunks):
        check = StagingCheck(1, 5)
        for chunk in chunks:
            found = check.take(chunk)
        check.finish()
        return found

    def test_auth_entries_checked(self):
        """Auth entries in key order within their bounds are taken, decoded as their (key, value)."""
        items = [(b"a", b"", False), (b"k" * AUTH_KEY_MAX_BYTES, b"v" * AUTH_VALUE_MAX_BYTES, False)]
        self.assertEqual([d for _, _, _, d in self.take(encode_records(TABLE_AUTH, items))],
                         [(key, value) for key, value, _ in items])

    def test_unsound_auth_entries_refused(self):
        """Auth keys out of order, empty or too long, values too long (whole or in pieces) are refused."""
        for items in ([(b"b", b"", False), (b"a", b"", False)], [(b"a", b"", False), (b"a", b"", False)],
                      [(b"", b"", False)], [(b"k" * (AUTH_KEY_MAX_BYTES + 1), b"", False)],
                      [(b"k", b"v" * (AUTH_VALUE_MAX_BYTES + 1), False)],
                      [(b"k", b"v" * AUTH_VALUE_MAX_BYTES, True), (b"k", b"v", True)]):
            self.assertRaises(CorruptState, self.take, encode_records(TABLE_AUTH, items))
        pieces = [encode_records(TABLE_AUTH, [(b"k", b"v" * 40_000, True)]),
                  encode_records(TABLE_AUTH, [(b"k", b"v" * 30_000, False)])]
        self.assertRaises(CorruptState, self.take, *pieces)

    def test_tables_in_order(self):
        """Records or sessions after the auth table are refused."""
        auth = encode_records(TABLE_AUTH, [(b"a", b"", False)])
        record = encode_records(TABLE_RECORDS, [(b"r", encoded.encode_record_of(b"", 1, 1, 1), False)])
        self.assertRaises(CorruptState, self.take, auth, record)
        from kvpaxos.kv.sessions import Session

        session = encode_records(TABLE_SESSIONS, [(b"\0" * 7 + b"\1", encoded.encode_session(Session(0, 1)), False)])
        self.assertEqual(len(self.take(session, auth)), 1)
        self.assertRaises(CorruptState, self.take, auth, session)


class ChunkCutterTests(SynchronousTestCase):
    def test_chunks_bounded(self):
        """Every chunk is at most the size asked, one table per chunk."""
        records = [(1, b"k%03d" % i, encoded.encode_record_of(b"v" * i, 1, 1, 1)) for i in range(200)]
        cutter = ChunkCutter(iter(records + [(2, b"\0" * 8, b"x" * 17)]))
        sizes = []
        tables = []
        while (chunk := cutter.next_chunk(3_000)) is not None:
            sizes.append(len(chunk))
            tables.append(decode_records(chunk)[0])
        self.assertLessEqual(max(sizes), 3_000)
        self.assertEqual(tables[-1], 2)
        self.assertEqual(set(tables[:-1]), {1})

    def test_too_small(self):
        """A chunk size that cannot hold a key is the caller's error."""
        cutter = ChunkCutter(iter([(1, b"k" * 100, b"v")]))
        self.assertRaises(ValueError, cutter.next_chunk, 50)
