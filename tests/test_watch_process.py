"""
Watch on real twistd nodes over gRPC (127.0.0.1, ephemeral ports; every
process killed by the harness): the client library's watch sees every put
and delete of its keys once, in order, each revision whole; from a past
revision; across the loss of the member it streams from (it resumes on
another, without a gap or a duplicate); and the CLI prints etcdctl's lines.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading

from twisted.trial.unittest import TestCase

from kvpaxos.client import Client, delete_op, put_op
from kvpaxos.testing.processes import ProcessCluster

#: The longest a test waits for one event.
EVENT_WAIT_S = 20.0


class Collector:
    """Runs a watch in a thread; its events arrive on C{events} (a queue), its error in C{error}."""

    def __init__(self, watch) -> None:
        self.watch = watch
        self.events: queue.Queue = queue.Queue()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.watch:
                self.events.put(event)
        except BaseException as error:  # reported by take()
            self.error = error
            self.events.put(None)

    def take(self, n: int) -> list:
        got = []
        for _ in range(n):
            event = self.events.get(timeout=EVENT_WAIT_S)
            if event is None:
                raise AssertionError(f"the watch failed: {self.error!r}")
            got.append(event)
        return got

    def stop(self) -> None:
        self.watch.close()
        self.thread.join(timeout=10)


class WatchTests(TestCase):

    def setUp(self) -> None:
        self.cluster = ProcessCluster(self.mktemp(), size=3)
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self.cluster.wait_for_leader(timeout_s=30)
        self.client = Client([n.endpoint for n in self.cluster.nodes.values()], timeout_s=10)
        self.addCleanup(self.client.close)

    def collect(self, watch) -> Collector:
        collector = Collector(watch)
        self.addCleanup(collector.stop)
        return collector

    def wait_created(self, watch) -> None:
        self.cluster.wait_for(lambda: watch.next_revision > 0, timeout_s=EVENT_WAIT_S, what="the watch to start")

    def test_every_change_once_in_order_each_revision_whole(self) -> None:
        self.client.put("outside", "x")
        watch = self.client.watch("app/", prefix=True, prev_kv=True)
        collector = self.collect(watch)
        self.wait_created(watch)
        first = self.client.put("app/a", "1").header.revision
        self.client.put("other", "not watched")
        self.client.put("app/a", "2")
        txn = self.client.txn([], [put_op("app/b", "3"), put_op("app/c", "3"), delete_op("app/a")])
        events = collector.take(5)
        self.assertEqual([(e.kind, e.key, e.value) for e in events], [
            ("put", b"app/a", b"1"), ("put", b"app/a", b"2"),
            ("put", b"app/b", b"3"), ("put", b"app/c", b"3"), ("delete", b"app/a", b"")])
        self.assertEqual([e.revision for e in events],
                         [first, first + 2, txn.header.revision, txn.header.revision, txn.header.revision])
        self.assertEqual([e.prev_kv.value if e.prev_kv else None for e in events], [None, b"1", None, None, b"2"])

    def test_from_a_past_revision(self) -> None:
        revisions = [self.client.put("k", str(i)).header.revision for i in range(5)]
        watch = self.client.watch("k", start_revision=revisions[2])
        collector = self.collect(watch)
        events = collector.take(3)
        self.assertEqual([e.value for e in events], [b"2", b"3", b"4"])
        self.client.put("k", "5")
        self.assertEqual([e.value for e in collector.take(1)], [b"5"])

    def test_resumes_on_another_member_without_a_gap_or_a_duplicate(self) -> None:
        watch = self.client.watch("k")
        collector = self.collect(watch)
        self.wait_created(watch)
        for i in range(3):
            self.client.put("k", f"before {i}")
        self.assertEqual(len(collector.take(3)), 3)
        victim = [n.id for n in self.cluster.nodes.values() if n.endpoint == watch.endpoint][0]
        self.cluster.kill(victim)
        survivors = [n.endpoint for i, n in self.cluster.nodes.items() if i != victim]
        writer = Client(survivors, timeout_s=20)
        self.addCleanup(writer.close)
        for i in range(5):
            writer.put("k", f"after {i}")
        events = collector.take(5)
        self.assertEqual([e.value for e in events], [f"after {i}".encode() for i in range(5)])
        self.assertTrue(collector.events.empty())

    def test_the_cli(self) -> None:
        endpoint = self.cluster.nodes[1].endpoint
        start = self.client.put("cli", "one").header.revision
        self.client.put("cli", "two")
        self.client.delete("cli")
        done = subprocess.run(
            [sys.executable, "-m", "kvpaxos.client.cli", "--endpoints", endpoint, "watch", "cli",
             "--rev", str(start), "--prev-kv", "--max-events", "3"],
            capture_output=True, timeout=60, env=dict(os.environ, **self.cluster._env))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.decode().splitlines(), [
            "PUT", "cli", "one",
            "PUT", "cli", "one", "cli", "two",
            "DELETE", "cli", "two", "cli", ""])
