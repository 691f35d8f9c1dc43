"""
The snapshot transfer in chunks (issue 11): L{SnapshotSender} sends this
node's state to a peer behind its compaction point, L{SnapshotReceiver}
takes a peer's.  The messages and their encoding are
L{kvpaxos.encoding.transfer}; they travel over the peer links
(C{IPeerTransport.send_stream}), not through the core, which decides
nothing about them: it only says who wants a snapshot (a Ready's
C{snapshot_wanted}), labels the state with its member set
(C{Replica.snapshot_message}), and installs what it is stepped.

Sender, per peer at most one transfer at a time: the store's stream
(C{open_snapshot_stream}: one read transaction) is opened and read a chunk
at a time in a pool thread, never the reactor; at most L{WINDOW_CHUNKS}
chunks are unacknowledged (flow control: the receiver acks a chunk once
staged); a transfer that hears nothing for L{TIMEOUT_S} (a dropped link)
is aborted and its read transaction closed.  The peer's catch-up retry
then starts a new one: a transfer restarts from the start, from a new read
transaction (its state is at a newer index anyway).

Receiver, one transfer at a time: an offer the core would install
(C{Replica.would_install}) discards any other transfer being staged; each
chunk is checked and staged by the store on the writer thread (the only
writer; a corrupt chunk refuses the transfer, nothing installed); at
C{SnapshotDone} with the right count and digest the node steps an
C{InstallSnapshot} whose data is the store's L{StagedState} handle, and the
store installs the staged state in that Ready's transaction, atomically.
While a finished transfer waits for that install, new offers are refused.

What must not live here: the Ready loop, the Paxos rules, LMDB calls (the
store's), sockets (the transport's).
"""

from __future__ import annotations

import itertools
from typing import Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from kvpaxos.encoding.errors import DecodeError
from kvpaxos.encoding.transfer import (
    CHUNK_BYTES_MAX,
    Digest,
    SnapshotAbort,
    SnapshotAck,
    SnapshotChunk,
    SnapshotDone,
    SnapshotOffer,
)
from kvpaxos.paxos import InstallSnapshot
from kvpaxos.paxos.messages import Snapshot
from kvpaxos.storage.staging import StreamInterrupted

#: The most chunks a transfer has unacknowledged (a receiver refuses more).
WINDOW_CHUNKS = 4
#: The most one chunk's records take (each fits one AMP value).
CHUNK_BYTES = CHUNK_BYTES_MAX
#: A transfer that hears nothing from its peer for this long is given up.
TIMEOUT_S = 5.0


class _Outgoing:
    """One transfer to C{peer}: its stream and where it stands."""

    def __init__(self, peer: int, transfer: int) -> None:
        self.peer = peer
        self.transfer = transfer
        self.stream = None
        self.sent = 0  # chunks sent
        self.acked = 0  # chunks acknowledged
        self.reading: Optional[defer.Deferred] = None
        self.exhausted = False
        self.ended = False
        self.digest = Digest()
        self.timer = None
        #: Fires once its stream is closed (after it ended).
        self.closed = defer.Deferred()


