"""
Tests that learners never vote (no Promise, Accepted, heartbeat ack or
pre-vote of theirs makes a quorum, and a learner never campaigns), and for
the leader's automatic promotion of a learner that stays caught up
(C{Options.auto_promote}; docs/design.md, "Membership rules (issue 11)").
"""

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import (
    Accepted,
    ChangeKind,
    CheckQuorum,
    ConfigChange,
    Heartbeat,
    HeartbeatAck,
    HeartbeatTimeout,
    Options,
    PreVote,
    PreVoteReply,
    Prepare,
    Promise,
    ProposalRejected,
    TimeoutNow,
)
from kvpaxos.storage.memory import MemoryStorage
from tests.paxos_helpers import TEST_OPTIONS, Cluster, config, lone, options, take

E = TEST_OPTIONS.election_ticks
HB = TEST_OPTIONS.heartbeat_ticks


def replica(node=1, learners=(4,), opts=TEST_OPTIONS):
    """Return replica C{node} of voters 1-3 and C{learners}."""
    storage = MemoryStorage(config(1, 2, 3, learners=learners))
    return lone(node, storage=storage, opts=opts)


def leader(learners=(4,), opts=TEST_OPTIONS):
    """Return replica 1 leading voters 1-3 (with 2's promise) and C{learners}."""
    r = replica(learners=learners, opts=opts)
    r.campaign()
    take(r)
    r.step(Promise(2, 1, r.role.ballot, 1, ()))
    assert r.is_leader
    take(r)
    return r


def beat(r):
    """Make leader C{r} send a heartbeat; return its number."""
    r.step(HeartbeatTimeout(r.id, r.id))
    take(r)
    return r.role.beat


def ack(r, node, chosen_index=None):
    """Step in C{node}'s ack of leader C{r}'s latest heartbeat."""
    index = r.chosen_index if chosen_index is None else chosen_index
    r.step(HeartbeatAck(node, r.id, r.role.ballot, r.role.beat, index))


def choose_slot(r, command=b"x"):
    """Propose C{command} on leader C{r} and have voter 2 accept it."""
    r.propose(command)
    take(r)
    slot = r.role.next_slot - 1
    r.step(Accepted(2, 1, r.role.ballot, slot, 1, r.chosen_index))
    take(r)
    assert r.chosen_index == slot


class LearnersNeverVoteTests(SynchronousTestCase):
    """A learner's replies never make a quorum, and it never campaigns."""

    def test_learner_promise_does_not_elect(self):
        """A candidate with its own promise and a learner's has no quorum."""
        r = replica()
        r.campaign()
        take(r)
        r.step(Promise(4, 1, r.role.ballot, 1, ()))
        self.assertFalse(r.is_leader)
        self.assertEqual(r.role.name, "candidate")

    def test_learner_pre_vote_does_not_start_campaign(self):
        """A pre-candidate granted by itself and a learner does not campaign."""
        r = replica()
        r.pre_campaign()
        rd = take(r)
        self.assertNotIn(4, [m.dst for m in rd.messages if type(m) is PreVote])
        r.step(PreVoteReply(4, 1, r.role.probe, True, 0))
        self.assertEqual(r.role.name, "pre-candidate")

    def test_learner_accepted_does_not_choose(self):
        """A slot the leader and a learner accepted is not chosen."""
        r = leader()
        r.propose(b"x")
        take(r)
        r.step(Accepted(4, 1, r.role.ballot, 1, 1, 0))
        self.assertEqual(r.chosen_index, 0)
        r.step(Accepted(3, 1, r.role.ballot, 1, 1, 0))
        self.assertEqual(r.chosen_index, 1)

    def test_learner_ack_does_not_confirm_read(self):
        """A read round acked by a learner only is not confirmed."""
        r = leader()
        choose_slot(r)
        r.read_index("r")
        take(r)
        ack(r, 4)
        self.assertEqual(take(r).read_states, [])
        ack(r, 3)
        self.assertEqual([s.index for s in take(r).read_states], [1])

    def test_learner_ack_does_not_extend_lease(self):
        """A learner's heartbeat ack gives the leader no read lease."""
        r = leader()
        choose_slot(r)
        lease = r.role.lease_until
        beat(r)
        ack(r, 4)
        self.assertEqual(r.role.lease_until, lease)
        ack(r, 3)
        self.assertGreater(r.role.lease_until, lease)

    def test_learner_acks_do_not_keep_leader(self):
        """A leader that heard only a learner for an election timeout steps down."""
        r = leader()
        ack(r, 4)
        r.step(CheckQuorum(1, 1))
        self.assertFalse(r.is_leader)

    def test_no_transfer_to_learner(self):
        """Leadership is never handed to a learner."""
        r = leader()
        error = self.assertRaises(ProposalRejected, r.transfer_leadership, 4)
        self.assertEqual(str(error), "node 4 is not another voter")

    def test_learner_ignores_timeout_now(self):
        """A learner told TimeoutNow by its leader does not campaign."""
        r = replica(node=4)
        ballot = leader().role.ballot
        r.step(Heartbeat(1, 4, ballot, 0, 1))
        take(r)
        r.step(TimeoutNow(1, 4, ballot))
        rd = take(r)
        self.assertEqual(r.role.name, "follower")
        self.assertEqual([m for m in rd.durable_messages if type(m) is Prepare], [])

    def test_learner_never_campaigns(self):
        """A learner that hears no leader for many timeouts sends no pre-vote."""
        r = replica(node=4)
        sent = []
        for _ in range(5 * E):
            r.tick()
            rd = take(r)
            sent += rd.messages + rd.durable_messages
        self.assertEqual(sent, [])
        self.assertEqual(r.promised, replica(node=4).promised)


