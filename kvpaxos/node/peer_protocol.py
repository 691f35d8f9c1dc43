"""
L{PeerProtocol}: one AMP connection between this node and a peer, either
side: the handshake (L{kvpaxos.node.peer_commands.Hello}), the responders
that hand decoded messages and forwarded commands to the node, and the
calls that send messages, forward commands and ask for a read index.  The
rules it enforces are written in L{kvpaxos.node.peers}; the commands it
speaks are L{kvpaxos.node.peer_commands}.

Reconnecting, and which connection carries which peer's traffic, is
L{kvpaxos.node.peers.PeerNetwork}'s, not this module's.
"""

from __future__ import annotations

import itertools
from typing import Callable, Optional

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.protocols import amp

from kvpaxos.encoding.errors import MalformedMessage
from kvpaxos.encoding.messages import decode
from kvpaxos.encoding.transfer import decode as decode_transfer
from kvpaxos.node.interfaces import NotLeaderError, Timing
from kvpaxos.node.peer_commands import (
    BOX_BYTES_MAX,
    CHUNK_BYTES,
    DEFAULT_TIMING,
    DESCRIPTION_MAX,
    MEMBER_MAX,
    SEND_BUFFER_BYTES_MAX,
    PEER_BUFFER_BYTES,
    STREAMS_MAX,
    BadHello,
    ChunkError,
    Hello,
    NotIdentified,
    NotLeaderOnWire,
    PaxosChunk,
    PaxosMessage,
    PeerRefused,
    PeerRequestError,
    RemovedMember,
    SnapshotStream,
    UnknownMember,
    WrongCluster,
    hello_timing,
    not_leader,
)
from kvpaxos.node.peer_flow import ChunkStreams, Complaints, SendGate, chunks
from kvpaxos.node.peer_members import MembershipCalls
from kvpaxos.node.peer_requests import RequestCalls
from kvpaxos.tls import handshake_failure

_log = Logger()