class SnapshotSender:
    """
    The transfers of this node's state to lagging peers.

    @param node_id: this node.
    @param replica: the core (C{snapshot_message}).
    @param store: C{open_snapshot_stream()}.
    @param peers: C{peers()} is the L{IPeerTransport} (C{send_stream}).
    @param reactor: C{callLater}, for the timeout.
    @param in_pool: C{in_pool(call, *args)}: a Deferred of C{call(*args)}
        run in a pool thread.
    @param guard: runs a core call (a broken invariant stops the node).
    @param stopping: whether the node is shutting down.
    """

    log = Logger()

    def __init__(self, node_id: int, replica, store, peers: Callable, reactor,
                 in_pool: Callable, guard: Callable, stopping: Callable[[], bool],
                 window: Optional[int] = None, timeout_s: Optional[float] = None,
                 chunk_bytes: Optional[int] = None) -> None:
        self._id = node_id
        self._replica = replica
        self._store = store
        self._peers = peers
        self._reactor = reactor
        self._in_pool = in_pool
        self._guard = guard
        self._stopping = stopping
        # The module's settings as they are now (the simulator sets them).
        self.window = window or WINDOW_CHUNKS
        self.timeout_s = timeout_s or TIMEOUT_S
        self.chunk_bytes = chunk_bytes or CHUNK_BYTES
        #: Bytes of state records sent to peers, in all (a metric).
        self.bytes_sent = 0
        self._ids = itertools.count(1)
        #: The transfer under way to each peer.
        self.transfers: dict[int, _Outgoing] = {}
        # Ended transfers whose stream is not closed yet (a stop waits).
        self._closing: dict = {}

    def send(self, peer: int) -> None:
        """Start a transfer to C{peer} unless one is under way."""
        if peer in self.transfers or self._stopping():
            return
        out = self.transfers[peer] = _Outgoing(peer, next(self._ids))
        self._arm(out)
        out.reading = self._in_pool(self._store.open_snapshot_stream)
        out.reading.addCallbacks(self._opened, self._failed, (out,), None, (out,))

    def _opened(self, stream, out: _Outgoing) -> None:
        out.reading = None
        out.stream = stream
        if out.ended:
            self._close(out)
            return
        message = self._guard(self._replica.snapshot_message, out.peer, stream.index, b"")
        if message is None:
            self._end(out, None)  # compacted past it meanwhile: the peer asks again
            return
        snapshot = message.snapshot
        self._peers().send_stream(SnapshotOffer(
            self._id, out.peer, out.transfer, snapshot.index, snapshot.config,
            stream.revision, stream.next_client_id,
        ))
        self._pump(out)

    def _pump(self, out: _Outgoing) -> None:
        if out.ended or out.reading is not None or out.exhausted:
            return
        if out.sent - out.acked >= self.window:
            return
        out.reading = self._in_pool(out.stream.next_chunk, self.chunk_bytes)
        out.reading.addCallbacks(self._read, self._failed, (out,), None, (out,))

    def _read(self, records, out: _Outgoing) -> None:
        out.reading = None
        if out.ended:
            self._close(out)
            return
        if records is None:
            out.exhausted = True  # the stream closed its transaction
            self._peers().send_stream(
                SnapshotDone(self._id, out.peer, out.transfer, out.sent, out.digest.digest())
            )
            self._maybe_done(out)
            return
        out.digest.add(records)
        self._peers().send_stream(SnapshotChunk(self._id, out.peer, out.transfer, out.sent, records))
        self.bytes_sent += len(records)
        out.sent += 1
        self._pump(out)

    def _failed(self, failure, out: _Outgoing) -> None:
        out.reading = None
        if not out.ended:
            if failure.check(StreamInterrupted):
                self.log.info("snapshot transfer to node {peer} starts over: {why}",
                              peer=out.peer, why=failure.getErrorMessage())
            else:
                self.log.failure("reading a snapshot for node {peer} failed", failure,
                                 peer=out.peer)
            self._end(out, "the sender's read ended")
        else:
            self._close(out)

    def acked(self, message: SnapshotAck) -> None:
        """The peer staged chunk C{message.seq}."""
        out = self.transfers.get(message.src)
        if out is None or out.transfer != message.transfer:
            return
        if message.seq != out.acked or message.seq >= out.sent:
            self._end(out, f"ack {message.seq} out of order")
            return
        out.acked += 1
        self._arm(out)
        if not self._maybe_done(out):
            self._pump(out)

    def aborted(self, message: SnapshotAbort) -> None:
        """The peer gave the transfer up."""
        out = self.transfers.get(message.src)
        if out is not None and out.transfer == message.transfer:
            self.log.info("node {peer} refused a snapshot transfer: {why}",
                          peer=message.src, why=message.reason)
            self._end(out, None)

    def _maybe_done(self, out: _Outgoing) -> bool:
        if out.exhausted and out.acked == out.sent:
            self._end(out, None)
            return True
        return False

    def _arm(self, out: _Outgoing) -> None:
        if out.timer is not None and out.timer.active():
            out.timer.cancel()
        out.timer = self._reactor.callLater(self.timeout_s, self._timed_out, out)

    def _timed_out(self, out: _Outgoing) -> None:
        out.timer = None
        if not out.ended:
            self.log.info("snapshot transfer to node {peer} timed out", peer=out.peer)
            self._end(out, "timed out")

    def _end(self, out: _Outgoing, abort: Optional[str]) -> None:
        """End C{out}; tell the peer why if C{abort}; close its stream."""
        out.ended = True
        if self.transfers.get(out.peer) is out:
            del self.transfers[out.peer]
        if out.timer is not None and out.timer.active():
            out.timer.cancel()
        out.timer = None
        if abort is not None and not self._stopping():
            self._peers().send_stream(SnapshotAbort(self._id, out.peer, out.transfer, abort))
        self._closing[id(out)] = out
        if out.reading is None:
            self._close(out)
        # else: closed once the read is back

    def _close(self, out: _Outgoing) -> None:
        stream, out.stream = out.stream, None

        def closed(_) -> None:
            self._closing.pop(id(out), None)
            if not out.closed.called:
                out.closed.callback(None)

        if stream is None or stream.closed:
            closed(None)
            return
        d = self._in_pool(stream.close)
        d.addErrback(lambda failure: self.log.failure("closing a snapshot stream", failure))
        d.addBoth(closed)

    def stop(self) -> defer.Deferred:
        """End every transfer; a Deferred firing once their streams are closed."""
        for out in list(self.transfers.values()):
            self._end(out, None)
        return defer.DeferredList([out.closed for out in self._closing.values()])


