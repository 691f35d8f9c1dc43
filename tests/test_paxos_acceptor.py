"""
Tests for the acceptor rules of L{kvpaxos.paxos.replica.Replica}: promises,
acceptances, refusals and what survives a restart ("Paxos Made Simple" §2.2).

Most tests drive one replica by hand with L{Replica.step} and look at the
L{Ready} it hands back; the last few check the same rules over a small
in-process cluster.
"""

import random

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import (
    Accept,
    Accepted,
    Ballot,
    Batch,
    Entry,
    Heartbeat,
    Nack,
    Prepare,
    Promise,
    ProposalRejected,
)
from tests.paxos_helpers import TEST_OPTIONS, Cluster, lone, take

B1 = Batch((b"one",))
B2 = Batch((b"two",))
B3 = Batch((b"three",))


class PrepareTests(SynchronousTestCase):
    """Phase 1b: how an acceptor answers a Prepare."""

    def test_higher_ballot_promise_is_durable(self):
        """
        A Prepare above every ballot seen gets a Promise that waits for the
        save (durable_messages, never messages), and the promise is raised in
        hard_state (§2.2, P1a: "an acceptor must remember").
        """
        r = lone(1)
        r.step(Prepare(2, 1, Ballot(1, 2), 1))
        rd = take(r)
        self.assertEqual(rd.durable_messages, [Promise(1, 2, Ballot(1, 2), 1, ())])
        self.assertEqual(rd.messages, [])
        self.assertEqual(rd.hard_state.promised, Ballot(1, 2))

    def test_lower_ballot_is_nacked(self):
        """
        A Prepare below the promised ballot gets a Nack naming that promise
        and changes nothing durable (§2.2, P1a).
        """
        r = lone(1)
        r.step(Prepare(2, 1, Ballot(5, 2), 1))
        take(r)
        r.step(Prepare(3, 1, Ballot(3, 3), 1))
        rd = take(r)
        self.assertEqual(rd.messages, [Nack(1, 3, Ballot(3, 3), Ballot(5, 2), 0)])
        self.assertEqual(rd.durable_messages, [])
        self.assertIsNone(rd.hard_state)

    def test_promise_reports_accepted_from_first_slot(self):
        """
        A Promise reports the (ballot, value) accepted in every slot from the
        Prepare's first_slot on, and nothing before it (§2.2 P2c, §3).
        """
        r = lone(1)
        r.step(Accept(2, 1, Ballot(1, 2), 1, (B1, B2, B3), 0))
        take(r)
        r.step(Prepare(2, 1, Ballot(2, 2), 2))
        rd = take(r)
        self.assertEqual(
            rd.durable_messages,
            [Promise(1, 2, Ballot(2, 2), 2, ((2, Ballot(1, 2), B2), (3, Ballot(1, 2), B3)))],
        )

    def test_candidate_lacking_chosen_slots_is_refused(self):
        """
        An acceptor that knows slots chosen beyond the candidate's first_slot
        answers a Nack carrying its chosen_index and does not raise its
        promise, so a Promise never covers a slot it knows chosen.
        """
        r = lone(1)
        r.step(Accept(2, 1, Ballot(1, 2), 1, (B1, B2), 0))
        r.step(Heartbeat(2, 1, Ballot(1, 2), 2, 0))
        take(r)
        r.step(Prepare(2, 1, Ballot(2, 2), 1))
        rd = take(r)
        self.assertEqual(rd.messages, [Nack(1, 2, Ballot(2, 2), Ballot(1, 2), 2)])
        self.assertEqual(rd.durable_messages, [])
        self.assertIsNone(rd.hard_state)
        self.assertEqual(r.promised, Ballot(1, 2))

    def test_repeated_prepare_is_promised_again(self):
        """
        A Prepare at exactly the promised ballot (a retransmission) is
        promised again rather than refused (§2.2: only a *higher* promise
        forbids it).
        """
        r = lone(1)
        r.step(Prepare(2, 1, Ballot(1, 2), 1))
        take(r)
        r.step(Prepare(2, 1, Ballot(1, 2), 1))
        rd = take(r)
        self.assertEqual(rd.durable_messages, [Promise(1, 2, Ballot(1, 2), 1, ())])
        self.assertEqual(rd.messages, [])

    def test_message_for_another_replica_is_refused(self):
        """Stepping a message addressed to another node is caller misuse: ValueError."""
        r = lone(1)
        self.assertRaises(ValueError, r.step, Prepare(2, 3, Ballot(1, 2), 1))


