"""
Tests for phase 2 of Multi-Paxos in steady state: batching, the window of
slots in flight, message bounds, retransmission, and how followers learn and
apply chosen slots ("Paxos Made Simple" §3).
"""

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import (
    Accept,
    Ballot,
    Batch,
    Catchup,
    CatchupRequest,
    Entry,
    Heartbeat,
    NotLeader,
    value_size,
)
from tests.paxos_helpers import TEST_OPTIONS, Cluster, lone, options, take

B1 = Batch((b"one",))
B2 = Batch((b"two",))
B3 = Batch((b"three",))
BAL = Ballot(1, 2)


def leading(**changes):
    """Return a three-node cluster with node 1 elected, with option C{changes}."""
    c = Cluster(opts=options(**changes))
    c.elect(1)
    return c


def values_sent(c, node, dst, since):
    """Return every value C{node} sent to C{dst} in Accepts since C{since}, by slot."""
    out = {}
    for m in c.sent(node, Accept, since):
        if m.dst == dst:
            for offset, value in enumerate(m.values):
                out[m.first_slot + offset] = value
    return out


class BatchingTests(SynchronousTestCase):
    """How the leader packs client commands into slots."""

    def test_proposals_in_one_turn_share_one_slot(self):
        """Commands proposed in one turn go out as one slot holding one Batch."""
        c = leading()
        mark = c.mark(1)
        for command in [b"a", b"b", b"c", b"d", b"e"]:
            c[1].propose(command)
        c.deliver()
        accepts = [m for m in c.sent(1, Accept, mark) if m.dst == 2]
        self.assertEqual(
            accepts, [Accept(1, 2, c[1].role.ballot, 1, (Batch((b"a", b"b", b"c", b"d", b"e")),), 0)]
        )

    def test_batch_stays_within_batch_bytes_max(self):
        """
        A batch of several commands never counts for more than
        batch_bytes_max bytes (as value_size counts it, framing included).
        """
        c = leading(batch_bytes_max=100)
        mark = c.mark(1)
        for i in range(8):
            c[1].propose(bytes([65 + i]) * 20)
        c.deliver()
        batches = values_sent(c, 1, 2, mark)
        self.assertGreater(max(len(b.commands) for b in batches.values()), 1)
        for slot, batch in sorted(batches.items()):
            if len(batch.commands) > 1:
                size = value_size(batch)
                self.assertTrue(size <= 100, f"slot {slot} holds {size} bytes")

    def test_oversized_command_after_small_gets_own_slot(self):
        """
        A command bigger than batch_bytes_max proposed after smaller ones in
        the same turn gets a slot of its own.
        """
        c = leading(batch_bytes_max=100)
        big = b"x" * 200
        c[1].propose(b"small")
        c[1].propose(big)
        c[1].propose(b"after")
        c.deliver()
        self.assertIn(Batch((big,)), [v for _, v in c.committed[1]])
        self.assertEqual(c.commands(1), [b"small", big, b"after"])

    def test_oversized_command_first_gets_own_slot(self):
        """
        A command bigger than batch_bytes_max proposed first gets a slot of
        its own, and later commands go to the next slot.
        """
        c = leading(batch_bytes_max=100)
        big = b"x" * 200
        c[1].propose(big)
        c[1].propose(b"after")
        c.deliver()
        self.assertEqual(c.committed[1], [(1, Batch((big,))), (2, Batch((b"after",)))])


class WindowTests(SynchronousTestCase):
    """Pipelining: several slots in flight, but a bounded number."""

    def test_no_more_than_window_slots_in_flight(self):
        """
        With no slot chosen, the leader sends Accepts for at most
        window_slots slots past its chosen index.
        """
        c = leading(window_slots=3)
        c.hold(2)
        c.hold(3)
        mark = c.mark(1)
        for i in range(6):
            c[1].propose(b"c%d" % i)
            c.deliver()
        self.assertEqual(sorted(values_sent(c, 1, 2, mark)), [1, 2, 3])

    def test_window_reopens_as_slots_are_chosen(self):
        """
        Commands held back by a full window are proposed once earlier slots
        are chosen, and every command is applied in the order proposed.
        """
        c = leading(window_slots=3)
        c.hold(2)
        c.hold(3)
        commands = [b"c%d" % i for i in range(6)]
        for command in commands:
            c[1].propose(command)
            c.deliver()
        c.release(2)
        c.release(3)
        self.assertEqual(c.commands(1), commands)


