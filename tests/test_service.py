"""
Tests for L{kvpaxos.node.service.ReplicaService}, the Twisted adapter that
runs the core: clusters of services in one process over a fake peer wire,
with an injected clock and synchronous commits (no threads, no ports).
"""

from twisted.logger import formatEvent, globalLogPublisher
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv.commands import InvalidArgument, Op, Range, Request
from kvpaxos.node.interfaces import NotLeaderError, Unavailable
from kvpaxos.node.peer_commands import ForwardFailed, PeerUnreachable
from kvpaxos.node.service import ReplicaService
from kvpaxos.paxos import Config, Options
import random
from unittest.mock import patch

from kvpaxos.storage.memory import MemoryStore

TICK_S = 0.05


class SyncIO:
    """A snapshot transfer's pool and writer work, run at once (no threads)."""

    def in_pool(self, call, *args):
        return defer.maybeDeferred(call, *args)

    on_writer = in_pool


class FakeReactor(Clock):
    """A Clock that can be 'stopped' (the node stops it on a fatal error)."""

    running = True
    stopped = False

    def stop(self):
        self.stopped = True
        self.running = False


class Wire:
    """Delivers messages and peer calls between services after a short delay."""

    def __init__(self, clock):
        self.clock = clock
        self.services = {}
        self.down = set()

    def reachable(self, src, dst):
        return dst in self.services and src not in self.down and dst not in self.down

    def later(self, call, *args):
        d = defer.Deferred()
        self.clock.callLater(0.001, lambda: defer.maybeDeferred(call, *args).chainDeferred(d))
        return d


class FakePeers:
    def __init__(self, wire, node_id):
        self.wire = wire
        self.node_id = node_id

    def send(self, message):
        if self.wire.reachable(self.node_id, message.dst):
            self.wire.clock.callLater(
                0.001, self.wire.services[message.dst].message_received, message
            )

    def send_stream(self, message):
        if self.wire.reachable(self.node_id, message.dst):
            service = self.wire.services[message.dst]
            self.wire.clock.callLater(0.001, service.snapshot_stream_received, message)

    def forward(self, node_id, commands):
        if not self.wire.reachable(self.node_id, node_id):
            return defer.fail(PeerUnreachable("link down"))
        d = self.wire.later(self.wire.services[node_id].proposals_forwarded, commands)
        return d.addErrback(self._sorted, commands)

    def _sorted(self, failure, commands):
        # As PeerProtocol.forward reports: refused, or unknown outcome.
        refused = commands if failure.check(NotLeaderError) else []
        unknown = [] if refused else commands
        raise ForwardFailed(refused, unknown, failure)

    def read_index(self, node_id):
        if not self.wire.reachable(self.node_id, node_id):
            return defer.fail(PeerUnreachable("link down"))
        return self.wire.later(self.wire.services[node_id].read_index_requested)


def make_cluster(size, reactor=None, clock=None, lease_reads=False):
    """
    Start C{size} services on one reactor; C{clock} is their monotonic clock
    (by default the reactor's own time).  Every pair reports its timing, as
    peer links do when they come up.
    """
    reactor = reactor or FakeReactor()
    wire = Wire(reactor)
    config = Config(frozenset(range(1, size + 1)))
    for node_id in range(1, size + 1):
        wire.services[node_id] = start_service(
            node_id, MemoryStore(config), reactor, wire, clock=clock, lease_reads=lease_reads
        )
    exchange_timing(wire)
    return reactor, wire


def exchange_timing(wire):
    """Tell every service the timing of every other, as links coming up do."""
    for node_id, service in sorted(wire.services.items()):
        for other_id, other in sorted(wire.services.items()):
            if other_id != node_id:
                service.peer_timing(other_id, other.timing)


