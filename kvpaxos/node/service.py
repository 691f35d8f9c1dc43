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
monotonic clock (C{clock}), never on C{reactor.seconds()}, which is wall
time in Twisted: a step of the wall clock must neither freeze a leader's
ticks under its lease nor drop a follower's stickiness early.  Twisted's
timed calls (the tick C{LoopingCall}, timeouts) still run on the reactor's
clock; a tick that fires late only means more ticks counted at once, and
every message counts the ticks missed before it is stepped.

Clients reach this service through L{IKeyValueNode} (from the gRPC edge) in
the reactor thread; followers forward writes to the leader over AMP and learn
the result by applying the command themselves.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
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

from kvpaxos.kv.commands import (
    CorruptCommand,
    CorruptRecord,
    InvalidArgument,
    Request,
)
from kvpaxos.kv.logformat import decode_request, encode_request
from kvpaxos.kv.machine import decode_snapshot
from kvpaxos.node.interfaces import (
    IKeyValueNode,
    IPeerHandler,
    NodeStatus,
    NotLeaderError,
    Timing,
    Unavailable,
)
from kvpaxos.node.peers import ForwardFailed, PeerUnreachable
from kvpaxos.paxos import Batch, InstallSnapshot, NotLeader, Options, ProposalRejected, Replica


_CONSISTENCIES = ("linearizable", "serializable", "lease")


class MonotonicClock:
    """The node's clock: C{seconds()} from C{time.monotonic}, which never steps."""

    def seconds(self) -> float:
        return time.monotonic()