class MessageBoundTests(SynchronousTestCase):
    """No message carrying several slots outgrows message_bytes_max."""

    BOUNDED = dict(batch_bytes_max=50, message_bytes_max=150)

    def test_accept_within_message_bytes_max(self):
        """
        When a new leader re-proposes several slots at once, each Accept
        carries several slots but at most message_bytes_max bytes of values.
        """
        c = leading(**self.BOUNDED)
        c.hold(1)
        for i in range(6):
            c[1].propose(bytes([65 + i]) * 46)
            c.deliver()
        c.isolated.add(1)
        c.tick(3 * TEST_OPTIONS.election_ticks, nodes=[2, 3])
        (leader,) = [n for n in c.leaders() if n != 1]
        other = 5 - leader
        accepts = [m for m in c.sent(leader, Accept) if m.dst == other]
        for m in accepts:
            self.assertLessEqual(sum(map(value_size, m.values)), 150)
        self.assertGreater(max(len(m.values) for m in accepts), 1)
        self.assertEqual(sorted(values_sent(c, leader, other, 0)), [1, 2, 3, 4, 5, 6])

    def test_catchup_within_message_bytes_max(self):
        """
        A Catchup carrying several chosen slots holds at most
        message_bytes_max bytes of values.
        """
        c = leading(**self.BOUNDED)
        c.isolated.add(3)
        for i in range(6):
            c[1].propose(bytes([65 + i]) * 46)
        c.deliver()
        c.isolated.clear()
        c.tick(2 * TEST_OPTIONS.heartbeat_ticks)
        catchups = c.sent(1, Catchup)
        self.assertTrue(catchups)
        for m in catchups:
            size = sum(value_size(value) for _, value in m.entries)
            self.assertLessEqual(size, 150, f"Catchup from slot {m.first_slot}")


class RetransmitTests(SynchronousTestCase):
    """Lost Accepts are sent again."""

    def test_lost_accept_is_resent(self):
        """
        An Accept lost on the way is sent again after retransmit_ticks, and
        the slot is then chosen.
        """
        c = leading()
        lose = [True]
        c.drop = lambda m: type(m) is Accept and lose[0]
        c[1].propose(b"x")
        c.deliver()
        lose[0] = False
        self.assertEqual(c.committed[1], [])
        c.tick(TEST_OPTIONS.retransmit_ticks)
        self.assertEqual(c.commands(1), [b"x"])


