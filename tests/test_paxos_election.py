"""
Tests for phase 1 of Multi-Paxos as L{kvpaxos.paxos.replica.Replica} runs it:
election timeouts, Prepare/Promise, what a new leader re-proposes, leader
stickiness, check quorum and duelling candidates ("Paxos Made Simple" §2.2
and §3).
"""

import random

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import (
    NOOP,
    Accept,
    Ballot,
    Batch,
    CatchupRequest,
    Entry,
    Heartbeat,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
)
from tests.paxos_helpers import TEST_OPTIONS, Cluster, lone, take

E = TEST_OPTIONS.election_ticks
B1 = Batch((b"one",))
B2 = Batch((b"two",))
B3 = Batch((b"three",))


def ticks_to_campaign(replica, limit=100):
    """
    Tick C{replica} until its election timeout fires (it starts the pre-vote
    that precedes every campaign); return how many ticks that took.
    """
    for count in range(1, limit + 1):
        replica.tick()
        if replica.role.name in ("pre-candidate", "candidate"):
            return count
    raise AssertionError("never campaigned")


def candidate(round_seen=3):
    """
    Return replica 1 of {1, 2, 3} campaigning in ballot (round_seen + 1, 1),
    its own Promise already counted.
    """
    r = lone(1)
    r.step(Nack(2, 1, Ballot(0, 0), Ballot(round_seen, 2), 0))
    r.campaign()
    take(r)
    return r


class ElectionTimeoutTests(SynchronousTestCase):
    """When a follower starts phase 1."""

    def test_fresh_follower_campaigns_within_range(self):
        """
        A fresh follower that hears no leader campaigns after a number of
        ticks in [election_ticks, 2 * election_ticks).
        """
        for seed in range(30):
            count = ticks_to_campaign(lone(1, seed=seed))
            self.assertTrue(E <= count < 2 * E, f"seed {seed}: {count} ticks")

    def test_fresh_follower_timeout_is_randomized(self):
        """
        A fresh follower's first election timeout is drawn from its rng, so
        replicas started together do not all campaign on the same tick.
        """
        counts = {ticks_to_campaign(lone(1, seed=seed)) for seed in range(30)}
        self.assertGreater(len(counts), 1, f"every seed campaigned after {counts}")

    def test_stepped_down_follower_timeout_is_randomized(self):
        """
        A candidate that steps down for a higher leader draws a new timeout
        in [election_ticks, 2 * election_ticks) from its rng.
        """
        counts = set()
        for seed in range(30):
            r = lone(1, seed=seed)
            r.campaign()
            take(r)
            r.step(Heartbeat(2, 1, Ballot(5, 2), 0, 0))
            take(r)
            count = ticks_to_campaign(r)
            self.assertTrue(E <= count < 2 * E, f"seed {seed}: {count} ticks")
            counts.add(count)
        self.assertGreater(len(counts), 1)

    def test_timeout_starts_pre_vote_without_raising_promise(self):
        """
        An election timeout first asks every other voter for a pre-vote and
        raises no ballot (raft thesis §9.6): a node cut off from the cluster
        never raises its promise.
        """
        r = lone(1)
        ticks_to_campaign(r)
        rd = take(r)
        self.assertEqual(
            rd.messages,
            [PreVote(1, 2, Ballot(1, 1), 1), PreVote(1, 3, Ballot(1, 1), 1)],
        )
        self.assertIsNone(rd.hard_state)
        for _ in range(10 * E):
            r.tick()
        self.assertEqual(r.promised, Ballot(0, 0))

    def test_campaign_sends_prepares_and_raises_promise(self):
        """
        Once a quorum grants the pre-vote, a campaign sends a non-transfer
        Prepare for every slot after the chosen index to each other voter and
        raises its own promise (§2.2); the Prepares wait for the raised
        ballot to be durable (issue 9, hole 1).
        """
        r = lone(1)
        ticks_to_campaign(r)
        take(r)
        r.step(PreVoteReply(2, 1, Ballot(1, 1), True, 0))
        rd = take(r)
        self.assertEqual(
            rd.durable_messages,
            [Prepare(1, 2, Ballot(1, 1), 1, False), Prepare(1, 3, Ballot(1, 1), 1, False)],
        )
        self.assertEqual([m for m in rd.messages if type(m) is Prepare], [])
        self.assertEqual(rd.hard_state.promised, Ballot(1, 1))

    def test_pre_vote_denied_while_leader_heard(self):
        """A follower that hears a live leader denies a pre-vote and changes nothing."""
        r = lone(1)
        r.step(Heartbeat(2, 1, Ballot(1, 2), 0, 0))
        take(r)
        r.step(PreVote(3, 1, Ballot(5, 3), 1))
        rd = take(r)
        self.assertEqual(rd.messages, [PreVoteReply(1, 3, Ballot(5, 3), False, 0)])
        self.assertIsNone(rd.hard_state)

    def test_learner_never_campaigns(self):
        """A replica that is not a voter never starts phase 1."""
        r = lone(4, voters=(1, 2, 3))
        for _ in range(10 * E):
            r.tick()
        self.assertEqual(r.role.name, "follower")


