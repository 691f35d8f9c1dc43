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
    Accepted,
    Ballot,
    ChangeKind,
    CheckQuorum,
    ConfigChange,
    ConfigError,
    MemberAddress,
    Nack,
    NotLeader,
    Prepare,
    PreVote,
    Promise,
    ProposalRejected,
    Ready,
)
from tests.paxos_helpers import TEST_OPTIONS, Cluster, config, lone, options, take

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
        self.assertEqual(c[1].config, config(1, 2, removed=[3]))
        mark = c.mark(1)
        c[1].propose(b"y")
        c.deliver()
        c.tick(HB)
        self.assertEqual([m for m in c.sent(1, since=mark) if m.dst == 3], [])
        self.assertEqual(c.commands(2), [b"y"])

    def test_leader_whose_removal_is_chosen_steps_down(self):
        """
        A leader elected with its own removal among the values it must
        re-propose (another leader proposed it) stops leading once that
        removal is chosen, and never campaigns after.
        """
        r = lone(1)
        r.campaign()
        take(r)
        ballot = r.role.ballot
        remove = change("REMOVE", 1)
        r.step(Promise(2, 1, ballot, 1, ((1, Ballot(0, 2), remove),)))
        r.step(Promise(3, 1, ballot, 1, ()))
        self.assertTrue(r.is_leader)
        take(r)
        r.step(Accepted(2, 1, ballot, 1, 1, 0))
        r.step(Accepted(3, 1, ballot, 1, 1, 0))
        self.assertFalse(r.is_leader)
        self.assertEqual(r.config, config(2, 3, removed=[1]))
        take(r)
        for _ in range(4 * E):
            r.tick()
        self.assertEqual([m for m in take(r).durable_messages if type(m) is Prepare], [])


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


def lagging_learner(lag):
    """
    Return a cluster led by 1 with learner 4 (promote_lag_slots=C{lag})
    that stopped hearing anything after slot 2, while slots 3-7 were chosen.
    """
    c = Cluster(opts=options(promote_lag_slots=lag))
    c.elect(1)
    c[1].propose(b"x")
    c.deliver()
    c.join(4)
    c[1].propose_config_change(change("ADD_LEARNER", 4))
    c.deliver()
    c.tick(2 * HB)
    c.isolated.add(4)
    for command in (b"a", b"b", b"c", b"d", b"e"):
        c[1].propose(command)
        c.deliver()
    return c


class PromoteRuleTests(SynchronousTestCase):
    """PROMOTE only a learner that is caught up with this leader."""

    def test_lagging_learner_refused(self):
        """
        A learner whose last reported chosen index is more than
        promote_lag_slots behind the leader's is not promoted, and the
        refusal names the learner, its index and the leader's.
        """
        c = lagging_learner(lag=3)
        self.assertEqual((c[1].role.match[4], c[1].chosen_index), (2, 7))
        error = self.assertRaises(
            ProposalRejected, c[1].propose_config_change, change("PROMOTE", 4)
        )
        self.assertEqual(
            str(error),
            "learner 4 is not caught up: its chosen index 2 is 5 slots behind"
            " the leader's 7 (at most 3 allowed)",
        )
        self.assertIsNone(c[1].role.pending_config)

    def test_learner_within_lag_promoted(self):
        """A learner behind by no more than promote_lag_slots is promoted."""
        c = lagging_learner(lag=5)
        c[1].propose_config_change(change("PROMOTE", 4))
        c.isolated.discard(4)
        c.deliver()
        c.tick(2 * HB)
        self.assertEqual(c[1].config, config(1, 2, 3, 4))

    def test_learner_promoted_once_caught_up(self):
        """A refused learner is promoted once it has caught up and said so."""
        c = lagging_learner(lag=3)
        c.isolated.discard(4)
        c.tick(2 * HB)
        c[1].propose_config_change(change("PROMOTE", 4))
        c.deliver()
        self.assertEqual(c[1].config, config(1, 2, 3, 4))

    def test_learner_not_heard_in_this_ballot_refused(self):
        """A learner that never answered this leader is not caught up."""
        c = Cluster()
        c.elect(1)
        c.join(4)
        c.isolated.add(4)
        c[1].propose_config_change(change("ADD_LEARNER", 4))
        c.deliver()
        error = self.assertRaises(
            ProposalRejected, c[1].propose_config_change, change("PROMOTE", 4)
        )
        self.assertEqual(
            str(error),
            "learner 4 is not caught up: it has not answered this leader,"
            " whose chosen index is 1",
        )

    def test_new_leader_has_not_heard_the_learner(self):
        """What a learner reported to an earlier leader does not count for a new one."""
        c = with_learner()
        c.isolated.add(4)
        c[1].transfer_leadership(2)
        c.deliver()
        self.assertEqual(c.leaders(), [2])
        self.assertRaises(ProposalRejected, c[2].propose_config_change, change("PROMOTE", 4))


