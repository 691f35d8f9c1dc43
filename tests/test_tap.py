"""
Tests for the wiring in L{kvpaxos.tap} that runs without twistd: the peer
network built from a node's configuration, and the exit status of a node
that stops on a fatal error.  No global reactor, no real ports.
"""

from __future__ import annotations

import io

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kvpaxos.config import build
from kvpaxos.node.interfaces import IPeerTransport, Timing
from kvpaxos.node.service import ReplicaService
from kvpaxos.paxos import Options as CoreOptions
from kvpaxos.storage.memory import MemoryStore
from kvpaxos.tap import exit_if_fatal, peer_network


class FakeReplica:
    """What exit_if_fatal reads of a ReplicaService."""

    def __init__(self, fatal_error=None):
        self.fatal_error = fatal_error


class ExitIfFatalTests(SynchronousTestCase):
    """The after-shutdown trigger that turns a fatal stop into exit status 1."""

    def run_trigger(self, replica):
        exits, stderr = [], io.StringIO()
        exit_if_fatal(replica, exit=exits.append, stderr=stderr)
        return exits, stderr.getvalue()

    def test_fatal_exits_1(self):
        """A replica that stopped on a fatal error ends the process with status 1 and one line on stderr."""
        exits, err = self.run_trigger(FakeReplica("commit failed: MDB_PANIC\n(see log)"))
        self.assertEqual(exits, [1])
        self.assertEqual(err, "kvpaxos: fatal: commit failed: MDB_PANIC (see log)\n")

    def test_clean_stop_does_nothing(self):
        """A replica with no fatal error leaves the exit to twistd."""
        self.assertEqual(self.run_trigger(FakeReplica()), ([], ""))

    def test_replica_without_attribute(self):
        """A replica that has no fatal_error attribute at all is a clean stop."""
        self.assertEqual(self.run_trigger(object()), ([], ""))

    def test_empty_reason(self):
        """An empty reason still exits 1, and says no reason was given."""
        exits, err = self.run_trigger(FakeReplica(""))
        self.assertEqual((exits, err), ([1], "kvpaxos: fatal: (no reason given)\n"))


class PeerNetworkWiringTests(SynchronousTestCase):
    """tap.peer_network passes the node's cluster id and timing to its PeerNetwork."""

    def test_cluster_id_and_timing(self):
        """
        The network carries the config's cluster id, and the replica's own
        timing (its tick_ms, election_ticks and lease_reads): what the
        replica compares its peers' reports with.
        """
        node = build({
            "id": "2", "peers": "1=h1:1,3=h3:3", "cluster_token": "blue",
            "tick_ms": 20, "election_ticks": 15, "lease_reads": True,
        })
        replica = ReplicaService(
            node.node_id, MemoryStore(), MemoryReactorClock(),
            CoreOptions(election_ticks=node.election_ticks),
            tick_s=node.tick_ms / 1000.0, lease_reads=node.lease_reads,
        )
        network = peer_network(node, replica, MemoryReactorClock())
        self.assertTrue(verifyObject(IPeerTransport, network))
        self.assertEqual(network.cluster_id, node.cluster_id)
        self.assertEqual(network.timing, Timing(tick_ms=20, election_ticks=15, lease_reads=True))
        self.assertEqual(network.node_id, 2)
        self.assertEqual(
            sorted(s.name for s in network), ["peer-1", "peer-3"]
        )
