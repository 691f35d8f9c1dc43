"""
The history of writes (issue 14) where a state travels whole: a peer
transfer in chunks (its tables 4, the compacted revision, and 5, the
events, streamed after the auth table, checked as staged and installed
with the rest, for every provider; a transfer from a member without
history), and the backup file (format 3 carries the history; formats 1
and 2 restore with none).  Commits apply L{ScriptMachine} scripts, as in
L{tests.test_history_storage}.
"""

from __future__ import annotations

import io
import os

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import backup
from kvpaxos.api.backup import CHUNK_BYTES_MAX, SnapshotHeader, SnapshotWriter
from kvpaxos.encoding import state as encoded
from kvpaxos.encoding.errors import CorruptState
from kvpaxos.encoding.history import encode_event, encode_history_key
from kvpaxos.encoding.reader import U64
from kvpaxos.encoding.transfer import (
    TABLE_AUTH,
    TABLE_COMPACTED,
    TABLE_HISTORY,
    TABLE_RECORDS,
    decode_records,
    encode_records,
)
from kvpaxos.kv.commands import KeyValue
from kvpaxos.kv.history import HistoryCompacted, delete_event, put_event
from kvpaxos.paxos.messages import Snapshot
from kvpaxos.storage.interfaces import Commit
from kvpaxos.storage.memory import MemoryStore
from kvpaxos.storage.staging import StagingCheck, snapshot_of_chunks
from tests.test_history_storage import HistoryFixture
from tests.test_storage import CONFIG, LMDBProvider, MemoryStoreProvider
from tests.test_storage_transfer import TRANSFER, stream_chunks


def without_history(chunks) -> list:
    """C{chunks} as a member that keeps no history streams them: tables 4 and 5 left out."""
    return [chunk for chunk in chunks if decode_records(chunk)[0] < TABLE_COMPACTED]


