"""
What travels on a peer link: the AMP commands (L{PaxosMessage},
L{PaxosChunk}, L{SnapshotStream}, L{Hello}, L{Forward}, L{ForwardChunk}, L{ReadIndex},
L{LeaseKeepAlive}, L{LeaseTimeToLive}), their
argument lists, the errors that cross with them, the size limits, and how a
call's answer is read back (L{not_leader}, L{forward_outcome},
L{hello_timing}).

A Paxos message is encoded by L{kvpaxos.encoding.messages}; these commands
carry the bytes.  No connection, timer or node state lives here: the
protocol is L{kvpaxos.node.peer_protocol}, the links
L{kvpaxos.node.peers}.
"""

from __future__ import annotations

from twisted.protocols import amp

from kvpaxos.node.interfaces import MembershipRejected, NotLeaderError, Timing, Unavailable

#: The largest piece of one encoded message or command in one AMP value.
CHUNK_BYTES = 60_000
#: The largest total of one Forward list (each command costs 2 bytes more).
FORWARD_LIST_BYTES = 60_000
#: The defaults of a peer port's limits (issue 13, part 6; the TOML keys
#: peer_connections_max and peer_buffer_bytes): connections open at once,
#: and bytes of partial messages one connection may hold (half for
#: messages, half for forwarded commands; the largest of either is under
#: 3 MiB: a Txn of 2 MiB and its framing).
PEER_CONNECTIONS_MAX = 64
PEER_BUFFER_BYTES = 16 * 1024 * 1024
#: The least peer_buffer_bytes may be.
PEER_BUFFER_BYTES_MIN = 8 * 1024 * 1024
#: The most partial messages one connection may have open at once; a peer
#: over it, or over its buffer, is cut off.
STREAMS_MAX = 8
#: The most one AMP box may hold before its sender is cut off.
BOX_BYTES_MAX = 2 * 65_535 + 4_096
#: How much may be queued behind a full TCP send buffer before messages to
#: that peer are dropped.
SEND_BUFFER_BYTES_MAX = 16 * 1024 * 1024
#: The longest error description sent back (a response over AMP's cap would
#: drop the whole connection).
DESCRIPTION_MAX = 1_000
#: The timing of a node built with the configuration's defaults (what a
#: L{PeerNetwork} reports when it is not told; tests).
DEFAULT_TIMING = Timing(tick_ms=50, election_ticks=10, lease_reads=False)
#: Member ids travel as u32 (L{kvpaxos.encoding.values}); 0 is no member.
MEMBER_MAX = 2**32 - 1
#: Tick counts and lengths in a Hello must fit a positive i32.
_TIMING_MAX = 2**31 - 1


class PaxosMessage(amp.Command):
    """One encoded Paxos message of at most L{CHUNK_BYTES}."""

    arguments = [(b"data", amp.String())]
    requiresAnswer = False


#: Piece C{index} of stream C{stream}, numbered per connection by its
#: sender; C{last} completes the stream.
_CHUNK_ARGUMENTS = [
    (b"stream", amp.Integer()),
    (b"index", amp.Integer()),
    (b"last", amp.Boolean()),
    (b"data", amp.String()),
]


class PaxosChunk(amp.Command):
    """A piece of one encoded message larger than L{CHUNK_BYTES}."""

    arguments = _CHUNK_ARGUMENTS
    requiresAnswer = False


class SnapshotStream(amp.Command):
    """
    One snapshot transfer message (L{kvpaxos.encoding.transfer}), at most
    L{kvpaxos.encoding.transfer.MESSAGE_BYTES_MAX}: one AMP value.
    """

    arguments = [(b"data", amp.String())]
    requiresAnswer = False


class NotLeaderOnWire(Exception):
    """NOT_LEADER as it crosses AMP: the description is the leader id or ''."""


class PeerRequestError(Exception):
    """
    The peer failed a Forward, ReadIndex or lease call for a reason of its own (not
    NOT_LEADER); the description says what it was.
    """


class PeerUnreachable(ConnectionError):
    """There is no link to the peer now (down, connecting, or not a peer)."""


