"""
Tests for changes of the member set through
L{Replica.propose_config_change}: one member at a time, replicated through
the log, in force for the slots after its own and only once chosen (compare
raft §4.1 single-server changes; "Paxos Made Simple" §3 on choosing the
configuration with the log).
"""

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import (
    Accept,
    Ballot,
    ChangeKind,
    ConfigChange,
    ConfigError,
    Nack,
    NotLeader,
    Prepare,
    Promise,
    ProposalRejected,
)
from tests.paxos_helpers import TEST_OPTIONS, Cluster, config, lone, take

E = TEST_OPTIONS.election_ticks
HB = TEST_OPTIONS.heartbeat_ticks


def change(kind, node):
    return ConfigChange(ChangeKind[kind], node)


def with_learner():
    """Return a cluster of voters 1-3 led by 1 that added node 4 as a learner."""
    c = Cluster()
    c.elect(1)
    c[1].propose(b"x")
    c.deliver()
    c.join(4)
    c[1].propose_config_change(change("ADD_LEARNER", 4))
    c.deliver()
    c.tick(2 * HB)
    return c


def with_four_voters():
    """Return a cluster led by 1 whose learner 4 was promoted to voter."""
    c = with_learner()
    c[1].propose_config_change(change("PROMOTE", 4))
    c.deliver()
    c.tick(2 * HB)
    return c


class AddAndPromoteTests(SynchronousTestCase):
    """Adding a learner and promoting it to voter."""

    def test_change_takes_effect_once_chosen(self):
        """
        A proposed change leaves the member set in force untouched until its
        slot is chosen, then the new set governs.
        """
        c = Cluster()
        c.elect(1)
        c.hold(2)
        c.hold(3)
        c[1].propose_config_change(change("ADD_LEARNER", 4))
        c.deliver()
        self.assertEqual(c[1].config, config(1, 2, 3))
        c.release(2)
        self.assertEqual(c[1].config, config(1, 2, 3, learners=[4]))

    def test_learner_applies_the_log(self):
        """A learner that joined receives the log and applies what was chosen before and after it joined."""
        c = with_learner()
        c[1].propose(b"y")
        c.deliver()
        c.tick(HB)
        self.assertEqual(c.commands(4), [b"x", b"y"])

    def test_joining_node_learns_member_set(self):
        """A node that joined with an empty member set learns the voters from the leader."""
        c = with_learner()
        self.assertEqual(c[4].config, config(1, 2, 3, learners=[4]))

    def test_learner_does_not_count_for_quorum(self):
        """A learner's Accepted does not help choose a slot (it does not vote)."""
        c = with_learner()
        c.isolated.update({2, 3})
        c[1].propose(b"y")
        c.deliver()
        self.assertEqual(c.commands(1), [b"x"])

    def test_promotion_makes_a_voter(self):
        """Promoting a learner makes it a voter of the member set on every node."""
        c = with_four_voters()
        for node in c.ids:
            self.assertEqual(c[node].config, config(1, 2, 3, 4), f"node {node}")

    def test_promoted_voter_raises_quorum(self):
        """With four voters, the leader and one other no longer choose a slot."""
        c = with_four_voters()
        c.isolated.update({3, 4})
        c[1].propose(b"y")
        c.deliver()
        self.assertNotIn(b"y", c.commands(1))
        c.isolated.discard(4)
        c.tick(TEST_OPTIONS.retransmit_ticks)
        self.assertEqual(c.commands(1)[-1], b"y")


class RemoveTests(SynchronousTestCase):
    """Removing a member."""

    def test_removed_voter_leaves_member_set(self):
        """After a removal is chosen the node is no voter and gets no more Accepts."""
        c = Cluster()
        c.elect(1)
        c[1].propose_config_change(change("REMOVE", 3))
        c.deliver()
        self.assertEqual(c[1].config, config(1, 2))
        mark = c.mark(1)
        c[1].propose(b"y")
        c.deliver()
        c.tick(HB)
        self.assertEqual([m for m in c.sent(1, since=mark) if m.dst == 3], [])
        self.assertEqual(c.commands(2), [b"y"])

    def test_removed_leader_steps_down(self):
        """
        A leader whose own removal is chosen stops leading; the remaining
        voters elect a leader and the removed node never campaigns.
        """
        c = Cluster()
        c.elect(1)
        c[1].propose_config_change(change("REMOVE", 1))
        c.deliver()
        self.assertFalse(c[1].is_leader)
        mark = c.mark(1)
        c.tick(4 * E)
        self.assertEqual(len(c.leaders()), 1)
        self.assertIn(c.leaders()[0], (2, 3))
        self.assertEqual(c.sent(1, Prepare, mark), [])