def start_service(node_id, store, reactor, wire, clock=None, lease_reads=False):
    service = ReplicaService(
        node_id,
        store,
        reactor,
        Options(election_ticks=10, heartbeat_ticks=2),
        tick_s=TICK_S,
        rng=random.Random(node_id),
        run_commit=lambda *args: defer.maybeDeferred(store.commit, *args),
        snapshot_io=SyncIO(),
        clock=clock or reactor,
        lease_reads=lease_reads,
    )
    service.peers = FakePeers(wire, node_id)
    service.startService()
    return service


def run(reactor, seconds):
    """Advance the clock in small steps (every callLater(0) runs)."""
    for _ in range(int(seconds / 0.001)):
        reactor.advance(0.001)


def leader_of(wire):
    leaders = [i for i, s in wire.services.items() if s.replica.is_leader and i not in wire.down]
    return leaders[0] if len(leaders) == 1 else None


class SingleNodeTests(SynchronousTestCase):
    """A one-node cluster serves writes and reads."""

    def test_put_then_get(self):
        """A put is applied and answered; a get then reads its value."""
        reactor, wire = make_cluster(1)
        run(reactor, 1.5)
        d = wire.services[1].submit(Request(Op.PUT, b"k", b"v"), 5)
        run(reactor, 0.1)
        self.assertFalse(self.successResultOf(d).existed)
        d = wire.services[1].get(b"k", 5)
        run(reactor, 0.1)
        self.assertEqual(self.successResultOf(d), b"v")

    def test_append_and_delete(self):
        """Append returns the new value; delete says whether the key existed."""
        reactor, wire = make_cluster(1)
        run(reactor, 1.5)
        node = wire.services[1]
        first = node.submit(Request(Op.APPEND, b"k", b"ab"), 5)
        second = node.submit(Request(Op.APPEND, b"k", b"cd"), 5)
        run(reactor, 0.1)
        self.assertEqual(self.successResultOf(first).value, b"ab")
        self.assertEqual(self.successResultOf(second).value, b"abcd")
        deleted = node.submit(Request(Op.DELETE, b"k"), 5)
        again = node.submit(Request(Op.DELETE, b"k"), 5)
        run(reactor, 0.1)
        self.assertTrue(self.successResultOf(deleted).existed)
        self.assertFalse(self.successResultOf(again).existed)

    def test_own_commands_not_decoded_again(self):
        """
        The commands a node encodes are applied from their checked requests,
        not decoded again, and none is kept once applied or timed out.
        """
        reactor, wire = make_cluster(1)
        run(reactor, 1.5)
        node = wire.services[1]
        with patch("kvpaxos.kv.machine.decode_request", side_effect=AssertionError("decoded")):
            d = node.submit(Request(Op.PUT, b"k", b"v"), 5)
            run(reactor, 0.1)
        self.assertFalse(self.successResultOf(d).existed)
        self.assertEqual(node.writes._decoded, {})
        node._run_commit = lambda *args: defer.Deferred()  # the disk hangs: the next write times out
        late = node.submit(Request(Op.PUT, b"k", b"w"), 0.5)
        run(reactor, 0.6)
        self.failureResultOf(late, Unavailable)
        self.assertEqual(node.writes._decoded, {})

    def test_invalid_argument(self):
        """An empty key fails at once with InvalidArgument and proposes nothing."""
        reactor, wire = make_cluster(1)
        run(reactor, 1.5)
        node = wire.services[1]
        chosen = node.replica.chosen_index
        self.failureResultOf(node.submit(Request(Op.PUT, b"", b"v"), 5), InvalidArgument)
        run(reactor, 0.2)
        self.assertEqual(node.replica.chosen_index, chosen)

    def test_restart_keeps_data(self):
        """A node restarted over the same store keeps its log and its data."""
        reactor, wire = make_cluster(1)
        run(reactor, 1.5)
        node = wire.services[1]
        d = node.submit(Request(Op.PUT, b"k", b"v"), 5)
        run(reactor, 0.1)
        self.successResultOf(d)
        chosen = node.replica.chosen_index
        store = node.store
        store.close = lambda: None  # keep the in-memory "disk" for the restart
        self.successResultOf(node.stopService())
        again = start_service(1, store, reactor, wire)
        wire.services[1] = again
        self.assertEqual(again.replica.chosen_index, chosen)
        run(reactor, 1.5)
        d = again.get(b"k", 5)
        run(reactor, 0.2)
        self.assertEqual(self.successResultOf(d), b"v")


