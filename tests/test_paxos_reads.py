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
    PreVote,
    PreVoteReply,
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
        beats = {m.read_round for m in c.sent(1, Heartbeat, mark)}
        self.assertEqual(beats, {c[1].role.read_beat})

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
        beat = c[1].role.read_beat
        c[1].step(HeartbeatAck(2, 1, ballot, beat - 1, 1))
        c.deliver()
        self.assertEqual(c.read_states(1), [])
        c[1].step(HeartbeatAck(2, 1, ballot, beat, 1))
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
        beats = {m.read_round for m in c.sent(1, Heartbeat, mark)}
        self.assertEqual(len(beats), 2)
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
        c[1].step(HeartbeatAck(2, 1, ballot, c[1].role.read_beat, 2))
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


class LeaseTests(SynchronousTestCase):
    """Lease reads: served without a round while a quorum acked a recent beat."""

    def test_lease_after_quorum_ack(self):
        """Once a quorum acked a heartbeat, the leader may read at its chosen index without a round."""
        c = leading_with_one_command()
        c.tick(TEST_OPTIONS.heartbeat_ticks, nodes=[1])
        c.deliver()
        self.assertEqual(c[1].lease_read_index(), 1)

    def test_lease_expires_without_acks(self):
        """
        A leader that hears no acks loses its lease election_ticks minus the
        drift allowance after the last acknowledged beat was sent.
        """
        c = leading_with_one_command()
        c.tick(TEST_OPTIONS.heartbeat_ticks, nodes=[1])
        c.deliver()
        sent = c[1].role.beat_ticks[c[1].role._quorum_beat()]
        c.isolated = {1}
        valid = []
        while c[1].ticks < sent + 2 * E:
            c[1].tick()
            c.deliver()
            if not c[1].is_leader:
                break
            valid.append((c[1].ticks, c[1].lease_read_index() is not None))
        last_valid = max(t for t, ok in valid if ok)
        self.assertEqual(last_valid, sent + E - TEST_OPTIONS.lease_drift_ticks - 1)

    def test_no_lease_during_transfer(self):
        """A leader handing leadership over serves no lease reads."""
        c = leading_with_one_command()
        c.tick(TEST_OPTIONS.heartbeat_ticks, nodes=[1])
        c.deliver()
        c[1].transfer_leadership(2)
        self.assertIsNone(c[1].lease_read_index())

    def test_follower_has_no_lease(self):
        """A follower asked for a lease read raises NotLeader."""
        c = leading_with_one_command()
        self.assertRaises(NotLeader, c[2].lease_read_index)

    def test_fresh_replica_refuses_pre_votes(self):
        """
        A replica refuses pre-votes for its first election_ticks after it
        starts, since it may have acked a leader's beat just before.
        """
        r = lone(1, started=False)
        r.step(PreVote(2, 1, Ballot(1, 2), 1))
        self.assertEqual(take(r).messages, [PreVoteReply(1, 2, Ballot(1, 2), False, 0)])
        for _ in range(E):
            r.tick()
        take(r)
        r.step(PreVote(2, 1, Ballot(1, 2), 1))
        self.assertEqual(take(r).messages, [PreVoteReply(1, 2, Ballot(1, 2), True, 0)])
