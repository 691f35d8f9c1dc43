"""
The admin API's contract: the AMP commands operators send to a node's admin
port (bound to 127.0.0.1 unless configured otherwise) — the node's status,
the member list, membership changes (add a learner, promote it, remove a
member) and leader transfer — with their error codes, and the admin
address the CLI uses when given none.

It lives in the API package, beside the gRPC contract (L{errors},
L{limits}, L{endpoints}), because both sides import it: the admin server
(L{kvpaxos.admin.server}, through L{kvpaxos.admin.commands}, which
re-exports these names) and its clients (the C{kvpaxos member}, C{leader}
and C{endpoint} commands, L{kvpaxos.client.admin_cli}).  The client may
import the API but never L{kvpaxos.admin} (C{tests/test_import_rules.py}).
Like the rest of the contract it imports nothing else of kvpaxos; it
imports Twisted's AMP only.

A change sent to a follower is carried to the leader by the node; the
answer comes once the change is chosen (or refused).  Errors cross as AMP
error codes:

  - C{REJECTED} (L{Rejected}): the request is wrong and changed nothing;
    the description is one sentence saying why (an unknown or duplicate
    id, a duplicate or malformed address, the last voter, a lagging
    learner, a change already in flight, a quorum that would be lost);
  - C{UNAVAILABLE} (L{Unavailable}): no leader could be reached, or the
    change was not chosen in time; it may be retried;
  - C{NOT_LEADER} (L{NotLeader}): kept for older callers of
    L{TransferLeadership}; the node now carries the transfer to the leader.
"""

from twisted.protocols import amp


#: The admin address the CLI talks to when given none: the first node of
#: the local cluster (C{etc/kvpaxos/node1.toml}, started by
#: C{kvpaxos-cluster}).
DEFAULT_ADMIN = "127.0.0.1:12381"


class NotLeader(Exception):
    """The node asked to do leader work does not lead."""


class Rejected(Exception):
    """The node refused the request (the message says why); nothing changed."""


class Unavailable(Exception):
    """No leader could be reached, or the change was not chosen in time."""


_ERRORS = {NotLeader: b"NOT_LEADER", Rejected: b"REJECTED", Unavailable: b"UNAVAILABLE"}

#: One member as the member list shows it.
MEMBER = [
    (b"id", amp.Integer()),
    #: "voter" or "learner".
    (b"role", amp.Unicode()),
    #: host:port, or "" while not known.
    (b"peer", amp.Unicode()),
    (b"client", amp.Unicode()),
]

#: What MemberList and each change answer: the member set as this node
#: knows it (after the change, for a change).
MEMBER_LIST = [
    (b"cluster_id", amp.Integer()),
    (b"leader", amp.Integer(optional=True)),
    (b"members", amp.AmpList(MEMBER)),
]


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


class MemberList(amp.Command):
    """The member set as this node knows it (no round trip to the leader)."""

    arguments: list = []
    response = MEMBER_LIST
    errors = _ERRORS


class MemberAdd(amp.Command):
    """Add member C{id} as a learner with its peer and client addresses."""

    arguments = [
        (b"id", amp.Integer()),
        (b"peer", amp.Unicode()),
        (b"client", amp.Unicode()),
    ]
    response = MEMBER_LIST
    errors = _ERRORS


class MemberPromote(amp.Command):
    """Make learner C{id} a voter; refused unless it is caught up."""

    arguments = [(b"id", amp.Integer())]
    response = MEMBER_LIST
    errors = _ERRORS


class MemberRemove(amp.Command):
    """
    Remove member C{id}; refused when the voters heard from lately, less
    C{id}, are not a quorum of the new member set, unless C{force}.
    Removing the leader hands leadership over first.
    """

    arguments = [(b"id", amp.Integer()), (b"force", amp.Boolean(optional=True))]
    response = MEMBER_LIST
    errors = _ERRORS


class TransferLeadership(amp.Command):
    """Ask the leader to hand leadership to voter C{target}."""

    arguments = [(b"target", amp.Integer())]
    response: list = []
    errors = _ERRORS


class SnapshotOpen(amp.Command):
    """
    Open a consistent snapshot of the node's state (one read transaction,
    issue 13 part 4), to read with L{SnapshotRead} on this connection: the
    answer is its C{stream} id and C{header}, the JSON of a
    L{kvpaxos.api.backup.SnapshotHeader}.  One stream per connection at a
    time; closing the connection closes it.
    """

    arguments: list = []
    response = [(b"stream", amp.Integer()), (b"header", amp.String())]
    errors = _ERRORS


class SnapshotRead(amp.Command):
    """
    The next chunk's records of stream C{stream} (at most
    L{kvpaxos.api.backup.CHUNK_BYTES_MAX} bytes); C{last}: the state is
    all read (C{records} empty) and the stream closed.  UNAVAILABLE if the
    read was interrupted (the store grew): open a new one.
    """

    arguments = [(b"stream", amp.Integer())]
    response = [(b"records", amp.String()), (b"last", amp.Boolean())]
    errors = _ERRORS