class SnapshotTests(SynchronousTestCase):
    """The service hands the core the store's state machine for snapshots."""

    def lagging_cluster(self, io):
        """
        Return (reactor, wire, leader, lagging): three nodes compacting every
        5 slots, one of them cut off while 20 puts were compacted away, then
        reconnected.  C{io} runs a transfer's pool and writer work.
        """
        reactor = FakeReactor()
        wire = Wire(reactor)
        config = Config(frozenset({1, 2, 3}))
        options = Options(election_ticks=10, heartbeat_ticks=2, snapshot_interval=5)
        for node_id in (1, 2, 3):
            store = MemoryStore(config)
            service = ReplicaService(
                node_id, store, reactor, options, tick_s=TICK_S, rng=random.Random(node_id),
                run_commit=lambda *args, store=store: defer.maybeDeferred(store.commit, *args),
                snapshot_io=io, clock=reactor,
            )
            service.peers = FakePeers(wire, node_id)
            service.startService()
            wire.services[node_id] = service
        run(reactor, 2)
        leader = leader_of(wire)
        lagging = next(i for i in wire.services if i != leader)
        wire.down = {lagging}
        for n in range(20):
            d = wire.services[leader].submit(Request(Op.PUT, b"k%d" % n, b"v"), 5)
            run(reactor, 0.05)
            self.successResultOf(d)
        self.assertGreater(wire.services[leader].store.snapshot().index, 0)
        wire.down = set()
        return reactor, wire, leader, lagging

    def test_snapshot_and_lagging_follower(self):
        """
        With a small snapshot interval the log is compacted (without copying
        the store), and a follower that missed the compacted slots installs
        the store's state as it was when asked, and serves the data.
        """
        reactor, wire, leader, lagging = self.lagging_cluster(SyncIO())
        # The store is its own snapshot: compaction copied none of its data.
        self.assertIsNone(wire.services[leader].store.snapshot().data)
        run(reactor, 2)
        self.assertGreater(wire.services[lagging].store.snapshot().index, 0)
        self.assertEqual(wire.services[lagging].store.get(b"k3"), b"v")

    def test_snapshot_read_once_off_the_call(self):
        """
        The state for a lagging peer is read through the injected pool (a
        pool thread in a node), one transfer at a time however often the
        peer asks, and sent when the read completes; a stop waits for the
        stream to close.
        """
        calls = []

        class HeldIO(SyncIO):
            def in_pool(self, call, *args):
                calls.append((call, args, defer.Deferred()))
                return calls[-1][2]

        reactor, wire, leader, lagging = self.lagging_cluster(HeldIO())
        run(reactor, 2)  # the lagging node asks again and again meanwhile
        opens = [c for c in calls if c[0] == wire.services[leader].store.open_snapshot_stream]
        self.assertEqual(len(opens), 1)
        self.assertEqual(wire.services[lagging].store.snapshot().index, 0)
        call, args, d = opens[0]
        d.callback(call(*args))
        stopping = wire.services[leader].stopService()
        self.assertNoResult(stopping)  # the chunk being read comes back first
        read, args, chunk = calls[-1]
        chunk.callback(read(*args))
        self.assertNoResult(stopping)  # then the stream is closed in the pool
        close, _, closed = calls[-1]
        self.assertEqual(close.__name__, "close")
        closed.callback(close())
        self.successResultOf(stopping)


