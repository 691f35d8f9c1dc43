"""
The admin AMP server: translates admin commands into calls on the node
(L{kvpaxos.node.interfaces.IKeyValueNode.status} and
L{kvpaxos.node.interfaces.IMembership}) and the node's errors into AMP
errors; it decides nothing itself.

  - L{MembershipRejected} (the request is wrong; nothing changed) crosses
    as REJECTED;
  - L{Unavailable} and its L{NotLeaderError} (no leader reached, not chosen
    in time) cross as UNAVAILABLE: the node carries a change to the leader
    itself, so an operator never has to find the leader.

Limits against floods (issue 13, part 6): a box larger than
L{BOX_BYTES_MAX} (admin commands are a few hundred bytes) closes its
connection before it is buffered further, and at most
L{CONNECTIONS_MAX} connections are open at once (more are closed as they
are accepted); both are logged, the first time and then at each power of
ten.
"""

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.policies import TimeoutMixin

from kvpaxos.admin.commands import (
    MemberAdd,
    MemberList,
    MemberPromote,
    MemberRemove,
    Rejected,
    SnapshotOpen,
    SnapshotRead,
    Status,
    TransferLeadership,
    Unavailable,
)
from kvpaxos.api.backup import CHUNK_BYTES_MAX
from kvpaxos.node.connection_cap import ConnectionCap, Refusals
from kvpaxos.node.interfaces import MembershipRejected
from kvpaxos.node.interfaces import Unavailable as NodeUnavailable

#: How long a membership change may take before it is answered UNAVAILABLE.
CHANGE_TIMEOUT_S = 10.0

#: The most bytes of keys and values one admin box may hold (by default:
#: the admin_buffer_bytes key).
BOX_BYTES_MAX = 64 * 1024
#: The most admin connections open at once (by default: admin_connections_max).
CONNECTIONS_MAX = 64
#: A snapshot stream not read for this long is closed (its read
#: transaction pins pages the store could reuse).
SNAPSHOT_IDLE_S = 30.0
#: A connection that sends nothing for this long is closed (a stalled TLS
#: handshake or an idle socket must not hold one of the capped places).
IDLE_S = 30.0

_log = Logger()


def _member_list(view) -> dict:
    """The AMP form of a L{kvpaxos.node.interfaces.MemberView}."""
    return {
        "cluster_id": view.cluster_id,
        "leader": view.leader,
        "members": [
            {"id": m.id, "role": m.role, "peer": m.peer, "client": m.client}
            for m in view.members
        ],
    }


def _translated(failure):
    """The node's errors as the admin port's."""
    if failure.check(MembershipRejected):
        raise Rejected(failure.getErrorMessage())
    if failure.check(NodeUnavailable):
        raise Unavailable(failure.getErrorMessage())
    return failure