class CandidateTests(SynchronousTestCase):
    """How a candidate collects promises and what it proposes on winning."""

    def test_own_promise_is_not_a_quorum(self):
        """A candidate of three voters does not lead on its own promise alone."""
        r = candidate()
        self.assertFalse(r.is_leader)

    def test_quorum_of_promises_wins(self):
        """A candidate leads once a majority of voters promised its ballot (§2.2)."""
        r = candidate()
        r.step(Promise(2, 1, Ballot(4, 1), 1, ()))
        self.assertTrue(r.is_leader)

    def test_promise_for_another_ballot_is_ignored(self):
        """A Promise for a ballot other than the candidate's does not count."""
        r = candidate()
        r.step(Promise(2, 1, Ballot(2, 1), 1, ()))
        self.assertFalse(r.is_leader)

    def test_new_leader_reproposes_highest_ballot_value(self):
        """
        For each slot a new leader proposes the value accepted in the highest
        ballot among the promises, in its own ballot (§2.2, P2c; §3).
        """
        r = candidate()
        r.step(Promise(2, 1, Ballot(4, 1), 1, ((1, Ballot(1, 2), B1), (2, Ballot(2, 3), B3))))
        rd = take(r)
        accepts = [m for m in rd.messages if type(m) is Accept and m.dst == 2]
        self.assertEqual(accepts, [Accept(1, 2, Ballot(4, 1), 1, (B1, B3), 0)])
        self.assertEqual(
            rd.entries, [(1, Entry(Ballot(4, 1), B1)), (2, Entry(Ballot(4, 1), B3))]
        )

    def test_higher_ballot_wins_over_lower_between_promises(self):
        """
        When two promises report different values for a slot, the new leader
        picks the one accepted in the higher ballot (§2.2, P2c).
        """
        r = lone(1)
        r.step(Accept(2, 1, Ballot(1, 2), 1, (B1,), 0))
        take(r)
        r.step(Nack(2, 1, Ballot(0, 0), Ballot(3, 2), 0))
        r.campaign()
        take(r)
        r.step(Promise(3, 1, Ballot(4, 1), 1, ((1, Ballot(2, 3), B2),)))
        rd = take(r)
        accepts = [m for m in rd.messages if type(m) is Accept and m.dst == 3]
        self.assertEqual(accepts, [Accept(1, 3, Ballot(4, 1), 1, (B2,), 0)])

    def test_new_leader_fills_holes_with_noop(self):
        """
        A slot below the highest reported one that no promise reports gets a
        no-op, so that the later slots can be applied (§3).
        """
        r = candidate()
        r.step(Promise(2, 1, Ballot(4, 1), 1, ((3, Ballot(1, 2), B3),)))
        rd = take(r)
        accepts = [m for m in rd.messages if type(m) is Accept and m.dst == 2]
        self.assertEqual(accepts, [Accept(1, 2, Ballot(4, 1), 1, (NOOP, NOOP, B3), 0)])

    def test_higher_promise_nack_ends_campaign(self):
        """A candidate told of a higher promise goes back to following."""
        r = candidate()
        r.step(Nack(2, 1, Ballot(4, 1), Ballot(7, 3), 0))
        self.assertEqual(r.role.name, "follower")

    def test_candidate_behind_asks_for_catchup(self):
        """
        A candidate refused because the acceptor knows more chosen slots asks
        that acceptor for them, and keeps campaigning.
        """
        r = candidate()
        r.step(Nack(2, 1, Ballot(4, 1), Ballot(3, 2), 5))
        rd = take(r)
        self.assertEqual(rd.messages, [CatchupRequest(1, 2, 1)])
        self.assertEqual(r.role.name, "candidate")

    def test_candidate_retries_with_higher_ballot(self):
        """
        A candidate that does not win within its timeout asks for a pre-vote
        again and, granted, campaigns in a higher round.
        """
        r = candidate()
        for _ in range(2 * E):
            r.tick()
        self.assertEqual(r.role.name, "pre-candidate")
        r.step(PreVoteReply(2, 1, r.role.probe, True, 0))
        self.assertEqual(r.role.name, "candidate")
        self.assertGreater(r.role.ballot, Ballot(4, 1))


