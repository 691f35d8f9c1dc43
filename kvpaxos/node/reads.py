"""
L{ReadPath}: how a node serves a read at the consistency asked for.

  - linearizable: a read index confirmed by a quorum (the leader's own
    C{read_index}, or asked of the leader over the peer transport by a
    follower), then the local store once this node has applied through it;
  - lease: the leader's index at once while it holds a read lease (and the
    node allows lease reads), otherwise as linearizable;
  - serializable: the local store as it is, once this node has applied
    every write it answered; a node that has confirmed no read index since
    it started serves its first one as linearizable (a crash may have lost
    writes it answered before their fsync).

Every read due in one reactor turn is served by one store call (one LMDB
read transaction: each LMDB call is a GIL hand-off under load).  Every wait
has a deadline, counted on the node's monotonic clock.

What must not live here: the Ready loop, writes, or ticks; the path is
handed only what it uses.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvpaxos.kv.commands import InvalidArgument
from kvpaxos.node.interfaces import NotLeaderError, Unavailable

CONSISTENCIES = ("linearizable", "serializable", "lease")


class ReadPath:
    """
    The reads waiting at one node.

    @param node_id: this node's id.
    @param replica: the node's L{kvpaxos.paxos.Replica}.
    @param store: the node's store (C{get}, C{read_ranges}).
    @param peers: C{peers()} is the node's L{kvpaxos.node.interfaces.IPeerTransport} (read index).
    @param reactor: for C{callLater} and timeouts.
    @param clock: the node's monotonic clock (deadlines).
    @param guard: C{guard(call, *args)} runs a core call; a broken
        invariant stops the node.
    @param schedule: asks the node to cut a Ready at the end of this turn.
    @param stopping: C{stopping()} says whether the node is shutting down.
    @param answered_through: C{answered_through()} is the highest slot this
        node answered writes for (serializable reads wait for it).
    @param lease_index: C{lease_index()} is the index a lease read may be
        served at now, or None (no lease, or lease reads not allowed).
    @param retry_s: how long a read waits for a leader between tries.
    @param read_index_timeout_s: how long the leader's quorum round may take.
    """

    log = Logger()

    def __init__(
        self,
        node_id: int,
        replica,
        store,
        peers,
        reactor,
        clock,
        guard: Callable,
        schedule: Callable[[], None],
        stopping: Callable[[], bool],
        answered_through: Callable[[], int],
        lease_index: Callable[[], object],
        retry_s: float,
        read_index_timeout_s: float,
    ) -> None:
        self.node_id = node_id
        self._replica = replica
        self._store = store
        self._peers = peers  # a getter: the wiring may set the transport late
        self._reactor = reactor
        self._clock = clock
        self._guard = guard
        self._schedule = schedule
        self._stopping = stopping
        self._answered_through = answered_through
        self._lease_index = lease_index
        self._retry_s = retry_s
        self._read_index_timeout_s = read_index_timeout_s
        self._reads_due: list = []  # (Range, Deferred) to read at end of turn
        self._reading = None  # the pending end-of-turn _run_reads
        self._reads: dict[int, defer.Deferred] = {}
        self._read_waiters: list[tuple[int, defer.Deferred]] = []
        self._read_counter = 0
        self._waiting_for_leader: list[defer.Deferred] = []
        # Whether a read index was confirmed since this node started, and
        # the highest one: until one is, a serializable read is served as a
        # linearizable one (see the module docstring); after, every
        # serializable read waits for it too.
        self._index_confirmed = False
        self._confirmed_floor = 0

    # --- what the node asks for ------------------------------------------------

    def get(self, key: bytes, timeout_s: float, consistency: str = "linearizable"):
        """L{kvpaxos.node.interfaces.IKeyValueNode.get}."""
        return self._read(lambda: self._store.get(key), timeout_s, consistency)

    def range(self, query, timeout_s: float, consistency: str = "linearizable"):
        """L{kvpaxos.node.interfaces.IKeyValueNode.range}."""
        return self._read(partial(self._read_at_end_of_turn, query), timeout_s, consistency)

    def read_index_requested(self) -> defer.Deferred:
        """L{kvpaxos.node.interfaces.IPeerHandler.read_index_requested}."""
        replica = self._replica
        if self._stopping() or not replica.is_leader:
            return defer.fail(NotLeaderError(replica.leader))
        self._read_counter += 1
        context = self._read_counter
        d = defer.Deferred()
        self._reads[context] = d
        self._guard(replica.read_index, context)
        self._schedule()
        return d.addTimeout(self._read_index_timeout_s, self._reactor)

    def read_states(self, states) -> None:
        """Hand out a Ready's L{kvpaxos.paxos.ReadState}s to their reads."""
        for state in states:
            d = self._reads.pop(state.context, None)
            if d is None or d.called:
                continue  # timed out meanwhile
            if state.index is None:
                d.errback(NotLeaderError(self._replica.leader))
            else:
                d.callback(state.index)

    def applied(self) -> None:
        """The node applied more: release the reads waiting for it."""
        if not self._read_waiters:
            return
        applied = self._replica.applied
        ready = [(i, d) for i, d in self._read_waiters if i <= applied]
        if ready:
            self._read_waiters = [(i, d) for i, d in self._read_waiters if i > applied]
            for _, d in ready:
                if not d.called:
                    d.callback(None)

    def leader_may_be_known(self) -> None:
        """Wake the reads waiting for a leader, to try again."""
        waiting, self._waiting_for_leader = self._waiting_for_leader, []
        for d in waiting:
            if not d.called:
                d.callback(None)

    def stop(self, error: Exception) -> None:
        """Fail every waiting read with C{error}."""
        _cancel(self._reading)
        self._reading = None
        reads, self._reads = self._reads, {}
        due, self._reads_due = self._reads_due, []
        for _, d in due:
            d.errback(Failure(error))
        waiters, self._read_waiters = self._read_waiters, []
        waiting, self._waiting_for_leader = self._waiting_for_leader, []
        for d in [*reads.values(), *(d for _, d in waiters), *waiting]:
            if not d.called:
                d.errback(Failure(error))

    # --- serving ---------------------------------------------------------------

    def _read_at_end_of_turn(self, query) -> defer.Deferred:
        """
        Read C{query} once this reactor turn is over, together with every
        other read ready in this turn, in one store call.
        """
        d = defer.Deferred()
        self._reads_due.append((query, d))
        if self._reading is None:
            self._reading = self._reactor.callLater(0, self._run_reads)
        return d

    def _run_reads(self) -> None:
        self._reading = None
        due, self._reads_due = self._reads_due, []
        try:
            results = self._store.read_ranges([query for query, _ in due])
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
            # Since it started this node has confirmed no read index: what it
            # answered before a crash may be missing.  Served as a
            # linearizable read, once.
            consistency = "linearizable"
        if consistency == "serializable":
            # This node's state as it is, but with every write this node has
            # answered: at most one commit's wait.
            through = max(self._answered_through(), self._confirmed_floor)
            if self._replica.applied >= through:
                return defer.maybeDeferred(read)
            return self._wait_applied(through, timeout_s).addCallback(lambda _: read())
        if consistency not in CONSISTENCIES:
            return defer.fail(InvalidArgument(
                f"consistency must be one of {', '.join(CONSISTENCIES)}; got {consistency!r}"
            ))
        return self._confirmed_read(read, timeout_s, consistency)

    @defer.inlineCallbacks
    def _confirmed_read(self, read, timeout_s: float, consistency: str):
        """A linearizable or lease read: C{read()} once a read index (or lease) allows."""
        if consistency == "lease":
            index = self._lease_index()
            if index is not None:
                yield self._wait_applied(index, timeout_s)
                result = yield read()
                return result
        clock = self._clock
        deadline = clock.seconds() + timeout_s
        while True:
            remaining = deadline - clock.seconds()
            if remaining <= 0 or self._stopping():
                leader = self._replica.leader
                raise Unavailable(
                    f"no quorum confirmed a read before the deadline; leader is {leader}", leader
                )
            try:
                index = yield self._read_index()
            except Exception as error:  # not leader, link down, timed out: retry
                self.log.debug("read index failed: {error}", error=error)
                yield self._wait_for_leader(min(remaining, self._retry_s))
                continue
            self._index_confirmed = True
            self._confirmed_floor = max(self._confirmed_floor, index)
            yield self._wait_applied(index, deadline - clock.seconds())
            result = yield read()
            return result

    def _read_index(self) -> defer.Deferred:
        replica = self._replica
        if replica.is_leader:
            return self.read_index_requested()
        leader = replica.leader
        if leader is None or leader == self.node_id or self._peers() is None:
            return defer.fail(NotLeaderError(None))
        return self._peers().read_index(leader)

    def _wait_applied(self, index: int, timeout_s: float) -> defer.Deferred:
        """
        Fire once this node has applied through C{index}; fail with
        L{Unavailable} if it has not by C{timeout_s} (a lagging node).
        """
        if self._replica.applied >= index:
            return defer.succeed(None)
        d = defer.Deferred()
        entry = (index, d)
        self._read_waiters.append(entry)

        def lagging(failure):
            failure.trap(defer.TimeoutError)
            if entry in self._read_waiters:
                self._read_waiters.remove(entry)
            leader = self._replica.leader
            raise Unavailable(
                f"node {self.node_id} had not applied through {index} before the"
                f" deadline; leader is {leader}",
                leader,
            )

        return d.addTimeout(max(timeout_s, 0), self._reactor).addErrback(lagging)

    def _wait_for_leader(self, timeout_s: float) -> defer.Deferred:
        d = defer.Deferred()
        self._waiting_for_leader.append(d)
        return d.addTimeout(max(timeout_s, 0), self._reactor).addErrback(
            lambda f: f.trap(defer.TimeoutError)
        )


def _cancel(timer) -> None:
    if timer is not None and timer.active():
        timer.cancel()