class TransferHistoryMixin(HistoryFixture):
    """What every provider does with the history in a transfer."""

    def fill(self) -> None:
        self.write([b"put a=1", b"put b=" + b"v" * 5000], [b"del a"], [b"compact 2"],
                   [b"put b=2", b"put c=3"], [b"put- c=" + b"w" * 9000])

    def transfer(self, source, target, chunks=None, max_bytes=4_000):
        stream, streamed = stream_chunks(source, max_bytes)
        target.staging.begin(TRANSFER, stream.revision, stream.next_client_id)
        for chunk in streamed if chunks is None else chunks(streamed):
            target.staging.stage(TRANSFER, chunk)
        staged = target.staging.finish(TRANSFER)
        target.commit(Commit(snapshot=Snapshot(stream.index, CONFIG, staged), install=True))
        return streamed

    def test_history_travels_after_the_auth_table(self):
        """The compacted revision and the events stream after the auth table, events split over chunks, and install whole."""
        self.fill()
        self.write([b"auth user=x"])
        for provider in (MemoryStoreProvider, LMDBProvider):
            target = self.other_store(provider())
            self.write([b"put mine=1"], [b"put mine=2"], store=target)
            chunks = self.transfer(self.store, target, max_bytes=3_000)
            tables = [decode_records(chunk)[0] for chunk in chunks]
            self.assertEqual(tables, sorted(tables))
            self.assertEqual(tables.count(TABLE_COMPACTED), 1)
            self.assertGreater(tables.count(TABLE_HISTORY), 2)
            self.assertEqual(tables[tables.index(TABLE_COMPACTED) - 1], TABLE_AUTH)
            self.assertEqual(target.snapshot_data(), self.store.snapshot_data())
            self.assertEqual(target.history(2, 100), self.store.history(2, 100))
            self.assertEqual(target.compacted_revision(), 2)
            self.assertRaises(HistoryCompacted, target.history, 1, 100)

    def test_transfer_without_history(self):
        """A transfer with no compacted revision (an older member's) installs no events, compacted at revision + 1."""
        self.fill()
        target = self.other_store()
        self.write([b"put mine=1"], store=target)
        self.transfer(self.store, target, chunks=without_history)
        self.assertEqual(target.revision(), 4)
        self.assertEqual(target.compacted_revision(), 5)
        self.assertEqual(target.history(5, 100), [])
        self.assertRaises(HistoryCompacted, target.history, 4, 100)
        self.assertEqual(target.get(b"c"), b"w" * 9000)

    def test_unsound_history_refused(self):
        """Events out of order, below the compacted revision or past the state's, or without a compacted revision, are refused."""
        stage = self.store.staging
        event = encode_event(put_event(KeyValue(b"k", b"v", 1, 2, 2), None))

        def compacted(revision):
            return encode_records(TABLE_COMPACTED, [(b"", U64.pack(revision), False)])

        def events(*revisions):
            return encode_records(TABLE_HISTORY, [(encode_history_key(r, i), event_of(r), False) for r, i in revisions])

        def event_of(revision):
            return encode_event(put_event(KeyValue(b"k", b"v", 1, revision, revision), None))

        for chunks in ([events((2, 0))], [compacted(3), events((2, 0))], [compacted(1), events((5, 0))],
                       [compacted(1), events((2, 1), (2, 0))], [compacted(1), events((2, 0), (2, 0))],
                       [compacted(1), compacted(1)], [compacted(6)],
                       [compacted(1), encode_records(TABLE_HISTORY, [(b"short", event, False)])],
                       [compacted(1), encode_records(TABLE_HISTORY, [(encode_history_key(3, 0), event, False)])],
                       [encode_records(TABLE_COMPACTED, [(b"", b"\0" * 9, False)])],
                       [compacted(1), encode_records(TABLE_AUTH, [(b"a", b"", False)])]):
            stage.begin(TRANSFER, 4, 1)
            with self.assertRaises(CorruptState, msg=repr(chunks)):
                for chunk in chunks:
                    stage.stage(TRANSFER, chunk)
            stage.discard()
        stage.begin(TRANSFER, 4, 1)
        for chunk in (compacted(2), events((2, 0), (2, 1), (4, 0))):
            stage.stage(TRANSFER, chunk)
        self.store.commit(Commit(snapshot=Snapshot(1, CONFIG, stage.finish(TRANSFER)), install=True))
        self.assertEqual([r for r, _ in self.store.history(2, 100)], [2, 2, 4])

    def test_snapshot_of_chunks(self):
        """snapshot_of_chunks gives the sender's snapshot bytes, history included (revision + 1 without it)."""
        self.fill()
        stream, chunks = stream_chunks(self.store, 2_500)
        data = snapshot_of_chunks(stream.revision, stream.next_client_id, chunks)
        self.assertEqual(data, self.store.snapshot_data())
        old = encoded.decode_snapshot(snapshot_of_chunks(stream.revision, stream.next_client_id,
                                                         without_history(chunks)))
        self.assertEqual((old.compacted, old.events), (5, ()))


class MemoryTransferHistoryTests(TransferHistoryMixin, SynchronousTestCase):
    provider = MemoryStoreProvider


class LMDBTransferHistoryTests(TransferHistoryMixin, SynchronousTestCase):
    provider = LMDBProvider


