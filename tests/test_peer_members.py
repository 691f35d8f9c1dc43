"""
Tests for the membership commands of a peer link (L{kvpaxos.node.peer_members},
issue 11): MemberChange carried to the leader with its errors crossing, Join
before any Hello, the addresses a Hello carries, and L{PeerNetwork.set_peers}
refusing a removed member.  AMP pairs over L{twisted.test.iosim}; no ports.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.node.interfaces import MembershipRejected, NotLeaderError, Unavailable
from kvpaxos.node.peer_commands import (
    Hello,
    Join,
    MemberChange,
    NotIdentified,
    PeerRequestError,
    PeerUnreachable,
    RemovedMember,
    UnknownMember,
    WrongCluster,
)
from kvpaxos.node.peers import PeerNetwork
from tests.test_peer_handshake import hello
from tests.test_peers import CLUSTER, PairMixin, RecordingNode, listener


class MemberNode(RecordingNode):
    """A RecordingNode that also takes membership calls."""

    def __init__(self):
        super().__init__()
        self.changes = []
        self.joins = []
        self.reported = []
        self.change_answer = lambda: succeed(7)
        #: Members whose removal this node's log has chosen.
        self.removed_ids = set()

    def was_removed(self, member):
        return member in self.removed_ids

    def member_change_requested(self, kind, node, peer, client, force, timeout_s):
        self.changes.append((kind, node, peer, client, force, timeout_s))
        return self.change_answer()

    def join_requested(self, member, peer, client, timeout_s):
        self.joins.append((member, peer, client, timeout_s))
        return self.change_answer()

    def peer_addresses_reported(self, member, peer, client):
        self.reported.append((member, peer, client))


class MemberChangeTests(PairMixin, SynchronousTestCase):
    """A follower carries a change to the leader; the answer or the error comes back."""

    def setUp(self):
        super().setUp()
        self.node = MemberNode()
        self.server.handler = self.node

    def carry(self, timeout_s=2.0):
        return self.results(self.client.member_change("add-learner", 4, "h:1", "h:2", True, timeout_s))

    def test_answered_with_slot(self):
        """The leader's answer is the slot the change was chosen in; the arguments arrive as sent."""
        self.assertEqual(self.carry(), 7)
        self.assertEqual(self.node.changes, [("add-learner", 4, "h:1", "h:2", True, 2.0)])

    def test_errors_cross(self):
        """REJECTED, NOT_LEADER (with the leader) and UNAVAILABLE come back as the node's errors."""
        for error, kind in ((MembershipRejected("node 4 is already a member"), MembershipRejected),
                            (Unavailable("timed out"), Unavailable),
                            (NotLeaderError(3), NotLeaderError)):
            self.node.change_answer = lambda: fail(error)
            failure = self.carry()
            failure.trap(kind)
            self.assertIs(type(failure.value), kind)
            if kind is NotLeaderError:
                self.assertEqual(failure.value.leader, 3)
            else:
                self.assertEqual(str(failure.value), str(error))

    def test_other_error_is_peer_error(self):
        """Any other failure crosses as PEER_ERROR, logged on the leader; the link stays."""
        self.node.change_answer = lambda: fail(RuntimeError("disk on fire"))
        self.carry().trap(PeerRequestError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(self.client.transport.disconnecting)

    def test_timeout(self):
        """A change the leader never answers fails after the timeout (plus a margin)."""
        self.node.change_answer = Deferred
        d = self.client.member_change("promote", 4, "", "", False, 2.0)
        self.pump.flush()
        self.clock.advance(3.1)
        self.results(d).trap(TimeoutError)

    def test_bad_kind_refused(self):
        """A kind that is no membership change is refused without reaching the node."""
        out = []
        self.client.callRemote(MemberChange, kind="add-voter", node=4, peer="", client="",
                               force=False, timeout_ms=1000).addBoth(out.append)
        self.pump.flush()
        out[0].trap(PeerRequestError)
        self.assertEqual(self.node.changes, [])


class RawJoinTests(SynchronousTestCase):
    """Join is taken before any Hello, only for this cluster."""

    def setUp(self):
        self.node = MemberNode()
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: listener(self.node, None, is_member=lambda m: m in (1, 3)), amp.AMP,
        )

    def call(self, command, **arguments):
        out = []
        self.client.callRemote(command, **arguments).addBoth(out.append)
        self.pump.flush()
        return out[0]

    def test_join_before_hello(self):
        """A Join of this cluster from an unknown member is handed to the node and answered."""
        self.assertEqual(self.call(Join, cluster=CLUSTER, member=4, peer="h4:1", client="h4:2",
                                   timeout_ms=5000), {})
        self.assertEqual(self.node.joins, [(4, "h4:1", "h4:2", 5.0)])

    def test_join_outlives_hello_deadline(self):
        """A Join waiting for its change keeps the connection past the Hello deadline, within its own timeout."""
        clock = Clock()
        self.node.change_answer = Deferred
        client, server, pump = iosim.connectedServerAndClient(
            lambda: listener(self.node, clock), amp.AMP,
        )
        out = []
        client.callRemote(Join, cluster=CLUSTER, member=4, peer="h4:1", client="h4:2",
                          timeout_ms=10_000).addBoth(out.append)
        pump.flush()
        clock.advance(6)
        pump.flush()
        self.assertFalse(pump.serverIO.disconnected)
        clock.advance(10)
        pump.flush()
        self.assertTrue(pump.serverIO.disconnected)

    def test_join_other_cluster_refused(self):
        """A Join naming another cluster is refused WRONG_CLUSTER and never reaches the node."""
        self.call(Join, cluster=CLUSTER ^ 1, member=4, peer="h4:1", client="h4:2",
                  timeout_ms=5000).trap(WrongCluster)
        self.assertEqual(self.node.joins, [])

    def test_join_rejected(self):
        """The node's refusal of a Join crosses as REJECTED."""
        self.node.change_answer = lambda: fail(MembershipRejected("node 4 is already a member"))
        failure = self.call(Join, cluster=CLUSTER, member=4, peer="h4:1", client="h4:2",
                            timeout_ms=5000)
        failure.trap(MembershipRejected)

    def test_member_change_before_hello_refused(self):
        """A MemberChange before the handshake is refused NOT_IDENTIFIED."""
        self.call(MemberChange, kind="promote", node=4, peer="", client="", force=False,
                  timeout_ms=1000).trap(NotIdentified)

    def test_hello_addresses_reported(self):
        """The addresses a Hello carries are reported to the node."""
        self.call(Hello, peer_address="h1:1", client_address="h1:2", **hello())
        self.assertEqual(self.node.reported, [(1, "h1:1", "h1:2")])