class ChangeRulesTests(SynchronousTestCase):
    """What the leader refuses, and what it holds back."""

    def test_no_slot_after_unchosen_change(self):
        """
        While a change is in flight the leader proposes no later slot; the
        next command goes out only once the change is chosen.
        """
        c = Cluster()
        c.elect(1)
        c.hold(2)
        c.hold(3)
        mark = c.mark(1)
        c[1].propose_config_change(change("ADD_LEARNER", 4))
        c.deliver()
        c[1].propose(b"y")
        c.deliver()
        accepts = [m for m in c.sent(1, Accept, mark) if m.dst == 2]
        self.assertEqual([m.values for m in accepts], [(change("ADD_LEARNER", 4),)])
        c.release(2)
        self.assertEqual(c.commands(1), [b"y"])
        self.assertEqual(c.committed[1][-1][0], 2)

    def test_second_concurrent_change_rejected(self):
        """A second change proposed while one is in flight is rejected."""
        c = Cluster()
        c.elect(1)
        c.hold(2)
        c.hold(3)
        c[1].propose_config_change(change("ADD_LEARNER", 4))
        c.deliver()
        self.assertRaises(
            ProposalRejected, c[1].propose_config_change, change("ADD_LEARNER", 5)
        )

    def test_second_change_in_same_turn_rejected(self):
        """A second change proposed before the first was even sent is rejected."""
        c = Cluster()
        c.elect(1)
        c[1].propose_config_change(change("ADD_LEARNER", 4))
        self.assertRaises(
            ProposalRejected, c[1].propose_config_change, change("ADD_LEARNER", 5)
        )

    def test_invalid_changes_raise_config_error(self):
        """
        Adding a member twice, promoting a non-learner or removing a
        non-member is caller misuse: ConfigError, and nothing is proposed.
        """
        c = Cluster()
        c.elect(1)
        mark = c.mark(1)
        for bad in [
            change("ADD_VOTER", 2),
            change("ADD_LEARNER", 3),
            change("PROMOTE", 2),
            change("REMOVE", 9),
        ]:
            self.assertRaises(ConfigError, c[1].propose_config_change, bad)
        c.deliver()
        self.assertEqual(c.sent(1, Accept, mark), [])

    def test_removing_last_voter_raises_config_error(self):
        """Removing the only voter of a one-node cluster raises ConfigError."""
        c = Cluster(ids=(1,))
        c.elect(1)
        self.assertRaises(ConfigError, c[1].propose_config_change, change("REMOVE", 1))

    def test_change_on_follower_raises_not_leader(self):
        """A follower asked to change the member set raises NotLeader."""
        c = Cluster()
        c.elect(1)
        self.assertRaises(
            NotLeader, c[2].propose_config_change, change("ADD_LEARNER", 4)
        )


class CandidateConfigTests(SynchronousTestCase):
    """A candidate whose promises report a change needs both member sets."""

    def test_candidate_needs_quorum_of_reported_config(self):
        """
        A candidate whose promises report an unchosen ADD_VOTER asks the new
        voter too and wins only with a quorum of both member sets.
        """
        r = lone(1)
        r.step(Nack(2, 1, Ballot(0, 0), Ballot(3, 2), 0))
        r.campaign()
        take(r)
        add = change("ADD_VOTER", 4)
        r.step(Promise(2, 1, Ballot(4, 1), 1, ((1, Ballot(1, 2), add),)))
        rd = take(r)
        self.assertFalse(r.is_leader)
        self.assertIn(Prepare(1, 4, Ballot(4, 1), 1, False), rd.durable_messages)
        r.step(Promise(4, 1, Ballot(4, 1), 1, ()))
        self.assertTrue(r.is_leader)