class AcceptTests(SynchronousTestCase):
    """Phase 2b: how an acceptor answers an Accept."""

    def test_accept_below_promise_is_nacked(self):
        """
        An Accept below the promised ballot gets a Nack and nothing is
        written to the log (§2.2, P1a).
        """
        r = lone(1)
        r.step(Prepare(2, 1, Ballot(5, 2), 1))
        take(r)
        r.step(Accept(3, 1, Ballot(3, 3), 1, (B1,), 0))
        rd = take(r)
        self.assertEqual(rd.messages, [Nack(1, 3, Ballot(3, 3), Ballot(5, 2), 0)])
        self.assertEqual(rd.entries, [])
        self.assertEqual(rd.durable_messages, [])

    def test_accept_persists_entries_before_accepted(self):
        """
        An Accept writes its slots to the Ready's entries and answers with an
        Accepted that is only in durable_messages (§2.2: accepting must be
        remembered before it is reported).
        """
        r = lone(1)
        r.step(Accept(2, 1, Ballot(1, 2), 4, (B1, B2), 3))
        rd = take(r)
        self.assertEqual(
            rd.entries, [(4, Entry(Ballot(1, 2), B1)), (5, Entry(Ballot(1, 2), B2))]
        )
        self.assertEqual(
            rd.durable_messages, [Accepted(1, 2, Ballot(1, 2), 4, 2, 0)]
        )
        self.assertNotIn(Accepted, [type(m) for m in rd.messages])

    def test_accept_at_promised_ballot_is_accepted(self):
        """
        An Accept in exactly the promised ballot is accepted (§2.2, P1a: only
        a higher promise forbids accepting).
        """
        r = lone(1)
        r.step(Prepare(2, 1, Ballot(2, 2), 1))
        take(r)
        r.step(Accept(2, 1, Ballot(2, 2), 1, (B1,), 0))
        rd = take(r)
        self.assertEqual(rd.entries, [(1, Entry(Ballot(2, 2), B1))])
        self.assertEqual(rd.durable_messages, [Accepted(1, 2, Ballot(2, 2), 1, 1, 0)])

    def test_accept_above_promise_raises_it(self):
        """
        An Accept above the promised ballot raises the promise in hard_state,
        so no lower ballot is accepted afterwards (§2.2, P1a).
        """
        r = lone(1)
        r.step(Accept(2, 1, Ballot(3, 2), 1, (B1,), 0))
        rd = take(r)
        self.assertEqual(rd.hard_state.promised, Ballot(3, 2))

    def test_newer_ballot_overwrites_unchosen_slot(self):
        """
        An Accept in a higher ballot replaces the value accepted in a slot
        not known chosen (§2.2: acceptors may accept many proposals).
        """
        r = lone(1)
        r.step(Accept(2, 1, Ballot(1, 2), 1, (B1,), 0))
        take(r)
        r.step(Accept(3, 1, Ballot(2, 3), 1, (B2,), 0))
        rd = take(r)
        self.assertEqual(rd.entries, [(1, Entry(Ballot(2, 3), B2))])

    def test_stale_accept_for_chosen_slot_is_ignored(self):
        """
        A stale Accept proposing another value for a slot this acceptor knows
        chosen is neither stored nor acknowledged: its ballot can no longer
        gather a quorum (§2.2, P2b).
        """
        r = lone(1)
        r.step(Accept(2, 1, Ballot(2, 2), 1, (B1,), 0))
        r.step(Heartbeat(2, 1, Ballot(2, 2), 1, 0))
        take(r)
        self.assertEqual(r.chosen_index, 1)
        r.step(Accept(3, 1, Ballot(2, 3), 1, (B2,), 0))
        rd = take(r)
        self.assertEqual(rd.entries, [])
        self.assertEqual(rd.durable_messages, [])
        self.assertEqual(r.log[1].value, B1)

    def test_accept_repeating_chosen_value_is_acknowledged(self):
        """An Accept repeating the chosen value of a chosen slot is acknowledged."""
        r = lone(1)
        r.step(Accept(2, 1, Ballot(2, 2), 1, (B1,), 0))
        r.step(Heartbeat(2, 1, Ballot(2, 2), 1, 0))
        take(r)
        r.step(Accept(3, 1, Ballot(3, 3), 1, (B1,), 1))
        rd = take(r)
        self.assertEqual(rd.durable_messages, [Accepted(1, 3, Ballot(3, 3), 1, 1, 1)])

    def test_heartbeat_below_promise_is_nacked(self):
        """A Heartbeat from a leader of a ballot below the promise gets a Nack."""
        r = lone(1)
        r.step(Prepare(2, 1, Ballot(5, 2), 1))
        take(r)
        r.step(Heartbeat(3, 1, Ballot(3, 3), 0, 0))
        rd = take(r)
        self.assertEqual(rd.messages, [Nack(1, 3, Ballot(3, 3), Ballot(5, 2), 0)])