def five_voters_two_silent():
    """
    Return a five-voter cluster led by 1 in which 4 and 5 have been cut off
    for two check-quorum windows (1, 2 and 3 answer).
    """
    c = Cluster(ids=(1, 2, 3, 4, 5))
    c.elect(1)
    c.isolated.update({4, 5})
    c.tick(2 * E)
    return c


class RemoveRuleTests(SynchronousTestCase):
    """REMOVE only when the voters heard from lately stay a quorum."""

    def test_remove_refused_without_recent_quorum(self):
        """
        Removing a voter that answers, when the others heard from less it
        are no quorum of the member set after the removal, is refused with
        the count, the voters heard from and the quorum.
        """
        c = five_voters_two_silent()
        self.assertEqual(c[1].recently_heard(), frozenset({1, 2, 3}))
        error = self.assertRaises(
            ProposalRejected, c[1].propose_config_change, change("REMOVE", 2)
        )
        self.assertEqual(
            str(error),
            "removing node 2 would leave 2 of the 4 remaining voters heard from"
            " within the last election timeout (1,3), fewer than a quorum of 3;"
            " force skips this check",
        )
        self.assertIsNone(c[1].role.pending_config)

    def test_remove_of_silent_voter_allowed(self):
        """Removing a voter not heard from is allowed when those heard stay a quorum."""
        c = five_voters_two_silent()
        c[1].propose_config_change(change("REMOVE", 4))
        c.deliver()
        self.assertEqual(c[1].config, config(1, 2, 3, 5, removed=[4]))

    def test_force_skips_quorum_rule(self):
        """With force, a removal the quorum rule refuses is proposed and chosen."""
        c = five_voters_two_silent()
        c[1].propose_config_change(change("REMOVE", 2), force=True)
        c.deliver()
        self.assertEqual(c[1].config, config(1, 3, 4, 5, removed=[2]))

    def test_leader_refuses_own_removal(self):
        """The leader refuses to remove itself, forced or not: the node transfers first."""
        c = Cluster()
        c.elect(1)
        for force in (False, True):
            error = self.assertRaises(
                ProposalRejected, c[1].propose_config_change, change("REMOVE", 1), force
            )
            self.assertEqual(str(error), "node 1 leads; transfer leadership first")

    def test_force_does_not_remove_last_voter(self):
        """Force never skips the member-set rules: the last voter stays."""
        c = Cluster(ids=(1,))
        c.elect(1)
        self.assertRaises(
            ConfigError, c[1].propose_config_change, change("REMOVE", 1), True
        )

    def test_remove_learner_allowed(self):
        """Removing a learner needs only the voters heard from to stay a quorum."""
        c = with_learner()
        c[1].propose_config_change(change("REMOVE", 4))
        c.deliver()
        self.assertEqual(c[1].config, config(1, 2, 3, removed=[4]))

    def test_recently_heard_covers_the_window_before(self):
        """
        Right after a check quorum the nodes heard in the window before
        still count; a node silent for two windows drops out.
        """
        c = Cluster()
        c.elect(1)
        c.isolated.add(3)
        c[1].step(CheckQuorum(1, 1))
        self.assertEqual(c[1].recently_heard(), frozenset({1, 2, 3}))
        c.tick(HB, nodes=[1])
        c[1].step(CheckQuorum(1, 1))
        self.assertEqual(c[1].recently_heard(), frozenset({1, 2}))

    def test_follower_heard_nothing(self):
        """A follower reports nobody heard and no progress (only a leader keeps track)."""
        c = with_learner()
        self.assertEqual(c[2].recently_heard(), frozenset())
        self.assertEqual(c[2].member_progress(), {})

    def test_member_progress(self):
        """The leader reports each member's last chosen index, its own included."""
        c = lagging_learner(lag=3)
        self.assertEqual(c[1].member_progress(), {1: 7, 2: 7, 3: 7, 4: 2})

    def test_update_allowed_one_at_a_time(self):
        """An address change is proposed and chosen like any other change."""
        c = Cluster()
        c.elect(1)
        update = ConfigChange(ChangeKind.UPDATE, 2, peer="h:1", client="h:2")
        c[1].propose_config_change(update)
        self.assertRaises(ProposalRejected, c[1].propose_config_change, change("REMOVE", 3))
        c.deliver()
        self.assertEqual(c[3].config.address(2), MemberAddress("h:1", "h:2"))


