"""
The AMP admin commands operators send to a node's admin port (bound to
127.0.0.1 unless configured otherwise).  Membership changes arrive with the
next issue; today: status and leader transfer.
"""

from twisted.protocols import amp


class NotLeader(Exception):
    """The node asked to do leader work does not lead."""


class Rejected(Exception):
    """The node refused the request (the message says why)."""


class Status(amp.Command):
    """This node's view of the cluster."""

    arguments: list = []
    response = [
        (b"member_id", amp.Integer()),
        (b"role", amp.Unicode()),
        (b"leader", amp.Integer(optional=True)),
        (b"voters", amp.ListOf(amp.Integer())),
        (b"learners", amp.ListOf(amp.Integer())),
        (b"chosen_index", amp.Integer()),
        (b"applied_index", amp.Integer()),
    ]


class TransferLeadership(amp.Command):
    """Ask the leader to hand leadership to voter C{target}."""

    arguments = [(b"target", amp.Integer())]
    response: list = []
    errors = {NotLeader: b"NOT_LEADER", Rejected: b"REJECTED"}
