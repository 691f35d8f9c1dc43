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
"""

from twisted.internet.protocol import Factory
from twisted.protocols import amp

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

    def __init__(self, node, timeout_s: float = CHANGE_TIMEOUT_S) -> None:
        super().__init__()
        self.node = node
        self.timeout_s = timeout_s

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


def admin_factory(node) -> Factory:
    """Return the factory the node's admin port listens with."""
    return Factory.forProtocol(lambda: AdminProtocol(node))