class ForwardFailed(Exception):
    """
    Some calls of a L{PeerProtocol.forward} failed.  C{refused}: commands
    the peer certainly did not propose (it answered NOT_LEADER, which it does
    before proposing anything of a call, or NOT_IDENTIFIED, which it answers
    before looking at the call), safe to send again; C{unknown}:
    commands whose call failed otherwise (connection lost, timeout) and that
    may have been proposed: sending them again could apply them twice.
    C{cause} is the first failure.
    """

    def __init__(self, refused: list, unknown: list, cause) -> None:
        super().__init__(
            f"forward failed ({len(refused)} refused, {len(unknown)} unknown):"
            f" {cause.getErrorMessage()}"
        )
        self.refused = refused
        self.unknown = unknown
        self.cause = cause


class PeerRefused(Exception):
    """
    A peer link's handshake (L{Hello}) failed, or a request came before it.
    The subclass says why and the message says whose fault it is: the
    operators' configuration (another cluster, an address that reaches
    another member) or a peer that breaks the protocol.
    """


class WrongCluster(PeerRefused):
    """
    The other side belongs to another cluster: the two nodes were started
    with a different C{cluster_token} or different initial members.
    """


class UnknownMember(PeerRefused):
    """
    The other side is not the member expected: the listener does not list
    it among its peers (or it is the listener itself), or the opener reached
    another member than the one its peer address is for.
    """


class RemovedMember(UnknownMember):
    """
    The other side was a member, and its removal is chosen in the
    listener's log: it takes no part any more (it stops when told).
    """


class BadHello(PeerRefused):
    """A Hello out of place (twice, or from the listener) or with bad values."""


class NotIdentified(PeerRefused):
    """A Forward or ReadIndex arrived before the link's handshake."""


REQUEST_ERRORS = {
    NotLeaderOnWire: b"NOT_LEADER",
    PeerRequestError: b"PEER_ERROR",
    NotIdentified: b"NOT_IDENTIFIED",
}

#: What a Hello says of its sender, and its answer of the listener.
_HELLO_FIELDS = [
    (b"cluster", amp.Integer()),
    (b"member", amp.Integer()),
    (b"tick_ms", amp.Integer()),
    (b"election_ticks", amp.Integer()),
    (b"lease_reads", amp.Boolean()),
    # Issue 11: where the sender is reached (its peer listener and its gRPC
    # server, host:port, or "" if not known); optional for older peers.
    (b"peer_address", amp.Unicode(optional=True)),
    (b"client_address", amp.Unicode(optional=True)),
]


class Hello(amp.Command):
    """
    The handshake, the first command on every link, sent by the node that
    opened it: its cluster id, its member id, its L{Timing} and its
    addresses.  The answer
    says the same of the listener.  A refusal closes the connection.
    """

    arguments = _HELLO_FIELDS
    response = _HELLO_FIELDS
    fatalErrors = {
        WrongCluster: b"WRONG_CLUSTER",
        RemovedMember: b"REMOVED_MEMBER",
        UnknownMember: b"UNKNOWN_MEMBER",
        BadHello: b"BAD_HELLO",
    }


class Forward(amp.Command):
    """A follower's client commands, for the leader to propose."""

    arguments = [(b"commands", amp.ListOf(amp.String()))]
    response: list = []
    errors = REQUEST_ERRORS


class ForwardChunk(amp.Command):
    """
    A piece of one forwarded command too large for L{Forward}; the answer to
    the last piece is the answer for the command.
    """

    arguments = _CHUNK_ARGUMENTS
    response: list = []
    errors = REQUEST_ERRORS


class ReadIndex(amp.Command):
    """Ask the leader for a confirmed read index."""

    arguments: list = []
    response = [(b"index", amp.Integer())]
    errors = REQUEST_ERRORS


class LeaseKeepAlive(amp.Command):
    """
    A follower carries a client's keep-alive of lease C{lease} to the
    leader (issue 14); the leader answers, once it confirmed it leads,
    with the lease's TTL in seconds (0: no such lease, or it ran out).
    """

    arguments = [(b"lease", amp.Integer())]
    response = [(b"ttl", amp.Integer())]
    errors = REQUEST_ERRORS


