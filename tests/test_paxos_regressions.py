"""
Regression tests for bugs found in review: a leader's chosen index moves only
by its own quorums, and a correct acceptor survives stale messages.
"""

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import (
    Ballot,
    Batch,
    Catchup,
    Config,
    Entry,
    HardState,
    Heartbeat,
    InstallSnapshot,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    Snapshot,
    TimeoutNow,
)
from kvpaxos.storage.memory import MemoryStorage
from tests.paxos_helpers import TEST_OPTIONS, Cluster, lone, take


class LeaderLearnsOnlyFromItsQuorumsTests(SynchronousTestCase):
    """A (possibly deposed) leader ignores chosen values others announce."""

    def test_leader_ignores_install_snapshot(self):
        """
        A late InstallSnapshot does not move a leader's chosen index: its
        heartbeats would otherwise make followers learn its own ballot's
        values for slots chosen in a later ballot.
        """
        cluster = Cluster((1, 2, 3))
        leader = cluster.elect(1)
        chosen = leader.chosen_index
        snapshot = Snapshot(chosen + 5, Config(frozenset({1, 2, 3})), b"")
        leader.step(InstallSnapshot(2, 1, snapshot))
        self.assertEqual(leader.chosen_index, chosen)
        self.assertTrue(leader.is_leader)

    def test_leader_ignores_catchup(self):
        """A late Catchup does not move a leader's chosen index or empty its window."""
        cluster = Cluster((1, 2, 3))
        leader = cluster.elect(1)
        chosen = leader.chosen_index
        entries = ((Ballot(9, 2), Batch((b"other",))),)
        leader.step(Catchup(2, 1, chosen + 1, entries, chosen + 1))
        self.assertEqual(leader.chosen_index, chosen)
        leader.propose(b"mine")
        cluster.deliver()
        cluster.tick(3)
        cluster.deliver()
        self.assertIn(b"mine", cluster.commands(2))
        self.assertNotIn(b"other", cluster.commands(1))


class PrepareWaitsForItsBallotTests(SynchronousTestCase):
    """
    Issue 9, hole 1: a Prepare never leaves before the ballot it carries is
    durable, and a Promise counts only for the first slot it was asked for.
    """

    def test_crash_before_the_ballot_is_durable(self):
        """
        A candidate that crashes before its raised ballot is written has sent
        no Prepare; restarted, it campaigns in that same ballot from a lower
        first slot, and a Promise answering the lost campaign (even a forged
        late one) does not make it propose a no-op over a chosen slot.
        """
        value = Batch((b"chosen",))
        storages = {n: MemoryStorage(Config(frozenset({1, 2, 3}))) for n in (1, 2, 3)}
        # Node 1 once promised (1, 2); slot 1 was then accepted in (1, 2) by
        # nodes 2 and 3 (chosen), and node 1 learned it only in memory.
        storages[1].save(HardState(Ballot(1, 2), 0), [], None)
        for node in (2, 3):
            storages[node].save(HardState(Ballot(1, 2), 0), [(1, Entry(Ballot(1, 2), value))], None)
        r1 = lone(1, storage=storages[1])
        r2 = lone(2, storage=storages[2])
        for _ in range(TEST_OPTIONS.election_ticks):
            r2.tick()  # past its start guard: it promises non-transfer Prepares
        take(r2)
        r1.request_catchup(2)
        r1.step(Catchup(2, 1, 1, ((Ballot(1, 2), value),), 1))
        self.assertEqual(r1.chosen_index, 1)
        r1.campaign()
        self.assertEqual(r1.role.first_slot, 2)
        rd = r1.ready()
        # What may leave before the Ready is durable: no Prepare.
        self.assertEqual([m for m in rd.messages if type(m) is Prepare], [])
        stale = []
        for message in rd.messages:
            if message.dst == 2:
                r2.step(message)
        late = take(r2)
        stale = [m for m in late.messages + late.durable_messages if type(m) is Promise]
        self.assertEqual(stale, [])
        # The crash: rd is never saved.  The restarted node reuses the round.
        r1 = lone(1, storage=storages[1])
        r1.campaign()
        self.assertEqual((r1.role.ballot, r1.role.first_slot), (Ballot(2, 1), 1))
        take(r1)
        # A Promise for the lost campaign (first slot 2, nothing below it).
        r1.step(Promise(2, 1, Ballot(2, 1), 2, ()))
        self.assertFalse(r1.is_leader)
        # The real answer to this campaign reports the chosen value.
        r1.step(Promise(3, 1, Ballot(2, 1), 1, ((1, Ballot(1, 2), value),)))
        self.assertTrue(r1.is_leader)
        self.assertEqual(r1.log[1].value, value)


