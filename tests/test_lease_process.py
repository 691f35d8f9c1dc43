"""
Leases on three real twistd nodes over gRPC (127.0.0.1, ephemeral ports;
every process killed by the harness, every wait bounded), through the
client library and the CLI: a key put with a lease lives past the TTL while
the client keeps the lease alive, and goes once it stops (never before the
TTL after the last renewal answered); a revoke deletes every key of the
lease at once; a lease kept alive survives the death of the leader (the new
one gives it its TTL and an election timeout afresh).  One cluster for the
class, started by its first test and stopped after its last.

At the defaults (ticks of 50 ms, 10 to an election) the election timeout
is 0.5 s and the shortest TTL granted ceil(1.5 x 0.5) = 1 s; the tests ask
for TTLs of 2 to 3 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from twisted.trial.unittest import TestCase

from kvpaxos.client import Client
from kvpaxos.testing.processes import ProcessCluster, SharedPerClass

#: The longest one wait of a test.
WAIT_S = 20.0
#: How often a test polls.
POLL_S = 0.05


class SharedCluster(SharedPerClass):
    """Mixed into a TestCase: its tests share one three-node L{ProcessCluster}, stopped after the last test."""

    def setUp(self) -> None:
        super().setUp()
        self.cluster = self.shared()

    def make_shared(self) -> ProcessCluster:
        cluster = ProcessCluster(self.mktemp(), size=3)
        type(self)._shared = cluster  # stopped even if it does not start
        cluster.start()
        cluster.wait_for_leader(timeout_s=30)
        return cluster


def wait_until(predicate, what: str, timeout_s: float = WAIT_S):
    """Poll C{predicate} until true (bounded); return its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"not {what} within {timeout_s}s")


class LeaseProcessTests(SharedCluster, TestCase):
    """Three nodes; a client that knows all three."""

    def client(self) -> Client:
        endpoints = [node.endpoint for _, node in sorted(self.cluster.nodes.items())]
        client = Client(endpoints, timeout_s=10, refresh_s=None)
        self.addCleanup(client.close)
        return client

    def test_expiry(self) -> None:
        """A kept-alive lease outlives its TTL; once renewals stop its key goes, no sooner than the TTL after."""
        kv = self.client()
        lease = kv.lease(2, revoke_on_close=False)
        self.assertEqual(lease.ttl, 2)
        kv.put(b"ex/k", b"v", lease=lease)
        held_until = time.monotonic() + 2 * lease.ttl
        while time.monotonic() < held_until:  # two TTLs, renewed every two thirds of a second
            self.assertEqual(kv.get(b"ex/k"), b"v")
            time.sleep(0.2)
        self.assertGreaterEqual(lease.renewed, 4)
        lease.close()  # renewals stop; the lease is not revoked
        valid_until = lease.valid_until
        wait_until(lambda: kv.get(b"ex/k") is None, "the key deleted by expiry")
        gone_at = time.monotonic()
        self.assertGreater(gone_at, valid_until, "deleted before the TTL after the last renewal")
        self.assertEqual(kv.lease_time_to_live(lease.id).ttl, -1)
        self.assertNotIn(lease.id, kv.leases())

    def test_revoke_and_cli(self) -> None:
        """The CLI grants, attaches, tells the time left with the keys, and revokes: the keys go at once."""
        kv = self.client()
        endpoints = ",".join(node.endpoint for _, node in sorted(self.cluster.nodes.items()))

        def cli(*arguments: str) -> str:
            done = subprocess.run([sys.executable, "-m", "kvpaxos.client.cli", "--endpoints", endpoints,
                                   *arguments], capture_output=True, timeout=WAIT_S, env=dict(os.environ))
            self.assertEqual(done.returncode, 0, done.stderr)
            return done.stdout.decode()

        granted = cli("lease", "grant", "60").split()
        lease_id = granted[1]
        self.assertEqual(granted[2:], ["granted", "with", "TTL(60s)"])
        for key in ("rv/a", "rv/b"):
            self.assertEqual(cli("put", key, "1", "--lease", lease_id), "OK\n")
        told = cli("lease", "timetolive", lease_id, "--keys")
        self.assertTrue(told.startswith(f"lease {lease_id} granted with TTL(60s), remaining("), told)
        self.assertTrue(told.endswith(", attached keys([rv/a rv/b])\n"), told)
        self.assertIn(int(lease_id, 16), kv.leases())
        self.assertEqual(cli("lease", "revoke", lease_id), f"lease {lease_id} revoked\n")
        self.assertEqual((kv.get(b"rv/a"), kv.get(b"rv/b")), (None, None))
        self.assertEqual(cli("lease", "timetolive", lease_id), f"lease {lease_id} already expired\n")

    def test_leader_killed(self) -> None:
        """A lease kept alive survives the leader's death: renewals go on with the new leader, the key stays."""
        kv = self.client()
        lease = kv.lease(2)
        kv.put(b"lk/k", b"v", lease=lease)
        leader = self.cluster.wait_for_leader()
        killed_at = time.monotonic()
        self.cluster.kill(leader)
        try:
            survivors = [i for i in self.cluster.nodes if i != leader]
            new_leader = self.cluster.wait_for_leader(timeout_s=WAIT_S, among=survivors)
            renewed = lease.renewed
            held_until = killed_at + 2 * lease.ttl  # past the TTL and an election timeout after the kill
            while time.monotonic() < held_until or lease.renewed < renewed + 2:
                self.assertEqual(kv.get(b"lk/k"), b"v")
                self.assertLess(time.monotonic(), killed_at + WAIT_S, "no renewals with the new leader")
                time.sleep(0.2)
            self.assertIsNone(lease.lost)
            self.assertNotEqual(new_leader, leader)
            self.assertGreater(kv.lease_time_to_live(lease.id).ttl, 0)
            lease.revoke()
            self.assertIsNone(kv.get(b"lk/k"))
        finally:
            self.cluster.start(leader)
            self.cluster.wait_for_leader(timeout_s=WAIT_S)
