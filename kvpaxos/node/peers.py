"""
The peer transport: Paxos messages, forwarded proposals and read-index
requests between nodes, as AMP commands over TCP.

Every node opens one reconnecting link to each peer (L{PeerNetwork}) and
sends only on its own links; it receives on the connections its peers opened
to it (L{PeerNetwork.server_factory}).  A message is encoded by
L{kvpaxos.node.codec}; one that does not fit into one AMP value (65,535
bytes) travels as a stream of L{PaxosChunk}s that the receiver reassembles
per connection (TCP keeps their order).  A forwarded command too large for a
L{Forward} list travels as L{ForwardChunk}s the same way.

Every link starts with a handshake (L{Hello}), before anything else is
taken: the node that opened it says which cluster it belongs to (a cluster
id derived from the cluster token and the initial members, see
L{kvpaxos.config.NodeConfig.cluster_id}), which member it is and the
L{Timing} it runs with; the listener checks the cluster id and that the
member is one of its peers, and answers the same of itself; the opener
checks that the answer names the cluster and the member it meant to reach,
and only then takes the link into use.  A Hello from another cluster, or
from a member the listener does not know, is refused with an AMP error and
the connection is closed.  From then on a message is taken only if its
C{src} is the member the handshake named and its C{dst} is this node;
anything else, and anything before the handshake, is dropped and counted
(L{PeerProtocol.malformed}); a Forward or ReadIndex before the handshake is
refused (L{NotIdentified}).  Both sides report the other's timing to the
node (C{IPeerHandler.peer_timing}).  The handshake tells a misconfigured or
misrouted node from a peer; it is no authentication: anything that can
reach the peer port and knows the cluster id can still pose as a member.

Nothing here decides anything about Paxos: a message is decoded and handed
to the node (an L{IPeerHandler}); Paxos tolerates loss, so a message to a
peer whose link is down (or not yet through its handshake), or whose send
buffer is full, is dropped and counted.  A peer that sends garbage loses
its message or its connection, never this node.
"""

from __future__ import annotations

import itertools
import random
from typing import Callable, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from kvpaxos.node.codec import DecodeError, decode, encode
from kvpaxos.node.interfaces import IPeerTransport, NotLeaderError, Timing

#: The largest piece of one encoded message or command in one AMP value.
CHUNK_BYTES = 60_000
#: The largest total of one Forward list (each command costs 2 bytes more).
FORWARD_LIST_BYTES = 60_000
#: The most one reassembled stream may hold, and the most streams one
#: connection may have open at once; a peer over either is cut off.
STREAM_BYTES_MAX = 64 * 1024 * 1024
STREAMS_MAX = 8
#: The most one AMP box may hold before its sender is cut off.
BOX_BYTES_MAX = 2 * 65_535 + 4_096
#: How much may be queued behind a full TCP send buffer before messages to
#: that peer are dropped.
SEND_BUFFER_BYTES_MAX = 16 * 1024 * 1024
#: The longest error description sent back (a response over AMP's cap would
#: drop the whole connection).
_DESCRIPTION_MAX = 1_000
#: The timing of a node built with the configuration's defaults (what a
#: L{PeerNetwork} reports when it is not told; tests).
DEFAULT_TIMING = Timing(tick_ms=50, election_ticks=10, lease_reads=False)
#: Member ids travel as u32 (L{kvpaxos.node.codec}); 0 is no member.
_MEMBER_MAX = 2**32 - 1
#: Tick counts and lengths in a Hello must fit a positive i32.
_TIMING_MAX = 2**31 - 1
#: How many distinct handshake refusals one network logs; later ones are
#: only counted (a hostile peer must not be able to grow the set forever).
_COMPLAINTS_MAX = 64

_log = Logger()


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


class _NotLeaderOnWire(Exception):
    """NOT_LEADER as it crosses AMP: the description is the leader id or ''."""


