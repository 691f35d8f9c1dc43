"""
Backup and restore (issue 13, part 4): the snapshot file refuses any
truncation, damage or trailing bytes; C{kvpaxos snapshot save} under write
load keeps every write acknowledged before it; C{kvpaxos snapshot restore}
makes a fresh 3-node cluster with that state, its revisions kept, under a
new cluster id; bad files and used directories are refused with a clear
error and change nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading

from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvpaxos.api import backup
from kvpaxos.api.backup import (
    CHUNK_BYTES_MAX,
    ETCD_SECTOR_BYTES,
    EtcdEnvelope,
    SnapshotFileError,
    SnapshotHeader,
    SnapshotWriter,
    read_snapshot,
    verify,
)
from kvpaxos.client import Client
from kvpaxos.testing.processes import ProcessCluster
from kvpaxos.v1 import kv_pb2

HEADER = SnapshotHeader(member_id=2, cluster_id=7, index=40, revision=33, next_client_id=5,
                        members=[{"id": 2, "role": "voter", "peer": "h:1", "client": "h:2"}], saved_at="now")


def snapshot_bytes(chunks) -> bytes:
    out = io.BytesIO()
    writer = SnapshotWriter(out, HEADER)
    for chunk in chunks:
        writer.chunk(chunk)
    writer.finish()
    return out.getvalue()


def in_envelope(plain: bytes, padding=None) -> bytes:
    """C{plain} in etcd's envelope, by hand: C{padding} zero bytes (by default those to a sector), then SHA-256."""
    padded = plain + bytes(-len(plain) % ETCD_SECTOR_BYTES if padding is None else padding)
    return padded + hashlib.sha256(padded).digest()


def read_all(data: bytes):
    header, chunks = read_snapshot(io.BytesIO(data))
    return header, list(chunks)