AUTO = options(auto_promote=True, auto_promote_beats=3, promote_lag_slots=0)
PROMOTE_4 = ConfigChange(ChangeKind.PROMOTE, 4)


def proposed_changes(r):
    """Cut leader C{r}'s next Ready; return the member-set changes its Accepts carry."""
    rd = take(r)
    return [v for m in rd.messages if m.dst == 2 for v in getattr(m, "values", ())
            if type(v) is ConfigChange]


class AutoPromoteTests(SynchronousTestCase):
    """With auto_promote, the leader promotes a learner that stays caught up."""

    def test_stateless_learner_never_promoted(self):
        """
        A learner that reports chosen index 0 (a joiner still waiting for
        the state) is never caught up, however close 0 is to the leader's
        chosen index: auto_promote leaves it, and an operator's PROMOTE is
        refused saying why.
        """
        r = leader(opts=options(auto_promote=True, auto_promote_beats=2, promote_lag_slots=5))
        choose_slot(r)
        for _ in range(4):
            beat(r)
            ack(r, 4, chosen_index=0)
            self.assertEqual(proposed_changes(r), [])
        with self.assertRaises(ProposalRejected) as caught:
            r.propose_config_change(PROMOTE_4)
        self.assertIn("still needs the state", str(caught.exception))

    def test_promoted_after_consecutive_caught_up_acks(self):
        """After auto_promote_beats caught-up acks (not before) the learner's promotion is proposed."""
        r = leader(opts=AUTO)
        choose_slot(r)  # a learner that reports 0 has no state yet
        for _ in range(2):
            beat(r)
            ack(r, 4)
            self.assertEqual(proposed_changes(r), [])
        beat(r)
        ack(r, 4)
        self.assertEqual(proposed_changes(r), [PROMOTE_4])

    def test_lagging_ack_resets_the_count(self):
        """An ack that shows the learner lagging starts the count again."""
        r = leader(opts=AUTO)
        choose_slot(r)
        for index in (1, 1, 0, 1, 1):
            beat(r)
            ack(r, 4, chosen_index=index)
            self.assertEqual(proposed_changes(r), [])
        beat(r)
        ack(r, 4)
        self.assertEqual(proposed_changes(r), [PROMOTE_4])

    def test_duplicate_ack_counts_once(self):
        """Acks of one heartbeat (duplicates) count as one."""
        r = leader(opts=AUTO)
        beat(r)
        for _ in range(5):
            ack(r, 4)
        self.assertEqual(proposed_changes(r), [])

    def test_off_by_default(self):
        """Without auto_promote a caught-up learner stays a learner."""
        r = leader()
        for _ in range(3 * TEST_OPTIONS.auto_promote_beats):
            beat(r)
            ack(r, 4)
            self.assertEqual(proposed_changes(r), [])

    def test_waits_for_change_in_flight(self):
        """No promotion is proposed while another change is in flight."""
        r = leader(opts=AUTO)
        choose_slot(r)  # a learner that reports 0 has no state yet
        r.propose_config_change(ConfigChange(ChangeKind.ADD_LEARNER, 6))
        take(r)
        change_slot = r.role.next_slot - 1
        for _ in range(4):
            beat(r)
            ack(r, 4)
            self.assertEqual(proposed_changes(r), [])
        r.step(Accepted(2, 1, r.role.ballot, change_slot, 1, r.chosen_index))
        # The change is chosen: the learner must show it learned it first.
        self.assertEqual(proposed_changes(r), [])
        beat(r)
        ack(r, 4)
        self.assertEqual(proposed_changes(r), [PROMOTE_4])

    def test_lowest_id_first(self):
        """Of two learners caught up long enough, the lower id is promoted first."""
        r = leader(learners=(4, 5), opts=AUTO)
        choose_slot(r)  # a learner that reports 0 has no state yet
        for _ in range(3):
            beat(r)
            ack(r, 5)
            ack(r, 4)
        self.assertEqual(proposed_changes(r), [PROMOTE_4])

    def test_cluster_promotes_joined_learner(self):
        """In a cluster, a learner that joined is promoted by itself and counts as a voter everywhere."""
        c = Cluster(opts=options(auto_promote=True, auto_promote_beats=3))
        c.elect(1)
        c[1].propose(b"x")
        c.deliver()
        c.join(4)
        c[1].propose_config_change(ConfigChange(ChangeKind.ADD_LEARNER, 4))
        c.deliver()
        c.tick(5 * HB)
        for node in c.ids:
            self.assertEqual(c[node].config, config(1, 2, 3, 4), f"node {node}")


class OptionsTests(SynchronousTestCase):
    """The membership options and their defaults."""

    def test_defaults(self):
        """Promotion allows 1,000 slots of lag; automatic promotion is off and needs 10 acks."""
        opts = Options()
        self.assertEqual(
            (opts.promote_lag_slots, opts.auto_promote, opts.auto_promote_beats), (1000, False, 10)
        )

    def test_bad_values_refused(self):
        """A negative lag or fewer than one beat is a ValueError."""
        self.assertRaises(ValueError, options, promote_lag_slots=-1)
        self.assertRaises(ValueError, options, auto_promote_beats=0)