class NetworkMembershipTests(SynchronousTestCase):
    """PeerNetwork follows set_peers: a dropped member is refused and its links closed."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.network = PeerNetwork(1, {2: ("h2", 2), 3: ("h3", 3)}, MemberNode(), self.reactor,
                                   cluster_id=CLUSTER, addresses=("h1:1", "h1:2"))
        self.network.startService()
        self.addCleanup(self.network.stopService)

    def incoming(self, member):
        """A link peer C{member} opens to this node, through its Hello."""
        client, server, pump = iosim.connectedServerAndClient(
            lambda: self.network.server_factory().buildProtocol(None), amp.AMP
        )
        out = []
        client.callRemote(Hello, **hello(member=member)).addBoth(out.append)
        pump.flush()
        return out[0], pump

    def test_removed_member_refused_and_closed(self):
        """After set_peers drops node 3, its open link is closed and a new Hello from it refused."""
        answer, pump = self.incoming(3)
        self.assertEqual(answer["peer_address"], "h1:1")
        self.network.set_peers({2: ("h2", 2)})
        pump.flush()
        self.assertTrue(pump.serverIO.disconnected)
        self.incoming(3)[0].trap(UnknownMember)
        self.assertEqual(sorted(s.name for s in self.network), ["peer-2"])

    def test_removed_member_told(self):
        """
        A Hello from a member whose removal this node has chosen is refused
        REMOVED_MEMBER (so it learns it was removed and stops), not only
        UNKNOWN_MEMBER; one this node never knew is refused UNKNOWN_MEMBER.
        """
        self.network.handler.removed_ids = {3}
        self.network.set_peers({2: ("h2", 2)})
        failure = self.incoming(3)[0]
        failure.trap(RemovedMember)
        self.assertIn("member 3 was removed", failure.getErrorMessage())
        other = self.incoming(9)[0]
        other.trap(UnknownMember)
        self.assertFalse(other.check(RemovedMember))

    def test_member_change_without_link(self):
        """Carrying a change to a node with no link fails PeerUnreachable (certainly not sent)."""
        self.failureResultOf(
            self.network.member_change(2, "promote", 4, "", "", False, 1.0), PeerUnreachable
        )
