"""
L{ReplicaService}: the Twisted adapter that runs a L{Replica}.

It feeds the core (peer messages, ticks from a C{LoopingCall}, client
requests) and performs each L{Ready} in the order the core demands:

  1. send C{messages};
  2. persist and apply, in one durable transaction on the single writer
     thread (C{INodeStore.commit}; an LMDB write transaction must begin and
     end on one thread, and its commit releases the GIL); the clients whose
     commands it applies are answered as soon as their results are known,
     before the fsync (the commands are chosen: durable on a quorum);
  3. only then send C{durable_messages} (Promises and Accepteds) and serve
     reads;
  4. C{advance}, then cut the next Ready.

One Ready is in flight at a time; everything that arrives meanwhile is
stepped into the core and goes into the next one, so persistence is
group-committed: one transaction per Ready, not per request.

An invariant the core breaks (C{AssertionError}) or a storage failure stops
the node loudly: the reactor is stopped, the error logged critical and kept
in L{ReplicaService.fatal_error} (the process then exits non-zero).

Time: ticks, the read lease and request deadlines are counted on an injected
monotonic clock (C{clock}), never on the wall clock: a step of the wall
clock must neither freeze a leader's ticks under its lease nor drop a
follower's stickiness early.  The wiring also runs the reactor's timed calls
(the tick C{LoopingCall}, timeouts) on the monotonic clock
(L{kvpaxos.node.clock.run_timers_on}); whatever the timers do, a tick that
fires late only means more ticks counted at once, and every message counts
the ticks missed before it is stepped.

Clients reach this service through L{IKeyValueNode} (from the gRPC edge) in
the reactor thread.  The service owns the Ready loop, the ticks and the
store's lifecycle; what a write, a read and a snapshot go through is in
three collaborators handed only what they use:
L{kvpaxos.node.writes.WritePath} (propose here or forward to the leader,
answer once applied), L{kvpaxos.node.reads.ReadPath} (read index, lease,
serializable) and L{kvpaxos.node.snapshots.SnapshotPath} (a peer's
snapshot checked before it is stepped; this node's state read for a
lagging peer); L{IMembership} is L{kvpaxos.node.membership.Membership}'s;
its status, leader log lines, space alarm and metrics view are
L{kvpaxos.node.watch.NodeWatch}'s.  A node with no member set yet
(joining) refuses clients: L{Unavailable}.
"""

from __future__ import annotations

import dataclasses
import os
import random
from functools import partial
from typing import Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from kvpaxos.api.errors import ApiError
from kvpaxos.kv.commands import Request
from kvpaxos.node.auth import AuthPath
from kvpaxos.node.auth_calls import AuthCalls
from kvpaxos.node.watch_calls import WatchCalls
from kvpaxos.node.compactor import HistoryCompaction
from kvpaxos.node.lease_calls import LeaseCalls
from kvpaxos.node.clock import MonotonicClock
from kvpaxos.node.interfaces import (
    IKeyValueNode,
    IMembership,
    IPeerHandler,
    NotLeaderError,
    Timing,
    Unavailable,
)
from kvpaxos.node.membership import Membership
from kvpaxos.node.backups import BackupSource
from kvpaxos.node.metrics import commit_timer
from kvpaxos.node.watch import NodeWatch
from kvpaxos.node.reads import ReadPath
from kvpaxos.node.snapshots import SnapshotPath
from kvpaxos.node.writes import WritePath
from kvpaxos.paxos import InstallSnapshot, NotLeader, Options, Replica
from kvpaxos.storage.interfaces import Commit


def _delegate(name: str):
    """A method that calls C{self.membership.<name>} (IMembership, IPeerHandler)."""
    return lambda self, *args: getattr(self.membership, name)(*args)