class PeerProtocol(RequestCalls, MembershipCalls, amp.AMP):
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
    @param addresses: (peer, client) addresses this node reports in its
        Hello and its answer (issue 11).
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
        complaints: Optional[Complaints] = None,
        on_made: Optional[Callable] = None,
        on_identified: Optional[Callable] = None,
        on_lost: Optional[Callable] = None,
        addresses: tuple[str, str] = ("", ""),
        buffer_bytes: Optional[int] = None,
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
        self._complaints = complaints if complaints is not None else Complaints()
        self._on_made = on_made
        self._on_identified = on_identified
        self._on_lost = on_lost
        self._addresses = addresses
        self._stream_ids = itertools.count()
        # The bytes of partial messages this connection may hold: half for
        # messages, half for forwarded commands (None: PEER_BUFFER_BYTES).
        buffer_bytes = buffer_bytes or PEER_BUFFER_BYTES
        self._messages = ChunkStreams(buffer_bytes // 2, STREAMS_MAX)
        self._commands = ChunkStreams(buffer_bytes // 2, STREAMS_MAX)
        self._gate: Optional[SendGate] = None
        self._box_bytes = 0
        self._dropped = False
        self._hello_deadline = None
        # Drops of single messages are logged once per reason per connection.
        self._drops = Complaints()
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
            self._gate = SendGate(self.transport, SEND_BUFFER_BYTES_MAX)
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
        tls = handshake_failure(reason.value)
        if tls is not None and self._complaints.first(("tls", tls)):
            _log.warn("peer connection {peer} failed its TLS handshake: {why}", peer=self._peer(), why=tls)
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
        fields = dict(
            cluster=self._cluster_id,
            member=self.node_id,
            tick_ms=self._timing.tick_ms,
            election_ticks=self._timing.election_ticks,
            lease_reads=self._timing.lease_reads,
        )
        for key, address in zip(("peer_address", "client_address"), self._addresses):
            if address:
                fields[key] = address
        return fields

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
            timing = hello_timing(answer["tick_ms"], answer["election_ticks"], answer["lease_reads"])
        except BadHello as e:
            self.drop(f"node {expected} answered Hello with {e}", complaint="bad hello")
            return
        self._identified(expected, timing)

    def _hello_failed(self, failure) -> None:
        told = getattr(self.handler, "removed_by_peer", None)
        if failure.check(RemovedMember) and told is not None:
            # The member set this node missed the end of: it was removed.
            told(self._expected, failure.getErrorMessage())
        if failure.check(PeerRefused):
            why = f"node {self._expected} refused the link: {failure.getErrorMessage()}"
        else:
            why = f"handshake with node {self._expected} failed: {failure.getErrorMessage()}"
        self.drop(why, complaint=failure.type.__name__)

    @Hello.responder
    def _hello(self, cluster, member, tick_ms, election_ticks, lease_reads,
               peer_address=None, client_address=None):
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
            known = self._is_member(member) if self._is_member else 0 < member <= MEMBER_MAX
            if not known:
                was_removed = getattr(self.handler, "was_removed", None)
                if was_removed is not None and was_removed(member):
                    raise RemovedMember(
                        f"member {member} was removed from the cluster (its removal is"
                        f" chosen in node {self.node_id}'s log)"
                    )
                raise UnknownMember(f"member {member} is not a peer of node {self.node_id}")
            timing = hello_timing(tick_ms, election_ticks, lease_reads)
        except PeerRefused as e:
            if self._complaints.first((type(e).__name__, cluster, member)):
                _log.warn("refused a peer link from {peer}: {why}", peer=self._peer(), why=e)
            raise
        self._identified(member, timing)
        report = getattr(self.handler, "peer_addresses_reported", None)
        if report is not None and (peer_address or client_address):
            try:
                report(member, peer_address or "", client_address or "")
            except Exception:
                _log.failure("the node failed on the addresses of peer {peer}", peer=member)
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

    def _deliver(self, data: bytes, stream: bool = False) -> None:
        # A Paxos message (to the core), or a snapshot transfer's (stream).
        try:
            message = decode_transfer(data) if stream else decode(data)
        except MalformedMessage as e:
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
            if stream:
                self.handler.snapshot_stream_received(message)
            else:
                self.handler.message_received(message)
        except Exception:
            _log.failure("the node failed on {message!r}", message=message)

    @PaxosMessage.responder
    def _paxos_message(self, data):
        if not self._unidentified("a message"):
            self._deliver(data)
        return {}

    @SnapshotStream.responder
    def _snapshot_stream(self, data):
        if not self._unidentified("a snapshot transfer message"):
            self._deliver(data, stream=True)
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
                raise NotLeaderOnWire("" if leader is None else str(int(leader)))
            _log.failure("peer request failed", failure, peer=self._peer())
            what = f"{failure.type.__name__}: {failure.getErrorMessage()}"
            raise PeerRequestError(what[:DESCRIPTION_MAX])

        return maybeDeferred(call, *args).addErrback(wire_error)

    def _check_identified(self, what: str) -> None:
        """
        @raise NotIdentified: the handshake is still to come (C{what} is
            refused, and counted).
        """
        if self._unidentified(what):
            raise NotIdentified(f"{what} before the handshake: say Hello first")

    # --- sending --------------------------------------------------------------

    def send_message(self, data: bytes, stream: bool = False) -> bool:
        """
        Send one encoded message (a snapshot transfer's if C{stream}, in one
        AMP value); return False if it was dropped because the connection
        is closing or its send buffer is full.
        """
        if self._dropped:
            return False
        if self._gate is not None and not self._gate.admit(len(data)):
            return False
        try:
            if stream:
                self.callRemote(SnapshotStream, data=data)
            elif len(data) <= CHUNK_BYTES:
                self.callRemote(PaxosMessage, data=data)
            else:
                for piece in chunks(data, next(self._stream_ids)):
                    self.callRemote(PaxosChunk, **piece)
        except (amp.ConnectionLost, amp.ProtocolSwitched):
            return False
        return True

    def _call(self, command, **arguments) -> Deferred:
        try:
            d = self.callRemote(command, **arguments)
        except Exception:
            return fail()
        if self._clock is not None:
            d.addTimeout(self._timeout_s, self._clock)
        return d.addErrback(not_leader)
