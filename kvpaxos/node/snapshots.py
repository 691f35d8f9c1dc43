"""
L{SnapshotPath}: how a node takes a peer's snapshot in and sends its own out.

In: an C{InstallSnapshot} the core would install is checked before it is
stepped, so that a peer's corrupt snapshot is a refused message (logged),
never a failed install that stops this node.  Decoding is O(state): a
snapshot of at most L{SNAPSHOT_CHECK_INLINE_BYTES} is decoded at once in
the reactor thread, a larger one in a pool thread, and stepped when it
proves sound.

Out: a lagging peer the core lists in a Ready's C{snapshot_wanted} is sent
the store's state as it is when asked, read (O(state)) in a pool thread,
at most once at a time per peer (the peer asks again until it has one), and
labelled by the core (C{Replica.snapshot_message}).  A stop waits for the
reads in flight (L{SnapshotPath.sent}) before the store closes.

What must not live here: the Ready loop, installing a snapshot (the core
and the store do, in a Ready's transaction), writes, reads or ticks.  The
path is handed only what it uses.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from kvpaxos.encoding.state import decode_snapshot
from kvpaxos.kv.commands import CorruptRecord
from kvpaxos.paxos import InstallSnapshot


#: A peer's snapshot at most this large is checked in the reactor thread
#: (about 15 ms of decoding); a larger one in a pool thread.
SNAPSHOT_CHECK_INLINE_BYTES = 1 << 20


class SnapshotPath:
    """
    The snapshots coming in from and going out to one node's peers.

    @param replica: the node's L{kvpaxos.paxos.Replica} (C{would_install},
        C{snapshot_message}).
    @param store: the node's store (C{state_machine.snapshot_now}, read by
        the default C{read_snapshot}).
    @param peers: C{peers()} is the node's
        L{kvpaxos.node.interfaces.IPeerTransport} (sends).
    @param reactor: for its thread pool (C{getThreadPool}).
    @param guard: C{guard(call, *args)} runs a core call; a broken
        invariant stops the node.
    @param step: C{step(message)} steps a checked message into the core.
    @param stopping: C{stopping()} says whether the node is shutting down.
    @param read_snapshot: C{read_snapshot()} is a Deferred firing with
        C{(index, data)} of the store's state for a peer; by default read in
        a pool thread.  Tests and the simulator inject their own.
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
        read_snapshot: Optional[Callable[[], defer.Deferred]] = None,
    ) -> None:
        self._replica = replica
        self._store = store
        self._peers = peers  # a getter: the wiring may set the transport late
        self._reactor = reactor
        self._guard = guard
        self._step = step
        self._stopping = stopping
        self._read_snapshot = read_snapshot or self._read_in_thread
        # Snapshots being read for peers (by peer), waited for at stop.
        self._sends: dict[int, defer.Deferred] = {}

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

    # --- out: this node's state for a lagging peer -----------------------------

    def send(self, peer: int) -> None:
        """
        Send C{peer} the store's state as it is now: read (O(state)) in a
        pool thread, never the reactor's, and at most once at a time per
        peer (the peer asks again until it has one).
        """
        if peer in self._sends or self._stopping():
            return
        d = self._read_snapshot()
        self._sends[peer] = d

        def taken(index_and_data) -> None:
            if self._stopping():
                return
            message = self._guard(self._replica.snapshot_message, peer, *index_and_data)
            if message is not None:
                self._peers().send(message)

        def failed(failure) -> None:
            self.log.failure("taking a snapshot for node {peer} failed", failure, peer=peer)

        def done(_) -> None:
            del self._sends[peer]

        d.addCallbacks(taken, failed)
        d.addBoth(done)

    def sent(self) -> defer.Deferred:
        """A Deferred firing once every snapshot being read for a peer is done."""
        return defer.DeferredList(list(self._sends.values()))

    def _read_in_thread(self) -> defer.Deferred:
        return deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._store.state_machine.snapshot_now
        )
