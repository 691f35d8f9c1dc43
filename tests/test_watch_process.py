"""
Watch on real twistd nodes over gRPC (127.0.0.1, ephemeral ports; every
process killed by the harness): every change once, in order, each
revision's events together; from a past revision on another member;
resumed on another member after the streaming one is killed, with no gap
and no duplicate; the leader's automatic compaction telling a watch of a
compacted revision where the history now starts; and the CLI's
C{kvpaxos watch}.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading

from twisted.trial.unittest import TestCase

from kvpaxos.client import Client, delete_op, put_op
from kvpaxos.client.watch import WatchCompacted
from kvpaxos.testing.processes import ProcessCluster

#: Revisions of history each node keeps: few, so that compaction is seen.
HISTORY_REVISIONS = 40
#: The longest a test waits for one event.
EVENT_WAIT_S = 30.0


class _Feed:
    """A watch read by a thread into a queue, so that the test waits for events with a bound."""

    def __init__(self, watch) -> None:
        self.watch = watch
        self.events: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self.watch:
                self.events.put(event)
        except Exception as error:  # handed to the test, which raises it
            self.events.put(error)

    def take(self, count: int) -> list:
        taken = []
        for _ in range(count):
            try:
                item = self.events.get(timeout=EVENT_WAIT_S)
            except queue.Empty:
                raise AssertionError(f"only {len(taken)} of {count} events within {EVENT_WAIT_S}s: {taken}") from None
            if isinstance(item, Exception):
                raise item
            taken.append(item)
        return taken

    def close(self) -> None:
        self.watch.close()
        self._thread.join(10)


def _summary(events) -> list:
    return [(e.kind, e.key, e.value, e.revision) for e in events]


class WatchProcessTests(TestCase):
    """Three nodes keeping a short history."""

    def setUp(self) -> None:
        self.cluster = ProcessCluster(self.mktemp(), size=3, settings={"history_revisions": HISTORY_REVISIONS})
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self.cluster.wait_for_leader(timeout_s=30)
        self.endpoints = {node_id: node.endpoint for node_id, node in self.cluster.nodes.items()}

    def client(self, first: int) -> Client:
        """A client that tries node C{first} first, then the others."""
        order = [self.endpoints[first]] + [e for n, e in sorted(self.endpoints.items()) if n != first]
        client = Client(order, timeout_s=15, refresh_s=None)
        self.addCleanup(client.close)
        return client

    def feed(self, watch) -> _Feed:
        feed = _Feed(watch)
        self.addCleanup(feed.close)
        return feed

    def test_changes_in_order_resumed_on_another_member_then_compacted(self) -> None:
        writer = self.client(1)
        start = writer.put(b"w/a", b"1").header.revision
        first = self.client(2)
        live = self.feed(first.watch(b"w/", prefix=True, start_revision=start + 1, prev_kv=True))
        writer.put(b"w/b", b"2")
        txn_revision = writer.txn([], [put_op(b"w/c", b"3"), put_op(b"w/d", b"4")]).header.revision
        writer.put(b"other", b"not watched")
        writer.delete(b"w/a")
        writer.txn([], [delete_op(b"w/", prefix=True)])

        events = live.take(7)
        self.assertEqual(
            [(kind, key) for kind, key, _, _ in _summary(events)],
            [("put", b"w/b"), ("put", b"w/c"), ("put", b"w/d"), ("delete", b"w/a"),
             ("delete", b"w/b"), ("delete", b"w/c"), ("delete", b"w/d")])
        revisions = [e.revision for e in events]
        self.assertEqual(revisions, sorted(revisions))
        self.assertEqual(revisions[1:3], [txn_revision, txn_revision])  # one revision, together
        self.assertEqual(len(set(revisions[4:])), 1)  # the range delete: one revision
        self.assertEqual(events[3].prev_kv.value, b"1")  # a delete carries the record it removed

        # From a past revision, on another member: the same events, with the first put.
        past = self.feed(self.client(3).watch(b"w/", prefix=True, start_revision=start))
        self.assertEqual(_summary(past.take(8)), [("put", b"w/a", b"1", start)] + _summary(events))

        # The member the live watch streams from dies: it resumes elsewhere, exactly where it was.
        streaming = next(n for n, e in self.endpoints.items() if e == live.watch.endpoint)
        self.cluster.kill(streaming)
        survivor = next(n for n in sorted(self.endpoints) if n != streaming)
        self.cluster.wait_for_leader(timeout_s=30, among=[n for n in self.endpoints if n != streaming])
        after = self.client(survivor)
        after_revision = after.put(b"w/e", b"5").header.revision
        [resumed] = live.take(1)
        self.assertEqual(_summary([resumed]), [("put", b"w/e", b"5", after_revision)])
        self.assertNotEqual(live.watch.endpoint, self.endpoints[streaming])

        # Past the kept history, the leader compacts: a watch from the start is told where it begins.
        for i in range(HISTORY_REVISIONS * 2):
            after.put(b"fill", b"%d" % i)

        def compacted():
            try:
                with after.watch(b"w/", prefix=True, start_revision=1) as watch:
                    for _ in watch:
                        return False
            except WatchCompacted as error:
                return error.compact_revision
            return False

        compact_revision = self.cluster.wait_for(compacted, timeout_s=30, what="an automatic compaction")
        self.assertGreater(compact_revision, after_revision)
        # What is kept is served: the newest revisions, from any member.
        newest = after.put(b"w/f", b"6").header.revision
        tail = self.feed(after.watch(b"w/", prefix=True, start_revision=newest))
        self.assertEqual(_summary(tail.take(1)), [("put", b"w/f", b"6", newest)])

    def test_cli_watch(self) -> None:
        writer = self.client(1)
        start = writer.put(b"cli/a", b"1").header.revision
        writer.put(b"cli/b", b"2")
        writer.delete(b"cli/a")
        done = subprocess.run(
            [sys.executable, "-m", "kvpaxos.client.cli", "--endpoints", self.endpoints[2],
             "watch", "cli/", "--prefix", "--rev", str(start), "--max-events", "3"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.splitlines(), ["PUT", "cli/a", "1", "PUT", "cli/b", "2", "DELETE", "cli/a", ""])
