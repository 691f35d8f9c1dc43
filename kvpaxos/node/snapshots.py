"""
L{SnapshotPath}: how a node takes a peer's snapshot in and sends its own out.

In: an C{InstallSnapshot} the core would install is checked before it is
stepped, so that a peer's corrupt snapshot is a refused message (logged),
never a failed install that stops this node.  Decoding is O(state): a
snapshot of at most L{SNAPSHOT_CHECK_INLINE_BYTES} is decoded at once in
the reactor thread, a larger one in a pool thread, and stepped when it
proves sound.

That whole-snapshot path remains for what the core itself sends: the
bootstrap snapshot (index 0, empty data) and the snapshots of a core whose
state machine is not durable.  A node's store is durable, so its state
travels in chunks (issue 11, L{kvpaxos.node.transfers}):

Out: a lagging peer the core lists in a Ready's C{snapshot_wanted} is sent
the store's state as it is when asked, streamed from one read transaction
in bounded chunks, flow-controlled (L{SnapshotSender}), at most one
transfer at a time per peer (the peer asks again until it has one), and
labelled by the core (C{Replica.snapshot_message}).  A stop closes the
streams (L{SnapshotPath.sent}) before the store closes.

In: a peer's transfer is staged by the store and installed through the
core (L{SnapshotReceiver}); the transfer messages arrive here
(L{SnapshotPath.received}), never at the core.

What must not live here: the Ready loop, installing a snapshot (the core
and the store do, in a Ready's transaction), writes, reads or ticks.  The
path is handed only what it uses.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from kvpaxos.encoding.state import decode_snapshot
from kvpaxos.encoding.transfer import (
    SnapshotAbort,
    SnapshotAck,
    SnapshotChunk,
    SnapshotDone,
    SnapshotOffer,
)
from kvpaxos.kv.commands import CorruptRecord
from kvpaxos.node.transfers import SnapshotReceiver, SnapshotSender
from kvpaxos.paxos import InstallSnapshot


#: A peer's snapshot at most this large is checked in the reactor thread
#: (about 15 ms of decoding); a larger one in a pool thread.
SNAPSHOT_CHECK_INLINE_BYTES = 1 << 20


class SnapshotPath:
    """
    The snapshots coming in from and going out to one node's peers.

    @param replica: the node's L{kvpaxos.paxos.Replica} (C{would_install},
        C{snapshot_message}).
    @param store: the node's store (C{open_snapshot_stream}, C{staging}).
    @param peers: C{peers()} is the node's
        L{kvpaxos.node.interfaces.IPeerTransport} (sends).
    @param reactor: for its thread pool (C{getThreadPool}).
    @param guard: C{guard(call, *args)} runs a core call; a broken
        invariant stops the node.
    @param step: C{step(message)} steps a checked message into the core.
    @param stopping: C{stopping()} says whether the node is shutting down.
    @param node_id: this node's id (the transfer messages' C{src}).
    @param writer: the thread pool of the store's writer thread (the
        default C{on_writer}).
    @param io: if given, its C{in_pool(call, *args)} and C{on_writer(call,
        *args)} (Deferreds of C{call(*args)} run in a pool thread, and on
        the writer thread) replace the default ones; tests and the
        simulator inject their own.
    """

    log = Logger()

    def __init__(
        self,
        replica,
        store,
        peers,
        reactor,
        guard: Callable,
        step: Callable[[InstallSnapshot], None],
        stopping: Callable[[], bool],
        node_id: int = 0,
        writer=None,
        io=None,
    ) -> None:
        self._replica = replica
        self._store = store
        self._peers = peers  # a getter: the wiring may set the transport late
        self._reactor = reactor
        self._guard = guard
        self._step = step
        self._stopping = stopping
        self._writer = writer
        in_pool = io.in_pool if io is not None else self._in_pool
        on_writer = io.on_writer if io is not None else self._on_writer
        #: Transfers out (L{SnapshotSender}) and in (L{SnapshotReceiver}).
        self.sender = SnapshotSender(
            node_id, replica, store, peers, reactor, in_pool, guard, stopping
        )
        self.receiver = SnapshotReceiver(
            node_id, replica, store, peers, reactor, on_writer, step, stopping
        )
        self._routes = {
            SnapshotOffer: self.receiver.offered,
            SnapshotChunk: self.receiver.chunk,
            SnapshotDone: self.receiver.done,
            SnapshotAck: self.sender.acked,
            SnapshotAbort: self._aborted,
        }

    # --- in: a peer's snapshot -------------------------------------------------

    def checking(self, message: InstallSnapshot) -> bool:
        """
        Check that C{message}'s state decodes before the core steps it.
        Only a snapshot the core would install is decoded: a small one at
        once, a large one in a pool thread, never holding up the reactor.

        @return: whether the message was taken (it is stepped once checked,
            or refused and logged); False to step it now.
        """
        data = message.snapshot.data
        if data is None or not self._replica.would_install(message):
            return False  # the core drops it without looking at the state
        if len(data) <= SNAPSHOT_CHECK_INLINE_BYTES:
            if self.decodes(message):
                return False
            return True
        d = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self.decodes, message
        )

        def checked(ok: bool) -> None:
            if ok and not self._stopping():
                self._step(message)

        d.addCallback(checked)
        d.addErrback(lambda failure: self.log.failure("checking a snapshot failed", failure))
        return True

    def decodes(self, message: InstallSnapshot) -> bool:
        """Whether C{message}'s state decodes (a refusal is logged)."""
        try:
            decode_snapshot(message.snapshot.data)
        except CorruptRecord as error:
            self.log.warn(
                "refused a snapshot from node {peer}: {error}", peer=message.src, error=error
            )
            return False
        return True

    # --- transfers in chunks ---------------------------------------------------

    def send(self, peer: int) -> None:
        """
        Send C{peer} the store's state as it is now, in chunks
        (L{SnapshotSender}): read in a pool thread, never the reactor's,
        and at most one transfer at a time per peer (the peer asks again
        until it has one).
        """
        self.sender.send(peer)

    def received(self, message) -> None:
        """A transfer message (L{kvpaxos.encoding.transfer}) from a peer."""
        route = self._routes.get(type(message))
        if route is not None and not self._stopping():
            route(message)

    def _aborted(self, message: SnapshotAbort) -> None:
        # Either side may give a transfer up: the one it names.
        self.sender.aborted(message)
        self.receiver.aborted(message)

    def sent(self) -> defer.Deferred:
        """End the transfers; a Deferred firing once their read transactions are closed."""
        self.receiver.stop()
        return self.sender.stop()

    def _in_pool(self, call, *args) -> defer.Deferred:
        reactor = self._reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), call, *args)

    def _on_writer(self, call, *args) -> defer.Deferred:
        return deferToThreadPool(self._reactor, self._writer, call, *args)