class ClusterTests(SynchronousTestCase):
    """Three services over the fake wire."""

    def test_follower_forwards_writes_and_reads(self):
        """A follower forwards a write to the leader and answers once it applied it itself."""
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        leader = leader_of(wire)
        self.assertIsNotNone(leader)
        follower = next(i for i in wire.services if i != leader)
        d = wire.services[follower].submit(Request(Op.PUT, b"k", b"v"), 5)
        run(reactor, 0.5)
        self.assertFalse(self.successResultOf(d).existed)
        read = wire.services[follower].get(b"k", 5)
        run(reactor, 0.5)
        self.assertEqual(self.successResultOf(read), b"v")

    def test_follower_forwards_a_turn_in_one_call(self):
        """The writes a follower takes in one reactor turn reach the leader in one Forward."""
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        leader = leader_of(wire)
        follower = wire.services[next(i for i in wire.services if i != leader)]
        calls = []
        forward = follower.peers.forward

        def counting(node_id, commands):
            calls.append(len(commands))
            return forward(node_id, commands)

        follower.peers.forward = counting
        writes = [follower.submit(Request(Op.PUT, b"k%d" % n, b"v"), 5) for n in range(5)]
        run(reactor, 0.5)
        self.assertEqual(calls, [5])
        self.assertEqual([self.successResultOf(d).existed for d in writes], [False] * 5)
        self.assertEqual(wire.services[leader].store.get(b"k4"), b"v")

    def test_lost_forward_reply_is_not_resent(self):
        """
        A forward whose reply is lost (the leader may have proposed it) is not
        forwarded again: a write without a session is applied once.
        """
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        leader = leader_of(wire)
        follower = wire.services[next(i for i in wire.services if i != leader)]
        peers = follower.peers
        forward = peers.forward

        def lose_reply(node_id, commands):
            def lost(_):
                raise ForwardFailed([], commands, Failure(ConnectionError("reply lost")))
            return forward(node_id, commands).addCallback(lost)

        peers.forward = lose_reply
        d = follower.submit(Request(Op.APPEND, b"log", b"x"), 4)
        run(reactor, 1)
        self.assertEqual(self.successResultOf(d).value, b"x")
        for service in wire.services.values():
            self.assertEqual(service.store.get(b"log"), b"x")

    def test_no_quorum_is_unavailable(self):
        """Without a quorum a write fails with Unavailable by its deadline, naming the leader."""
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        leader = leader_of(wire)
        wire.down = {i for i in wire.services if i != leader}
        d = wire.services[leader].submit(Request(Op.PUT, b"k", b"v"), 1.0)
        run(reactor, 1.2)
        failure = self.failureResultOf(d, Unavailable)
        self.assertIn("leader is", failure.getErrorMessage())

    def test_write_during_election_succeeds(self):
        """A write taken while there is no leader is proposed once one is elected."""
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        old = leader_of(wire)
        wire.down = {old}
        survivor = next(i for i in wire.services if i != old)
        d = wire.services[survivor].submit(Request(Op.PUT, b"k", b"v"), 10)
        run(reactor, 4)
        self.assertFalse(self.successResultOf(d).existed)
        self.assertNotEqual(leader_of(wire), old)

    def test_leader_changes_are_logged_and_counted(self):
        """
        Every node logs the leader it follows once per change, and reports
        its ballot round, which a new election raises.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        old = leader_of(wire)
        first = {i: s.status().ballot_round for i, s in wire.services.items()}
        self.assertEqual(len(set(first.values())), 1)
        self.assertGreater(first[old], 0)
        wire.down = {old}
        run(reactor, 4)
        new = leader_of(wire)
        self.assertNotIn(new, (None, old))
        for i in wire.services:
            if i != old:
                self.assertGreater(wire.services[i].status().ballot_round, first[i])
        said = [formatEvent(e) for e in events if "ballot round" in e.get("log_format", "")]
        self.assertIn(f"node {new} is the leader (ballot round {wire.services[new].status().ballot_round})", said)
        follower = next(i for i in wire.services if i not in (old, new))
        self.assertEqual(sum(1 for line in said if line.startswith(f"node {follower} follows leader {new} ")), 1)
        self.assertEqual(sum(1 for line in said if line.startswith(f"node {follower} follows leader {old} ")), 1)

    def test_read_index_on_follower_is_refused(self):
        """A follower asked for a read index answers NotLeaderError naming the leader."""
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        leader = leader_of(wire)
        follower = next(i for i in wire.services if i != leader)
        failure = self.failureResultOf(
            wire.services[follower].read_index_requested(), NotLeaderError
        )
        self.assertEqual(failure.value.leader, leader)


class LifecycleTests(SynchronousTestCase):
    """Stopping and failing."""

    def test_stop_fails_pending(self):
        """Stopping the service fails every pending request with Unavailable."""
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        leader = leader_of(wire)
        wire.down = {i for i in wire.services if i != leader}
        d = wire.services[leader].submit(Request(Op.PUT, b"k", b"v"), 30)
        run(reactor, 0.1)
        self.successResultOf(wire.services[leader].stopService())
        failure = self.failureResultOf(d, Unavailable)
        self.assertIn("shutting down", failure.getErrorMessage())

    def test_broken_invariant_stops_the_node(self):
        """
        An AssertionError from the core stops the reactor loudly and leaves
        a one-line reason in fatal_error, for the exit status and stderr
        (issue 9, hole 10).
        """
        reactor, wire = make_cluster(1)
        run(reactor, 0.1)
        node = wire.services[1]

        def broken():
            raise AssertionError("agreement broken: planted")

        node.replica.tick = broken
        run(reactor, 0.2)
        self.assertTrue(reactor.stopped)
        self.assertIn("agreement broken: planted", node.fatal_error)
        self.assertNotIn("\n", node.fatal_error)
        self.assertTrue(self.flushLoggedErrors(AssertionError))


class ReadConsistencyTests(SynchronousTestCase):
    """Serializable and lease reads."""

    def test_serializable_read_is_local(self):
        """
        Once the node has confirmed one read index since it started, a
        serializable read answers from its state, even cut off from the
        cluster.
        """
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        leader = leader_of(wire)
        d = wire.services[leader].submit(Request(Op.PUT, b"k", b"v"), 5)
        run(reactor, 0.5)
        self.successResultOf(d)
        follower = next(i for i in wire.services if i != leader)
        first = wire.services[follower].get(b"k", 5, "serializable")
        run(reactor, 0.1)
        self.assertEqual(self.successResultOf(first), b"v")
        wire.down = {follower}
        read = wire.services[follower].get(b"k", 5, "serializable")
        self.assertEqual(self.successResultOf(read), b"v")

    def test_restarted_node_serializable_read_sees_what_it_may_have_answered(self):
        """
        A node back from a restart (where a crash may have lost writes it
        answered before their fsync) serves its first serializable read only
        after a confirmed read index: it never reads older than the cluster
        had chosen when it came back (issue 9, hole 8).
        """
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        leader = leader_of(wire)
        follower = next(i for i in sorted(wire.services) if i != leader)
        old = wire.services[follower]
        wire.down = {follower}
        d = wire.services[leader].submit(Request(Op.PUT, b"k", b"new"), 5)
        run(reactor, 0.5)
        self.successResultOf(d)
        # The follower restarts behind the cluster: its store lacks the put,
        # as a crash before an fsync leaves it.
        store = old.store
        old.stopService()
        old.store = store
        restarted = start_service(follower, store, reactor, wire)
        wire.services[follower] = restarted
        wire.down = set()
        self.assertIsNone(store.get(b"k"))
        read = restarted.get(b"k", 5, "serializable")
        run(reactor, 1)
        self.assertEqual(self.successResultOf(read), b"new")

    def test_answer_before_durable_and_reads_wait(self):
        """
        A write is answered once its result is known, before its
        transaction is durable; reads at the node, serializable ones too,
        wait until it is durable and then see it.
        """
        reactor, wire = make_cluster(1)
        run(reactor, 1.5)
        node = wire.services[1]
        store = node.store
        syncing = []

        def slow_disk(*args):
            # The data is there (and the results known) at once; the fsync
            # completes when the test says so.
            results = store.commit(*args)
            syncing.append(defer.Deferred())
            syncing[-1].addCallback(lambda _: results)
            return syncing[-1]

        node._run_commit = slow_disk
        put = node.submit(Request(Op.PUT, b"k", b"v"), 5)
        run(reactor, 0.01)
        # The entry's own Ready (acceptance) must be durable before the put
        # is chosen; the Ready that applies it is answered before its fsync.
        while not put.called:
            self.assertFalse(syncing[-1].called)
            syncing[-1].callback(None)
            run(reactor, 0.01)
        self.assertFalse(self.successResultOf(put).existed)
        self.assertFalse(syncing[-1].called)
        serializable = node.get(b"k", 5, "serializable")
        linearizable = node.get(b"k", 5)
        run(reactor, 0.01)
        self.assertNoResult(serializable)
        self.assertNoResult(linearizable)
        while not all(d.called for d in syncing):
            for d in syncing:
                if not d.called:
                    d.callback(None)
            run(reactor, 0.01)
        self.assertEqual(self.successResultOf(serializable), b"v")
        self.assertEqual(self.successResultOf(linearizable), b"v")

    def test_reads_of_one_turn_share_one_store_call(self):
        """Reads that are due in one reactor turn are served by one read_ranges call."""
        reactor, wire = make_cluster(1)
        run(reactor, 1.5)
        node = wire.services[1]
        put = node.submit(Request(Op.PUT, b"k", b"v"), 5)
        run(reactor, 0.1)
        self.successResultOf(put)
        calls = []
        read_ranges = node.store.read_ranges

        def counting(queries):
            calls.append(list(queries))
            return read_ranges(queries)

        node.store.read_ranges = counting
        reads = [node.range(Range(b"k"), 5, "serializable") for _ in range(4)]
        bad = node.range(Range(b""), 5, "serializable")
        run(reactor, 0.01)
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(calls[0]), 5)
        self.assertEqual([self.successResultOf(d).kvs[0].value for d in reads], [b"v"] * 4)
        self.failureResultOf(bad, InvalidArgument)

    def test_lease_read_needs_no_round(self):
        """With lease reads enabled, a leader holding its lease answers without any message."""
        reactor, wire = make_cluster(3, lease_reads=True)
        run(reactor, 2)
        leader = wire.services[leader_of(wire)]
        d = leader.submit(Request(Op.PUT, b"k", b"v"), 5)
        run(reactor, 0.5)
        self.successResultOf(d)
        wire.down = {i for i in wire.services if i != leader.node_id}
        read = leader.get(b"k", 5, "lease")
        self.assertEqual(self.successResultOf(read), b"v")

    def test_lease_counts_paused_time(self):
        """
        A leader back from a pause longer than its lease counts the missed
        ticks first and falls back to a quorum round (which a cut-off leader
        cannot finish).
        """
        reactor, wire = make_cluster(3, lease_reads=True)
        run(reactor, 2)
        leader = wire.services[leader_of(wire)]
        wire.down = {i for i in wire.services if i != leader.node_id}
        leader._ticker.stop()  # the process stalls: no ticks...
        reactor.advance(5.0)  # ...for longer than any lease
        read = leader.get(b"k", 1, "lease")
        self.assertNoResult(read)
        run(reactor, 1.2)
        self.failureResultOf(read, Unavailable)


class SemanticsTests(SynchronousTestCase):
    """Sessions, transactions and ranges through the service."""

    def test_session_makes_retries_exactly_once(self):
        """A write retried with the same (client_id, sequence) is applied once and answered again."""
        from kvpaxos.kv.commands import SessionOpened

        reactor, wire = make_cluster(3)
        run(reactor, 2)
        follower = wire.services[next(i for i in wire.services if i != leader_of(wire))]
        opened = follower.submit(Request(Op.OPEN_SESSION), 5)
        run(reactor, 0.5)
        session = self.successResultOf(opened)
        self.assertIsInstance(session, SessionOpened)
        append = Request(Op.APPEND, b"k", b"x", client_id=session.client_id, sequence=1)
        first = follower.submit(append, 5)
        run(reactor, 0.5)
        again = follower.submit(append, 5)
        run(reactor, 0.5)
        self.assertEqual(self.successResultOf(first), self.successResultOf(again))
        read = follower.get(b"k", 5)
        run(reactor, 0.5)
        self.assertEqual(self.successResultOf(read), b"x")

    def test_txn_and_range(self):
        """A transaction applies atomically and a range reads its keys in order with revisions."""
        from kvpaxos.kv.commands import (
            Compare, CompareResult, CompareTarget, Put, Range, Txn,
        )

        reactor, wire = make_cluster(1)
        run(reactor, 1.5)
        node = wire.services[1]
        txn = Txn(
            compares=(Compare(b"a", CompareTarget.EXISTS, CompareResult.EQUAL, False),),
            success=(Put(b"a", b"1"), Put(b"b", b"2")),
        )
        d = node.submit(Request(Op.TXN, txn=txn), 5)
        run(reactor, 0.2)
        result = self.successResultOf(d)
        self.assertTrue(result.succeeded)
        d = node.range(Range(b"a", b"c"), 5)
        run(reactor, 0.2)
        found = self.successResultOf(d)
        self.assertEqual([kv.key for kv in found.kvs], [b"a", b"b"])
        self.assertEqual({kv.mod_revision for kv in found.kvs}, {result.revision})

    def test_bad_consistency(self):
        """An unknown read consistency is the client's error."""
        reactor, wire = make_cluster(1)
        self.failureResultOf(wire.services[1].get(b"k", 5, "eventual"), InvalidArgument)