class LearningTests(SynchronousTestCase):
    """How a follower learns which slots are chosen and applies them."""

    def test_follower_applies_from_accept_chosen_index(self):
        """
        A follower applies, in slot order, the slots an Accept's chosen_index
        covers that it accepted in the same ballot (§3).
        """
        r = lone(1)
        r.step(Accept(2, 1, BAL, 1, (B1, B2, B3), 0))
        self.assertEqual(take(r).committed, [])
        r.step(Accept(2, 1, BAL, 4, (B1,), 3))
        self.assertEqual(take(r).committed, [(1, B1), (2, B2), (3, B3)])

    def test_follower_applies_from_heartbeat(self):
        """
        A Heartbeat's chosen_index lets a follower apply the slots it
        accepted in that ballot, and the chosen index is persisted.
        """
        r = lone(1)
        r.step(Accept(2, 1, BAL, 1, (B1, B2), 0))
        take(r)
        r.step(Heartbeat(2, 1, BAL, 2, 0))
        rd = take(r)
        self.assertEqual(rd.committed, [(1, B1), (2, B2)])
        self.assertEqual(rd.hard_state.chosen_index, 2)

    def test_follower_stops_at_gap_and_asks(self):
        """
        A follower missing a chosen slot applies only up to the gap and asks
        the leader for the rest from the first missing slot.
        """
        r = lone(1)
        r.step(Accept(2, 1, BAL, 1, (B1,), 0))
        r.step(Accept(2, 1, BAL, 3, (B3,), 0))
        take(r)
        r.step(Heartbeat(2, 1, BAL, 3, 0))
        rd = take(r)
        self.assertEqual(rd.committed, [(1, B1)])
        self.assertIn(CatchupRequest(1, 2, 2), rd.messages)

    def test_slot_accepted_in_older_ballot_is_not_learned(self):
        """
        A slot accepted in another ballot than the leader's is not taken as
        chosen (its value may differ); the follower fetches it instead.
        """
        r = lone(1)
        r.step(Accept(2, 1, BAL, 1, (B1,), 0))
        take(r)
        r.step(Heartbeat(3, 1, Ballot(2, 3), 1, 0))
        rd = take(r)
        self.assertEqual(rd.committed, [])
        self.assertIn(CatchupRequest(1, 3, 1), rd.messages)

    def test_catchup_fills_chosen_slots(self):
        """A Catchup gives a follower that asked for it chosen slots it persists and applies."""
        r = lone(1)
        r.request_catchup(2)
        take(r)
        r.step(Catchup(2, 1, 1, ((BAL, B1), (BAL, B2)), 2))
        rd = take(r)
        self.assertEqual(rd.entries, [(1, Entry(BAL, B1)), (2, Entry(BAL, B2))])
        self.assertEqual(rd.committed, [(1, B1), (2, B2)])
        self.assertEqual(rd.hard_state.chosen_index, 2)

    def test_catchup_past_a_gap_is_ignored(self):
        """A Catchup that starts after the follower's next missing slot is ignored."""
        r = lone(1)
        r.step(Catchup(2, 1, 3, ((BAL, B3),), 3))
        rd = take(r)
        self.assertEqual((rd.entries, rd.committed, r.chosen_index), ([], [], 0))

    def test_catchup_request_is_answered_with_chosen_slots(self):
        """A replica answers a CatchupRequest with the chosen slots from first_slot on."""
        r = lone(1)
        r.step(Accept(2, 1, BAL, 1, (B1, B2, B3), 2))
        take(r)
        r.step(CatchupRequest(3, 1, 1))
        rd = take(r)
        self.assertEqual(rd.messages, [Catchup(1, 3, 1, ((BAL, B1), (BAL, B2)), 2)])

    def test_committed_max_bounds_each_ready(self):
        """A Ready carries at most committed_max slots to apply; the rest follow."""
        r = lone(1, opts=options(committed_max=2))
        r.step(Accept(2, 1, BAL, 1, (B1, B2, B3), 0))
        r.step(Heartbeat(2, 1, BAL, 3, 0))
        self.assertEqual(take(r).committed, [(1, B1), (2, B2)])
        self.assertEqual(take(r).committed, [(3, B3)])


class ClusterReplicationTests(SynchronousTestCase):
    """Replication end to end in a three-node cluster."""

    def test_every_node_applies_same_commands_in_order(self):
        """Every replica applies the same commands in the same slot order (§3)."""
        c = leading()
        commands = [b"c%d" % i for i in range(20)]
        for i, command in enumerate(commands):
            c[1].propose(command)
            if i % 3 == 0:
                c.deliver()
        c.deliver()
        c.tick(TEST_OPTIONS.heartbeat_ticks)
        for node in c.ids:
            self.assertEqual(c.commands(node), commands, f"node {node}")

    def test_lagging_follower_catches_up(self):
        """
        A follower that missed chosen slots asks for them on the next
        heartbeat and ends with the same applied log as the leader.
        """
        c = leading()
        c.isolated.add(3)
        for i in range(4):
            c[1].propose(b"c%d" % i)
            c.deliver()
        c.isolated.clear()
        c.tick(TEST_OPTIONS.heartbeat_ticks)
        self.assertTrue(c.sent(3, CatchupRequest))
        self.assertEqual(c.committed[3], c.committed[1])

    def test_propose_on_follower_raises_not_leader(self):
        """Proposing on a follower raises NotLeader naming the leader it follows."""
        c = leading()
        error = self.assertRaises(NotLeader, c[2].propose, b"x")
        self.assertEqual(error.leader, 1)