class RestartTests(SynchronousTestCase):
    """What an acceptor read back from its storage after a crash."""

    def test_restart_keeps_promise(self):
        """
        A replica rebuilt over the same storage still refuses a ballot below
        the one it promised before the crash (§2.2: the promise is durable).
        """
        r = lone(1)
        r.step(Prepare(2, 1, Ballot(5, 2), 1))
        take(r)
        again = lone(1, storage=r.test_storage)
        again.step(Prepare(3, 1, Ballot(4, 3), 1))
        rd = take(again)
        self.assertEqual(rd.messages, [Nack(1, 3, Ballot(4, 3), Ballot(5, 2), 0)])
        self.assertEqual(rd.durable_messages, [])

    def test_restart_keeps_accepted_entries(self):
        """
        A replica rebuilt over the same storage reports the values it
        accepted before the crash in its next Promise (§2.2, P2c).
        """
        r = lone(1)
        r.step(Accept(2, 1, Ballot(1, 2), 1, (B1, B2), 0))
        take(r)
        again = lone(1, storage=r.test_storage)
        again.step(Prepare(3, 1, Ballot(2, 3), 1))
        rd = take(again)
        self.assertEqual(
            rd.durable_messages,
            [Promise(1, 3, Ballot(2, 3), 1, ((1, Ballot(1, 2), B1), (2, Ballot(1, 2), B2)))],
        )

    def test_restart_keeps_chosen_index(self):
        """
        A replica rebuilt over the same storage remembers how far it learned
        the log chosen, and replays those slots for the state machine.
        """
        r = lone(1)
        r.step(Accept(2, 1, Ballot(1, 2), 1, (B1, B2), 0))
        r.step(Heartbeat(2, 1, Ballot(1, 2), 2, 0))
        take(r)
        again = lone(1, storage=r.test_storage)
        rd = take(again)
        self.assertEqual(again.chosen_index, 2)
        self.assertEqual(rd.committed, [(1, B1), (2, B2)])


class DurabilityContractTests(SynchronousTestCase):
    """What a whole cluster run shows about the Ready contract."""

    def test_promises_and_accepteds_only_in_durable_messages(self):
        """
        Across a seeded run with elections, proposals and losses, no Promise
        or Accepted is ever put in Ready.messages (it must wait for the save,
        §2.2).
        """
        c = Cluster(ids=(1, 2, 3, 4, 5), seed=11)
        loss = random.Random(11)
        c.drop = lambda message: loss.random() < 0.2
        for i in range(40):
            c.tick()
            for node in c.leaders():
                try:
                    c[node].propose(b"c%d" % i)
                except ProposalRejected:
                    pass
        durable = [m for n in c.ids for rd in c.readies[n] for m in rd.durable_messages]
        self.assertIn(Promise, {type(m) for m in durable})
        self.assertIn(Accepted, {type(m) for m in durable})
        for node in c.ids:
            for rd in c.readies[node]:
                kinds = {type(m) for m in rd.messages}
                self.assertFalse(kinds & {Promise, Accepted}, f"node {node}: {kinds}")

    def test_restarted_follower_rejoins_with_same_log(self):
        """
        A follower rebuilt from its storage mid-run applies the same commands
        as the leader once it hears from it again.
        """
        c = Cluster()
        c.elect(1)
        for command in [b"a", b"b"]:
            c[1].propose(command)
            c.deliver()
        c.restart(3)
        c.committed[3] = []
        for command in [b"c", b"d"]:
            c[1].propose(command)
            c.deliver()
        c.tick(TEST_OPTIONS.heartbeat_ticks)
        self.assertEqual(c.commands(3), [b"a", b"b", b"c", b"d"])
