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
from twisted.protocols.policies import LimitTotalConnectionsFactory, ProtocolWrapper

from kvpaxos.admin.commands import (
    MemberAdd,
    MemberList,
    MemberPromote,
    MemberRemove,
    Rejected,
    Status,
    TransferLeadership,
    Unavailable,
)
from kvpaxos.node.interfaces import MembershipRejected
from kvpaxos.node.interfaces import Unavailable as NodeUnavailable

#: How long a membership change may take before it is answered UNAVAILABLE.
CHANGE_TIMEOUT_S = 10.0

#: The most bytes of keys and values one admin box may hold.
BOX_BYTES_MAX = 64 * 1024
#: The most admin connections open at once.
CONNECTIONS_MAX = 64

_log = Logger()


class _Refusals:
    """Counts one kind of refusal; logs the first and then every power of ten (a flood cannot flood the log)."""

    def __init__(self, message: str) -> None:
        self.count = 0
        self._message = message

    def __call__(self, **fields) -> None:
        self.count += 1
        if str(self.count).rstrip("0") == "1":  # 1, 10, 100, ...
            _log.warn(self._message + " ({count} so far)", count=self.count, **fields)


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


class AdminProtocol(amp.AMP):
    """One operator connection."""

    #: Connections closed for an oversized box, over every admin connection.
    oversized = _Refusals("closed an admin connection from {peer}: a box over {limit} bytes")

    def __init__(self, node, timeout_s: float = CHANGE_TIMEOUT_S) -> None:
        super().__init__()
        self.node = node
        self.timeout_s = timeout_s
        self._box_bytes = 0
        self._dropped = False

    # --- the box size limit ---

    def dataReceived(self, data: bytes) -> None:
        if not self._dropped:
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
        if self._box_bytes > BOX_BYTES_MAX:
            self._dropped = True
            self.paused = True  # stop parsing what is already buffered
            self.oversized(peer=self.transport.getPeer(), limit=BOX_BYTES_MAX)
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

    @TransferLeadership.responder
    def transfer_leadership(self, target):
        d = self.node.leader_transfer(target, self.timeout_s)
        return d.addCallbacks(lambda _: {}, _translated)


class _AdminFactory(LimitTotalConnectionsFactory):
    """
    At most C{connectionLimit} admin connections at once; one more is closed
    at once (before any TLS handshake), and logged.
    """

    connectionLimit = CONNECTIONS_MAX
    refused = _Refusals("refused an admin connection from {peer}: {limit} are open")

    def __init__(self, node, tls=None) -> None:
        inner = Factory.forProtocol(lambda: AdminProtocol(node))
        self._inner = tls.wrap(inner) if tls is not None else inner

    def buildProtocol(self, addr):
        if self.connectionCount >= self.connectionLimit:
            self.refused(peer=addr, limit=self.connectionLimit)
            return None
        protocol = self._inner.buildProtocol(addr)
        if protocol is None:
            return None
        self.connectionCount += 1
        return ProtocolWrapper(self, protocol)


def admin_factory(node, tls=None) -> Factory:
    """
    Return the factory the node's admin port listens with; behind
    C{tls} (a L{kvpaxos.tls.ServerTLS}) if given.
    """
    return _AdminFactory(node, tls)