class StagingCheckHistoryTests(SynchronousTestCase):
    """The receiver's check returns what it decoded of the history's tables."""

    def test_decoded(self):
        """The compacted revision decodes to its number, an event to (revision, index, Event)."""
        prev = KeyValue(b"k", b"v", 1, 1, 1)
        check = StagingCheck(3, 1)
        found = check.take(encode_records(TABLE_COMPACTED, [(b"", U64.pack(1), False)]))
        self.assertEqual([d for *_, d in found], [1])
        data = encode_event(delete_event(prev, 2))
        found = check.take(encode_records(TABLE_HISTORY, [(encode_history_key(2, 7), data, False)]))
        self.assertEqual([d for *_, d in found], [(2, 7, delete_event(prev, 2))])
        check.finish()
        self.assertEqual(check.staged(TRANSFER).compacted_revision, 1)
        self.assertEqual(StagingCheck(3, 1).staged(TRANSFER).compacted_revision, 4)

    def test_records_after_the_history_refused(self):
        """A record after the compacted revision is out of table order."""
        check = StagingCheck(3, 1)
        check.take(encode_records(TABLE_COMPACTED, [(b"", U64.pack(0), False)]))
        record = encode_records(TABLE_RECORDS, [(b"r", encoded.encode_record_of(b"", 1, 1, 1), False)])
        self.assertRaises(CorruptState, check.take, record)


class BackupHistoryTests(HistoryFixture, SynchronousTestCase):
    """A backup file carries the history into the restored data directory."""

    provider = MemoryStoreProvider

    def save(self, form: int = backup.FORMAT, chunks=None) -> str:
        self.patch(backup, "FORMAT", form)
        stream, streamed = stream_chunks(self.store, CHUNK_BYTES_MAX)
        path = self.mktemp()
        with open(path, "wb") as out:
            writer = SnapshotWriter(out, SnapshotHeader(member_id=1, cluster_id=7, index=stream.index,
                                                        revision=stream.revision,
                                                        next_client_id=stream.next_client_id))
            for chunk in streamed if chunks is None else chunks(streamed):
                writer.chunk(chunk)
            writer.finish()
        return path

    def restored(self, path: str):
        from kvpaxos.config import NodeConfig
        from kvpaxos.restore import restore
        from kvpaxos.storage.lmdb import LMDBStore

        directory = os.path.abspath(self.mktemp())
        restore(path, NodeConfig(data=directory, cluster_token="restored"))
        store = LMDBStore(directory)
        self.addCleanup(store.close)
        return store

    def test_current_format(self):
        """Backup files are written in format 3 and formats 1 to 3 are read."""
        self.assertEqual((backup.FORMAT, backup.READ_FORMATS), (3, (1, 2, 3)))
        with open(self.save(), "rb") as f:
            self.assertEqual(f.read(len(backup.MAGIC) + 4)[-4:], b"\0\0\0\x03")

    def test_restore_carries_the_history(self):
        """A saved store restored into a new data directory has its events and compacted revision."""
        self.write([b"put a=1"], [b"put a=" + b"x" * 70_000, b"put b=2"], [b"compact 2"], [b"del a"])
        store = self.restored(self.save())
        self.assertEqual(store.snapshot_data(), self.store.snapshot_data())
        self.assertEqual(store.history(2, 100), self.store.history(2, 100))
        self.assertEqual(store.compacted_revision(), 2)

    def test_older_format_restores_without_history(self):
        """A format-2 file (no history tables) restores with no events and compacted revision = revision + 1."""
        self.write([b"put a=1"], [b"put b=2"])
        store = self.restored(self.save(2, without_history))
        self.assertEqual(store.revision(), 2)
        self.assertEqual(store.compacted_revision(), 3)
        self.assertEqual(store.history(3, 100), [])
        self.assertEqual(store.get(b"b"), b"2")

    def test_file_round_trip_is_the_stream(self):
        """What a file holds reads back as the stream's chunks, the history's among them."""
        self.write([b"put a=1"])
        path = self.save()
        with open(path, "rb") as f:
            header, chunks = backup.read_snapshot(io.BytesIO(f.read()))
            chunks = list(chunks)
        self.assertEqual(chunks, stream_chunks(self.store, CHUNK_BYTES_MAX)[1])
        self.assertEqual([decode_records(c)[0] for c in chunks][-2:], [TABLE_COMPACTED, TABLE_HISTORY])
        self.assertIsInstance(self.store, MemoryStore)
