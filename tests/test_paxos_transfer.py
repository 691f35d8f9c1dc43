"""
Tests for leader transfer through L{Replica.transfer_leadership}: the leader
stops taking proposals, waits for the target to learn everything chosen,
sends C{TimeoutNow}, and the target campaigns with C{transfer=True} (the
etcd raft leader-transfer extension, raft thesis §3.10).
"""

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import (
    ChangeKind,
    ConfigChange,
    NotLeader,
    Prepare,
    ProposalRejected,
    TimeoutNow,
)
from tests.paxos_helpers import TEST_OPTIONS, Cluster

E = TEST_OPTIONS.election_ticks


def leading():
    """Return a three-node cluster led by node 1, with one command chosen everywhere."""
    c = Cluster()
    c.elect(1)
    c[1].propose(b"x")
    c.deliver()
    c.tick(TEST_OPTIONS.heartbeat_ticks)
    return c


def lagging_target():
    """
    Return a cluster led by node 1 in which node 2 missed a chosen slot and
    every message to node 2 is held.
    """
    c = leading()
    c.hold(2)
    c[1].propose(b"y")
    c.deliver()
    return c


class TransferTests(SynchronousTestCase):
    """Handing leadership to a chosen voter."""

    def test_caught_up_target_gets_timeout_now(self):
        """A leader sends TimeoutNow to a target that has learned everything chosen."""
        c = leading()
        ballot = c[1].role.ballot
        mark = c.mark(1)
        c[1].transfer_leadership(2)
        c.hold(2)
        c.deliver()
        self.assertEqual(c.sent(1, TimeoutNow, mark), [TimeoutNow(1, 2, ballot)])

    def test_target_campaigns_with_transfer_and_wins(self):
        """
        The target campaigns at once with transfer=True Prepares, which
        followers of the live leader promise, and it wins.
        """
        c = leading()
        mark = c.mark(2)
        c[1].transfer_leadership(2)
        c.deliver()
        prepares = c.sent(2, Prepare, mark)
        self.assertTrue(prepares)
        self.assertTrue(all(m.transfer for m in prepares))
        self.assertEqual(c.leaders(), [2])

    def test_new_leader_keeps_the_log(self):
        """After a transfer the new leader's proposals follow the old log on every node."""
        c = leading()
        c[1].transfer_leadership(2)
        c.deliver()
        c[2].propose(b"after")
        c.deliver()
        c.tick(TEST_OPTIONS.heartbeat_ticks)
        for node in c.ids:
            self.assertEqual(c.commands(node), [b"x", b"after"], f"node {node}")

    def test_lagging_target_gets_no_timeout_now(self):
        """A leader does not send TimeoutNow while the target lacks chosen slots."""
        c = lagging_target()
        mark = c.mark(1)
        c[1].transfer_leadership(2)
        c.tick(2, nodes=[1, 3])
        self.assertEqual(c.sent(1, TimeoutNow, mark), [])

    def test_timeout_now_follows_catch_up(self):
        """Once the lagging target acknowledges the chosen index, TimeoutNow is sent."""
        c = lagging_target()
        c[1].transfer_leadership(2)
        c.deliver()
        c.release(2)
        c.tick(TEST_OPTIONS.heartbeat_ticks)
        self.assertEqual(len(c.sent(1, TimeoutNow)), 1)
        self.assertEqual(c.leaders(), [2])

    def test_proposals_rejected_during_transfer(self):
        """While a transfer is in progress the leader rejects new commands."""
        c = lagging_target()
        c[1].transfer_leadership(2)
        self.assertRaises(ProposalRejected, c[1].propose, b"z")

    def test_config_change_rejected_during_transfer(self):
        """While a transfer is in progress the leader rejects member-set changes."""
        c = lagging_target()
        c[1].transfer_leadership(2)
        self.assertRaises(
            ProposalRejected,
            c[1].propose_config_change,
            ConfigChange(ChangeKind.ADD_LEARNER, 4),
        )

    def test_transfer_gives_up_after_election_ticks(self):
        """
        A transfer that could not complete within election_ticks is dropped:
        the node still leads and takes proposals again.
        """
        c = lagging_target()
        c[1].transfer_leadership(2)
        c.tick(E, nodes=[1, 3])
        self.assertEqual(c.leaders(), [1])
        c[1].propose(b"z")
        c.deliver()
        self.assertEqual(c.commands(1)[-1], b"z")

    def test_transfer_to_non_voter_rejected(self):
        """A transfer to itself or to a node outside the voters is rejected."""
        c = leading()
        self.assertRaises(ProposalRejected, c[1].transfer_leadership, 1)
        self.assertRaises(ProposalRejected, c[1].transfer_leadership, 9)

    def test_transfer_on_follower_raises_not_leader(self):
        """Only the leader hands leadership over; a follower raises NotLeader."""
        c = leading()
        self.assertRaises(NotLeader, c[2].transfer_leadership, 3)

    def test_timeout_now_from_old_ballot_ignored(self):
        """A follower ignores a TimeoutNow from a leader older than the one it follows."""
        c = leading()
        old = c[1].role.ballot
        c[1].transfer_leadership(3)
        c.deliver()
        self.assertEqual(c.leaders(), [3])
        c[2].step(TimeoutNow(1, 2, old))
        c.deliver()
        self.assertEqual(c.leaders(), [3])