class AdminProtocol(TimeoutMixin, amp.AMP):
    """One operator connection."""

    #: Connections closed for an oversized box, over every admin connection.
    oversized = Refusals("closed an admin connection from {peer}: a box over {limit} bytes")

    def __init__(self, node, timeout_s: float = CHANGE_TIMEOUT_S, box_bytes_max: int = BOX_BYTES_MAX) -> None:
        super().__init__()
        self.node = node
        self.timeout_s = timeout_s
        self.box_bytes_max = box_bytes_max
        self._box_bytes = 0
        self._dropped = False
        #: The open snapshot stream: (id, stream, idle timer), or None.
        self._snapshot = None
        self._snapshot_ids = 0
        self._reading = False
        self._lost = False
        clock = getattr(node, "reactor", None)
        if clock is not None:
            self.callLater = clock.callLater  # the node's clock (TimeoutMixin's default is the global reactor)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.setTimeout(IDLE_S)

    def timeoutConnection(self) -> None:
        _log.info("closed an admin connection from {peer}: nothing sent for {s}s", peer=self.transport.getPeer(),
                  s=IDLE_S)
        self.transport.abortConnection()

    # --- the box size limit ---

    def dataReceived(self, data: bytes) -> None:
        if not self._dropped:
            self.resetTimeout()
            super().dataReceived(data)

    def proto_init(self, string):
        self._box_bytes = 0
        return super().proto_init(string)  # which parses the first key with proto_key

    def proto_key(self, string):
        return self._counted(string, super().proto_key)

    def proto_value(self, string):
        return self._counted(string, super().proto_value)

    def _counted(self, string: bytes, parse):
        self._box_bytes += len(string) + 2
        if self._box_bytes > self.box_bytes_max:
            self._dropped = True
            self.paused = True  # stop parsing what is already buffered
            self.oversized(peer=self.transport.getPeer(), limit=self.box_bytes_max)
            self.transport.abortConnection()
            return "init"
        return parse(string)

    @Status.responder
    def status(self):
        s = self.node.status()
        return {
            "member_id": s.member_id,
            "role": s.role,
            "leader": s.leader,
            "voters": list(s.voters),
            "learners": list(s.learners),
            "chosen_index": s.chosen_index,
            "applied_index": s.applied_index,
        }

    @MemberList.responder
    def member_list(self):
        return _member_list(self.node.members())

    def _change(self, d):
        return d.addCallbacks(_member_list, _translated)

    @MemberAdd.responder
    def member_add(self, id, peer, client):
        return self._change(self.node.member_add(id, peer, client, self.timeout_s))

    @MemberPromote.responder
    def member_promote(self, id):
        return self._change(self.node.member_promote(id, self.timeout_s))

    @MemberRemove.responder
    def member_remove(self, id, force=None):
        return self._change(self.node.member_remove(id, bool(force), self.timeout_s))

    # --- snapshots (kvpaxos snapshot save) ---

    def connectionLost(self, reason) -> None:
        self._lost = True
        self.setTimeout(None)
        self._close_snapshot()
        super().connectionLost(reason)

    @SnapshotOpen.responder
    def snapshot_open(self):
        if self._snapshot is not None:
            raise Rejected("a snapshot stream is already open on this connection")

        def opened(opened):
            stream, header = opened
            if self._lost or self._dropped or self._snapshot is not None:
                self.node.close_backup(stream)
                raise Unavailable("the connection closed while the snapshot opened")
            self._snapshot_ids += 1
            self._snapshot = [self._snapshot_ids, stream, None]
            self._touch()
            _log.info("snapshot stream {id} opened for {peer} at slot {index}", id=self._snapshot_ids,
                      peer=self.transport.getPeer() if self.transport is not None else "-", index=header.index)
            return {"stream": self._snapshot_ids, "header": header.to_json()}

        def failed(failure):
            if failure.check(Unavailable):
                return failure
            _log.failure("opening a snapshot stream failed", failure)
            raise Unavailable(f"cannot open a snapshot: {failure.getErrorMessage()}")

        return self.node.open_backup().addCallbacks(opened, failed)

    @SnapshotRead.responder
    def snapshot_read(self, stream):
        if self._snapshot is None or self._snapshot[0] != stream:
            raise Rejected(f"no snapshot stream {stream} is open on this connection")
        if self._reading:
            raise Rejected(f"a read of snapshot stream {stream} is under way")
        self._reading = True
        self._touch()
        source = self._snapshot[1]

        def read(records):
            self._reading = False
            if self._snapshot is None or self._snapshot[1] is not source:
                self.node.close_backup(source)  # closed while it read
                raise Unavailable(f"snapshot stream {stream} was closed")
            if records is None:
                self._close_snapshot()  # next_chunk closed the transaction; closing again is nothing
                return {"records": b"", "last": True}
            self._touch()  # the idle timer may have fired during the read
            return {"records": records, "last": False}

        def failed(failure):
            self._reading = False
            if self._snapshot is None or self._snapshot[1] is not source:
                self.node.close_backup(source)  # closed while it read
            self._close_snapshot()
            raise Unavailable(f"the snapshot read stopped ({failure.getErrorMessage()}): save again")

        return self.node.read_backup(source, CHUNK_BYTES_MAX).addCallbacks(read, failed)

    def _touch(self) -> None:
        timer = self._snapshot[2]
        if timer is not None and timer.active():
            timer.cancel()
        self._snapshot[2] = self.node.reactor.callLater(SNAPSHOT_IDLE_S, self._idle)

    def _idle(self) -> None:
        if self._snapshot is None:
            return
        self._snapshot[2] = None
        if self._reading:
            return  # a read is under way: it re-arms the timer when it ends
        _log.warn("snapshot stream {id} closed: not read for {s}s", id=self._snapshot[0], s=SNAPSHOT_IDLE_S)
        self._close_snapshot()

    def _close_snapshot(self) -> None:
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None:
            return
        _, stream, timer = snapshot
        if timer is not None and timer.active():
            timer.cancel()
        if not self._reading:
            self.node.close_backup(stream)
        # else: the read under way ends it (a read of a closed stream fails)

    @TransferLeadership.responder
    def transfer_leadership(self, target):
        d = self.node.leader_transfer(target, self.timeout_s)
        return d.addCallbacks(lambda _: {}, _translated)


def admin_factory(node, tls=None, connections_max: int = CONNECTIONS_MAX,
                  box_bytes_max: int = BOX_BYTES_MAX) -> Factory:
    """
    Return the factory the node's admin port listens with: at most
    C{connections_max} connections open (one more is closed at once,
    before any TLS handshake, and logged), each behind C{tls} (a
    L{kvpaxos.tls.ServerTLS}) if given, and closed for a box over
    C{box_bytes_max} bytes.
    """
    inner = Factory.forProtocol(lambda: AdminProtocol(node, box_bytes_max=box_bytes_max))
    inner.noisy = False
    if tls is not None:
        inner = tls.wrap(inner)
    return ConnectionCap(inner, connections_max, "admin")
