"""
L{WritePath}: how a node takes a client's write to the log and answers it.

A request gets an id C{(boot nonce, counter)} and is encoded into a command;
the leader proposes it, a follower forwards it to the leader (one
L{IPeerTransport.forward} per reactor turn).  The client is answered when
this node applies the command (its result known, before the transaction's
fsync: the command is chosen, so durable on a quorum), or fails with
L{Unavailable} at its deadline.

The rule that makes writes safe to forward: a command is sent again only if
it was certainly not proposed (the leader refused the call with NOT_LEADER,
or there was no link).  One whose call failed otherwise may have been
proposed and waits to be applied or for its deadline: this node never
applies a write twice on its own.

What must not live here: the Ready loop, reads, ticks, or anything about the
store beyond encoding a request.  The path is handed only what it uses.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvpaxos.kv.commands import CorruptCommand, InvalidArgument, Op, Put, Request
from kvpaxos.encoding.commands import decode_request, encode_request
from kvpaxos.node.interfaces import NotLeaderError, Unavailable
from kvpaxos.node.peer_commands import ForwardFailed, PeerUnreachable
from kvpaxos.paxos import Batch, NotLeader, ProposalRejected


def grows_the_store(request: Request) -> bool:
    """Whether C{request} may add bytes to the store: a put, an append, a session, or a Txn with a put."""
    op = request.op
    if op in (Op.PUT, Op.APPEND, Op.OPEN_SESSION):
        return True
    if op is Op.TXN and request.txn is not None:
        return any(type(o) is Put for o in request.txn.success + request.txn.failure)
    return False


class WritePath:
    """
    The writes waiting at one node.

    @param node_id: this node's id (the origin encoded in its commands).
    @param boot: a number unique to this start of the node: a command from
        before a restart can never answer a request made after it.
    @param replica: the node's L{kvpaxos.paxos.Replica}.
    @param peers: C{peers()} is the node's L{kvpaxos.node.interfaces.IPeerTransport} (forwards).
    @param reactor: for C{callLater} (deadlines, the end of a turn).
    @param guard: C{guard(call, *args)} runs a core call; a broken
        invariant stops the node.
    @param schedule: asks the node to cut a Ready at the end of this turn.
    @param stopping: C{stopping()} says whether the node is shutting down.
    @param no_space: C{no_space()} is the error a write that would grow the
        store gets while the node's space alarm is on (None: off).
    """

    log = Logger()

    def __init__(
        self,
        node_id: int,
        boot: int,
        replica,
        peers,
        reactor,
        guard: Callable,
        schedule: Callable[[], None],
        stopping: Callable[[], bool],
        no_space: Callable[[], Optional[Exception]] = lambda: None,
    ) -> None:
        self.node_id = node_id
        self._no_space = no_space
        self._boot = boot
        self._replica = replica
        self._peers = peers  # a getter: the wiring may set the transport late
        self._reactor = reactor
        self._guard = guard
        self._schedule = schedule
        self._stopping = stopping
        self._counter = 0
        self._pending: dict[int, tuple[defer.Deferred, object]] = {}
        # The checked requests of commands this node encoded, by encoding,
        # until they are applied or time out: applying them needs no decode.
        self._decoded: dict[bytes, Request] = {}
        self._unsent: list[tuple[int, bytes]] = []
        #: Request ids of the leader's own decisions (L{submit}'s leader_only).
        self._leader_only: set[int] = set()
        self._routing = None  # a pending end-of-turn route()
        #: The highest slot whose results were answered before their
        #: transaction was durable (serializable reads wait for it).
        self.answered_through = 0
        #: Requests taken to propose (here, or forwarded to the leader), and
        #: those of them that failed for want of a quorum before their
        #: deadline (metrics: kvpaxos_proposals_total, ..._failed_total).
        self.proposed = 0
        self.failed = 0

    @property
    def has_unsent(self) -> bool:
        """Whether commands wait to be proposed or forwarded."""
        return bool(self._unsent)

    # --- taking writes ---------------------------------------------------------

    def submit(self, request: Request, timeout_s: float, leader_only: bool = False) -> defer.Deferred:
        """
        L{kvpaxos.node.interfaces.IKeyValueNode.submit}.

        @param leader_only: the leader's own decision (a lease's expiry, an
            automatic compaction): proposed only here and only while this
            node leads; never queued for a later leadership nor forwarded
            (another leader decides for itself).  Not leading, or refused by
            the core, it fails at once with L{NotLeaderError}.
        """
        if self._stopping():
            return defer.fail(Unavailable("node shutting down"))
        if leader_only and not self._replica.is_leader:
            return defer.fail(NotLeaderError(self._replica.leader))
        if grows_the_store(request):
            refusal = self._no_space()
            if refusal is not None:
                return defer.fail(refusal)  # refused before anything is proposed
        self._counter += 1
        request_id = (self._boot << 32) | (self._counter & 0xFFFFFFFF)
        request = dataclasses.replace(request, origin=self.node_id, request_id=request_id)
        try:
            data = encode_request(request)
        except InvalidArgument:
            return defer.fail()
        self.proposed += 1
        d = defer.Deferred()
        timer = self._reactor.callLater(timeout_s, self._expire, request_id, data)
        self._pending[request_id] = (d, timer)
        self._decoded[data] = request
        if leader_only:
            self._leader_only.add(request_id)
        self._unsent.append((request_id, data))
        if self._replica.is_leader:
            self.route()  # proposed now; the Ready batches them
        elif self._routing is None:
            # Forwarded once this reactor turn is over: every request taken
            # in one turn goes to the leader in one Forward call.
            self._routing = self._reactor.callLater(0, self._route_at_end_of_turn)
        return d

    def proposals_forwarded(self, commands) -> defer.Deferred:
        """L{kvpaxos.node.interfaces.IPeerHandler.proposals_forwarded}."""
        replica = self._replica
        if self._stopping() or not replica.is_leader:
            return defer.fail(NotLeaderError(replica.leader))
        for data in commands:
            try:
                request = decode_request(data)
            except CorruptCommand as error:
                return defer.fail(InvalidArgument(f"forwarded command is corrupt: {error}"))
            if request.op is Op.LEASE_EXPIRE:  # only a leader decides that, for itself
                return defer.fail(InvalidArgument("a lease's expiry is never forwarded"))
        try:
            for data in commands:
                self._guard(replica.propose, data)
        except (NotLeader, ProposalRejected):
            return defer.fail(NotLeaderError(replica.leader))
        self._schedule()
        return defer.succeed(None)

    def _route_at_end_of_turn(self) -> None:
        self._routing = None
        if not self._stopping():
            self.route()

    def _expire(self, request_id: int, data: bytes) -> None:
        self._decoded.pop(data, None)
        self._leader_only.discard(request_id)
        waiting = self._pending.pop(request_id, None)
        if waiting is None:
            return
        self._unsent = [(r, c) for r, c in self._unsent if r != request_id]
        leader = self._replica.leader
        self.failed += 1
        waiting[0].errback(
            Failure(Unavailable(f"no quorum answered before the deadline; leader is {leader}", leader))
        )

    def route(self) -> None:
        """Propose queued commands here if leading, else forward them."""
        unsent, self._unsent = self._unsent, []
        unsent = [(r, c) for r, c in unsent if r in self._pending]
        if not unsent:
            return
        replica = self._replica
        if replica.is_leader:
            for at, (request_id, data) in enumerate(unsent):
                try:
                    self._guard(replica.propose, data)
                except (NotLeader, ProposalRejected):
                    self._unsent.extend(unsent[at:])  # try again next tick
                    break
                self._leader_only.discard(request_id)
            self._schedule()
            self._drop_leader_only()
            return
        self._unsent = unsent + self._unsent
        self._drop_leader_only()  # never forwarded
        unsent, self._unsent = self._unsent, []
        if not unsent:
            return
        leader = replica.leader
        if leader is None or leader == self.node_id or self._peers() is None:
            self._unsent.extend(unsent)  # no leader yet: wait for one
            return
        d = self._peers().forward(leader, [c for _, c in unsent])
        d.addErrback(self._forward_failed, unsent)

    def _drop_leader_only(self) -> None:
        """Fail the leader's own decisions not proposed while it led: the next leader decides anew."""
        if not self._leader_only:
            return
        dropped = [(r, c) for r, c in self._unsent if r in self._leader_only]
        if not dropped:
            return
        self._unsent = [(r, c) for r, c in self._unsent if r not in self._leader_only]
        for request_id, data in dropped:
            self._leader_only.discard(request_id)
            self._decoded.pop(data, None)
            waiting = self._pending.pop(request_id, None)
            if waiting is not None:
                _cancel(waiting[1])
                waiting[0].errback(Failure(NotLeaderError(self._replica.leader)))

    def _forward_failed(self, failure: Failure, unsent) -> None:
        # Only commands certainly not proposed go back in the queue, for the
        # next tick to route to whoever leads then: the leader refused their
        # call (NOT_LEADER), or there was no link to send them on.  A command
        # whose call failed otherwise (link lost, timeout) may have been
        # proposed; sending it again could apply it twice, so it waits to be
        # applied (and answered) or for its deadline (outcome unknown).
        self.log.debug("forward failed: {error}", error=failure.getErrorMessage())
        if self._stopping():
            return
        if failure.check(PeerUnreachable):
            self._unsent.extend(unsent)
        elif failure.check(ForwardFailed):
            refused = set(failure.value.refused)
            self._unsent.extend((r, c) for r, c in unsent if c in refused)

    # --- answering -------------------------------------------------------------

    def take_decoded(self, committed) -> Optional[dict]:
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

    def answer_early(self, through: int, results) -> None:
        """
        A Ready's commands (chosen through slot C{through}) have their
        results, and its transaction is not durable yet: answer their
        clients now.  Each command is chosen, so durable on a quorum, and
        its result follows from the log alone.  Reads at this node still
        see the store only once the transaction is durable: linearizable
        reads wait for the applied index, and serializable ones wait for
        everything answered here (L{answered_through}).
        """
        self.answered_through = max(self.answered_through, through)
        self.answer(results)

    def answer(self, results) -> None:
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

    def stop(self, error: Exception) -> None:
        """Fail every waiting write with C{error}; nothing more is routed."""
        _cancel(self._routing)
        self._routing = None
        pending, self._pending = self._pending, {}
        self._decoded.clear()
        self._unsent = []
        for d, timer in pending.values():
            _cancel(timer)
            d.errback(Failure(error))


def _cancel(timer) -> None:
    if timer is not None and timer.active():
        timer.cancel()