class _Incoming:
    """One transfer from a peer being staged."""

    def __init__(self, offer: SnapshotOffer) -> None:
        self.offer = offer
        self.key = (offer.src, offer.transfer)
        self.received = 0  # chunks received (the next seq expected)
        self.staging = 0  # chunks handed to the writer, not yet staged
        self.done: Optional[SnapshotDone] = None
        self.digest = Digest()
        self.timer = None
        self.ended = False


class SnapshotReceiver:
    """
    The transfer of a peer's state into this node.

    @param on_writer: C{on_writer(call, *args)}: a Deferred of
        C{call(*args)} run on the store's writer thread (after what was
        handed to it before).
    @param step: C{step(message)} steps a checked message into the core.
    (The rest as for L{SnapshotSender}.)
    """

    log = Logger()

    def __init__(self, node_id: int, replica, store, peers: Callable, reactor,
                 on_writer: Callable, step: Callable, stopping: Callable[[], bool],
                 window: Optional[int] = None, timeout_s: Optional[float] = None) -> None:
        self._id = node_id
        self._replica = replica
        self._store = store
        self._peers = peers
        self._reactor = reactor
        self._on_writer = on_writer
        self._step = step
        self._stopping = stopping
        #: Bytes of state records received from peers, in all (a metric).
        self.bytes_received = 0
        self.window = window or WINDOW_CHUNKS
        self.timeout_s = timeout_s or TIMEOUT_S
        #: The transfer being staged, if any.
        self.incoming: Optional[_Incoming] = None
        #: Transfers installed through the core (for tests and the simulator).
        self.installed = 0
        # The index of the last transfer stepped into the core.
        self._installing = -1

    def _wanted(self, offer: SnapshotOffer, data) -> Optional[InstallSnapshot]:
        message = InstallSnapshot(
            offer.src, self._id, Snapshot(offer.index, offer.config, data)
        )
        return message if self._replica.would_install(message) else None

    def offered(self, offer: SnapshotOffer) -> None:
        """A peer offers its state: stage it if the core would install it."""
        if self._stopping():
            return
        if self._wanted(offer, b"") is None:
            self._abort(offer.src, offer.transfer, "not wanted")
            return
        if self._store.staging.complete and self._store.applied_index() <= self._installing:
            # A finished transfer waits for its install (the Ready's
            # commit), which must find it staged.
            self._abort(offer.src, offer.transfer, "busy installing")
            return
        old = self.incoming
        if old is not None:
            self._end(old, "another transfer began", discard=False)
        came = self.incoming = _Incoming(offer)
        self.log.info("receiving a snapshot from node {peer} (index {index}, transfer {t})",
                      peer=offer.src, index=offer.index, t=offer.transfer)
        self._arm(came)
        self._writer(came, self._store.staging.begin, came.key, offer.revision,
                     offer.next_client_id)

    def chunk(self, message: SnapshotChunk) -> None:
        """Chunk C{message.seq}: checked and staged on the writer, then acked."""
        came = self._current(message)
        if came is None:
            return
        if message.seq != came.received or came.done is not None:
            self._end(came, f"chunk {message.seq} out of order")
            return
        if came.staging >= self.window:
            self._end(came, f"over {self.window} chunks unacknowledged")
            return
        came.received += 1
        came.staging += 1
        self.bytes_received += len(message.records)
        came.digest.add(message.records)
        self._arm(came)
        d = self._writer(came, self._store.staging.stage, came.key, message.records)
        d.addCallback(self._staged, came, message.seq)

    def _staged(self, ok: bool, came: _Incoming, seq: int) -> None:
        if not ok or came.ended:
            return
        came.staging -= 1
        self._arm(came)  # a slow disk is not a dropped link
        self._peers().send_stream(SnapshotAck(self._id, came.offer.src, came.offer.transfer, seq))
        self._maybe_finish(came)

    def done(self, message: SnapshotDone) -> None:
        """The last chunk was sent: install once all are staged, if they add up."""
        came = self._current(message)
        if came is None:
            return
        if message.count != came.received or message.digest != came.digest.digest():
            self._end(came, f"{came.received} chunks received, {message.count} sent, or their"
                            " digest differs")
            return
        came.done = message
        self._maybe_finish(came)

    def aborted(self, message: SnapshotAbort) -> None:
        """The sender gave the transfer up: discard what was staged."""
        came = self._current(message)
        if came is not None:
            self._end(came, None)

    def _current(self, message) -> Optional[_Incoming]:
        came = self.incoming
        if came is None or came.key != (message.src, message.transfer) or self._stopping():
            return None
        return came

    def _maybe_finish(self, came: _Incoming) -> None:
        if came.done is None or came.staging or came.ended:
            return
        came.staging = 1  # nothing more is staged
        d = self._writer(came, self._store.staging.finish, came.key, value=True)
        d.addCallback(self._finished, came)

    def _finished(self, staged, came: _Incoming) -> None:
        if staged is None or came.ended:
            return
        self._cancel(came)
        self.incoming = None
        came.ended = True
        message = self._wanted(came.offer, staged)
        if message is None:
            # Leadership or the log moved on meanwhile: the peer asks again.
            self._on_writer(self._store.staging.discard).addErrback(self._log_failure)
            return
        self._installing = came.offer.index
        self._step(message)
        replica = self._replica
        if replica.snapshot.index < came.offer.index and replica.chosen_index < came.offer.index:
            # The core did not take it after all (the ticks counted before
            # the step ended the catch-up it asked for, or the leader it
            # knew): drop the staging, or every later offer would be
            # refused as waiting for this install.
            self.log.info("the snapshot from node {peer} was not installed: asking again",
                          peer=came.offer.src)
            self._installing = -1
            self._on_writer(self._store.staging.discard).addErrback(self._log_failure)
            return
        self.installed += 1
        self.log.info("installing the snapshot from node {peer}: index {index}, {chunks} chunks",
                      peer=came.offer.src, index=came.offer.index, chunks=came.received)

    def _writer(self, came: _Incoming, call, *args, value: bool = False) -> defer.Deferred:
        """
        Run C{call(*args)} on the writer; the Deferred fires with True (or
        its value), or None once a refusal ended the transfer.
        """
        def failed(failure):
            if not came.ended:
                if failure.check(DecodeError):
                    self.log.warn("refused a snapshot from node {peer}: {error}",
                                  peer=came.offer.src, error=failure.value)
                    self._end(came, f"refused: {failure.getErrorMessage()}")
                else:
                    self._log_failure(failure)
                    self._end(came, "the receiver failed")
            return None

        d = self._on_writer(call, *args)
        return d.addCallbacks(lambda result: result if value else True, failed)

    def _arm(self, came: _Incoming) -> None:
        self._cancel(came)
        came.timer = self._reactor.callLater(self.timeout_s, self._timed_out, came)

    def _cancel(self, came: _Incoming) -> None:
        if came.timer is not None and came.timer.active():
            came.timer.cancel()
        came.timer = None

    def _timed_out(self, came: _Incoming) -> None:
        came.timer = None
        if not came.ended:
            self._end(came, "timed out")

    def _end(self, came: _Incoming, abort: Optional[str], discard: bool = True) -> None:
        came.ended = True
        self._cancel(came)
        if self.incoming is came:
            self.incoming = None
        if abort is not None and not self._stopping():
            self._abort(came.offer.src, came.offer.transfer, abort)
        if discard and not self._stopping():
            self._on_writer(self._store.staging.discard).addErrback(self._log_failure)

    def _abort(self, peer: int, transfer: int, reason: str) -> None:
        self._peers().send_stream(SnapshotAbort(self._id, peer, transfer, reason))

    def _log_failure(self, failure) -> None:
        self.log.failure("staging a snapshot failed", failure)

    def stop(self) -> None:
        """Give the transfer under way up (its staging is dropped when the store reopens)."""
        came = self.incoming
        if came is not None:
            came.ended = True
            self._cancel(came)
            self.incoming = None