class PeerRequestError(Exception):
    """
    The peer failed a Forward or ReadIndex for a reason of its own (not
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


class BadHello(PeerRefused):
    """A Hello out of place (twice, or from the listener) or with bad values."""


class NotIdentified(PeerRefused):
    """A Forward or ReadIndex arrived before the link's handshake."""


_ERRORS = {
    _NotLeaderOnWire: b"NOT_LEADER",
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
]


class Hello(amp.Command):
    """
    The handshake, the first command on every link, sent by the node that
    opened it: its cluster id, its member id and its L{Timing}.  The answer
    says the same of the listener.  A refusal closes the connection.
    """

    arguments = _HELLO_FIELDS
    response = _HELLO_FIELDS
    fatalErrors = {
        WrongCluster: b"WRONG_CLUSTER",
        UnknownMember: b"UNKNOWN_MEMBER",
        BadHello: b"BAD_HELLO",
    }


class Forward(amp.Command):
    """A follower's client commands, for the leader to propose."""

    arguments = [(b"commands", amp.ListOf(amp.String()))]
    response: list = []
    errors = _ERRORS


class ForwardChunk(amp.Command):
    """
    A piece of one forwarded command too large for L{Forward}; the answer to
    the last piece is the answer for the command.
    """

    arguments = _CHUNK_ARGUMENTS
    response: list = []
    errors = _ERRORS


class ReadIndex(amp.Command):
    """Ask the leader for a confirmed read index."""

    arguments: list = []
    response = [(b"index", amp.Integer())]
    errors = _ERRORS


class ChunkError(ValueError):
    """A peer broke the chunk-stream rules (order, size or stream count)."""


class _Streams:
    """Chunk streams being reassembled on one connection."""

    def __init__(self, bytes_max: int, streams_max: int) -> None:
        self._bytes_max = bytes_max
        self._streams_max = streams_max
        self._parts: dict[int, list[bytes]] = {}
        self._bytes = 0

    def add(self, stream: int, index: int, last: bool, data: bytes):
        """
        Add one piece; return the whole once C{last} arrives, else None.
        @raise ChunkError: out of order, too large or too many streams.
        """
        parts = self._parts.get(stream)
        if parts is None:
            if index != 0:
                raise ChunkError(f"stream {stream} starts at piece {index}")
            if len(self._parts) >= self._streams_max:
                raise ChunkError(f"more than {self._streams_max} open streams")
            parts = self._parts[stream] = []
        elif index != len(parts):
            raise ChunkError(f"stream {stream}: piece {index}, not {len(parts)}")
        self._bytes += len(data)
        if self._bytes > self._bytes_max:
            raise ChunkError(f"streams exceed {self._bytes_max} bytes")
        parts.append(data)
        if not last:
            return None
        del self._parts[stream]
        whole = b"".join(parts)
        self._bytes -= len(whole)
        return whole


@implementer(IPushProducer)
class _SendGate:
    """
    Registered with the transport to learn when its send buffer is full;
    while it is, at most C{bytes_max} more are queued.
    """

    def __init__(self, transport, bytes_max: int) -> None:
        self._transport = transport
        self._bytes_max = bytes_max
        self.paused = False
        self._queued = 0

    def admit(self, size: int) -> bool:
        """Return whether C{size} more bytes may be written now."""
        if not self.paused:
            return True
        if self._queued + size > self._bytes_max:
            return False
        self._queued += size
        return True

    def pauseProducing(self) -> None:
        # Called on every write while the buffer is full: count from the first.
        if not self.paused:
            self.paused = True
            self._queued = 0

    def resumeProducing(self) -> None:
        self.paused = False
        # A registered producer keeps a closing transport open: let go.
        if getattr(self._transport, "disconnecting", False):
            self._transport.unregisterProducer()

    def stopProducing(self) -> None:
        self.paused = True


def _not_leader(failure):
    """Turn the wire form of NOT_LEADER into L{NotLeaderError}(leader)."""
    failure.trap(_NotLeaderOnWire)
    hint = str(failure.value)
    leader = int(hint) if hint.isascii() and hint.isdigit() and len(hint) < 20 else None
    raise NotLeaderError(leader)


