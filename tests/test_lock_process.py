"""
The lock and election recipes (L{kvpaxos.client.concurrency_blocking}) on
three real twistd nodes (127.0.0.1, ephemeral ports; every process killed by
the harness or the test, every wait bounded): two contenders never hold the
lock at once (a counter incremented under a txn guarded by the lock key's
create revision loses nothing); a waiter gets the lock when the holder
unlocks, when the holder's lease is revoked and when it runs out, and the
old holder's guarded write is then refused; an election's leader changes
on resign, as an observer sees it; the CLI's C{lock}; and etcdctl's C{elect}
and C{lock} on the etcd port queue behind a kvpaxos candidate and holder
(same keys).  One
cluster for the class.
"""

from __future__ import annotations

import asyncio
import io
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvpaxos.client import AsyncClient, Client, cli, LeaseExpired, NotElected, put_op
from kvpaxos.testing.processes import ProcessCluster, SharedPerClass, free_port

#: The longest one wait of a test.
WAIT_S = 20.0
#: How often a test polls.
POLL_S = 0.02


def wait_until(predicate, what: str, timeout_s: float = WAIT_S):
    """Poll C{predicate} until true (bounded); return its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"not {what} within {timeout_s}s")


class Lines:
    """A process's stdout read by a thread of its own, so that each line is awaited with a bound."""

    def __init__(self, process: subprocess.Popen) -> None:
        self._lines: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self._lines.put(line.decode("utf-8", "replace").rstrip("\n"))

    def next(self, timeout_s: float = WAIT_S) -> str:
        return self._lines.get(timeout=timeout_s)


class SharedCluster(SharedPerClass):
    """Mixed into a TestCase: one three-node cluster with etcd ports, stopped after the last test."""

    def setUp(self) -> None:
        super().setUp()
        self.cluster = self.shared()

    def make_shared(self) -> ProcessCluster:
        ports = {i: free_port() for i in (1, 2, 3)}
        cluster = ProcessCluster(self.mktemp(), size=3, node_settings={
            i: {"etcd_addr": f"127.0.0.1:{port}"} for i, port in ports.items()})
        cluster.etcd_endpoints = [f"127.0.0.1:{ports[i]}" for i in sorted(ports)]
        type(self)._shared = cluster  # stopped even if it does not start
        cluster.start()
        cluster.wait_for_leader(timeout_s=30)
        return cluster