class RemovedMemberTests(SynchronousTestCase):
    """Once a member's removal is chosen, the members ignore it."""

    def test_removed_node_is_ignored(self):
        """
        A removed node that did not learn its removal is answered by no
        member: its pre-votes and Prepares change nothing and get no reply.
        """
        c = Cluster()
        c.elect(1)
        c.isolated.add(3)
        c[1].propose_config_change(change("REMOVE", 3))
        c.deliver()
        c.tick(HB)
        self.assertEqual(c[2].config, config(1, 2, removed=[3]))
        for node in (1, 2):
            promised = c[node].promised
            c[node].step(PreVote(3, node, Ballot(9, 3), 100))
            c[node].step(Prepare(3, node, Ballot(9, 3), 100, False))
            self.assertEqual(c[node].promised, promised)
            rd = take_ready(c, node)
            self.assertEqual([m for m in rd.messages + rd.durable_messages if m.dst == 3], [])

    def test_removal_is_replicated_state(self):
        """
        The removed nodes are part of the member set: a snapshot carries
        them (so a member restarted or joined since still refuses a removed
        node), and adding the node again clears it.
        """
        from kvpaxos.encoding.messages import decode, encode
        from kvpaxos.paxos import InstallSnapshot
        from kvpaxos.paxos.messages import Snapshot

        after = config(1, 2, 3).apply(change("REMOVE", 3))
        self.assertEqual(after.removed, frozenset({3}))
        sent = InstallSnapshot(1, 2, Snapshot(9, after, b""))
        self.assertEqual(decode(encode(sent)).snapshot.config.removed, frozenset({3}))
        self.assertEqual(after.apply(change("ADD_LEARNER", 3)).removed, frozenset())

    def test_readded_node_is_heard_again(self):
        """A node added again after its removal is answered again."""
        c = Cluster()
        c.elect(1)
        c[1].propose_config_change(change("REMOVE", 3))
        c.deliver()
        c[1].propose_config_change(change("ADD_LEARNER", 3))
        c.deliver()
        self.assertNotIn(3, c[1].removed)
        c.tick(2 * HB)
        self.assertIn(3, c[1].member_progress())


def take_ready(c, node):
    """Perform one Ready of C{node} (or return an empty one)."""
    rd = c.process(node)
    return rd if rd is not None else Ready()