@implementer(IPeerHandler, IKeyValueNode)
class ReplicaService(Service):
    """
    Runs one replica.

    @param node_id: this node's id.
    @param store: an opened L{kvpaxos.storage.interfaces.INodeStore}.
    @param reactor: the reactor (clock, threads, stop).
    @param options: the core's L{Options}.
    @param tick_s: seconds per core tick.
    @param rng: randomness for the core (election timeouts).
    @param run_commit: how a Ready's transaction runs (default: the writer
        thread); tests and the simulator inject their own.
    @param lease_reads: whether this node serves lease reads (every member
        must say the same; see L{peer_timing}).
    @param read_snapshot: how a snapshot for a peer is read (default: a
        pool thread).
    @param clock: what time is counted on (ticks, the lease, deadlines): an
        object whose C{seconds()} is monotonic; by default
        L{MonotonicClock}.
    """

    log = Logger()
    name = "replica"

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
        read_snapshot=None,
        clock=None,
    ) -> None:
        self.node_id = node_id
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
        self._last_tick_at = 0.0
        self.replica: Optional[Replica] = None
        self._pool = ThreadPool(1, 1, name=f"kvpaxos-writer-{node_id}")
        # How a Ready's transaction runs: on the writer thread, unless a test
        # injects a synchronous stand-in.
        self._run_commit = run_commit or self._commit_on_writer
        # How a snapshot for a peer is read: in a pool thread, unless a test
        # injects a synchronous stand-in.
        self._read_snapshot = read_snapshot or self._read_snapshot_in_thread
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = reactor
        self._scheduled = None
        self._routing = None  # a pending end-of-turn _route_unsent
        self._reads_due: list = []  # (Range, Deferred) to read at end of turn
        self._reading = None  # the pending end-of-turn _run_reads
        self._busy: Optional[defer.Deferred] = None
        self._stopping = False
        # Request ids are unique per boot: a command from before a restart
        # can never answer a request made after it.
        self._boot = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
        self._counter = 0
        self._pending: dict[int, tuple[defer.Deferred, object]] = {}
        # The checked requests of commands this node encoded, by encoding,
        # until they are applied or time out: applying them needs no decode.
        self._decoded: dict[bytes, Request] = {}
        # The highest slot whose results were answered before their
        # transaction was durable (serializable reads wait for it).
        self._answered_through = 0
        # Whether a read index was confirmed since this node started.  Until
        # one is, a serializable read is served as a linearizable one: before
        # a crash this node may have answered writes whose transaction the
        # crash lost (answers go out before the fsync), and only a confirmed
        # index is sure to cover them.
        self._index_confirmed = False
        # Snapshots being read for peers (by peer), waited for at stop.
        self._snapshot_sends: dict[int, defer.Deferred] = {}
        self._unsent: list[tuple[int, bytes]] = []
        self._reads: dict[int, defer.Deferred] = {}
        self._read_waiters: list[tuple[int, defer.Deferred]] = []
        self._read_counter = 0
        self._waiting_for_leader: list[defer.Deferred] = []

    # --- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        # Acceptor state is read back here, before any peer can be answered
        # (the peer listener starts after this service).
        self.replica = Replica(
            self.node_id,
            self.store,
            self.rng,
            self.options,
            state_machine=self.store.state_machine,
            applied=self.store.applied_index(),
        )
        super().startService()
        if self._run_commit == self._commit_on_writer:
            self._pool.start()
        self._last_tick_at = self.clock.seconds()
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
        _cancel(self._routing)
        self._routing = None
        _cancel(self._reading)
        self._reading = None
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
            yield defer.DeferredList(list(self._snapshot_sends.values()))
            self.store.close()

    def _fail_everything(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        self._decoded.clear()
        for d, timer in pending.values():
            _cancel(timer)
            d.errback(Failure(error))
        reads, self._reads = self._reads, {}
        due, self._reads_due = self._reads_due, []
        for _, d in due:
            d.errback(Failure(error))
        waiters, self._read_waiters = self._read_waiters, []
        waiting, self._waiting_for_leader = self._waiting_for_leader, []
        for d in [*reads.values(), *(d for _, d in waiters), *waiting]:
            if not d.called:
                d.errback(Failure(error))

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
        if self._unsent or self._waiting_for_leader:
            self._route_unsent()
        self._schedule()

    def message_received(self, message) -> None:
        if self._stopping or self.replica is None:
            return
        if message.dst != self.node_id:
            self.log.warn("dropped a message for node {dst}", dst=message.dst)
            return
        if type(message) is InstallSnapshot and not self._snapshot_decodes(message):
            return
        # The ticks missed in a stall are counted before any message is
        # stepped (issue 9, hole 2): a heartbeat that waited in the socket
        # must not be acked (extending its leader's lease) by a replica that
        # then counts, as if after it, the time that passed before it.
        self._catch_up_ticks()
        self._guard(self.replica.step, message)
        self._schedule()

    def _snapshot_decodes(self, message: InstallSnapshot) -> bool:
        """
        Whether C{message}'s state decodes; a peer's corrupt snapshot is a
        refused message (logged), never a failed commit that stops this node.
        It is decoded once more when installed: O(state), as its wire decode
        was.
        """
        data = message.snapshot.data
        if data is None:
            return True  # the core refuses a data-less snapshot itself
        try:
            decode_snapshot(data)
        except CorruptRecord as error:
            self.log.warn(
                "refused a snapshot from node {peer}: {error}", peer=message.src, error=error
            )
            return False
        return True

    def peer_timing(self, peer_id: int, timing: Timing) -> None:
        """
        Peer C{peer_id} runs with C{timing}.  A read lease counts on every
        member ticking alike, so this node refuses lease reads while a voter
        reports other timing than its own (issue 9, hole 6).
        """
        self._peer_timing[peer_id] = timing
        self._lease_allowed()

    def _lease_allowed(self) -> bool:
        """
        Whether lease reads may be served: enabled here, and every other
        voter reported the same timing as this node.  A change of the
        reason is logged once.
        """
        if not self.lease_reads:
            return False
        reason = None
        for voter in sorted(self.replica.config.voters - {self.node_id}):
            theirs = self._peer_timing.get(voter)
            if theirs is None:
                reason = f"node {voter} has not reported its timing"
                break
            if theirs != self.timing:
                reason = f"node {voter} runs {theirs}, this node {self.timing}"
                break
        if reason != self._lease_refused:
            self._lease_refused = reason
            if reason is None:
                self.log.info("lease reads allowed: every voter runs {timing}", timing=self.timing)
            else:
                self.log.warn("lease reads refused: {reason}", reason=reason)
        return reason is None

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
            self._send_snapshot(peer)
        if rd.must_sync() or rd.committed or rd.install_snapshot:
            through = rd.committed[-1][0] if rd.committed else 0
            d = self._run_commit(
                rd.hard_state, rd.entries, rd.snapshot, rd.install_snapshot, rd.committed,
                self._take_decoded(rd.committed), partial(self._answer_early, through),
            )
        else:
            d = defer.succeed([])
        self._busy = d
        d.addCallback(self._committed, rd)
        d.addErrback(self._fatal)

    def _send_snapshot(self, peer: int) -> None:
        """
        Send C{peer} the store's state as it is now: read (O(state)) in a
        pool thread, never the reactor's, and at most once at a time per
        peer (the peer asks again until it has one).
        """
        if peer in self._snapshot_sends or self._stopping:
            return
        d = self._read_snapshot()
        self._snapshot_sends[peer] = d

        def taken(index_and_data) -> None:
            if self._stopping:
                return
            message = self._guard(self.replica.snapshot_message, peer, *index_and_data)
            if message is not None:
                self.peers.send(message)

        def failed(failure) -> None:
            self.log.failure("taking a snapshot for node {peer} failed", failure, peer=peer)

        def done(_) -> None:
            del self._snapshot_sends[peer]

        d.addCallbacks(taken, failed)
        d.addBoth(done)

    def _read_snapshot_in_thread(self) -> defer.Deferred:
        return deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self.store.state_machine.snapshot_now
        )

    def _take_decoded(self, committed) -> Optional[dict]:
        """
        Hand the writer thread the requests of the commands in C{committed}
        that this node encoded (its own dict: the writer never touches
        C{_decoded}, which only the reactor thread changes).
        """
        known = self._decoded
        if not known or not committed:
            return None
        taken = {}
        for _, value in committed:
            if type(value) is Batch:
                for data in value.commands:
                    request = known.pop(data, None)
                    if request is not None:
                        taken[data] = request
        return taken or None

    def _commit_on_writer(self, *args) -> defer.Deferred:
        """
        Run C{store.commit(*args)} on the writer thread; its last argument,
        C{on_applied}, is called back in the reactor thread.
        """
        *args, on_applied = args
        reactor = self.reactor

        def from_writer(results) -> None:
            reactor.callFromThread(on_applied, results)

        return deferToThreadPool(reactor, self._pool, self.store.commit, *args, from_writer)

    def _answer_early(self, through: int, results) -> None:
        """
        A Ready's commands (chosen through slot C{through}) have their
        results, and its transaction is not durable yet: answer their
        clients now.  Each command is chosen, so durable on a quorum, and
        its result follows from the log alone.  Reads at this node still
        see the store only once the transaction is durable: linearizable
        reads wait for the applied index, and serializable ones wait for
        everything answered here (see L{_read}).
        """
        self._answered_through = max(self._answered_through, through)
        self._answer(results)

    def _committed(self, results, rd) -> None:
        self._busy = None
        if self._stopping:
            return
        for message in rd.durable_messages:
            self.peers.send(message)
        self._answer(results)  # those not answered early
        for state in rd.read_states:
            d = self._reads.pop(state.context, None)
            if d is None or d.called:
                continue  # timed out meanwhile
            if state.index is None:
                d.errback(NotLeaderError(self.replica.leader))
            else:
                d.callback(state.index)
        self._guard(self.replica.advance, rd)
        self._release_reads()
        self._schedule()

    def _answer(self, results) -> None:
        """Answer the clients waiting here for these C{(request, result)}."""
        pending = self._pending
        node_id = self.node_id
        for request, result in results:
            if request.origin == node_id:
                waiting = pending.pop(request.request_id, None)
                if waiting is not None:
                    d, timer = waiting
                    _cancel(timer)
                    d.callback(result)

    # --- writes --------------------------------------------------------------

    def submit(self, request: Request, timeout_s: float) -> defer.Deferred:
        if self._stopping:
            return defer.fail(Unavailable("node shutting down"))
        self._counter += 1
        request_id = (self._boot << 32) | (self._counter & 0xFFFFFFFF)
        request = dataclasses.replace(request, origin=self.node_id, request_id=request_id)
        try:
            data = encode_request(request)
        except InvalidArgument:
            return defer.fail()
        d = defer.Deferred()
        timer = self.reactor.callLater(timeout_s, self._expire, request_id, data)
        self._pending[request_id] = (d, timer)
        self._decoded[data] = request
        self._unsent.append((request_id, data))
        if self.replica.is_leader:
            self._route_unsent()  # proposed now; the Ready batches them
        elif self._routing is None:
            # Forwarded once this reactor turn is over: every request taken
            # in one turn goes to the leader in one Forward call.
            self._routing = self.reactor.callLater(0, self._route_at_end_of_turn)
        return d

    def _route_at_end_of_turn(self) -> None:
        self._routing = None
        if not self._stopping:
            self._route_unsent()

    def _expire(self, request_id: int, data: bytes) -> None:
        self._decoded.pop(data, None)
        waiting = self._pending.pop(request_id, None)
        if waiting is None:
            return
        self._unsent = [(r, c) for r, c in self._unsent if r != request_id]
        leader = self.replica.leader if self.replica else None
        waiting[0].errback(
            Failure(Unavailable(f"no quorum answered before the deadline; leader is {leader}", leader))
        )

    def _route_unsent(self) -> None:
        """Propose queued commands here if leading, else forward them."""
        unsent, self._unsent = self._unsent, []
        unsent = [(r, c) for r, c in unsent if r in self._pending]
        waiting, self._waiting_for_leader = self._waiting_for_leader, []
        for d in waiting:
            if not d.called:
                d.callback(None)
        if not unsent:
            return
        replica = self.replica
        if replica.is_leader:
            try:
                for _, data in unsent:
                    self._guard(replica.propose, data)
            except (NotLeader, ProposalRejected):
                self._unsent.extend(unsent)  # try again next tick
            self._schedule()
            return
        leader = replica.leader
        if leader is None or leader == self.node_id or self.peers is None:
            self._unsent.extend(unsent)  # no leader yet: wait for one
            return
        d = self.peers.forward(leader, [c for _, c in unsent])
        d.addErrback(self._forward_failed, unsent)

    def _forward_failed(self, failure: Failure, unsent) -> None:
        # Only commands certainly not proposed go back in the queue, for the
        # next tick to route to whoever leads then: the leader refused their
        # call (NOT_LEADER), or there was no link to send them on.  A command
        # whose call failed otherwise (link lost, timeout) may have been
        # proposed; sending it again could apply it twice, so it waits to be
        # applied (and answered) or for its deadline (outcome unknown).
        self.log.debug("forward failed: {error}", error=failure.getErrorMessage())
        if self._stopping:
            return
        if failure.check(PeerUnreachable):
            self._unsent.extend(unsent)
        elif failure.check(ForwardFailed):
            refused = set(failure.value.refused)
            self._unsent.extend((r, c) for r, c in unsent if c in refused)

    def proposals_forwarded(self, commands) -> defer.Deferred:
        replica = self.replica
        if self._stopping or replica is None or not replica.is_leader:
            return defer.fail(NotLeaderError(replica.leader if replica else None))
        for data in commands:
            try:
                decode_request(data)
            except CorruptCommand as error:
                return defer.fail(InvalidArgument(f"forwarded command is corrupt: {error}"))
        try:
            for data in commands:
                self._guard(replica.propose, data)
        except (NotLeader, ProposalRejected):
            return defer.fail(NotLeaderError(replica.leader))
        self._schedule()
        return defer.succeed(None)

    # --- reads ---------------------------------------------------------------

    def get(self, key: bytes, timeout_s: float, consistency: str = "linearizable"):
        """
        Read C{key}: a Deferred firing with its value or None.
        C{consistency}: C{"linearizable"} (a read index confirmed by a
        quorum), C{"serializable"} (this node's state as it is, possibly
        stale), or C{"lease"} (the leader's read lease when the cluster
        enables lease reads; otherwise, or without a valid lease, as
        linearizable).
        """
        return self._read(lambda: self.store.get(key), timeout_s, consistency)

    def range(self, query, timeout_s: float, consistency: str = "linearizable"):
        """
        Read the keys of L{kvpaxos.kv.commands.Range} C{query}: a Deferred
        firing with a L{kvpaxos.kv.commands.RangeResult} (consistency as for
        L{get}).
        """
        return self._read(partial(self._read_at_end_of_turn, query), timeout_s, consistency)

    def _read_at_end_of_turn(self, query) -> defer.Deferred:
        """
        Read C{query} once this reactor turn is over, together with every
        other read ready in this turn, in one store call (one read
        transaction: each LMDB call is a GIL hand-off under load).
        """
        d = defer.Deferred()
        self._reads_due.append((query, d))
        if self._reading is None:
            self._reading = self.reactor.callLater(0, self._run_reads)
        return d

    def _run_reads(self) -> None:
        self._reading = None
        due, self._reads_due = self._reads_due, []
        try:
            results = self.store.read_ranges([query for query, _ in due])
        except Exception:
            failure = Failure()
            for _, d in due:
                d.errback(failure)
            return
        for (_, d), result in zip(due, results):
            if isinstance(result, Exception):
                d.errback(Failure(result))
            else:
                d.callback(result)

    def _read(self, read, timeout_s: float, consistency: str) -> defer.Deferred:
        """Run C{read()} on the local store once C{consistency} allows."""
        if consistency == "serializable" and not self._index_confirmed:
            # Since it started this node has not confirmed any read index:
            # what it answered before a crash may be missing (issue 9, hole
            # 8).  This read is served as a linearizable one, once.
            consistency = "linearizable"
        if consistency == "serializable":
            # This node's state as it is, but with every write this node has
            # answered: at most one commit's wait.
            through = self._answered_through
            if self.replica.applied >= through:
                return defer.maybeDeferred(read)
            return self._applied(through, timeout_s).addCallback(lambda _: read())
        if consistency not in _CONSISTENCIES:
            return defer.fail(InvalidArgument(
                f"consistency must be one of {', '.join(_CONSISTENCIES)}; got {consistency!r}"
            ))
        return self._confirmed_read(read, timeout_s, consistency)

    @defer.inlineCallbacks
    def _confirmed_read(self, read, timeout_s: float, consistency: str):
        """A linearizable or lease read: C{read()} once a read index (or lease) allows."""
        if consistency == "lease" and self.replica.is_leader and self._lease_allowed():
            self._catch_up_ticks()
            try:
                index = self.replica.lease_read_index()
            except NotLeader:
                index = None  # the missed ticks ended its leadership
            if index is not None:
                yield self._applied(index, timeout_s)
                result = yield read()
                return result
        clock = self.clock
        deadline = clock.seconds() + timeout_s
        while True:
            remaining = deadline - clock.seconds()
            if remaining <= 0 or self._stopping:
                leader = self.replica.leader if self.replica else None
                raise Unavailable(
                    f"no quorum confirmed a read before the deadline; leader is {leader}", leader
                )
            try:
                index = yield self._read_index(remaining)
            except Exception as error:  # not leader, link down, timed out: retry
                self.log.debug("read index failed: {error}", error=error)
                yield self._wait_for_leader(min(remaining, self.tick_s * 2))
                continue
            # Every later serializable read here waits for this index too.
            self._index_confirmed = True
            self._answered_through = max(self._answered_through, index)
            yield self._applied(index, deadline - clock.seconds())
            result = yield read()
            return result

    def _read_index(self, timeout_s: float) -> defer.Deferred:
        replica = self.replica
        if replica.is_leader:
            return self.read_index_requested()
        leader = replica.leader
        if leader is None or leader == self.node_id:
            return defer.fail(NotLeaderError(None))
        return self.peers.read_index(leader)

    def read_index_requested(self) -> defer.Deferred:
        replica = self.replica
        if self._stopping or replica is None or not replica.is_leader:
            return defer.fail(NotLeaderError(replica.leader if replica else None))
        self._read_counter += 1
        context = self._read_counter
        d = defer.Deferred()
        self._reads[context] = d
        self._guard(replica.read_index, context)
        self._schedule()
        return d.addTimeout(self.options.election_ticks * self.tick_s * 2, self.reactor)

    def _applied(self, index: int, timeout_s: float) -> defer.Deferred:
        """
        Fire once this node has applied through C{index}; fail with
        L{Unavailable} if it has not by C{timeout_s} (a lagging node).
        """
        if self.replica.applied >= index:
            return defer.succeed(None)
        d = defer.Deferred()
        entry = (index, d)
        self._read_waiters.append(entry)

        def lagging(failure):
            failure.trap(defer.TimeoutError)
            if entry in self._read_waiters:
                self._read_waiters.remove(entry)
            leader = self.replica.leader
            raise Unavailable(
                f"node {self.node_id} had not applied through {index} before the"
                f" deadline; leader is {leader}",
                leader,
            )

        return d.addTimeout(max(timeout_s, 0), self.reactor).addErrback(lagging)

    def _release_reads(self) -> None:
        if not self._read_waiters:
            return
        applied = self.replica.applied
        ready = [(i, d) for i, d in self._read_waiters if i <= applied]
        if ready:
            self._read_waiters = [(i, d) for i, d in self._read_waiters if i > applied]
            for _, d in ready:
                if not d.called:
                    d.callback(None)

    def _wait_for_leader(self, timeout_s: float) -> defer.Deferred:
        d = defer.Deferred()
        self._waiting_for_leader.append(d)
        return d.addTimeout(max(timeout_s, 0), self.reactor).addErrback(
            lambda f: f.trap(defer.TimeoutError)
        )

    # --- operations ------------------------------------------------------------

    def transfer_leadership(self, target: int) -> None:
        """
        Hand leadership to voter C{target}.

        @raise kvpaxos.paxos.NotLeader: this node does not lead.
        @raise kvpaxos.paxos.ProposalRejected: C{target} cannot take it.
        """
        self._guard(self.replica.transfer_leadership, target)
        self._schedule()

    # --- status --------------------------------------------------------------

    def status(self) -> NodeStatus:
        replica = self.replica
        return NodeStatus(
            member_id=self.node_id,
            role=replica.role.name,
            leader=replica.leader,
            voters=tuple(sorted(replica.config.voters)),
            learners=tuple(sorted(replica.config.learners)),
            chosen_index=replica.chosen_index,
            applied_index=replica.applied,
        )


def _cancel(timer) -> None:
    if timer is not None and timer.active():
        timer.cancel()
