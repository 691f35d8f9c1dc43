"""
L{kvpaxos.node.writes.WritePath}'s leader-only submissions: a leader's own
decision (a lease's expiry, an automatic compaction) is proposed only by
that leader while it leads, never queued for later nor forwarded.
"""

from twisted.internet import task
from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.encoding.commands import encode_request
from kvpaxos.kv.commands import InvalidArgument, Op, Request
from kvpaxos.node.interfaces import NotLeaderError
from kvpaxos.node.writes import WritePath
from kvpaxos.paxos import ProposalRejected


class _Replica:
    def __init__(self):
        self.is_leader = True
        self.leader = 1
        self.proposed = []
        self.refuse = False

    def propose(self, data):
        if self.refuse:
            raise ProposalRejected("transferring leadership")
        self.proposed.append(data)


class _Peers:
    def __init__(self):
        self.forwarded = []

    def forward(self, node_id, commands):
        self.forwarded.append((node_id, list(commands)))
        return succeed(None)


def _path():
    replica, peers, clock = _Replica(), _Peers(), task.Clock()
    path = WritePath(1, 7, replica, lambda: peers, clock, lambda call, *a: call(*a),
                     lambda: None, lambda: False)
    return path, replica, peers, clock


class LeaderOnlyTests(SynchronousTestCase):

    def test_proposed_while_leading(self):
        path, replica, _, _ = _path()
        path.submit(Request(Op.LEASE_EXPIRE, lease=5), 5.0, leader_only=True)
        self.assertEqual(len(replica.proposed), 1)

    def test_refused_when_not_leading(self):
        path, replica, peers, _ = _path()
        replica.is_leader, replica.leader = False, 2
        d = path.submit(Request(Op.LEASE_EXPIRE, lease=5), 5.0, leader_only=True)
        self.failureResultOf(d, NotLeaderError)
        self.assertEqual((replica.proposed, peers.forwarded), ([], []))

    def test_not_forwarded_after_losing_leadership(self):
        """Refused by the core during a transfer, then a follower: failed, never sent to the new leader."""
        path, replica, peers, clock = _path()
        replica.refuse = True
        expiry = path.submit(Request(Op.LEASE_EXPIRE, lease=5), 5.0, leader_only=True)
        plain = path.submit(Request(Op.PUT, b"k", b"v"), 5.0)
        self.failureResultOf(expiry, NotLeaderError)
        replica.refuse, replica.is_leader, replica.leader = False, False, 2
        path.route()
        [(leader, commands)] = peers.forwarded
        self.assertEqual(leader, 2)
        self.assertEqual(len(commands), 1)  # the client's put alone
        self.assertNoResult(plain)
        clock.advance(10)  # its timer was cancelled with it: no second answer
        self.failureResultOf(plain)

    def test_only_the_unproposed_retried(self):
        """A refusal in the middle of a batch re-queues what was not proposed, not what was."""
        path, replica, _, _ = _path()
        replica.is_leader = False
        replica.leader = None
        for n in range(3):
            path.submit(Request(Op.PUT, b"k%d" % n, b"v"), 5.0)
        replica.is_leader = True
        calls = []

        def propose(data):
            calls.append(data)
            if len(calls) == 2:
                raise ProposalRejected("busy")
            replica.proposed.append(data)

        replica.propose = propose
        path.route()
        replica.propose = lambda data: replica.proposed.append(data)
        path.route()
        self.assertEqual(len(replica.proposed), 3)
        self.assertEqual(len(set(replica.proposed)), 3)

    def test_forwarded_expiry_refused(self):
        path, _, _, _ = _path()
        data = encode_request(Request(Op.LEASE_EXPIRE, lease=5, origin=2, request_id=1))
        self.failureResultOf(path.proposals_forwarded([data]), InvalidArgument)