class SnapshotFileTests(SynchronousTestCase):
    """The file format: what goes in comes out; anything else is refused, saying what is wrong."""

    chunks = [b"a" * 10, b"b" * CHUNK_BYTES_MAX, b"c"]

    def test_round_trip(self):
        header, chunks = read_all(snapshot_bytes(self.chunks))
        self.assertEqual(header, HEADER)
        self.assertEqual(chunks, self.chunks)

    def test_every_truncation_is_refused(self):
        data = snapshot_bytes(self.chunks)
        for cut in list(range(0, 120)) + list(range(len(data) - 80, len(data))):
            with self.assertRaises(SnapshotFileError, msg=f"cut at {cut}") as raised:
                read_all(data[:cut])
            text = str(raised.exception)
            self.assertTrue("truncated" in text or "not a kvpaxos snapshot" in text or "header" in text, text)

    def test_damage_is_refused(self):
        data = bytearray(snapshot_bytes(self.chunks))
        for at in (len(data) // 2, len(data) - 40, len(data) - 1):
            damaged = bytearray(data)
            damaged[at] ^= 0x01
            with self.assertRaises(SnapshotFileError, msg=f"byte {at}") as raised:
                read_all(bytes(damaged))
            self.assertIn("damaged", str(raised.exception))

    def test_trailing_bytes_are_refused(self):
        error = self.assertRaises(SnapshotFileError, read_all, snapshot_bytes(self.chunks) + b"\0")
        self.assertIn("bytes follow the checksum", str(error))

    def test_etcd_envelope_is_read(self):
        """A file in etcd's envelope (what etcdctl snapshot save keeps: N * 512 + 32 bytes) reads as the file in it."""
        for chunks in (self.chunks, [], [b"d" * (ETCD_SECTOR_BYTES * 2 - 4 - len(snapshot_bytes([])))]):
            plain = snapshot_bytes(chunks)
            data = in_envelope(plain)
            self.assertEqual(len(data) % ETCD_SECTOR_BYTES, 32)
            self.assertEqual(read_all(data), (HEADER, chunks))
        self.assertEqual(len(snapshot_bytes(chunks)) % ETCD_SECTOR_BYTES, 0)  # the last: no padding at all

    def test_damaged_etcd_envelope_is_refused(self):
        """Only the exact envelope may follow the checksum: its padding zero and of the one length, its SHA-256, no more."""
        plain = snapshot_bytes(self.chunks)
        good = in_envelope(plain)
        padding = -len(plain) % ETCD_SECTOR_BYTES
        bad = {
            "a padding byte": good[:len(plain)] + b"\1" + good[len(plain) + 1:],
            "a checksum byte": good[:-1] + bytes([good[-1] ^ 1]),
            "a byte after it": good + b"\0",
            "a short padding": in_envelope(plain, padding - 1),
            "a padding a sector too long": in_envelope(plain, padding + ETCD_SECTOR_BYTES),
            "no padding": in_envelope(plain, 0),
        }
        for what, data in bad.items():
            error = self.assertRaises(SnapshotFileError, read_all, data)
            self.assertIn("damaged", str(error), what)
        self.assertIn("etcd checksum", str(self.assertRaises(SnapshotFileError, read_all, bad["a checksum byte"])))

    def test_etcd_envelope_writer(self):
        """EtcdEnvelope: what a SnapshotWriter writes to it, taken in pieces, then padding and a checksum apart."""
        envelope = EtcdEnvelope()
        writer = SnapshotWriter(envelope, HEADER)
        pieces = [envelope.take()]
        for chunk in self.chunks:
            writer.chunk(chunk)
            pieces.append(envelope.take())
        writer.finish()
        checksum = envelope.finish()
        pieces.append(envelope.take())
        self.assertEqual(envelope.take(), b"")
        self.assertEqual(b"".join(pieces) + checksum, in_envelope(snapshot_bytes(self.chunks)))

    def test_other_files_are_refused(self):
        error = self.assertRaises(SnapshotFileError, read_all, b"SQLite format 3\0" + b"\0" * 100)
        self.assertIn("not a kvpaxos snapshot file", str(error))
        data = bytearray(snapshot_bytes(self.chunks))
        data[20] = 9  # the format version's low byte
        error = self.assertRaises(SnapshotFileError, read_all, bytes(data))
        self.assertIn("snapshot format", str(error))

    def test_format_1_read(self):
        """Files of formats 1 and 2 (written before the auth table, before the history) are still read; 3 is written."""
        data = snapshot_bytes(self.chunks)
        self.assertEqual(data[len(backup.MAGIC):len(backup.MAGIC) + 4], b"\0\0\0\3")
        for form in (1, 2):
            self.patch(backup, "FORMAT", form)
            old = snapshot_bytes(self.chunks)
            self.assertEqual(old[len(backup.MAGIC):len(backup.MAGIC) + 4], bytes([0, 0, 0, form]))
            self.assertEqual(read_all(old), (HEADER, self.chunks))

    def test_writer_refuses_bad_chunks(self):
        writer = SnapshotWriter(io.BytesIO(), HEADER)
        self.assertRaises(ValueError, writer.chunk, b"")
        self.assertRaises(ValueError, writer.chunk, b"x" * (CHUNK_BYTES_MAX + 1))


class RestoreAuthTests(SynchronousTestCase):
    """A backup file carries the auth table, and a restore installs it."""

    def test_save_and_restore_carry_the_auth_table(self):
        """A store's stream saved to a file and restored makes a data directory with its records and auth table."""
        from kvpaxos.config import NodeConfig
        from kvpaxos.restore import restore as restore_file
        from kvpaxos.storage.lmdb import LMDBStore
        from kvpaxos.storage.memory import MemoryStore
        from tests.test_storage import CONFIG
        from tests.test_storage_auth import KEYS, value_of, write_auth

        source = MemoryStore(CONFIG)
        auth = [(key, value_of(key)) for key in KEYS] + [(b"{big", b"b" * 65536)]
        write_auth(self, source, 1, auth)
        stream = source.open_snapshot_stream()
        path = self.mktemp()
        with open(path, "wb") as out:
            writer = SnapshotWriter(out, SnapshotHeader(member_id=1, cluster_id=7, index=stream.index,
                                                        revision=stream.revision,
                                                        next_client_id=stream.next_client_id))
            while (chunk := stream.next_chunk(CHUNK_BYTES_MAX)) is not None:
                writer.chunk(chunk)
            writer.finish()
        self.assertGreater(verify(path)[1], 1)
        directory = os.path.abspath(self.mktemp())
        said = restore_file(path, NodeConfig(data=directory, cluster_token="restored"))
        self.assertIn("restored slot 1", said)
        store = LMDBStore(directory)
        self.addCleanup(store.close)
        self.assertEqual(store.auth_items(), auth)
        self.assertEqual(store.snapshot_data(), source.snapshot_data())
        self.assertEqual(store.get(b"k1"), b"x")


def cli(cluster, *arguments, timeout_s=120):
    done = subprocess.run([sys.executable, "-m", "kvpaxos.client.cli", *arguments], capture_output=True,
                          timeout=timeout_s, env=cluster._env, cwd=cluster.directory)
    return done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")


def restore(cluster, path, node_id):
    done = subprocess.run([sys.executable, "-m", "kvpaxos.restore", path, "--config",
                           cluster.nodes[node_id].config_path], capture_output=True, timeout=120,
                          env=cluster._env)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


class BackupClusterTests(TestCase):
    """Real twistd nodes on 127.0.0.1."""

    def test_save_under_load_and_restore_into_a_new_cluster(self):
        old = ProcessCluster(self.mktemp(), size=3)
        self.addCleanup(old.stop)
        old.start()
        leader = old.nodes[old.wait_for_leader(timeout_s=20)]
        client = Client([n.endpoint for n in old.nodes.values()], timeout_s=10)
        self.addCleanup(client.close)
        acknowledged = []
        stop = threading.Event()

        def load():
            i = 0
            while not stop.is_set():
                key = b"load-%06d" % i
                client.put(key, b"v%d" % i)
                acknowledged.append(key)
                i += 1

        writer = threading.Thread(target=load, daemon=True)
        writer.start()
        old.wait_for(lambda: len(acknowledged) >= 50, 30, "writes before the save")
        before = len(acknowledged)
        path = os.path.join(old.directory, "backup.snap")
        status, saved, stderr = old.admin(leader.id, "snapshot", "save", path)
        during = len(acknowledged)
        stop.set()
        writer.join(30)
        self.assertEqual(status, 0, stderr)
        self.assertGreater(during, before, "the save ran under write load")
        self.assertGreaterEqual(saved["revision"], before)
        old_cluster_id = leader.cluster().MemberList(kv_pb2.MemberListRequest(), timeout=5).cluster_id

        status, out, err = cli(old, "snapshot", "status", path, "--json")
        self.assertEqual(status, 0, err)
        self.assertEqual(json.loads(out)["index"], saved["index"])

        new = ProcessCluster(self.mktemp(), size=3)
        self.addCleanup(new.stop)
        for node_id in new.nodes:
            status, out, err = restore(new, path, node_id)
            self.assertEqual(status, 0, err)
            self.assertIn(f"restored slot {saved['index']}", out)
        new.start()
        fresh = new.nodes[new.wait_for_leader(timeout_s=20)]
        kv = fresh.kv()
        for key in acknowledged[:before]:  # every write acknowledged before the save
            got = kv.Get(kv_pb2.GetRequest(key=key), timeout=5)
            self.assertTrue(got.found, key)
            self.assertEqual(got.value, b"v%d" % int(key[5:]))
        # The revision goes on from the saved one, never back.
        put = kv.Put(kv_pb2.PutRequest(key=b"after", value=b"x"), timeout=5)
        self.assertEqual(put.header.revision, saved["revision"] + 1)
        new_cluster_id = fresh.cluster().MemberList(kv_pb2.MemberListRequest(), timeout=5).cluster_id
        self.assertNotEqual(new_cluster_id, old_cluster_id)
        # Every member holds the same state.
        new.wait_for(lambda: all(n.status().applied_index == fresh.status().applied_index
                                 for n in new.nodes.values()), 10, "the members to agree")

    def test_bad_files_and_used_directories_are_refused(self):
        old = ProcessCluster(self.mktemp(), size=1)
        self.addCleanup(old.stop)
        old.start()
        node = old.nodes[old.wait_for_leader(timeout_s=20)]
        node.kv().Put(kv_pb2.PutRequest(key=b"k", value=b"v" * 1000), timeout=5)
        path = os.path.join(old.directory, "backup.snap")
        status, _, stderr = old.admin(1, "snapshot", "save", path)
        self.assertEqual(status, 0, stderr)
        with open(path, "rb") as f:
            data = f.read()
        truncated, damaged = path + ".truncated", path + ".damaged"
        with open(truncated, "wb") as f:
            f.write(data[:-100])
        with open(damaged, "wb") as f:
            f.write(data[:200] + bytes([data[200] ^ 1]) + data[201:])
        new = ProcessCluster(self.mktemp(), size=1)
        self.addCleanup(new.stop)
        for bad, says in ((truncated, "truncated"), (damaged, "damaged")):
            status, _, err = cli(old, "snapshot", "status", bad)
            self.assertEqual(status, 1)
            self.assertIn(says, err)
            status, _, err = restore(new, bad, 1)
            self.assertEqual(status, 1)
            self.assertIn(says, err)
            self.assertFalse(os.path.exists(new.data_directory(1)), "nothing was made")
        # A directory that holds something is refused, and left as it was.
        os.makedirs(new.data_directory(1))
        with open(os.path.join(new.data_directory(1), "keep"), "w") as f:
            f.write("mine")
        status, _, err = restore(new, path, 1)
        self.assertEqual(status, 1)
        self.assertIn("is not empty", err)
        self.assertEqual(os.listdir(new.data_directory(1)), ["keep"])
        # The node that saved keeps serving.
        self.assertEqual(node.kv().Get(kv_pb2.GetRequest(key=b"k"), timeout=5).value, b"v" * 1000)