def _forward_outcome(results, decided) -> None:
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


class _Complaints:
    """
    Which complaints were logged already: each is logged the first time,
    then only counted, and at most C{limit} distinct ones are remembered.
    """

    def __init__(self, limit: int = _COMPLAINTS_MAX) -> None:
        self._limit = limit
        self._seen: set = set()

    def first(self, key) -> bool:
        """Return whether C{key} is new (and remember it, if there is room)."""
        if key in self._seen:
            return False
        if len(self._seen) >= self._limit:
            return False
        self._seen.add(key)
        return True

    def clear(self) -> None:
        """Forget every complaint (the trouble is over: log the next one)."""
        self._seen.clear()


def _timing(tick_ms: int, election_ticks: int, lease_reads: bool) -> Timing:
    """
    Return the L{Timing} a Hello or its answer reports.
    @raise BadHello: a count out of range (the peer misbehaves).
    """
    for name, value in (("tick_ms", tick_ms), ("election_ticks", election_ticks)):
        if not 0 < value <= _TIMING_MAX:
            raise BadHello(f"{name} {value} is out of range")
    return Timing(tick_ms=tick_ms, election_ticks=election_ticks, lease_reads=lease_reads)


class PeerProtocol(amp.AMP):
    """
    One AMP connection between node C{node_id} and a peer.  Incoming
    commands go to C{handler} (an L{IPeerHandler}) once the handshake named
    the peer; L{send_message}, L{forward} and L{read_index} go out, each
    call failing after C{timeout_s} on C{clock}.

    The side that opened the connection passes C{peer_id}, the member it
    means to reach: it says L{Hello} at once and takes the link into use
    (C{on_identified}) only once the answer names C{cluster_id} and
    C{peer_id}.  The listening side passes no C{peer_id}: it takes a Hello
    whose cluster is C{cluster_id} and whose member passes C{is_member} (by
    default: any member but this node), and drops the connection if none
    came within C{timeout_s} on C{clock}.

    @param handler: the node, an L{IPeerHandler}.
    @param node_id: this node's member id; messages addressed to another
        node are dropped.
    @param cluster_id: this node's cluster id (a u64).
    @param timing: this node's L{Timing}, reported to the peer.
    @param peer_id: on the opening side, the member this link is for.
    @param is_member: on the listening side, whether a member id may open
        a link to this node.
    @param complaints: where handshake refusals are logged once (shared by
        the connections of one listener or one link); by default this
        connection's own.
    @param on_made: called with this protocol once connected.
    @param on_identified: called with this protocol once the handshake is
        through (C{peer_id} and C{peer_timing} are set by then).
    @param on_lost: called with this protocol once disconnected.
    """

    def __init__(
        self,
        handler,
        node_id: int,
        *,
        clock=None,
        timeout_s: float = 5.0,
        cluster_id: int = 0,
        timing: Timing = DEFAULT_TIMING,
        peer_id: Optional[int] = None,
        is_member: Optional[Callable[[int], bool]] = None,
        complaints: Optional[_Complaints] = None,
        on_made: Optional[Callable] = None,
        on_identified: Optional[Callable] = None,
        on_lost: Optional[Callable] = None,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.node_id = node_id
        self._clock = clock
        self._timeout_s = timeout_s
        self._cluster_id = cluster_id
        self._timing = timing
        self._expected = peer_id
        self._is_member = is_member
        self._complaints = complaints if complaints is not None else _Complaints()
        self._on_made = on_made
        self._on_identified = on_identified
        self._on_lost = on_lost
        self._stream_ids = itertools.count()
        self._messages = _Streams(STREAM_BYTES_MAX, STREAMS_MAX)
        self._commands = _Streams(STREAM_BYTES_MAX, STREAMS_MAX)
        self._gate: Optional[_SendGate] = None
        self._box_bytes = 0
        self._dropped = False
        self._hello_deadline = None
        # Drops of single messages are logged once per reason per connection.
        self._drops = _Complaints()
        #: The peer's member id, once the handshake named it (else None).
        self.peer_id: Optional[int] = None
        #: The L{Timing} the peer reported in the handshake (else None).
        self.peer_timing: Optional[Timing] = None
        #: Messages and requests from the peer that were dropped or refused
        #: as malformed, misrouted, or sent before the handshake.
        self.malformed = 0

    # --- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        if hasattr(self.transport, "registerProducer"):
            self._gate = _SendGate(self.transport, SEND_BUFFER_BYTES_MAX)
            self.transport.registerProducer(self._gate, True)
        if self._on_made is not None:
            self._on_made(self)
        if self._dropped:
            return
        if self._expected is not None:
            self._say_hello()
        elif self._clock is not None:
            self._hello_deadline = self._clock.callLater(
                self._timeout_s, self.drop, f"no Hello within {self._timeout_s} s"
            )

    def connectionLost(self, reason) -> None:
        self._dropped = True
        self._cancel_hello_deadline()
        super().connectionLost(reason)
        if self._on_lost is not None:
            self._on_lost(self)

    def drop(self, why: str, complaint=None) -> None:
        """
        Close this connection because the peer misbehaved or the handshake
        failed: C{why}.  With a C{complaint} key, C{why} is logged only the
        first time that key comes up (see C{complaints}).
        """
        if self._dropped:
            return
        self._dropped = True
        self.paused = True  # stop parsing what is already buffered
        self._cancel_hello_deadline()
        if complaint is None or self._complaints.first(complaint):
            _log.warn("dropping peer connection {peer}: {why}", peer=self._peer(), why=why)
        if self._gate is not None:
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _peer(self):
        return getattr(self.transport, "getPeer", lambda: None)()

    def _cancel_hello_deadline(self) -> None:
        if self._hello_deadline is not None and self._hello_deadline.active():
            self._hello_deadline.cancel()
        self._hello_deadline = None

    # --- the handshake ----------------------------------------------------------

    def _hello_fields(self) -> dict:
        return dict(
            cluster=self._cluster_id,
            member=self.node_id,
            tick_ms=self._timing.tick_ms,
            election_ticks=self._timing.election_ticks,
            lease_reads=self._timing.lease_reads,
        )

    def _identified(self, peer_id: int, timing: Timing) -> None:
        """The handshake named peer C{peer_id}, running with C{timing}."""
        self._cancel_hello_deadline()
        self.peer_id = peer_id
        self.peer_timing = timing
        if self._expected is not None:
            self._complaints.clear()  # this link's trouble is over
        report = getattr(self.handler, "peer_timing", None)
        if report is not None:
            try:
                report(peer_id, timing)
            except Exception:
                _log.failure("the node failed on the timing of peer {peer}", peer=peer_id)
        if self._on_identified is not None:
            self._on_identified(self)

    def _say_hello(self) -> None:
        """Open the handshake (on the side that opened the connection)."""
        d = self._call(Hello, **self._hello_fields())
        d.addCallbacks(self._hello_answered, self._hello_failed)
        d.addErrback(lambda failure: _log.failure("handshake with {peer}", failure,
                                                  peer=self._expected))

    def _hello_answered(self, answer: dict) -> None:
        if self._dropped:
            return
        expected = self._expected
        if answer["cluster"] != self._cluster_id:
            self.drop(
                f"node {expected}'s address answered for cluster {answer['cluster']:x},"
                f" not this cluster ({self._cluster_id:x}): the nodes' cluster_token or"
                " initial members differ",
                complaint="wrong cluster",
            )
            return
        if answer["member"] != expected:
            self.drop(
                f"node {expected}'s address is served by member {answer['member']}:"
                f" this node's address for peer {expected} is wrong",
                complaint="wrong member",
            )
            return
        try:
            timing = _timing(answer["tick_ms"], answer["election_ticks"], answer["lease_reads"])
        except BadHello as e:
            self.drop(f"node {expected} answered Hello with {e}", complaint="bad hello")
            return
        self._identified(expected, timing)

    def _hello_failed(self, failure) -> None:
        if failure.check(PeerRefused):
            why = f"node {self._expected} refused the link: {failure.getErrorMessage()}"
        else:
            why = f"handshake with node {self._expected} failed: {failure.getErrorMessage()}"
        self.drop(why, complaint=failure.type.__name__)

    @Hello.responder
    def _hello(self, cluster, member, tick_ms, election_ticks, lease_reads):
        if self._expected is not None:
            raise BadHello(
                f"node {self.node_id} opened this link: only the opening side says Hello"
            )
        if self.peer_id is not None:
            raise BadHello(f"a second Hello on the link of node {self.peer_id}")
        try:
            if cluster != self._cluster_id:
                raise WrongCluster(
                    f"cluster id {cluster:x} is not this cluster's ({self._cluster_id:x}):"
                    f" node {member} and node {self.node_id} have a different"
                    " cluster_token or different initial members"
                )
            if member == self.node_id:
                raise UnknownMember(
                    f"member {member} is node {self.node_id} itself: a peer address"
                    " points back at this node"
                )
            known = self._is_member(member) if self._is_member else 0 < member <= _MEMBER_MAX
            if not known:
                raise UnknownMember(f"member {member} is not a peer of node {self.node_id}")
            timing = _timing(tick_ms, election_ticks, lease_reads)
        except PeerRefused as e:
            if self._complaints.first((type(e).__name__, cluster, member)):
                _log.warn("refused a peer link from {peer}: {why}", peer=self._peer(), why=e)
            raise
        self._identified(member, timing)
        return self._hello_fields()

    # --- defences against a hostile peer -------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self._dropped:
            super().dataReceived(data)

    def proto_init(self, string):
        self._box_bytes = 0
        return super().proto_init(string)

    def proto_value(self, string):
        self._box_bytes += len(string) + 257
        if self._box_bytes > BOX_BYTES_MAX:
            self.drop(f"box over {BOX_BYTES_MAX} bytes")
        return super().proto_value(string)

    def ampBoxReceived(self, box) -> None:
        if self._dropped:
            return
        try:
            super().ampBoxReceived(box)
        except Exception as e:
            self.drop(f"malformed box ({e.__class__.__name__}: {e})")

    def unhandledError(self, failure) -> None:
        _log.failure("peer command failed on {peer}", failure, peer=self._peer())
        self.drop("unhandled error")

    # --- receiving ------------------------------------------------------------

    def _refuse(self, reason: str, why: str) -> None:
        """Count a message or request dropped for C{reason}; log C{why} once."""
        self.malformed += 1
        if self._drops.first(reason):
            _log.warn(
                "{why} (from {peer}; further such drops on this connection are only"
                " counted)", why=why, peer=self._peer(),
            )

    def _unidentified(self, what: str) -> bool:
        """Return whether the handshake is still to come (and refuse C{what})."""
        if self.peer_id is not None:
            return False
        self._refuse("before Hello", f"{what} before the handshake dropped")
        return True

    def _deliver(self, data: bytes) -> None:
        try:
            message = decode(data)
        except DecodeError as e:
            self._refuse("malformed", f"malformed message: {e}")
            return
        if message.src != self.peer_id:
            self._refuse(
                "src",
                f"message from node {message.src} on the link of node {self.peer_id} dropped",
            )
            return
        if message.dst != self.node_id:
            self._refuse("dst", f"message for node {message.dst} dropped")
            return
        try:
            self.handler.message_received(message)
        except Exception:
            _log.failure("the node failed on {message!r}", message=message)

    @PaxosMessage.responder
    def _paxos_message(self, data):
        if not self._unidentified("a message"):
            self._deliver(data)
        return {}

    @PaxosChunk.responder
    def _paxos_chunk(self, stream, index, last, data):
        if self._unidentified("a message chunk"):
            return {}
        try:
            whole = self._messages.add(stream, index, last, data)
        except ChunkError as e:
            self.drop(str(e))
            return {}
        if whole is not None:
            self._deliver(whole)
        return {}

    def _answer(self, call: Callable, *args) -> Deferred:
        def wire_error(failure):
            if failure.check(NotLeaderError):
                leader = failure.value.leader
                raise _NotLeaderOnWire("" if leader is None else str(int(leader)))
            _log.failure("peer request failed", failure, peer=self._peer())
            what = f"{failure.type.__name__}: {failure.getErrorMessage()}"
            raise PeerRequestError(what[:_DESCRIPTION_MAX])

        return maybeDeferred(call, *args).addErrback(wire_error)

    def _check_identified(self, what: str) -> None:
        """
        @raise NotIdentified: the handshake is still to come (C{what} is
            refused, and counted).
        """
        if self._unidentified(what):
            raise NotIdentified(f"{what} before the handshake: say Hello first")

    @Forward.responder
    def _forward(self, commands):
        self._check_identified("Forward")
        return self._answer(self.handler.proposals_forwarded, commands).addCallback(
            lambda _: {}
        )

    @ForwardChunk.responder
    def _forward_chunk(self, stream, index, last, data):
        self._check_identified("ForwardChunk")
        try:
            whole = self._commands.add(stream, index, last, data)
        except ChunkError as e:
            self.drop(str(e))
            raise PeerRequestError(str(e))
        if whole is None:
            return {}
        return self._answer(self.handler.proposals_forwarded, [whole]).addCallback(
            lambda _: {}
        )

    @ReadIndex.responder
    def _read_index(self):
        self._check_identified("ReadIndex")
        return self._answer(self.handler.read_index_requested).addCallback(
            lambda index: {"index": index}
        )

    # --- sending --------------------------------------------------------------

    def send_message(self, data: bytes) -> bool:
        """
        Send one encoded message; return False if it was dropped because the
        connection is closing or its send buffer is full.
        """
        if self._dropped:
            return False
        if self._gate is not None and not self._gate.admit(len(data)):
            return False
        try:
            if len(data) <= CHUNK_BYTES:
                self.callRemote(PaxosMessage, data=data)
            else:
                for piece in self._chunks(data):
                    self.callRemote(PaxosChunk, **piece)
        except (amp.ConnectionLost, amp.ProtocolSwitched):
            return False
        return True

    def _chunks(self, data: bytes) -> list[dict]:
        """Return the arguments of the chunks that carry C{data}, in order."""
        stream = next(self._stream_ids)
        last = (len(data) - 1) // CHUNK_BYTES
        return [
            dict(
                stream=stream,
                index=index,
                last=index == last,
                data=data[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES],
            )
            for index in range(last + 1)
        ]

    def _call(self, command, **arguments) -> Deferred:
        try:
            d = self.callRemote(command, **arguments)
        except Exception:
            return fail()
        if self._clock is not None:
            d.addTimeout(self._timeout_s, self._clock)
        return d.addErrback(_not_leader)

    def forward(self, commands: list[bytes]) -> Deferred:
        """
        Forward C{commands} to the peer to propose, in order, in as many
        calls as AMP's value cap requires.  The Deferred fires with None once
        the peer took all of them, or fails with L{ForwardFailed}, which says
        which commands were certainly not proposed (their call was answered
        NOT_LEADER) and which may have been.
        """
        for command in commands:
            if type(command) is not bytes:
                name = type(command).__name__
                raise TypeError(f"a command must be bytes, not {name}")
        # Each call with the commands whose fate it decides (for a chunked
        # command, the last chunk's call: the peer proposes it only then).
        calls: list[tuple[Deferred, list[bytes]]] = []
        group: list[bytes] = []
        size = 0
        for command in commands:
            if len(command) + 2 > FORWARD_LIST_BYTES:
                if group:
                    calls.append((self._call(Forward, commands=group), group))
                    group, size = [], 0
                chunks = list(self._chunks(command))
                for n, chunk in enumerate(chunks, 1):
                    decides = [command] if n == len(chunks) else []
                    calls.append((self._call(ForwardChunk, **chunk), decides))
                continue
            if size + len(command) + 2 > FORWARD_LIST_BYTES:
                calls.append((self._call(Forward, commands=group), group))
                group, size = [], 0
            group.append(command)
            size += len(command) + 2
        if group:
            calls.append((self._call(Forward, commands=group), group))
        if not calls:
            return succeed(None)
        outcomes = DeferredList([d for d, _ in calls], consumeErrors=True)
        return outcomes.addCallback(_forward_outcome, [decided for _, decided in calls])

    def read_index(self) -> Deferred:
        """
        Ask the peer for a confirmed read index: a Deferred firing with it,
        or failing as L{forward} does.
        """

        def check(response):
            index = response["index"]
            if index < 0:
                raise PeerRequestError(f"peer answered read index {index}")
            return index

        return self._call(ReadIndex).addCallback(check)


class _Link:
    """
    One peer's reconnecting outgoing link: its current connection
    (C{connection}, from connect to loss) and, once that connection is
    through its handshake, the same as C{protocol}: the one messages go out
    on.
    """

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.service: Optional[ClientService] = None
        self.connection: Optional[PeerProtocol] = None
        self.protocol: Optional[PeerProtocol] = None
        #: The link's handshake failures, each logged once until it is up.
        self.complaints = _Complaints()


@implementer(IPeerTransport)
class PeerNetwork(MultiService):
    """
    This node's links to its peers: one L{ClientService} per peer,
    reconnecting with a backoff capped at C{retry_delay_max_s}, and the
    factory its peer listener builds connections with.  A link is up (and
    L{send} uses it) only once its handshake named C{cluster_id} and the
    peer it is for.

    @param node_id: this node's id.
    @param peers: node id -> (host, port) of each peer (this node's own entry,
        if present, is ignored).  Only these may open links to this node.
    @param handler: the node, an L{IPeerHandler}.
    @param reactor: the reactor links connect and time out with.
    @param cluster_id: this node's cluster id
        (L{kvpaxos.config.NodeConfig.cluster_id}); a peer of another is
        refused.
    @param timing: the L{Timing} this node runs with, reported to peers.
    @param timeout_s: how long L{forward} and L{read_index} wait, and how
        long a handshake may take.
    @param retry_delay_max_s: the longest wait between connection attempts,
        before a jitter of up to a tenth of it drawn from C{rng}.
    @param endpoint_for: (reactor, host, port) -> client endpoint; by default
        TCP (IPv6 when the host has a colon).
    """

    def __init__(
        self,
        node_id: int,
        peers: dict[int, tuple[str, int]],
        handler,
        reactor,
        *,
        cluster_id: int = 0,
        timing: Timing = DEFAULT_TIMING,
        timeout_s: float = 5.0,
        retry_delay_max_s: float = 1.0,
        endpoint_for: Optional[Callable] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        super().__init__()
        self.node_id = node_id
        self.handler = handler
        self.cluster_id = cluster_id
        self.timing = timing
        self._reactor = reactor
        self._timeout_s = timeout_s
        rng = rng or random.Random()
        self._retry_policy = backoffPolicy(
            initialDelay=0.1,
            maxDelay=retry_delay_max_s,
            jitter=lambda: rng.random() * retry_delay_max_s / 10,
        )
        self._endpoint_for = endpoint_for or _tcp_endpoint
        self._links: dict[int, _Link] = {}
        # Refusals of links peers open to this node, each logged once.
        self._refusals = _Complaints()
        #: Messages dropped because their peer's link was down or full.
        self.dropped_messages = 0
        self.set_peers(peers)

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        """
        Make the links match C{peers}: open links to new peers, close links
        to peers no longer listed, and reopen a link whose address changed.
        From then on only the listed peers may open links to this node
        (links they opened before stay open).
        """
        wanted = {i: tuple(a) for i, a in peers.items() if i != self.node_id}
        for peer_id in sorted(self._links):
            if wanted.get(peer_id) != self._links[peer_id].address:
                link = self._links.pop(peer_id)
                _abort(link)
                self.removeService(link.service)
        for peer_id in sorted(wanted):
            if peer_id not in self._links:
                self._open(peer_id, wanted[peer_id])

    def _open(self, peer_id: int, address: tuple[str, int]) -> None:
        link = self._links[peer_id] = _Link(address)

        def made(protocol):
            if self._links.get(peer_id) is link:
                link.connection = protocol
            else:
                protocol.transport.abortConnection()

        def identified(protocol):
            if link.connection is protocol:
                link.protocol = protocol
                _log.info("link to peer {peer} up", peer=peer_id)

        def lost(protocol):
            if link.connection is protocol:
                link.connection = None
            if link.protocol is protocol:
                link.protocol = None
                _log.info("link to peer {peer} down", peer=peer_id)

        factory = self._factory(
            peer_id=peer_id,
            complaints=link.complaints,
            on_made=made,
            on_identified=identified,
            on_lost=lost,
        )
        host, port = address
        endpoint = self._endpoint_for(self._reactor, host, port)
        link.service = ClientService(
            endpoint, factory, retryPolicy=self._retry_policy, clock=self._reactor
        )
        link.service.setName(f"peer-{peer_id}")
        link.service.setServiceParent(self)

    def stopService(self):
        """
        Close every link at once, discarding what is still buffered for a
        peer (a stalled peer would otherwise hold the shutdown forever).
        """
        for peer_id in sorted(self._links):
            _abort(self._links[peer_id])
        return super().stopService()

    def server_factory(self) -> Factory:
        """Return the factory this node listens with for its peers' links."""
        return self._factory(is_member=self._links.__contains__, complaints=self._refusals)

    def _factory(self, **side) -> Factory:
        """A factory of this node's L{PeerProtocol}s, with C{side}'s own arguments."""
        return Factory.forProtocol(
            lambda: PeerProtocol(
                self.handler,
                self.node_id,
                clock=self._reactor,
                timeout_s=self._timeout_s,
                cluster_id=self.cluster_id,
                timing=self.timing,
                **side,
            )
        )

    def connected(self) -> list[int]:
        """Return the ids of the peers whose link is up (through its handshake), in order."""
        return sorted(i for i, link in self._links.items() if link.protocol)

    def _protocol(self, peer_id: int) -> Optional[PeerProtocol]:
        link = self._links.get(peer_id)
        return None if link is None else link.protocol

    def send(self, message) -> None:
        """
        Send C{message} to C{message.dst} on its link, or drop it (counted
        in L{dropped_messages}) if the link is down, not through its
        handshake yet, or its buffer is full.
        @raise TypeError, ValueError: C{message} cannot be encoded.
        """
        protocol = self._protocol(message.dst)
        if protocol is None or not protocol.send_message(encode(message)):
            self.dropped_messages += 1

    def forward(self, node_id: int, commands: list[bytes]) -> Deferred:
        """
        Forward C{commands} to node C{node_id} (the leader) to propose; see
        L{PeerProtocol.forward}.  Fails with L{PeerUnreachable} if there is
        no link to it.
        """
        protocol = self._protocol(node_id)
        if protocol is None:
            return fail(PeerUnreachable(f"no link to node {node_id}"))
        return protocol.forward(commands)

    def read_index(self, node_id: int) -> Deferred:
        """
        Ask node C{node_id} (the leader) for a read index; see
        L{PeerProtocol.read_index}.  Fails with L{PeerUnreachable} if there
        is no link to it.
        """
        protocol = self._protocol(node_id)
        if protocol is None:
            return fail(PeerUnreachable(f"no link to node {node_id}"))
        return protocol.read_index()


def _abort(link: _Link) -> None:
    protocol = link.connection
    if protocol is not None and protocol.transport is not None:
        protocol.transport.abortConnection()


def _tcp_endpoint(reactor, host: str, port: int):
    if ":" in host:
        return TCP6ClientEndpoint(reactor, host, port, timeout=5)
    return TCP4ClientEndpoint(reactor, host, port, timeout=5)
