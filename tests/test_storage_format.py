"""
An older data directory is refused when a node starts: by the store
(L{kvpaxos.storage.lmdb.LMDBStore} raises L{StoreFormatError} naming the
directory and what to do) and through twistd (the node exits non-zero
with that message, before it binds a port); but the format just before
this one (5, without the history of writes) is converted as it opens.
"""

from __future__ import annotations

import os
import subprocess
import sys

import lmdb
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.cluster import plugin_environment
from kvpaxos.encoding.errors import StoreFormatError
from kvpaxos.kv.commands import CorruptRecord
from kvpaxos.paxos.config import Config
from kvpaxos.storage.lmdb import STORE_FORMAT, LMDBStore

CONFIG = Config(frozenset({1}))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment_of_format(directory: str, form: bytes) -> None:
    """Write an LMDB environment in C{directory} whose store format is C{form}."""
    env = lmdb.open(directory, max_dbs=6)
    try:
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"format", form, db=meta)
    finally:
        env.close()


class StoreRefusalTests(SynchronousTestCase):
    """A store of another format, or another application's environment, is never read."""

    def test_current_format(self):
        """The format is version 6 (5 and the history of writes)."""
        self.assertEqual(STORE_FORMAT, b"kvpaxos-lmdb-6")

    def test_format_5_converted(self):
        """A format-5 directory opens: its format becomes 6 and its compacted revision its revision + 1, nothing else changes."""
        directory = self.mktemp()
        store = LMDBStore(directory, CONFIG)
        data = store.snapshot_data()
        store.close()
        env = lmdb.open(directory, max_dbs=16)
        try:
            meta = env.open_db(b"meta")
            with env.begin(write=True) as txn:
                txn.put(b"format", b"kvpaxos-lmdb-5", db=meta)
                txn.put(b"revision", (41).to_bytes(8, "big"), db=meta)
                txn.delete(b"compacted", db=meta)
        finally:
            env.close()
        store = LMDBStore(directory, CONFIG)
        self.addCleanup(store.close)
        self.assertEqual((store.revision(), store.compacted_revision()), (41, 42))
        self.assertNotEqual(store.snapshot_data(), data)
        with store._env.begin() as txn:
            self.assertEqual(txn.get(b"format", db=store._meta), STORE_FORMAT)

    def test_old_formats_refused(self):
        """Formats 1 to 4 are refused with a message naming the directory, both formats and what to do."""
        for old in (b"kvpaxos-lmdb-1", b"kvpaxos-lmdb-2", b"kvpaxos-lmdb-3", b"kvpaxos-lmdb-4"):
            directory = self.mktemp()
            environment_of_format(directory, old)
            with self.assertRaises(StoreFormatError) as caught:
                LMDBStore(directory, CONFIG)
            message = str(caught.exception)
            for part in (directory, old.decode(), STORE_FORMAT.decode(), "move the directory aside"):
                self.assertIn(part, message)

    def test_newer_format_refused(self):
        """A format this version does not know yet is refused too."""
        directory = self.mktemp()
        environment_of_format(directory, b"kvpaxos-lmdb-7")
        self.assertRaises(StoreFormatError, LMDBStore, directory, CONFIG)

    def test_foreign_environment_refused(self):
        """Another application's LMDB environment is refused, and called not a kvpaxos store."""
        directory = self.mktemp()
        environment_of_format(directory, b"something-else")
        with self.assertRaises(StoreFormatError) as caught:
            LMDBStore(directory, CONFIG)
        self.assertIn("not a kvpaxos store", str(caught.exception))

    def test_refusal_is_corrupt_record(self):
        """The refusal is a CorruptRecord, as code that opens stores already expects."""
        self.assertTrue(issubclass(StoreFormatError, CorruptRecord))

    def test_refused_directory_unchanged(self):
        """Refusing a directory writes nothing to it: its format is still the old one."""
        directory = self.mktemp()
        environment_of_format(directory, b"kvpaxos-lmdb-2")
        self.assertRaises(StoreFormatError, LMDBStore, directory, CONFIG)
        env = lmdb.open(directory, max_dbs=6)
        try:
            meta = env.open_db(b"meta")
            with env.begin() as txn:
                self.assertEqual(txn.get(b"format", db=meta), b"kvpaxos-lmdb-2")
        finally:
            env.close()

    def test_own_format_reopens(self):
        """A directory this version wrote opens again."""
        directory = self.mktemp()
        LMDBStore(directory, CONFIG).close()
        LMDBStore(directory, CONFIG).close()


class TwistdRefusalTests(SynchronousTestCase):
    """Through twistd: a node given an old data directory exits at once, saying why."""

    def test_node_refuses_old_directory(self):
        """twistd kvpaxos on a format-2 directory exits 1 with one line naming the directory and the format."""
        directory = os.path.abspath(self.mktemp())
        environment_of_format(directory, b"kvpaxos-lmdb-2")
        command = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "--logfile=-",
            "kvpaxos", "--id=1", "--addr=127.0.0.1:0", "--data", directory,
        ]
        done = subprocess.run(
            command, env=plugin_environment(ROOT),
            capture_output=True, timeout=60,
        )
        output = (done.stdout + done.stderr).decode("utf-8", "replace")
        self.assertEqual(done.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        fatal = [line for line in output.splitlines() if line.startswith("kvpaxos: fatal:")]
        self.assertEqual(len(fatal), 1, output)
        self.assertIn(directory, fatal[0])
        self.assertIn(STORE_FORMAT.decode(), fatal[0])
