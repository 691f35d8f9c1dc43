"""
The admin AMP server: translates admin commands into calls on the node and
the node's errors into AMP errors; it decides nothing itself.
"""

from twisted.internet.protocol import Factory
from twisted.protocols import amp

from kvpaxos.admin.commands import NotLeader, Rejected, Status, TransferLeadership
from kvpaxos.paxos import NotLeader as CoreNotLeader
from kvpaxos.paxos import ProposalRejected


class AdminProtocol(amp.AMP):
    """One operator connection."""

    def __init__(self, node) -> None:
        super().__init__()
        self.node = node

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

    @TransferLeadership.responder
    def transfer_leadership(self, target):
        try:
            self.node.transfer_leadership(target)
        except CoreNotLeader as error:
            raise NotLeader(f"node {self.node.node_id} does not lead; leader is {error.leader}")
        except ProposalRejected as error:
            raise Rejected(str(error))
        return {}


def admin_factory(node) -> Factory:
    """Return the factory the node's admin port listens with."""
    return Factory.forProtocol(lambda: AdminProtocol(node))