@implementer(IPeerHandler, IKeyValueNode, IMembership)
class ReplicaService(NodeWatch, BackupSource, AuthCalls, WatchCalls, LeaseCalls, HistoryCompaction, Service):
    """
    Runs one replica.

    @param node_id: this node's id.
    @param store: an opened L{kvpaxos.storage.interfaces.INodeStore}.
    @param reactor: the reactor (clock, threads, stop).
    @param options: the core's L{Options}.
    @param tick_s: seconds per core tick.
    @param rng: randomness for the core (election timeouts).
    @param run_commit: how a Ready's transaction runs: C{run_commit(work,
        on_applied)} with a L{kvpaxos.storage.interfaces.Commit}, a Deferred
        firing with the results once durable (default: C{store.commit} on
        the writer thread); tests and the simulator inject their own.
    @param lease_reads: whether this node serves lease reads (every member
        must say the same; see L{peer_timing}).
    @param snapshot_io: where a snapshot transfer's reads and staging run
        (C{in_pool}, C{on_writer}; default: a pool thread and the writer
        thread; see L{SnapshotPath}).
    @param clock: what time is counted on (ticks, the lease, deadlines): an
        object whose C{seconds()} is monotonic; by default
        L{MonotonicClock}.
    @param boot: a number unique to this start of the node, in its request
        ids (by default random); the simulator passes its own.
    @param addresses: (peer, client) addresses of this node, published in
        the member set (L{Membership}).
    """

    log = Logger()
    name = "replica"
    #: The classes the service builds its core and its paths from (a test
    #: or the simulator may subclass the service to swap one).
    replica_class = Replica
    write_path_class = WritePath
    read_path_class = ReadPath
    snapshot_path_class = SnapshotPath

    def __init__(
        self,
        node_id: int,
        store,
        reactor,
        options: Options = Options(),
        tick_s: float = 0.05,
        rng: Optional[random.Random] = None,
        run_commit=None,
        lease_reads: bool = False,
        snapshot_io=None,
        clock=None,
        boot: Optional[int] = None,
        addresses: tuple[str, str] = ("", ""),
        quota_bytes: int = 0,
        auth: Optional[AuthPath] = None,
    ) -> None:
        self.node_id = node_id
        #: Who callers are and what they may read (L{kvpaxos.node.auth}).
        self.auth = auth or AuthPath(store)
        #: The space quota (0: none); the alarm is on while the store's
        #: pages in use (its C{used_bytes}) are at or over it.
        self.quota_bytes = quota_bytes
        self.space_alarm = False
        self.addresses = addresses
        self.clock = clock or MonotonicClock()
        #: Why the node stopped on a fatal error (one line), else None.
        self.fatal_error: Optional[str] = None
        self.store = store
        self.reactor = reactor
        self.options = options
        self.tick_s = tick_s
        self.rng = rng or random.Random()
        self.lease_reads = lease_reads
        #: What this node runs with; every peer reports its own (peer_timing).
        self.timing = Timing(round(tick_s * 1000), options.election_ticks, lease_reads)
        self._peer_timing: dict[int, Timing] = {}
        self._lease_refused: Optional[str] = None  # the reason last logged
        self.peers = None  # an IPeerTransport, set by the wiring in tap.py
        #: The node's L{kvpaxos.node.metrics.NodeMetrics}, or None (set by the wiring).
        self.metrics = None
        self._last_tick_at = 0.0
        self.replica: Optional[Replica] = None
        self._pool = ThreadPool(1, 1, name=f"kvpaxos-writer-{node_id}")
        # How a Ready's transaction runs: on the writer thread, unless a test
        # injects a synchronous stand-in.
        self._run_commit = run_commit or self._commit_on_writer
        # Where a snapshot transfer's reads and staging run (SnapshotPath):
        # a pool thread and the writer thread, unless a test injects its own.
        self._snapshot_io = snapshot_io
        #: When a message from the leader was last stepped (monotonic seconds).
        self._leader_heard_at = 0.0
        #: (leader, its ballot round) as last logged.
        self._leader_seen: tuple = (None, None)
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = reactor
        self._scheduled = None
        self._busy: Optional[defer.Deferred] = None
        self._stopping = False
        # Request ids are unique per boot: a command from before a restart
        # can never answer a request made after it.
        if boot is None:
            boot = int.from_bytes(os.urandom(4), "big")
        self._boot = boot & 0x7FFFFFFF
        #: The write, read and snapshot paths, made once the replica exists.
        self.writes: Optional[WritePath] = None
        self.reads: Optional[ReadPath] = None
        self.snapshots: Optional[SnapshotPath] = None
        self.membership: Optional[Membership] = None

    # --- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        # Acceptor state is read back here, before any peer can be answered
        # (the peer listener starts after this service).
        self.replica = self.replica_class(
            self.node_id,
            self.store,
            self.rng,
            self.options,
            state_machine=self.store.state_machine,
            applied=self.store.applied_index(),
        )
        self.auth.reload()
        stopping = lambda: self._stopping  # noqa: E731
        peers = lambda: self.peers  # noqa: E731
        self.writes = self.write_path_class(
            self.node_id, self._boot, self.replica, peers, self.reactor,
            self._guard, self._schedule, stopping, no_space=self._no_space,
        )
        self.reads = self.read_path_class(
            self.node_id, self.replica, self.store, peers, self.reactor, self.clock,
            self._guard, self._schedule, stopping,
            answered_through=lambda: self.writes.answered_through,
            lease_index=self._lease_index,
            retry_s=self.tick_s * 2,
            read_index_timeout_s=self.options.election_ticks * self.tick_s * 2,
        )
        self.snapshots = self.snapshot_path_class(
            self.replica, self.store, peers, self.reactor, self._guard, self._step,
            stopping, node_id=self.node_id, writer=self._pool, io=self._snapshot_io,
        )
        self.membership = Membership(
            self.node_id, self.replica, peers, self.reactor, self._guard, self._schedule,
            stopping, self.addresses, self.tick_s,
        )
        self.membership.started()
        super().startService()
        if self._run_commit == self._commit_on_writer:
            self._pool.start()
        self._last_tick_at = self._leader_heard_at = self.clock.seconds()
        self._ticker.start(self.tick_s, now=False)
        self.log.info(
            "node {node} started: chosen {chosen}, applied {applied}, members {members}",
            node=self.node_id,
            chosen=self.replica.chosen_index,
            applied=self.replica.applied,
            members=sorted(self.replica.config.voters),
        )

    @defer.inlineCallbacks
    def stopService(self):
        self._stopping = True
        super().stopService()
        if self._ticker.running:
            self._ticker.stop()
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        try:
            if self._busy is not None:
                # Let the write in flight finish (a failure was logged by
                # _fatal already).
                yield self._busy.addErrback(lambda failure: None)
        finally:
            self._fail_everything(Unavailable("node shutting down"))
            if self._pool.started:
                yield deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._pool.stop)
            # A snapshot still being read must finish before the store closes.
            if self.snapshots is not None:
                yield self.snapshots.sent()
            self.store.close()

    def _fail_everything(self, error: Exception) -> None:
        for part in (self.writes, self.reads, self.membership, self.auth):
            if part is not None:
                part.stop(error)
        self._stop_calls(error)  # watchers, keep-alives

    def _fatal(self, failure: Failure) -> None:
        if self.fatal_error is None:
            self.fatal_error = f"node {self.node_id}: {failure.getErrorMessage()}"
        self.log.critical(
            "node {node} stops: {error}", node=self.node_id, error=failure.getErrorMessage(),
            log_failure=failure,
        )
        already = self._stopping
        self._stopping = True
        if not already and self.reactor.running:
            self.reactor.stop()

    # --- feeding the core ----------------------------------------------------

    def _guard(self, call, *args):
        """Run a core call; an invariant it breaks stops the node."""
        try:
            return call(*args)
        except AssertionError:
            self._fatal(Failure())
            raise

    def _catch_up_ticks(self) -> None:
        """
        Tick the core once per tick period elapsed since the last tick: a
        process back from a pause (or a busy reactor) counts the time it
        missed, which the read lease relies on.  Counted on the monotonic
        clock.
        """
        elapsed = self.clock.seconds() - self._last_tick_at
        count = int(elapsed / self.tick_s)
        for _ in range(count):
            self._guard(self.replica.tick)
        self._last_tick_at += count * self.tick_s

    def _tick(self) -> None:
        self._catch_up_ticks()
        self._note_leader()
        self._check_space()
        self._ticked()  # leader duties: compaction, lease expiry
        self._hand_over_view()
        self.writes.route()
        self.reads.leader_may_be_known()
        self.membership.tick()
        self._schedule()

    def message_received(self, message) -> None:
        if self._stopping or self.replica is None:
            return
        if message.dst != self.node_id:
            self.log.warn("dropped a message for node {dst}", dst=message.dst)
            return
        if type(message) is InstallSnapshot and self._checking_snapshot(message):
            return  # stepped once its state is known to decode
        self._step(message)

    def snapshot_stream_received(self, message) -> None:
        """A snapshot transfer message from a peer (L{SnapshotPath.received})."""
        if not self._stopping and self.snapshots is not None:
            self.snapshots.received(message)

    def _step(self, message) -> None:
        # The ticks missed in a stall are counted before any message is
        # stepped (issue 9, hole 2): a heartbeat that waited in the socket
        # must not be acked (extending its leader's lease) by a replica that
        # then counts, as if after it, the time that passed before it.
        self._catch_up_ticks()
        replica = self.replica
        leader = replica.leader
        self._guard(replica.step, message)
        if message.src == replica.leader or replica.leader != leader:
            self._leader_heard_at = self.clock.seconds()  # heard from it, or newly following it
        if replica.leader != leader and replica.leader is not None:
            self.reads.leader_may_be_known()
        self._note_leader()
        self._schedule()

    def _checking_snapshot(self, message: InstallSnapshot) -> bool:
        """
        Whether C{message} was taken to be checked before it is stepped
        (L{SnapshotPath.checking}); False to step it now.  A method of the
        service so that a simulator hole can re-open it
        (L{kvpaxos.testing.holes}).
        """
        return self.snapshots.checking(message)

    def _lease_index(self):
        """
        The index a lease read may be served at now, or None: this node
        leads, allows lease reads, and still holds its lease once the ticks
        it missed are counted.
        """
        if not (self.replica.is_leader and self._lease_allowed()):
            return None
        self._catch_up_ticks()
        try:
            return self.replica.lease_read_index()
        except NotLeader:
            return None  # the missed ticks ended its leadership

    def _schedule(self) -> None:
        """Cut a Ready once this reactor turn is over (coalescing inputs)."""
        if self._scheduled is None and self._busy is None and not self._stopping:
            self._scheduled = self.reactor.callLater(0, self._run_ready)

    def _run_ready(self) -> None:
        self._scheduled = None
        if self._busy is not None or self._stopping:
            return
        replica = self.replica
        if not self._guard(replica.has_ready):
            return
        rd = self._guard(replica.ready)
        for message in rd.messages:
            self.peers.send(message)
        for peer in rd.snapshot_wanted:
            self.snapshots.send(peer)
        if rd.must_sync() or rd.committed or rd.install_snapshot:
            through = rd.committed[-1][0] if rd.committed else 0
            work = Commit.of(rd, self.writes.take_decoded(rd.committed))
            d = self._run_commit(work, partial(self._applied_early, through, bool(rd.install_snapshot)))
        else:
            d = defer.succeed([])
        self._busy = d
        d.addCallback(self._committed, rd)
        d.addErrback(self._fatal)

    def _commit_on_writer(self, work, on_applied) -> defer.Deferred:
        """
        Run C{store.commit(work)} (a L{Commit}) on the writer thread;
        C{on_applied} is called back in the reactor thread.
        """
        reactor = self.reactor

        def from_writer(results) -> None:
            reactor.callFromThread(on_applied, results)

        commit = commit_timer(self.metrics, self.store.commit, self.store)
        return deferToThreadPool(reactor, self._pool, commit, work, from_writer)

    def _applied_early(self, through: int, installed: bool, results) -> None:
        self.auth.applied(results, installed)  # first: auth changes' callers wait for the reload
        self.writes.answer_early(through, results)

    def _committed(self, results, rd) -> None:
        self._busy = None
        if self._stopping:
            return
        self.auth.applied(results, bool(rd.install_snapshot))
        self.auth.durable()
        self._check_space()
        for message in rd.durable_messages:
            self.peers.send(message)
        self.writes.answer(results)  # those not answered early
        self.reads.read_states(rd.read_states)
        self._guard(self.replica.advance, rd)
        self.reads.applied()
        self._batch_applied(results, rd)  # watchers, the lessor
        self.membership.applied(rd)
        self._schedule()

    # --- clients and peers: the write and read paths ----------------------

    def _unserved(self) -> Optional[defer.Deferred]:
        """A failed Deferred if this node cannot serve clients (yet), else None."""
        if self.replica is None or not self.replica.config.voters:
            return defer.fail(Unavailable(f"node {self.node_id} has no member set yet"))
        return None

    def submit(self, request: Request, timeout_s: float, credential=None) -> defer.Deferred:
        """L{IKeyValueNode.submit}: C{credential} names the user the log records."""
        unserved = self._unserved()
        if unserved is not None:
            return unserved
        try:
            user = self.auth.user_of(credential)
        except ApiError:
            return defer.fail()
        if user:
            request = dataclasses.replace(request, user=user)
        return self.writes.submit(request, timeout_s)

    def proposals_forwarded(self, commands) -> defer.Deferred:
        if self.writes is None:
            return defer.fail(NotLeaderError(None))
        return self.writes.proposals_forwarded(commands)

    def get(self, key: bytes, timeout_s: float, consistency: str = "linearizable", credential=None):
        """L{IKeyValueNode.get}; the consistencies are L{kvpaxos.node.reads}'."""
        return self._unserved() or self._checked_read(credential, key, None,
                                                      lambda: self.reads.get(key, timeout_s, consistency))

    def range(self, query, timeout_s: float, consistency: str = "linearizable", credential=None):
        """L{IKeyValueNode.range}."""
        return self._unserved() or self._checked_read(credential, query.key, query.end,
                                                      lambda: self.reads.range(query, timeout_s, consistency))

    def read_index_requested(self) -> defer.Deferred:
        if self.reads is None:
            return defer.fail(NotLeaderError(None))
        return self.reads.read_index_requested()

    # --- operations and membership (kvpaxos.node.membership) ----------------

    transfer_leadership = _delegate("transfer_leadership")

    members = _delegate("members")
    member_add = _delegate("member_add")
    member_promote = _delegate("member_promote")
    member_remove = _delegate("member_remove")
    leader_transfer = _delegate("leader_transfer")
    member_change_requested = _delegate("member_change_requested")
    join_requested = _delegate("join_requested")
    peer_addresses_reported = _delegate("peer_addresses_reported")
    removed_by_peer = _delegate("removed_by_peer")

    def was_removed(self, member: int) -> bool:
        """Whether C{member}'s removal is chosen in this replica's log (since its snapshot)."""
        return self.replica is not None and member in self.replica.removed