class LaggingAndFailingTests(SynchronousTestCase):
    """Reads on a lagging node and a write failing during shutdown."""

    def test_lagging_read_is_unavailable(self):
        """A read whose index the node has not applied by its deadline fails with Unavailable, not a timeout."""
        reactor, wire = make_cluster(1)
        run(reactor, 1.5)
        node = wire.services[1]
        d = node.reads._wait_applied(node.replica.applied + 5, 0.5)
        run(reactor, 0.6)
        failure = self.failureResultOf(d, Unavailable)
        self.assertIn("had not applied", failure.getErrorMessage())
        self.assertEqual(node.reads._read_waiters, [])

    def test_commit_failing_during_stop(self):
        """A write that fails while the service stops still lets it finish: clients failed, store closed."""
        reactor, wire = make_cluster(3)
        run(reactor, 2)
        leader = wire.services[leader_of(wire)]
        wire.down = {i for i in wire.services if i != leader.node_id}
        pending = leader.submit(Request(Op.PUT, b"k", b"v"), 30)
        stuck = defer.Deferred()
        leader._run_commit = lambda *args: stuck  # the put's Ready hangs on disk
        run(reactor, 0.01)
        self.assertIs(leader._busy, stuck)
        closed = []
        leader.store.close = lambda: closed.append(True)
        stopping = leader.stopService()
        stuck.errback(Failure(OSError("disk gone")))
        self.successResultOf(stopping)
        self.failureResultOf(pending, Unavailable)
        self.assertEqual(closed, [True])
        self.assertFalse(reactor.stopped)  # stopping already: no second reactor.stop()
        self.assertTrue(self.flushLoggedErrors(OSError))