class LockProcessTests(SharedCluster, TestCase):
    """Three nodes; clients that know all three."""

    def endpoints(self) -> list:
        return [node.endpoint for _, node in sorted(self.cluster.nodes.items())]

    def client(self) -> Client:
        client = Client(self.endpoints(), timeout_s=10, refresh_s=None)
        self.addCleanup(client.close)
        return client

    def spawn(self, argv: list, **kwargs) -> subprocess.Popen:
        """Start a process this test kills (if still running) when it ends."""
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)

        def reap() -> None:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=WAIT_S)
        self.addCleanup(reap)
        return process

    def contenders(self, kv: Client, prefix: bytes) -> int:
        return len(kv.range(prefix, prefix=True, keys_only=True).kvs)

    def test_two_contenders_never_hold_at_once(self) -> None:
        """Two clients take turns ten times each; every guarded increment lands, none is lost."""
        turns, inside, overlaps, failures = 10, [0], [], []
        guard_lock = threading.Lock()

        def contend(kv: Client) -> None:
            try:
                for _ in range(turns):
                    with kv.lock("ctr", ttl=5, timeout_s=WAIT_S) as lock:
                        with guard_lock:
                            inside[0] += 1
                            if inside[0] > 1:
                                overlaps.append(lock.key)
                        value = int(kv.get(b"ctr-count") or b"0")
                        written = kv.txn([lock.guard()], [put_op(b"ctr-count", b"%d" % (value + 1))])
                        if not written.succeeded:
                            failures.append(lock.key)
                        with guard_lock:
                            inside[0] -= 1
            except BaseException as error:  # reported by the test thread
                failures.append(error)

        threads = [threading.Thread(target=contend, args=(self.client(),)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        self.assertFalse(any(thread.is_alive() for thread in threads), "a contender never finished")
        self.assertEqual((overlaps, failures), ([], []))
        kv = self.client()
        self.assertEqual(kv.get(b"ctr-count"), b"%d" % (2 * turns))
        self.assertEqual(self.contenders(kv, b"ctr/"), 0)

    def _waiter(self, kv: Client, name: str, prefix: bytes):
        """A second contender waiting in a thread (after a try-lock failed); returns the lock and the thread."""
        waiter = kv.lock(name, ttl=5)
        self.assertFalse(waiter.acquire(0), "acquired while held")
        self.assertEqual(self.contenders(kv, prefix), 1, "a try-lock left its key behind")
        results: list = []
        thread = threading.Thread(target=lambda: results.append(waiter.acquire(WAIT_S)))
        thread.start()
        self.addCleanup(thread.join, WAIT_S)
        wait_until(lambda: self.contenders(kv, prefix) == 2, "the waiter queued")
        return waiter, thread, results

    def test_waiter_gets_the_lock_on_unlock(self) -> None:
        """A waiter gets the lock once the holder unlocks; its key was created later."""
        kv = self.client()
        holder = kv.lock("un", ttl=5)
        self.assertTrue(holder.acquire(WAIT_S))
        first = holder.revision
        waiter, thread, results = self._waiter(self.client(), "un", b"un/")
        self.assertTrue(holder.release())
        thread.join(WAIT_S)
        self.assertEqual(results, [True])
        self.assertGreater(waiter.revision, first)
        self.assertTrue(waiter.held)
        self.assertTrue(waiter.release())
        self.assertEqual(self.contenders(kv, b"un/"), 0)

    def test_waiter_gets_the_lock_when_the_holder_lease_is_revoked(self) -> None:
        """Revoking the holder's lease hands the lock on; the old holder's guarded write is refused."""
        kv = self.client()
        lease = kv.lease(30)
        self.addCleanup(lease.close)
        holder = kv.lock("rv", lease=lease)
        self.assertTrue(holder.acquire(WAIT_S))
        waiter, thread, results = self._waiter(self.client(), "rv", b"rv/")
        self.client().lease_revoke(lease.id)
        thread.join(WAIT_S)
        self.assertEqual(results, [True])
        self.assertFalse(kv.txn([holder.guard()], [put_op(b"rv-fenced", b"old holder")]).succeeded)
        self.assertTrue(kv.txn([waiter.guard()], [put_op(b"rv-fenced", b"new holder")]).succeeded)
        self.assertEqual(kv.get(b"rv-fenced"), b"new holder")
        self.assertFalse(holder.release(), "the old holder still held the lock")
        waiter.release()

    def test_waiter_gets_the_lock_when_the_holder_lease_runs_out(self) -> None:
        """A holder that stops renewing (frozen, cut off) loses the lock after its TTL; the waiter gets it."""
        kv = self.client()
        lease = kv.lease(1)
        holder = kv.lock("ex", lease=lease)
        self.assertTrue(holder.acquire(WAIT_S))
        waiter, thread, results = self._waiter(self.client(), "ex", b"ex/")
        lease.close(revoke=False)  # renewals stop; the holder still believes it holds
        thread.join(WAIT_S)
        self.assertEqual(results, [True])
        self.assertFalse(kv.txn([holder.guard()], [put_op(b"ex-fenced", b"old holder")]).succeeded)
        self.assertIsNone(kv.get(b"ex-fenced"))
        waiter.release()

    def test_a_waiter_whose_lease_is_revoked_stops_waiting(self) -> None:
        """A waiter's wait ends (LeaseExpired) once a renewal finds its lease revoked; the holder keeps the lock."""
        kv = self.client()
        holder = kv.lock("wr", ttl=5)
        self.assertTrue(holder.acquire(WAIT_S))
        other = self.client()
        lease = other.lease(2)
        waiter = other.lock("wr", lease=lease)
        outcome: list = []

        def wait() -> None:
            try:
                outcome.append(waiter.acquire(WAIT_S))
            except LeaseExpired as error:
                outcome.append(error)
        thread = threading.Thread(target=wait)
        thread.start()
        self.addCleanup(thread.join, WAIT_S)
        wait_until(lambda: self.contenders(kv, b"wr/") == 2, "the waiter queued")
        kv.lease_revoke(lease.id)
        thread.join(WAIT_S)
        self.assertEqual([type(o) for o in outcome], [LeaseExpired])
        self.assertEqual(self.contenders(kv, b"wr/"), 1)
        self.assertTrue(holder.held)
        self.assertTrue(holder.release())

    def test_election_leader_changes_on_resign(self) -> None:
        """The first candidate leads; its proclaim and its resign are observed, and the second then leads."""
        kv, other = self.client(), self.client()
        first = kv.election("el", ttl=5)
        self.assertTrue(first.campaign("one", WAIT_S))
        seen: queue.Queue = queue.Queue()
        observation = self.client().election("el").observe()
        self.addCleanup(observation.close)
        watcher = threading.Thread(target=lambda: [seen.put(leader.value) for leader in observation], daemon=True)
        watcher.start()
        self.assertEqual(seen.get(timeout=WAIT_S), b"one")
        second = other.election("el", ttl=5)
        results: list = []
        thread = threading.Thread(target=lambda: results.append(second.campaign("two", WAIT_S)))
        thread.start()
        self.addCleanup(thread.join, WAIT_S)
        wait_until(lambda: self.contenders(kv, b"el/") == 2, "the second candidate queued")
        first.proclaim("one, again")
        self.assertEqual(seen.get(timeout=WAIT_S), b"one, again")
        self.assertTrue(first.resign())
        self.assertEqual(seen.get(timeout=WAIT_S), b"two")
        thread.join(WAIT_S)
        self.assertEqual(results, [True])
        self.assertEqual(kv.election("el").leader().value, b"two")
        self.assertRaises(NotElected, first.proclaim, "not mine")
        self.assertTrue(second.resign())
        self.assertIsNone(kv.election("el").leader())

    def test_async_lock_and_election(self) -> None:
        """The asyncio twins: contending tasks take turns (every guarded increment lands); a campaign leads, resigns."""
        async def scenario() -> tuple:
            async with AsyncClient(self.endpoints(), timeout_s=10, refresh_s=None) as kv:
                async def contend() -> None:
                    for _ in range(5):
                        async with kv.lock("actr", ttl=5, timeout_s=WAIT_S) as lock:
                            value = int(await kv.get(b"actr-count") or b"0")
                            written = await kv.txn([lock.guard()], [put_op(b"actr-count", b"%d" % (value + 1))])
                            self.assertTrue(written.succeeded)
                await asyncio.wait_for(asyncio.gather(contend(), contend()), WAIT_S)
                election = kv.election("ael", ttl=5)
                elected = await election.campaign("first", WAIT_S)
                leader = (await election.leader()).value
                observation = election.observe()
                seen = []

                async def observe() -> None:
                    async for record in observation:
                        seen.append(record.value)
                        if len(seen) == 2:
                            return
                observer = asyncio.ensure_future(observe())
                while not seen:
                    await asyncio.sleep(POLL_S)
                await election.proclaim("second")
                await asyncio.wait_for(observer, WAIT_S)
                await observation.close()
                resigned = await election.resign()
                return await kv.get(b"actr-count"), elected, leader, seen, resigned, await election.leader()

        self.assertEqual(asyncio.run(scenario()), (b"10", True, b"first", [b"first", b"second"], True, None))

    def cli(self, *arguments: str) -> list:
        return [sys.executable, "-m", "kvpaxos.client.cli", "--endpoints", ",".join(self.endpoints()), *arguments]

    def test_cli_lock(self) -> None:
        """
        kvpaxos lock waits behind a holder (SIGINT while waiting withdraws), then runs its command holding the
        lock; without a command it holds the lock until SIGTERM.
        """
        kv = self.client()
        holder = kv.lock("cl", ttl=5)
        self.assertTrue(holder.acquire(WAIT_S))
        waiting = self.spawn(self.cli("lock", "cl", "--", "sh", "-c", 'echo "$KVPAXOS_LOCK_KEY $KVPAXOS_LOCK_REV"'))
        wait_until(lambda: self.contenders(kv, b"cl/") == 2, "the CLI queued")
        self.assertIsNone(waiting.poll(), "the CLI ran its command while the lock was held")
        interrupted = self.spawn(self.cli("lock", "cl"))
        wait_until(lambda: self.contenders(kv, b"cl/") == 3, "a second CLI queued")
        interrupted.send_signal(signal.SIGINT)  # while waiting: it withdraws and fails
        self.assertEqual(interrupted.wait(WAIT_S), 1)
        self.assertEqual(self.contenders(kv, b"cl/"), 2)
        holder.release()
        out, err = waiting.communicate(timeout=WAIT_S)
        self.assertEqual(waiting.returncode, 0, err)
        key, revision = out.decode().split()
        self.assertTrue(key.startswith("cl/"), key)
        self.assertGreater(int(revision), 0)
        self.assertEqual(self.contenders(kv, b"cl/"), 0)

        holding = self.spawn(self.cli("lock", "cl"))
        lines = Lines(holding)
        key = lines.next()
        self.assertEqual(lines.next(), "")  # the key's value, as etcdctl prints it
        self.assertIsNotNone(kv.get_kv(key))
        holding.send_signal(signal.SIGTERM)
        self.assertEqual(holding.wait(WAIT_S), 0)
        self.assertIsNone(kv.get_kv(key))

    def test_etcdctl_elect_queues_behind_a_kvpaxos_candidate(self) -> None:
        """etcdctl elect on the etcd port waits while a kvpaxos client leads, then leads (the same keys)."""
        if shutil.which("etcdctl") is None:
            self.fail("etcdctl not installed (Debian's etcd-client; .ci/run installs it)")
        kv = self.client()
        ours = kv.election("ee", ttl=5)
        self.assertTrue(ours.campaign("kvpaxos", WAIT_S))
        env = dict(os.environ, ETCDCTL_API="3")
        theirs = self.spawn(["etcdctl", "--endpoints", self.cluster.etcd_endpoints[0], "elect", "ee", "etcdctl"],
                            env=env)
        lines = Lines(theirs)
        wait_until(lambda: self.contenders(kv, b"ee/") == 2, "etcdctl queued")
        self.assertIsNone(theirs.poll(), "etcdctl was elected while a kvpaxos candidate led")
        self.assertTrue(ours.resign())
        key = lines.next()
        self.assertEqual(lines.next(), "etcdctl")
        self.assertEqual(kv.election("ee").leader().key.decode(), key)
        theirs.send_signal(signal.SIGINT)  # etcdctl resigns
        theirs.wait(WAIT_S)
        self.assertIsNone(kv.election("ee").leader())


    def test_etcdctl_lock_queues_behind_a_kvpaxos_holder(self) -> None:
        """
        etcdctl lock on the etcd port (its first transaction reads the
        owner sorted by create revision) waits while a kvpaxos client holds
        the lock, then runs its command holding it, and lets it go.
        """
        if shutil.which("etcdctl") is None:
            self.fail("etcdctl not installed (Debian's etcd-client; .ci/run installs it)")
        kv = self.client()
        holder = kv.lock("el", ttl=5)
        self.assertTrue(holder.acquire(WAIT_S))
        env = dict(os.environ, ETCDCTL_API="3")
        theirs = self.spawn(["etcdctl", "--endpoints", self.cluster.etcd_endpoints[1], "lock", "el",
                             "--", "sh", "-c", 'echo "$ETCD_LOCK_KEY $ETCD_LOCK_REV"'], env=env)
        wait_until(lambda: theirs.poll() is not None or self.contenders(kv, b"el/") == 2, "etcdctl queued")
        if theirs.poll() is not None:
            self.fail(f"etcdctl ended while a kvpaxos client held the lock: {theirs.communicate(timeout=WAIT_S)}")
        ours = holder.revision
        holder.release()
        out, err = theirs.communicate(timeout=WAIT_S)
        self.assertEqual(theirs.returncode, 0, err)
        key, revision = out.decode().split()
        self.assertTrue(key.startswith("el/"), key)
        self.assertGreater(int(revision), ours + 1)  # etcd's revisions are kvpaxos's + 1
        self.assertEqual(self.contenders(kv, b"el/"), 0)


class RecipeCommandLineTests(SynchronousTestCase):
    """How C{kvpaxos lock} and C{kvpaxos elect} are parsed (no processes)."""

    def parse(self, *argv: str):
        return cli.parse(list(argv), io.BytesIO(), io.BytesIO()).recipe

    def usage(self, *argv: str) -> str:
        out, err = io.BytesIO(), io.BytesIO()
        self.assertEqual(cli.main(list(argv), stdout=out, stderr=err), cli.EXIT_USAGE)
        return err.getvalue().decode()

    def test_lock(self) -> None:
        """A lock takes a name, etcdctl's TTL of 10 s by default, and the command after --, options and all."""
        recipe = self.parse("lock", "jobs", "--", "ls", "-l")
        self.assertEqual((recipe.name, recipe.ttl, recipe.command, recipe.max_wait_s), ("jobs", 10, ("ls", "-l"), None))
        recipe = self.parse("lock", "jobs", "--ttl", "3", "--max-wait", "1.5")
        self.assertEqual((recipe.ttl, recipe.command, recipe.max_wait_s), (3, (), 1.5))

    def test_elect(self) -> None:
        """An election takes a value to campaign with (a 60 s lease, etcd's session default), or --listen."""
        recipe = self.parse("elect", "primary", "node-1")
        self.assertEqual((recipe.name, recipe.value, recipe.listen, recipe.ttl), ("primary", b"node-1", False, 60))
        self.assertTrue(self.parse("elect", "primary", "--listen").listen)

    def test_usage_errors(self) -> None:
        """elect needs exactly one of a value and --listen; a TTL is a positive whole number."""
        self.assertIn("give a VALUE to campaign with, or --listen", self.usage("elect", "primary"))
        self.assertIn("not both", self.usage("elect", "primary", "v", "--listen"))
        self.assertIn("bad TTL", self.usage("lock", "jobs", "--ttl", "0"))
