"""
Tests for the wiring in L{kvpaxos.tap} that runs without twistd: the peer
network built from a node's configuration.  No global reactor, no real
ports.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kvpaxos.config import build
from kvpaxos.node.interfaces import IPeerTransport, Timing
from kvpaxos.tap import peer_network


class PeerNetworkWiringTests(SynchronousTestCase):
    """tap.peer_network passes the node's cluster id and timing to its PeerNetwork."""

    def test_cluster_id_and_timing(self):
        """The network carries the config's cluster id, its tick_ms, election_ticks and lease_reads."""
        node = build({
            "id": "2", "peers": "1=h1:1,3=h3:3", "cluster_token": "blue",
            "tick_ms": 20, "election_ticks": 15, "lease_reads": True,
        })
        network = peer_network(node, object(), MemoryReactorClock())
        self.assertTrue(verifyObject(IPeerTransport, network))
        self.assertEqual(network.cluster_id, node.cluster_id)
        self.assertEqual(network.timing, Timing(tick_ms=20, election_ticks=15, lease_reads=True))
        self.assertEqual(network.node_id, 2)
        self.assertEqual(
            sorted(s.name for s in network), ["peer-1", "peer-3"]
        )
