"""
The contracts between the node service and its edges: what the peer
transport calls on the node (L{IPeerHandler}) and what the gRPC and admin
edges call (L{IKeyValueNode}).  All of these are called in the reactor
thread and return Deferreds that fire in it.

The node's failures are the API's errors (L{kvpaxos.api.errors}):
L{Unavailable}, and L{NotLeaderError}, an Unavailable naming the leader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from zope.interface import Interface

# The cluster could not serve a request before its deadline; the API's
# error (gRPC: UNAVAILABLE), re-exported for the node's callers.
from kvpaxos.api.errors import NOT_LEADER, Unavailable


class NotLeaderError(Unavailable):
    """
    This node was asked (by a peer, or on a client's behalf) for work only
    a leader does; C{leader} is the leader it knows of (or None).  Crosses
    AMP as the error code C{NOT_LEADER}; at the gRPC edge it is the API's
    one not-leader error, UNAVAILABLE with reason
    L{kvpaxos.api.errors.NOT_LEADER} and the leader's id.  (The core's
    L{kvpaxos.paxos.NotLeader} is mapped to this by the node.)
    """

    reason = NOT_LEADER

    def __init__(self, leader: Optional[int]) -> None:
        super().__init__(f"not the leader; leader is {leader}", leader)


@dataclass(frozen=True)
class Timing:
    """
    The timing a member runs with.  A read lease is sound only if every
    member counts the same ticks (issue 9): a member refuses lease reads
    while a peer reports a timing other than its own.  Exchanged when a
    peer link comes up.

    @ivar tick_ms: milliseconds per core tick.
    @ivar election_ticks: the core's election timeout, in ticks.
    @ivar lease_reads: whether the member serves lease reads.
    """

    tick_ms: int
    election_ticks: int
    lease_reads: bool


@dataclass(frozen=True)
class NodeStatus:
    """A node's view of the cluster."""

    member_id: int
    role: str
    leader: Optional[int]
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    chosen_index: int
    applied_index: int


class IPeerHandler(Interface):
    """What the peer transport calls on the node."""

    def peer_timing(peer_id, timing):
        """
        Peer C{peer_id} (its identity checked by the transport) reported the
        L{Timing} it runs with, when a link to or from it came up.
        """

    def message_received(message):
        """A Paxos message (L{kvpaxos.paxos.messages.Message}) from a peer."""

    def snapshot_stream_received(message):
        """
        A snapshot transfer message (L{kvpaxos.encoding.transfer}) from a
        peer; its sender checked by the transport.
        """

    def proposals_forwarded(commands):
        """
        A follower forwards encoded client commands (a list of bytes) for
        this node to propose.  Returns a Deferred that fires once they are
        proposed (not chosen), or fails with L{NotLeaderError}.
        """

    def read_index_requested():
        """
        A follower asks for a linearizable read index.  Returns a Deferred
        firing with the index once this node, as leader, confirmed its
        leadership with a quorum; or failing with L{NotLeaderError}.
        """


class IPeerTransport(Interface):
    """
    What the node calls to reach its peers: the AMP transport
    (L{kvpaxos.node.peers.PeerNetwork}) and the simulator's links both
    provide it.  Called in the reactor thread.
    """

    def send(message):
        """
        Send Paxos C{message} to C{message.dst}, or drop it if there is no
        usable link (Paxos tolerates loss).
        """

    def send_stream(message):
        """
        Send snapshot transfer C{message} (L{kvpaxos.encoding.transfer}) to
        C{message.dst} over the link to it, in order with what went before
        on that link; dropped if there is no usable link (the transfer
        times out and starts over).
        """

    def forward(node_id, commands):
        """
        Forward encoded client commands (a list of bytes) to node
        C{node_id} (the leader) to propose.  A Deferred firing with None
        once the peer took all of them, or failing with
        L{kvpaxos.node.peer_commands.PeerUnreachable} (no link: none was sent) or
        L{kvpaxos.node.peer_commands.ForwardFailed} (which were certainly refused,
        which may have been proposed).
        """

    def read_index(node_id):
        """
        Ask node C{node_id} (the leader) for a confirmed read index: a
        Deferred firing with it, or failing (L{NotLeaderError},
        L{kvpaxos.node.peer_commands.PeerUnreachable}, a timeout, ...).
        """


class IKeyValueNode(Interface):
    """What the client-facing edges call on the node."""

    def submit(request, timeout_s):
        """
        Replicate L{kvpaxos.kv.commands.Request} C{request} (any node takes
        any request; a follower forwards it to the leader).  Returns a
        Deferred firing once it is chosen and applied on this node (its
        result known; reads here see it once that is durable) with what
        applying it gave: a C{Result} (put, delete, append), a C{TxnResult}, a
        C{SessionOpened}, or — nothing applied — C{StaleSequence} or
        C{SessionExpired}; or failing with L{Unavailable} after C{timeout_s},
        or with L{kvpaxos.kv.commands.InvalidArgument}.
        """

    def get(key, timeout_s, consistency="linearizable"):
        """
        Read C{key}: a Deferred firing with the value or None, or failing
        with L{Unavailable} after C{timeout_s}.  C{consistency}:
        C{"linearizable"}, C{"serializable"} or C{"lease"}.
        """

    def range(query, timeout_s, consistency="linearizable"):
        """
        Read the keys of a L{kvpaxos.kv.commands.Range}: a Deferred firing
        with a C{RangeResult}, consistency as for L{get}.
        """

    def status():
        """Return this node's L{NodeStatus}."""