class LeaseTimeToLive(amp.Command):
    """
    A follower asks the leader how long lease C{lease} has to live (issue
    14): its granted TTL and the whole seconds left as the leader counts
    them (both -1: no such lease).
    """

    arguments = [(b"lease", amp.Integer())]
    response = [(b"granted_ttl", amp.Integer()), (b"remaining_s", amp.Integer())]
    errors = REQUEST_ERRORS


class ChunkError(ValueError):
    """A peer broke the chunk-stream rules (order, size or stream count)."""


def not_leader(failure):
    """Turn the wire form of NOT_LEADER into L{NotLeaderError}(leader)."""
    failure.trap(NotLeaderOnWire)
    hint = str(failure.value)
    leader = int(hint) if hint.isascii() and hint.isdigit() and len(hint) < 20 else None
    raise NotLeaderError(leader)


def forward_outcome(results, decided) -> None:
    """Sort a forward's commands by what their calls' outcomes say of them."""
    refused: list[bytes] = []
    unknown: list[bytes] = []
    cause = None
    for (ok, outcome), commands in zip(results, decided):
        if ok:
            continue
        cause = cause or outcome
        certain = outcome.check(NotLeaderError, NotIdentified)
        (refused if certain else unknown).extend(commands)
    if cause is not None:
        raise ForwardFailed(refused, unknown, cause)


def hello_timing(tick_ms: int, election_ticks: int, lease_reads: bool) -> Timing:
    """
    Return the L{Timing} a Hello or its answer reports.
    @raise BadHello: a count out of range (the peer misbehaves).
    """
    for name, value in (("tick_ms", tick_ms), ("election_ticks", election_ticks)):
        if not 0 < value <= _TIMING_MAX:
            raise BadHello(f"{name} {value} is out of range")
    return Timing(tick_ms=tick_ms, election_ticks=election_ticks, lease_reads=lease_reads)


# --- membership (issue 11): carried changes and joining -----------------------
#
# A membership change sent to a follower is carried to the leader
# (L{MemberChange}), answered once chosen; a node that is not yet a member
# asks to be added (L{Join}) before any Hello, on a connection of its own.
# The errors cross as the admin port's do: REJECTED (wrong, nothing changed),
# UNAVAILABLE (not chosen in time, may be retried), NOT_LEADER (certainly
# not proposed: the node does not lead).

#: The kinds a L{MemberChange} carries: the L{kvpaxos.paxos.ChangeKind}
#: values an operator may ask for, and a leader transfer.
MEMBER_CHANGE_KINDS = ("add-learner", "promote", "remove", "transfer")

MEMBER_ERRORS = {
    NotLeaderOnWire: b"NOT_LEADER",
    MembershipRejected: b"REJECTED",
    Unavailable: b"UNAVAILABLE",
    PeerRequestError: b"PEER_ERROR",
    NotIdentified: b"NOT_IDENTIFIED",
}


class MemberChange(amp.Command):
    """
    A follower carries an operator's membership change (or leader transfer)
    to the leader: C{kind} is one of L{MEMBER_CHANGE_KINDS}; the leader
    answers once it is chosen, within C{timeout_ms}, with the slot it was
    chosen in (0 for a transfer: answered once the target leads).
    """

    arguments = [
        (b"kind", amp.Unicode()),
        (b"node", amp.Integer()),
        (b"peer", amp.Unicode()),
        (b"client", amp.Unicode()),
        (b"force", amp.Boolean()),
        (b"timeout_ms", amp.Integer()),
    ]
    response = [(b"slot", amp.Integer())]
    errors = MEMBER_ERRORS


class Join(amp.Command):
    """
    A node that is not yet a member asks to be added as a learner with its
    addresses: taken before (and instead of) a Hello, only if C{cluster} is
    the listener's cluster id; carried to the leader and answered once the
    change is chosen (at once if the node is already a member at C{peer}).
    """

    arguments = [
        (b"cluster", amp.Integer()),
        (b"member", amp.Integer()),
        (b"peer", amp.Unicode()),
        (b"client", amp.Unicode()),
        (b"timeout_ms", amp.Integer()),
    ]
    response: list = []
    errors = {**MEMBER_ERRORS, WrongCluster: b"WRONG_CLUSTER"}