class StickinessTests(SynchronousTestCase):
    """A follower that hears a live leader does not help depose it."""

    def test_follower_of_live_leader_ignores_prepare(self):
        """
        A follower that heard the leader within election_ticks neither
        promises nor answers a non-transfer Prepare from another node.
        """
        r = lone(1)
        r.step(Heartbeat(2, 1, Ballot(1, 2), 0, 0))
        take(r)
        before = r.promised
        r.step(Prepare(3, 1, Ballot(9, 3), 1))
        rd = take(r)
        self.assertEqual((rd.messages, rd.durable_messages), ([], []))
        self.assertIsNone(rd.hard_state)
        self.assertEqual(r.promised, before)

    def test_follower_of_live_leader_promises_transfer(self):
        """A follower that hears a live leader still promises a transfer that leader asked for."""
        r = lone(1)
        r.step(Heartbeat(2, 1, Ballot(1, 2), 0, 0))
        take(r)
        r.step(Prepare(3, 1, Ballot(9, 3), 1, transfer=True, asked_by=Ballot(1, 2)))
        rd = take(r)
        self.assertEqual(rd.durable_messages, [Promise(1, 3, Ballot(9, 3), 1, ())])

    def test_follower_ignores_transfer_asked_by_another_ballot(self):
        """
        A transfer asked for by a leader this follower no longer follows (a
        late TimeoutNow from a deposed leader) is an ordinary campaign: a
        follower of a live leader ignores it (found in review, issue 9).
        """
        r = lone(1)
        r.step(Heartbeat(2, 1, Ballot(2, 2), 0, 0))
        take(r)
        r.step(Prepare(3, 1, Ballot(9, 3), 1, transfer=True, asked_by=Ballot(1, 1)))
        rd = take(r)
        self.assertEqual(rd.durable_messages, [])
        self.assertNotEqual(r.promised, Ballot(9, 3))


class CheckQuorumTests(SynchronousTestCase):
    """A leader keeps office only while it hears from a quorum."""

    def test_leader_cut_off_steps_down(self):
        """
        A leader cut off from every peer keeps office for at least
        election_ticks ticks and steps down within two election timeouts
        (one full check-quorum period without hearing a quorum).
        """
        c = Cluster()
        c.elect(1)
        c.isolated.add(1)
        c.tick(E - 1, nodes=[1])
        self.assertTrue(c[1].is_leader)
        c.tick(E + 1, nodes=[1])
        self.assertFalse(c[1].is_leader)

    def test_leader_hearing_quorum_stays(self):
        """A leader that keeps hearing a quorum keeps leading across many timeouts."""
        c = Cluster()
        c.elect(1)
        c.isolated.add(3)
        c.tick(5 * E, nodes=[1, 2])
        self.assertEqual(c.leaders(), [1])


class ClusterElectionTests(SynchronousTestCase):
    """Elections in a small cluster driven only by ticks."""

    def test_ticks_elect_one_leader(self):
        """A cluster that only ticks elects exactly one leader, which every node follows."""
        c = Cluster(seed=7)
        c.tick(3 * E)
        self.assertEqual(len(c.leaders()), 1)
        leader = c.leaders()[0]
        self.assertEqual({c[n].leader for n in c.ids}, {leader})

    def test_duelling_candidates_converge(self):
        """
        Five candidates campaigning at once, with a seeded share of messages
        lost, still end with one leader once the network heals.
        """
        for seed in range(10):
            c = Cluster(ids=(1, 2, 3, 4, 5), seed=seed)
            loss = random.Random(seed)
            c.drop = lambda message: loss.random() < 0.4
            for node in c.ids:
                c[node].campaign()
            c.tick(4 * E)
            c.drop = lambda message: False
            for _ in range(20 * E):
                c.tick()
                if c.leaders():
                    break
            self.assertEqual(len(c.leaders()), 1, f"seed {seed}: {c.leaders()}")

    def test_never_two_leaders_in_one_ballot(self):
        """
        Across a seeded lossy election run, no two replicas ever lead in the
        same ballot (§2.2: ballots come from disjoint sets).
        """
        c = Cluster(ids=(1, 2, 3, 4, 5), seed=3)
        loss = random.Random(3)
        c.drop = lambda message: loss.random() < 0.3
        seen = {}
        for _ in range(30 * E):
            c.tick()
            for node in c.leaders():
                ballot = c[node].role.ballot
                self.assertEqual(seen.setdefault(ballot, node), node)
        self.assertTrue(seen)
