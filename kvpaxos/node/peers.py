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

Nothing here decides anything about Paxos: a message is decoded and handed
to the node (an L{IPeerHandler}); Paxos tolerates loss, so a message to a
peer whose link is down, or whose send buffer is full, is dropped and
counted.  A peer that sends garbage loses its message or its connection,
never this node.
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
from kvpaxos.node.interfaces import NotLeaderError

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
    before proposing anything of a call), safe to send again; C{unknown}:
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


_ERRORS = {_NotLeaderOnWire: b"NOT_LEADER", PeerRequestError: b"PEER_ERROR"}


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
        (refused if outcome.check(NotLeaderError) else unknown).extend(commands)
    if cause is not None:
        raise ForwardFailed(refused, unknown, cause)


class PeerProtocol(amp.AMP):
    """
    One AMP connection between two nodes.  Incoming commands go to
    C{handler} (an L{IPeerHandler}); L{send_message}, L{forward} and
    L{read_index} go out, each call failing after C{timeout_s} on C{clock}.

    @param node_id: if given, messages addressed to another node are dropped.
    @param on_made: called with this protocol once connected.
    @param on_lost: called with this protocol once disconnected.
    """

    def __init__(
        self,
        handler,
        clock=None,
        node_id: Optional[int] = None,
        timeout_s: float = 5.0,
        on_made: Optional[Callable] = None,
        on_lost: Optional[Callable] = None,
    ) -> None:
        super().__init__()
        self.handler = handler
        self._clock = clock
        self._node_id = node_id
        self._timeout_s = timeout_s
        self._on_made = on_made
        self._on_lost = on_lost
        self._stream_ids = itertools.count()
        self._messages = _Streams(STREAM_BYTES_MAX, STREAMS_MAX)
        self._commands = _Streams(STREAM_BYTES_MAX, STREAMS_MAX)
        self._gate: Optional[_SendGate] = None
        self._box_bytes = 0
        self._dropped = False
        #: Messages from the peer that were dropped as malformed or misrouted.
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

    def connectionLost(self, reason) -> None:
        self._dropped = True
        super().connectionLost(reason)
        if self._on_lost is not None:
            self._on_lost(self)

    def drop(self, why: str) -> None:
        """Close this connection because the peer misbehaved: C{why}."""
        if self._dropped:
            return
        self._dropped = True
        self.paused = True  # stop parsing what is already buffered
        _log.warn("dropping peer connection {peer}: {why}", peer=self._peer(), why=why)
        if self._gate is not None:
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _peer(self):
        return getattr(self.transport, "getPeer", lambda: None)()

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

    def _deliver(self, data: bytes) -> None:
        try:
            message = decode(data)
        except DecodeError as e:
            self.malformed += 1
            _log.warn("malformed message from {peer}: {e}", peer=self._peer(), e=e)
            return
        if self._node_id is not None and message.dst != self._node_id:
            self.malformed += 1
            _log.warn("message for node {dst} dropped", dst=message.dst)
            return
        try:
            self.handler.message_received(message)
        except Exception:
            _log.failure("the node failed on {message!r}", message=message)

    @PaxosMessage.responder
    def _paxos_message(self, data):
        self._deliver(data)
        return {}

    @PaxosChunk.responder
    def _paxos_chunk(self, stream, index, last, data):
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

    @Forward.responder
    def _forward(self, commands):
        return self._answer(self.handler.proposals_forwarded, commands).addCallback(
            lambda _: {}
        )

    @ForwardChunk.responder
    def _forward_chunk(self, stream, index, last, data):
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
    """One peer's reconnecting outgoing link and its live connection."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.service: Optional[ClientService] = None
        self.protocol: Optional[PeerProtocol] = None


class PeerNetwork(MultiService):
    """
    This node's links to its peers: one L{ClientService} per peer,
    reconnecting with a backoff capped at C{retry_delay_max_s}.

    @param node_id: this node's id.
    @param peers: node id -> (host, port) of each peer (this node's own entry,
        if present, is ignored).
    @param handler: the node, an L{IPeerHandler}.
    @param reactor: the reactor links connect and time out with.
    @param timeout_s: how long L{forward} and L{read_index} wait.
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
        timeout_s: float = 5.0,
        retry_delay_max_s: float = 1.0,
        endpoint_for: Optional[Callable] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        super().__init__()
        self.node_id = node_id
        self.handler = handler
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
        #: Messages dropped because their peer's link was down or full.
        self.dropped_messages = 0
        self.set_peers(peers)

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        """
        Make the links match C{peers}: open links to new peers, close links
        to peers no longer listed, and reopen a link whose address changed.
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
                link.protocol = protocol
                _log.info("link to peer {peer} up", peer=peer_id)
            else:
                protocol.transport.abortConnection()

        def lost(protocol):
            if link.protocol is protocol:
                link.protocol = None
                _log.info("link to peer {peer} down", peer=peer_id)

        factory = Factory.forProtocol(
            lambda: PeerProtocol(
                self.handler,
                self._reactor,
                timeout_s=self._timeout_s,
                on_made=made,
                on_lost=lost,
            )
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
        return Factory.forProtocol(
            lambda: PeerProtocol(
                self.handler, self._reactor, self.node_id, self._timeout_s
            )
        )

    def connected(self) -> list[int]:
        """Return the ids of the peers whose link is up, in order."""
        return sorted(i for i, link in self._links.items() if link.protocol)

    def _protocol(self, peer_id: int) -> Optional[PeerProtocol]:
        link = self._links.get(peer_id)
        return None if link is None else link.protocol

    def send(self, message) -> None:
        """
        Send C{message} to C{message.dst} on its link, or drop it (counted
        in L{dropped_messages}) if the link is down or its buffer is full.
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
    protocol = link.protocol
    if protocol is not None and protocol.transport is not None:
        protocol.transport.abortConnection()


def _tcp_endpoint(reactor, host: str, port: int):
    if ":" in host:
        return TCP6ClientEndpoint(reactor, host, port, timeout=5)
    return TCP4ClientEndpoint(reactor, host, port, timeout=5)
