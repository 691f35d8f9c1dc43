"""
Tests for the admin AMP server (L{kvpaxos.admin.server}): commands map to
node calls and node errors to AMP errors, over an in-memory connection.
"""

from twisted.internet import defer
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.admin.commands import NotLeader, Rejected, Status, TransferLeadership
from kvpaxos.admin.server import AdminProtocol
from kvpaxos.node.interfaces import NodeStatus
from kvpaxos.paxos import NotLeader as CoreNotLeader
from kvpaxos.paxos import ProposalRejected


class FakeNode:
    node_id = 2

    def __init__(self, error=None):
        self.error = error
        self.transfers = []

    def status(self):
        return NodeStatus(2, "leader", 2, (1, 2, 3), (4,), 17, 16)

    def transfer_leadership(self, target):
        if self.error is not None:
            raise self.error
        self.transfers.append(target)


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

    def test_transfer(self):
        """TransferLeadership asks the node to hand leadership to the target."""
        node = FakeNode()
        self.successResultOf(self.call(node, TransferLeadership, target=3))
        self.assertEqual(node.transfers, [3])

    def test_transfer_not_leader(self):
        """A follower answers TransferLeadership with NOT_LEADER naming the leader."""
        failure = self.failureResultOf(
            self.call(FakeNode(CoreNotLeader(1)), TransferLeadership, target=3), NotLeader
        )
        self.assertIn("leader is 1", failure.getErrorMessage())

    def test_transfer_rejected(self):
        """A transfer the core refuses comes back as REJECTED with the reason."""
        failure = self.failureResultOf(
            self.call(FakeNode(ProposalRejected("node 9 is not another voter")), TransferLeadership, target=9),
            Rejected,
        )
        self.assertIn("not another voter", failure.getErrorMessage())
