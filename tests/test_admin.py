"""
Tests for the admin AMP server (L{kvpaxos.admin.server}): commands map to
node calls and node errors to AMP errors, over an in-memory connection.
"""

import struct

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.admin.commands import (
    MemberAdd,
    MemberList,
    MemberPromote,
    MemberRemove,
    Rejected,
    Status,
    TransferLeadership,
    Unavailable,
)
from kvpaxos.admin.server import AdminProtocol
from kvpaxos.node.interfaces import (
    MemberInfo,
    MembershipRejected,
    MemberView,
    NodeStatus,
    NotLeaderError,
)
from kvpaxos.node.interfaces import Unavailable as NodeUnavailable

VIEW = MemberView(
    0xABC, 2,
    (MemberInfo(1, "voter", "10.0.0.1:2380", "10.0.0.1:2379"),
     MemberInfo(2, "voter", "10.0.0.2:2380", ""),
     MemberInfo(4, "learner", "10.0.0.4:2380", "10.0.0.4:2379")),
)
LISTED = {
    "cluster_id": 0xABC,
    "leader": 2,
    "members": [
        {"id": 1, "role": "voter", "peer": "10.0.0.1:2380", "client": "10.0.0.1:2379"},
        {"id": 2, "role": "voter", "peer": "10.0.0.2:2380", "client": ""},
        {"id": 4, "role": "learner", "peer": "10.0.0.4:2380", "client": "10.0.0.4:2379"},
    ],
}


class FakeNode:
    """An IMembership that records its calls and answers as told."""

    node_id = 2

    def __init__(self, error=None):
        self.error = error
        self.calls = []
        #: The admin port's idle timeouts run on it, not on the global reactor.
        self.reactor = Clock()

    def status(self):
        return NodeStatus(2, "leader", 2, (1, 2, 3), (4,), 17, 16)

    def members(self):
        return VIEW

    def _answer(self, *call):
        self.calls.append(call)
        return defer.fail(self.error) if self.error is not None else defer.succeed(VIEW)

    def member_add(self, node_id, peer, client, timeout_s):
        return self._answer("add", node_id, peer, client)

    def member_promote(self, node_id, timeout_s):
        return self._answer("promote", node_id)

    def member_remove(self, node_id, force, timeout_s):
        return self._answer("remove", node_id, force)

    def leader_transfer(self, target, timeout_s):
        return self._answer("transfer", target)


class AdminTests(SynchronousTestCase):
    """The admin protocol translates and decides nothing."""

    def connect(self, node):
        client, server, pump = connectedServerAndClient(
            lambda: AdminProtocol(node), amp.AMP
        )
        return client, pump

    def call(self, node, command, **arguments):
        """Return a Deferred with the outcome of one command."""
        client, pump = self.connect(node)
        outcome = []
        # AMP drops the connection over an error nobody handled by the time
        # the answer arrives, so take the outcome before pumping.
        client.callRemote(command, **arguments).addBoth(outcome.append)
        pump.flush()
        return defer.fail(outcome[0]) if isinstance(outcome[0], Failure) else defer.succeed(outcome[0])

    def test_status(self):
        """Status returns the node's view of the cluster."""
        result = self.successResultOf(self.call(FakeNode(), Status))
        self.assertEqual(
            result,
            {
                "member_id": 2, "role": "leader", "leader": 2, "voters": [1, 2, 3],
                "learners": [4], "chosen_index": 17, "applied_index": 16,
            },
        )

    def test_member_list(self):
        """MemberList returns the node's member view: cluster id, leader, members with addresses."""
        self.assertEqual(self.successResultOf(self.call(FakeNode(), MemberList)), LISTED)

    def test_member_add(self):
        """MemberAdd passes id and addresses to the node and answers the member list after it."""
        node = FakeNode()
        result = self.successResultOf(
            self.call(node, MemberAdd, id=4, peer="10.0.0.4:2380", client="10.0.0.4:2379")
        )
        self.assertEqual(result, LISTED)
        self.assertEqual(node.calls, [("add", 4, "10.0.0.4:2380", "10.0.0.4:2379")])

    def test_member_promote(self):
        """MemberPromote passes the id and answers the member list."""
        node = FakeNode()
        self.assertEqual(self.successResultOf(self.call(node, MemberPromote, id=4)), LISTED)
        self.assertEqual(node.calls, [("promote", 4)])

    def test_member_remove(self):
        """MemberRemove passes the id and force (false when left out)."""
        node = FakeNode()
        self.successResultOf(self.call(node, MemberRemove, id=3))
        self.successResultOf(self.call(node, MemberRemove, id=3, force=True))
        self.assertEqual(node.calls, [("remove", 3, False), ("remove", 3, True)])

    def test_transfer(self):
        """TransferLeadership asks the node to hand leadership to the target."""
        node = FakeNode()
        self.assertEqual(self.successResultOf(self.call(node, TransferLeadership, target=3)), {})
        self.assertEqual(node.calls, [("transfer", 3)])

    def errors(self, error, expected):
        """Every change command fails with C{expected} when the node fails with C{error}."""
        for command, arguments in (
            (MemberAdd, dict(id=4, peer="h:1", client="h:2")),
            (MemberPromote, dict(id=4)),
            (MemberRemove, dict(id=4)),
            (TransferLeadership, dict(target=4)),
        ):
            failure = self.failureResultOf(self.call(FakeNode(error), command, **arguments), expected)
            self.assertEqual(failure.getErrorMessage(), str(error))

    def test_rejected(self):
        """MembershipRejected crosses as REJECTED with its sentence."""
        self.errors(MembershipRejected("node 4 is already a member"), Rejected)

    def test_unavailable(self):
        """Unavailable (no leader, not chosen in time) crosses as UNAVAILABLE."""
        self.errors(NodeUnavailable("timed out after 10 s waiting for a leader"), Unavailable)

    def test_not_leader_unavailable(self):
        """NotLeaderError is an Unavailable: it crosses as UNAVAILABLE naming the leader."""
        self.errors(NotLeaderError(1), Unavailable)


