"""
Tests for linearizable reads through L{Replica.read_index}: the ReadIndex
protocol of raft §6.4 (as etcd implements it) on top of Multi-Paxos.  A read
is answered with the chosen index once a quorum confirmed, in one heartbeat
round, that the leader still leads.
"""

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import (
    Accepted,
    Ballot,
    Batch,
    Heartbeat,
    HeartbeatAck,
    Nack,
    NotLeader,
    Promise,
    ReadState,
)
from tests.paxos_helpers import TEST_OPTIONS, Cluster, lone, take

E = TEST_OPTIONS.election_ticks
B1 = Batch((b"one",))


def leading_with_one_command():
    """Return a three-node cluster led by node 1 with slot 1 chosen everywhere."""
    c = Cluster()
    c.elect(1)
    c[1].propose(b"x")
    c.deliver()
    return c


class ReadIndexTests(SynchronousTestCase):
    """A leader answers reads after one heartbeat quorum round."""

    def test_read_state_waits_for_quorum(self):
        """
        A read gets no ReadState until a quorum acknowledged a heartbeat of
        its read round; then it gets the chosen index (raft §6.4).
        """
        c = leading_with_one_command()
        c.hold(2)
        c.hold(3)
        mark = c.mark(1)
        c[1].read_index("r")
        c.deliver()
        self.assertEqual(c.read_states(1), [])
        c.release(2)
        self.assertEqual(c.read_states(1), [ReadState("r", 1)])
        rounds = {m.read_round for m in c.sent(1, Heartbeat, mark)}
        self.assertEqual(rounds, {1})

    def test_ack_of_another_round_does_not_count(self):
        """
        A heartbeat ack for an earlier read round does not confirm the
        current one (raft §6.4: the heartbeat must be sent after the read).
        """
        c = leading_with_one_command()
        c.hold(2)
        c.hold(3)
        c[1].read_index("r")
        c.deliver()
        ballot = c[1].role.ballot
        c[1].step(HeartbeatAck(2, 1, ballot, 0, 1))
        c.deliver()
        self.assertEqual(c.read_states(1), [])
        c[1].step(HeartbeatAck(2, 1, ballot, 1, 1))
        c.deliver()
        self.assertEqual(c.read_states(1), [ReadState("r", 1)])

    def test_ack_for_another_ballot_does_not_count(self):
        """A heartbeat ack for another ballot does not confirm a read round."""
        c = leading_with_one_command()
        c.hold(2)
        c.hold(3)
        c[1].read_index("r")
        c.deliver()
        c[1].step(HeartbeatAck(2, 1, Ballot(0, 1), 1, 1))
        c.deliver()
        self.assertEqual(c.read_states(1), [])

    def test_reads_asked_meanwhile_share_one_round(self):
        """
        Reads asked while a round is in flight are all answered by the one
        next round: one more read_round, one Ready with all their states.
        """
        c = leading_with_one_command()
        c.hold(2)
        c.hold(3)
        mark = c.mark(1)
        c[1].read_index("a")
        c.deliver()
        c[1].read_index("b")
        c[1].read_index("c")
        c.deliver()
        c.release(2)
        rounds = {m.read_round for m in c.sent(1, Heartbeat, mark)}
        self.assertEqual(rounds, {1, 2})
        with_reads = [rd.read_states for rd in c.readies[1] if rd.read_states]
        self.assertEqual(
            with_reads, [[ReadState("a", 1)], [ReadState("b", 1), ReadState("c", 1)]]
        )

    def test_read_index_is_chosen_index_when_asked(self):
        """
        A ReadState carries the chosen index at the time the round started,
        even if more slots are chosen before the quorum answers.
        """
        c = leading_with_one_command()
        c.hold(2)
        c.hold(3)
        c[1].read_index("r")
        c[1].propose(b"y")
        c.deliver()
        ballot = c[1].role.ballot
        c[1].step(Accepted(2, 1, ballot, 2, 1, 1))
        c.deliver()
        self.assertEqual(c[1].chosen_index, 2)
        c[1].step(HeartbeatAck(2, 1, ballot, 1, 2))
        c.deliver()
        self.assertEqual(c.read_states(1), [ReadState("r", 1)])

    def test_read_on_follower_raises_not_leader(self):
        """A follower asked for a read index raises NotLeader naming the leader."""
        c = leading_with_one_command()
        error = self.assertRaises(NotLeader, c[2].read_index, "r")
        self.assertEqual(error.leader, 1)

    def test_single_voter_answers_at_once(self):
        """The only voter of a one-node cluster is its own quorum for reads."""
        c = Cluster(ids=(1,))
        c.elect(1)
        c[1].read_index("r")
        c.deliver()
        self.assertEqual(c.read_states(1), [ReadState("r", 0)])


class ReadsWithoutQuorumTests(SynchronousTestCase):
    """A leader that may have been deposed never answers with an index."""

    def test_cut_off_leader_answers_none(self):
        """
        A leader that cannot reach a quorum never hands out a ReadState with
        an index; when it steps down the read is answered with None.
        """
        c = leading_with_one_command()
        c.isolated.update({2, 3})
        c[1].read_index("r")
        c.tick(3 * E, nodes=[1])
        self.assertFalse(c[1].is_leader)
        self.assertEqual(c.read_states(1), [ReadState("r", None)])

    def test_deposed_leader_answers_none(self):
        """A leader told of a higher ballot answers its waiting reads with None."""
        c = leading_with_one_command()
        c.hold(2)
        c.hold(3)
        c[1].read_index("r")
        c.deliver()
        c[1].step(Nack(2, 1, c[1].role.ballot, Ballot(9, 2), 1))
        c.deliver()
        self.assertEqual(c.read_states(1), [ReadState("r", None)])


class NewLeaderReadTests(SynchronousTestCase):
    """raft §6.4: a new leader must first know everything chosen before it."""

    def new_leader(self):
        """
        Return replica 1 just elected in ballot (4, 1) with slot 1 (reported
        by a promise) re-proposed and not yet chosen.
        """
        r = lone(1)
        r.step(Nack(2, 1, Ballot(0, 0), Ballot(3, 2), 0))
        r.campaign()
        take(r)
        r.step(Promise(2, 1, Ballot(4, 1), 1, ((1, Ballot(1, 2), B1),)))
        take(r)
        self.assertTrue(r.is_leader)
        return r

    def test_reads_wait_for_reproposed_slots(self):
        """
        A new leader answers no read, even with a quorum of heartbeat acks,
        until the slots it re-proposed after phase 1 are chosen.
        """
        r = self.new_leader()
        r.read_index("r")
        take(r)
        for round_ in range(3):
            r.step(HeartbeatAck(2, 1, Ballot(4, 1), round_, 0))
        self.assertEqual(take(r).read_states, [])

    def test_reads_answered_after_reproposed_slots_chosen(self):
        """
        Once the re-proposed slots are chosen, the held read gets one round
        and is answered with an index covering them.
        """
        r = self.new_leader()
        r.read_index("r")
        take(r)
        r.step(Accepted(2, 1, Ballot(4, 1), 1, 1, 0))
        rd = take(r)
        round_ = max(m.read_round for m in rd.messages if type(m) is Heartbeat)
        r.step(HeartbeatAck(2, 1, Ballot(4, 1), round_, 1))
        self.assertEqual(take(r).read_states, [ReadState("r", 1)])
