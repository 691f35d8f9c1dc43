"""
Timeouts are inputs stepped like messages (etcd raft's MsgHup, MsgBeat and
MsgCheckQuorum): L{ElectionTimeout}, L{HeartbeatTimeout} and L{CheckQuorum},
made by L{kvpaxos.paxos.Replica.tick} or stepped directly, as here; and
L{kvpaxos.paxos.Replica.has_ready} is a query.
"""

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import (
    CheckQuorum,
    ElectionTimeout,
    Heartbeat,
    HeartbeatTimeout,
    PreVote,
)
from tests.paxos_helpers import Cluster, lone, take


class ElectionTimeoutTests(SynchronousTestCase):
    """An election timeout stepped into a replica."""

    def test_follower_asks_for_pre_votes(self) -> None:
        """A voter that steps an election timeout sends a PreVote to every other voter."""
        r = lone(1)
        r.step(ElectionTimeout(1, 1))
        rd = take(r)
        self.assertEqual(sorted(m.dst for m in rd.messages if type(m) is PreVote), [2, 3])
        self.assertEqual(r.role.name, "pre-candidate")

    def test_lone_voter_wins(self) -> None:
        """A lone voter stepped an election timeout campaigns and leads once its ballot is durable."""
        r = lone(1, voters=(1,))
        r.step(ElectionTimeout(1, 1))
        take(r)
        self.assertTrue(r.is_leader)

    def test_learner_waits(self) -> None:
        """A node that is not a voter ignores its election timeout and stays a follower."""
        r = lone(4)
        r.step(ElectionTimeout(4, 4))
        self.assertEqual(r.role.name, "follower")
        self.assertFalse(take(r).messages)

    def test_leader_ignores(self) -> None:
        """A leader steps an election timeout without effect (raft ignores MsgHup when leading)."""
        c = Cluster()
        leader = c.elect(1)
        role = leader.role
        leader.step(ElectionTimeout(1, 1))
        self.assertIs(leader.role, role)

    def test_addressed_to_another(self) -> None:
        """A timeout for another replica is refused like any message."""
        self.assertRaises(ValueError, lone(1).step, ElectionTimeout(2, 2))


class LeaderTimeoutTests(SynchronousTestCase):
    """Heartbeat and check-quorum timeouts stepped into a leader."""

    def test_heartbeat_timeout_beats(self) -> None:
        """A leader that steps a heartbeat timeout sends every peer a heartbeat."""
        c = Cluster()
        leader = c.elect(1)
        mark = c.mark(1)
        leader.step(HeartbeatTimeout(1, 1))
        c.deliver()
        self.assertEqual(sorted(m.dst for m in c.sent(1, Heartbeat, mark)), [2, 3])

    def test_check_quorum_keeps_heard_leader(self) -> None:
        """A leader that heard a quorum since the last check stays leader."""
        c = Cluster()
        leader = c.elect(1)
        leader.step(CheckQuorum(1, 1))
        self.assertTrue(leader.is_leader)

    def test_check_quorum_deposes_unheard_leader(self) -> None:
        """A leader that heard from no quorum between two checks steps down."""
        c = Cluster()
        leader = c.elect(1)
        c.isolated.add(1)
        leader.step(CheckQuorum(1, 1))
        leader.step(CheckQuorum(1, 1))
        self.assertFalse(leader.is_leader)

    def test_follower_ignores_leader_timeouts(self) -> None:
        """Heartbeat and check-quorum timeouts mean nothing to a follower."""
        r = lone(2)
        r.step(HeartbeatTimeout(2, 2))
        r.step(CheckQuorum(2, 2))
        self.assertFalse(r.has_ready())


class HasReadyTests(SynchronousTestCase):
    """L{kvpaxos.paxos.Replica.has_ready} changes nothing."""

    def test_query_leaves_proposals_queued(self) -> None:
        """Asking has_ready with a proposal queued sends nothing and places no slot."""
        c = Cluster()
        leader = c.elect(1)
        next_slot = leader.role.next_slot
        leader.propose(b"x")
        self.assertTrue(leader.has_ready())
        self.assertTrue(leader.has_ready())
        self.assertEqual(leader.role.next_slot, next_slot)
        self.assertEqual(leader.messages, [])
        rd = leader.ready()
        self.assertEqual([s for s, _ in rd.entries], [next_slot])

    def test_full_window_is_no_work(self) -> None:
        """A proposal waiting for a full window is no work for a Ready."""
        c = Cluster()
        leader = c.elect(1)
        c.isolated.update({2, 3})
        for i in range(c.opts.window_slots):
            leader.propose(b"%d" % i)
            c.process(1)
        leader.propose(b"waits")
        self.assertFalse(leader.has_ready())

    def test_read_round_to_start(self) -> None:
        """A read asked for is work for the next Ready; the round starts when it is cut."""
        c = Cluster()
        leader = c.elect(1)
        beat = leader.role.beat
        leader.read_index("r")
        self.assertTrue(leader.has_ready())
        self.assertEqual(leader.role.beat, beat)
        rd = leader.ready()
        self.assertEqual(sorted(m.dst for m in rd.messages if type(m) is Heartbeat), [2, 3])