class UnsolicitedCatchupTests(SynchronousTestCase):
    """
    Issue 9, hole 9: chosen values are taken only from the leader or from a
    peer this replica asked; a misrouted neighbour cannot write the log.
    """

    def test_unsolicited_catchup_is_refused(self):
        """A Catchup nobody asked for, from a node that does not lead, changes nothing."""
        r = lone(1)
        r.step(Heartbeat(2, 1, Ballot(1, 2), 0, 1))
        take(r)
        r.step(Catchup(3, 1, 1, ((Ballot(9, 3), Batch((b"junk",))),), 1))
        rd = take(r)
        self.assertEqual((rd.entries, rd.committed, r.chosen_index), ([], [], 0))

    def test_unsolicited_snapshot_is_refused(self):
        """An InstallSnapshot far ahead from a node that does not lead is not installed."""
        r = lone(1)
        r.step(Heartbeat(2, 1, Ballot(1, 2), 0, 1))
        take(r)
        snapshot = Snapshot(1000, Config(frozenset({1, 2, 3})), b"")
        r.step(InstallSnapshot(3, 1, snapshot))
        rd = take(r)
        self.assertFalse(rd.install_snapshot)
        self.assertEqual(r.chosen_index, 0)

    def test_catchup_from_the_leader_is_taken(self):
        """The current leader's Catchup is taken even unasked (it is the leader)."""
        r = lone(1)
        r.step(Heartbeat(2, 1, Ballot(1, 2), 0, 1))
        take(r)
        r.step(Catchup(2, 1, 1, ((Ballot(1, 2), Batch((b"a",))),), 1))
        self.assertEqual(r.chosen_index, 1)

    def test_answer_to_own_request_is_taken_once(self):
        """A peer asked for a catch-up is heard once; a duplicate of its answer is not."""
        r = lone(1)
        r.request_catchup(3)
        take(r)
        r.step(Catchup(3, 1, 1, ((Ballot(1, 3), Batch((b"a",))),), 1))
        self.assertEqual(r.chosen_index, 1)
        r.step(Catchup(3, 1, 2, ((Ballot(1, 3), Batch((b"b",))),), 2))
        self.assertEqual(r.chosen_index, 1)


class StartGuardTests(SynchronousTestCase):
    """
    Issue 9, hole 5: a restarted replica may have acked a leader's beat just
    before it went down; for its first election_ticks it neither grants a
    pre-vote nor promises a non-transfer Prepare.
    """

    def test_starting_replica_ignores_prepare(self):
        """A replica that just started does not promise a non-transfer Prepare."""
        r = lone(1, started=False)
        r.step(Prepare(2, 1, Ballot(5, 2), 1, False))
        rd = take(r)
        self.assertEqual(rd.durable_messages, [])
        self.assertIsNone(rd.hard_state)

    def test_starting_replica_ignores_transfer_prepare(self):
        """
        A transfer campaign is not promised either while starting: whose beat
        the replica acked before it restarted is unknown, so no transfer can
        be known to come from that leader (found in review).
        """
        r = lone(1, started=False)
        r.step(Prepare(2, 1, Ballot(5, 2), 1, True, Ballot(0, 0)))
        rd = take(r)
        self.assertEqual(rd.durable_messages, [])

    def test_guard_ends_after_election_ticks(self):
        """After election_ticks of its own ticks the replica promises as usual."""
        r = lone(1, started=False)
        for _ in range(TEST_OPTIONS.election_ticks):
            r.tick()
        take(r)
        r.step(Prepare(2, 1, Ballot(5, 2), 1, False))
        self.assertEqual([type(m) for m in take(r).durable_messages], [Promise])


class LeaseAfterTimeoutNowTests(SynchronousTestCase):
    """
    Issue 9, hole 4: once a TimeoutNow is sent, its target may campaign
    (skipping pre-vote and stickiness) at any time, so the leader serves no
    lease read for the rest of that ballot, even once the transfer is given up.
    """

    def test_no_lease_after_abandoned_transfer(self):
        """A leader whose transfer timed out after its TimeoutNow left keeps no lease."""
        c = Cluster((1, 2, 3))
        leader = c.elect(1)
        leader.propose(b"x")
        c.deliver()
        c.tick(TEST_OPTIONS.heartbeat_ticks, nodes=[1])
        self.assertIsNotNone(leader.lease_read_index())
        c.hold(2)  # the TimeoutNow is lost on its way (for now)
        leader.transfer_leadership(2)
        c.deliver()
        self.assertTrue(leader.role.transfer_sent)
        c.tick(TEST_OPTIONS.election_ticks, nodes=[1])  # the transfer is given up
        self.assertTrue(leader.is_leader)
        self.assertIsNone(leader.role.transfer_target)
        self.assertIsNone(leader.lease_read_index())


