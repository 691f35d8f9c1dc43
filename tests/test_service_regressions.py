"""
Regression tests for the holes review found in the node service (issue 9):
ticks counted before messages after a stall, time on a monotonic clock,
lease reads only among members that tick alike, a corrupt snapshot from a
peer refused (a fatal stop's reason: L{tests.test_service}).  Services run over the fake wire
of L{tests.test_service}: an injected clock, synchronous commits, no ports.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv.commands import Op, Request
from kvpaxos.node.interfaces import Timing
from kvpaxos.paxos import Config, Heartbeat, HeartbeatAck, InstallSnapshot, PreVote, Snapshot
from tests.test_service import TICK_S, leader_of, make_cluster, run


class Recorder:
    """Wraps a service's peers and records what it sends, in order."""

    def __init__(self, peers):
        self.peers = peers
        self.sent = []

    def send(self, message):
        self.sent.append(message)
        self.peers.send(message)

    def forward(self, node_id, commands):
        return self.peers.forward(node_id, commands)

    def read_index(self, node_id):
        return self.peers.read_index(node_id)


def advance_both(reactor, clock, seconds, step=0.001):
    """Advance the reactor and the monotonic clock together."""
    for _ in range(int(seconds / step)):
        clock.advance(step)
        reactor.advance(step)


class StallTests(SynchronousTestCase):
    """Hole 2: after a reactor stall, missed ticks count before queued messages."""

    def test_heartbeat_after_stall_is_acked_after_the_missed_ticks(self):
        """
        A follower back from a stall longer than its election timeout counts
        the missed ticks before it steps the heartbeat that waited: nothing
        it sends after its ack is a campaign.
        """
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        leader = leader_of(wire)
        follower_id = next(i for i in sorted(wire.services) if i != leader)
        follower = wire.services[follower_id]
        recorder = follower.peers = Recorder(follower.peers)
        ballot = wire.services[leader].replica.role.ballot
        # The stall: the follower runs nothing for 40 ticks' worth of time.
        follower._ticker.stop()
        wire.down = {follower_id}
        run(reactor, 40 * TICK_S)
        wire.down = set()
        beat = Heartbeat(leader, follower_id, ballot, wire.services[leader].replica.chosen_index, 10**6)
        follower.message_received(beat)  # what waited in the socket comes first
        follower._tick()  # then the overdue tick
        run(reactor, 0.001)
        kinds = [type(m) for m in recorder.sent]
        self.assertIn(HeartbeatAck, kinds)
        after_ack = kinds[kinds.index(HeartbeatAck) + 1:]
        self.assertNotIn(PreVote, after_ack)
        self.assertEqual(follower.replica.leader, leader)
        self.assertEqual(follower.replica.election_elapsed, 0)


class MonotonicClockTests(SynchronousTestCase):
    """Hole 3: ticks and the lease are counted on the monotonic clock."""

    def test_frozen_wall_clock_does_not_freeze_the_lease(self):
        """
        A leader whose wall clock stepped back (its timed calls stall) but
        whose monotonic clock ran on past its lease does not serve a stale
        lease read: the read counts the ticks on the monotonic clock first.
        """
        clock = Clock()
        reactor, wire = make_cluster(3, clock=clock, lease_reads=True)
        advance_both(reactor, clock, 2)
        leader = wire.services[leader_of(wire)]
        put = leader.submit(Request(Op.PUT, b"k", b"v"), 5)
        advance_both(reactor, clock, 0.5)
        self.successResultOf(put)
        wire.down = {i for i in wire.services if i != leader.node_id}
        clock.advance(5.0)  # real time passes; the wall clock shows none
        read = leader.get(b"k", 1, "lease")
        self.assertNoResult(read)

    def test_wall_clock_jump_forward_keeps_stickiness(self):
        """
        A jump of the wall clock (reactor time) with no monotonic time passing
        counts no ticks: followers keep their leader and nobody campaigns.
        """
        clock = Clock()
        reactor, wire = make_cluster(3, clock=clock)
        advance_both(reactor, clock, 2)
        leader = leader_of(wire)
        ballot = wire.services[leader].replica.role.ballot
        reactor.advance(30.0)  # a forward step of the wall clock
        advance_both(reactor, clock, 0.2)
        self.assertEqual(leader_of(wire), leader)
        self.assertEqual(wire.services[leader].replica.role.ballot, ballot)
        for node_id, service in wire.services.items():
            if node_id != leader:
                self.assertEqual(service.replica.role.name, "follower")
                self.assertEqual(service.replica.leader, leader)


class LeaseTimingTests(SynchronousTestCase):
    """Hole 6: lease reads only while every voter reports this node's timing."""

    def test_peer_with_other_timing_refuses_lease(self):
        """A voter reporting another tick_ms turns lease reads into quorum reads."""
        reactor, wire = make_cluster(3, lease_reads=True)
        run(reactor, 2)
        leader = wire.services[leader_of(wire)]
        put = leader.submit(Request(Op.PUT, b"k", b"v"), 5)
        run(reactor, 0.5)
        self.successResultOf(put)
        other = next(i for i in sorted(wire.services) if i != leader.node_id)
        leader.peer_timing(other, Timing(100, 10, True))
        wire.down = {i for i in wire.services if i != leader.node_id}
        read = leader.get(b"k", 1, "lease")
        self.assertNoResult(read)  # it needs a quorum round, which cannot finish

    def test_peer_timing_unknown_refuses_lease(self):
        """A voter that never reported its timing turns lease reads into quorum reads."""
        reactor, wire = make_cluster(3, lease_reads=True)
        run(reactor, 2)
        leader = wire.services[leader_of(wire)]
        other = next(i for i in sorted(wire.services) if i != leader.node_id)
        del leader._peer_timing[other]
        wire.down = {i for i in wire.services if i != leader.node_id}
        read = leader.get(b"k", 1, "lease")
        self.assertNoResult(read)

    def test_same_timing_allows_lease(self):
        """With every voter on the same timing, a lease read needs no round."""
        reactor, wire = make_cluster(3, lease_reads=True)
        run(reactor, 2)
        leader = wire.services[leader_of(wire)]
        wire.down = {i for i in wire.services if i != leader.node_id}
        read = leader.get(b"k", 1, "lease")
        self.assertIsNone(self.successResultOf(read))


class CorruptSnapshotTests(SynchronousTestCase):
    """Hole 9: a peer's snapshot whose state does not decode is refused."""

    def test_corrupt_snapshot_does_not_stop_the_node(self):
        """An InstallSnapshot with garbage state from the leader is dropped; the node serves on."""
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        leader = leader_of(wire)
        follower_id = next(i for i in sorted(wire.services) if i != leader)
        follower = wire.services[follower_id]
        snapshot = Snapshot(1000, Config(frozenset({1, 2, 3})), b"\xffgarbage")
        follower.message_received(InstallSnapshot(leader, follower_id, snapshot))
        run(reactor, 0.1)
        self.assertFalse(reactor.stopped)
        self.assertIsNone(follower.fatal_error)
        self.assertLess(follower.replica.chosen_index, 1000)
        put = follower.submit(Request(Op.PUT, b"k", b"v"), 5)
        run(reactor, 0.5)
        self.successResultOf(put)