class FloodTests(SynchronousTestCase):
    """Limits of the admin port against floods (issue 13, part 6): box size and open connections."""

    def connect(self, factory):
        from twisted.internet.testing import StringTransport

        protocol = factory.buildProtocol(("127.0.0.1", 1))
        if protocol is None:
            return None, None
        transport = StringTransport()
        transport.abortConnection = lambda: setattr(transport, "aborted", True)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_box_over_the_limit_closes_the_connection(self):
        """A box that never ends is not buffered past the limit: the connection is aborted, and it is logged."""
        from twisted.logger import globalLogPublisher

        from kvpaxos.admin import server

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        protocol, transport = self.connect(server.admin_factory(FakeNode()))
        value = b"x" * 60_000
        pair = struct.pack(">H", 1) + b"k" + struct.pack(">H", len(value)) + value
        protocol.dataReceived(pair)
        self.assertFalse(getattr(transport, "aborted", False))  # 60 kB: within the limit
        protocol.dataReceived(pair * 3)
        self.assertTrue(transport.aborted)
        admin = protocol.wrappedProtocol
        self.assertLessEqual(admin._box_bytes, server.BOX_BYTES_MAX + len(pair))
        protocol.dataReceived(pair * 10)  # after the drop: ignored, not buffered
        self.assertLessEqual(admin._box_bytes, server.BOX_BYTES_MAX + len(pair))
        self.assertTrue(any("a box over" in e.get("log_format", "") for e in events))

    def test_a_normal_box_is_served(self):
        """A status command under the limit is answered as before."""
        from kvpaxos.admin import server

        protocol, transport = self.connect(server.admin_factory(FakeNode()))
        request = amp.AmpBox(_command=b"Status", _ask=b"1").serialize()
        protocol.dataReceived(request)
        self.assertIn(b"_answer", transport.value())

    def test_connections_over_the_limit_are_closed(self):
        """Past CONNECTIONS_MAX open connections one more is refused, and logged; a closed one frees a place."""
        from kvpaxos.admin import server

        factory = server.admin_factory(FakeNode())
        opened = [self.connect(factory) for _ in range(server.CONNECTIONS_MAX)]
        self.assertTrue(all(p is not None for p, _ in opened))
        self.assertEqual(self.connect(factory), (None, None))
        refused = factory.refused.count
        self.assertGreaterEqual(refused, 1)
        from twisted.internet.error import ConnectionDone

        opened[0][0].connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.connect(factory)[0])