class ChosenIndexAnnouncedTests(SynchronousTestCase):
    """
    Issue 9, hole 11: the leader tells the followers a new chosen index as
    soon as it advances, not with its next heartbeat.
    """

    def test_followers_learn_without_a_tick(self):
        """A proposal is applied on every follower with no tick after it was proposed."""
        c = Cluster((1, 2, 3))
        leader = c.elect(1)
        leader.propose(b"w")
        c.deliver()
        self.assertIn(b"w", c.commands(1))
        self.assertIn(b"w", c.commands(2))
        self.assertIn(b"w", c.commands(3))

    def test_no_extra_heartbeat_when_accepts_carry_it(self):
        """A chosen index announced by an Accept needs no heartbeat of its own."""
        c = Cluster((1, 2, 3))
        leader = c.elect(1)
        leader.propose(b"a")
        c.deliver()
        beat = leader.role.beat
        leader.propose(b"b")  # its Accept carries the chosen index of "a"
        rd = c.process(1)
        self.assertEqual([m for m in rd.messages if type(m) is Heartbeat], [])
        self.assertEqual(leader.role.beat, beat)


class LeaseSettingsTests(SynchronousTestCase):
    """Issue 9, hole 6: tick quantisation alone costs one tick of the lease."""

    def test_zero_drift_allowance_is_refused(self):
        """lease_drift_ticks = 0 is refused: the allowance must cover at least one tick."""
        from kvpaxos.paxos import Options

        error = self.assertRaises(ValueError, Options, lease_drift_ticks=0)
        self.assertIn("1 <= lease_drift_ticks", str(error))
        self.assertEqual(Options(lease_drift_ticks=1).lease_drift_ticks, 1)


class LateTimeoutNowTests(SynchronousTestCase):
    """
    Found in review (issue 9): a TimeoutNow read after its leader was
    deposed must not start a transfer campaign that overtakes the newer
    leader's lease.
    """

    def test_late_timeout_now_after_a_new_leader(self):
        """
        Node 3 pauses with leader 1's TimeoutNow unread; 1 steps down and 2
        is elected, holding a lease.  Resumed (still a follower), node 3
        does not campaign, and 2 stays the only leader.
        """
        E = TEST_OPTIONS.election_ticks
        c = Cluster((1, 2, 3))
        leader = c.elect(1)
        leader.propose(b"x0")
        c.deliver()
        c.drop = lambda m: {m.src, m.dst} == {1, 2}
        c.tick(3)
        while leader.role.quorum_elapsed != E - 1:
            c.tick(1)
        c[3].election_timeout = 2 * E - 1
        c.hold(3)  # node 3 is paused: no input, no ticks
        start = c[1].ticks
        leader.transfer_leadership(3)
        c.deliver()
        self.assertIn(TimeoutNow, {type(m) for m in c.held[3]})
        while leader.is_leader:
            c.tick(1, nodes=[1, 2])
        c.drop = lambda m: False
        c[2].pre_campaign()
        c.deliver()
        self.assertTrue(c[2].is_leader)
        c.tick(2, nodes=[1, 2])
        self.assertIsNotNone(c[2].lease_read_index())
        paused = c[1].ticks - start
        self.assertLess(paused, c[3].election_timeout)
        for _ in range(paused):  # the node counts its missed ticks first
            c[3].tick()
        self.assertEqual(c[3].role.name, "follower")
        c.drop = lambda m: m.src == 3 and m.dst == 2  # 3 -> 2 is slow
        c.release(3)
        self.assertNotEqual(c[3].role.name, "candidate")
        self.assertFalse(c[3].is_leader)
        self.assertEqual(c.leaders(), [2])


class DuellingElectionTests(SynchronousTestCase):
    """
    Found by the node simulator (issue 9): an acceptor that promised one
    candidate granted another's pre-vote at once, and the second campaign
    deposed the first just after it won.
    """

    def test_no_pre_vote_for_another_after_a_promise(self):
        """For election_ticks after promising a candidate, a replica grants no other node's pre-vote."""
        r = lone(1)
        r.step(Prepare(2, 1, Ballot(5, 2), 1, False))
        take(r)
        r.step(PreVote(3, 1, Ballot(6, 3), 1))
        self.assertEqual(take(r).messages, [PreVoteReply(1, 3, Ballot(6, 3), False, 0)])
        r.step(PreVote(2, 1, Ballot(6, 2), 1))
        self.assertEqual(take(r).messages, [PreVoteReply(1, 2, Ballot(6, 2), True, 0)])

    def test_pre_vote_granted_again_later(self):
        """Once election_ticks passed with no leader, another node's pre-vote is granted again."""
        r = lone(1)
        r.step(Prepare(2, 1, Ballot(5, 2), 1, False))
        take(r)
        for _ in range(TEST_OPTIONS.election_ticks):
            r.tick()
        take(r)
        r.step(PreVote(3, 1, Ballot(6, 3), 1))
        self.assertEqual(take(r).messages[-1], PreVoteReply(1, 3, Ballot(6, 3), True, 0))
