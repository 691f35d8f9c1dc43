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
    #: The round of the leader's ballot as this node knows it: every
    #: election raises it, so a leader change that ends with the same
    #: leader still shows.
    ballot_round: int = 0
    #: Seconds since this node last heard from the leader it knows of (0
    #: for the leader itself, and while it knows none), and its election
    #: timeout in seconds: a follower cut off from its leader keeps naming
    #: it (a learner never campaigns), so only this tells.
    leader_silent_s: float = 0.0
    election_timeout_s: float = 0.0
    #: The store's pages in use, the space quota (0: none), and whether the
    #: space alarm is on (writes that would grow the store are refused).
    used_bytes: int = 0
    quota_bytes: int = 0
    space_alarm: bool = False


@dataclass(frozen=True)
class MemberInfo:
    """One member as the member list shows it."""

    id: int
    #: "voter" or "learner".
    role: str
    #: host:port, or "" while not known.
    peer: str
    client: str


@dataclass(frozen=True)
class MemberView:
    """The member set as one node knows it."""

    cluster_id: int
    leader: Optional[int]
    #: In ascending id order.
    members: tuple[MemberInfo, ...]


class MembershipRejected(ValueError):
    """
    A membership request that is wrong and changed nothing (an unknown or
    duplicate id, a duplicate or malformed address, the last voter, a
    lagging learner, a change in flight, a quorum that would be lost); the
    message is one sentence saying why.
    """


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

    def lease_keep_alive_requested(lease):
        """
        A follower forwards a client's keep-alive of lease C{lease} (issue
        14).  Returns a Deferred firing, once this node, as leader, confirmed
        its leadership with a read index and applied through it, with the
        lease's TTL (its deadline moved to now + TTL), or 0 if there is no
        such lease (or it ran out); or failing with L{NotLeaderError}
        (nothing refreshed) or L{Unavailable}.
        """

    def lease_time_to_live_requested(lease):
        """
        A follower asks how long lease C{lease} has to live (issue 14):
        confirmed as L{lease_keep_alive_requested}, a Deferred firing with
        a L{kvpaxos.node.leases.LeaseTime} or None (no such lease).
        """

    def peer_addresses_reported(member, peer, client):
        """
        Member C{member} reported, in its handshake, the addresses it is
        reached at (C{host:port} strings, C{""} if not given); issue 11.
        """

    def was_removed(member):
        """
        Whether C{member}'s removal is chosen in this node's log (since its
        snapshot): its Hello is then refused REMOVED_MEMBER, not only
        UNKNOWN_MEMBER (optional; issue 11).
        """

    def removed_by_peer(peer, why):
        """
        Peer C{peer} refused this node's link REMOVED_MEMBER: this node was
        removed and missed the news (optional; issue 11).
        """

    def member_change_requested(kind, node, peer, client, force, timeout_s):
        """
        A follower carries a membership change (C{kind}: C{"add-learner"},
        C{"promote"}, C{"remove"} or C{"transfer"}) to this node, the leader.
        Returns a Deferred firing with the slot it was chosen in (0 for a
        transfer, once the target leads), or failing with L{NotLeaderError}
        (this node does not lead: not proposed), L{MembershipRejected} or
        L{Unavailable} (not done within C{timeout_s}).
        """

    def join_requested(member, peer, client, timeout_s):
        """
        Node C{member}, not yet a member of this cluster, asks to be added
        as a learner at these addresses.  A Deferred firing once that is
        chosen (at once if it is already a member at C{peer}), or failing as
        L{member_change_requested}.
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

    def lease_keep_alive(node_id, lease):
        """
        Carry a keep-alive of lease C{lease} to node C{node_id} (the
        leader): a Deferred firing with the TTL (0: no such lease), or
        failing (L{NotLeaderError}: nothing refreshed;
        L{kvpaxos.node.peer_commands.PeerUnreachable}: not sent; a timeout
        or L{kvpaxos.node.peer_commands.PeerRequestError}: it may have
        refreshed).
        """

    def lease_time_to_live(node_id, lease):
        """
        Ask node C{node_id} (the leader) how long lease C{lease} has to
        live: a Deferred firing with a L{kvpaxos.node.leases.LeaseTime} or
        None (no such lease), or failing as L{lease_keep_alive}.
        """

    def set_peers(peers):
        """
        Make the links match C{peers} ({node id: (host, port)}): the member
        set changed (issue 11).  A member no longer listed is refused.
        """

    def member_change(node_id, kind, node, peer, client, force, timeout_s):
        """
        Carry a membership change to node C{node_id} (the leader): a
        Deferred firing with the slot it was chosen in, or failing
        (L{NotLeaderError}: not proposed; L{MembershipRejected};
        L{Unavailable}; L{kvpaxos.node.peer_commands.PeerUnreachable}: not
        sent; a timeout or another error: it may still be chosen).
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


class IMembership(Interface):
    """
    What the admin edge (and the gRPC edge's read-only member list) calls
    on the node to see and change the member set.  A change sent to a
    follower is carried to the leader; each Deferred fires once the change
    is chosen, with the L{MemberView} after it, or fails with
    L{MembershipRejected} (wrong, nothing changed) or L{Unavailable} (no
    leader reached, or not chosen within C{timeout_s}).  Addresses are
    C{host:port} strings, checked by the node.
    """

    def members():
        """Return the L{MemberView} as this node knows it (no round trip)."""

    def member_add(node_id, peer, client, timeout_s):
        """Add C{node_id} as a learner with its peer and client addresses."""

    def member_promote(node_id, timeout_s):
        """Make learner C{node_id} a voter; refused unless it is caught up."""

    def member_remove(node_id, force, timeout_s):
        """
        Remove member C{node_id}; refused when the voters the leader heard
        from within the last election timeout, less C{node_id}, are not a
        quorum of the new member set, unless C{force}.  Removing the leader
        hands leadership to a caught-up voter first.
        """

    def leader_transfer(target, timeout_s):
        """Hand leadership to voter C{target}: a Deferred firing once it leads."""
