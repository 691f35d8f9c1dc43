"""
The peer transport: Paxos messages, forwarded proposals, read-index
requests and lease keep-alives between nodes, as AMP commands over TCP.

Every node opens one reconnecting link to each peer (L{PeerNetwork}) and
sends only on its own links; it receives on the connections its peers opened
to it (L{PeerNetwork.server_factory}).  A message is encoded by
L{kvpaxos.encoding.messages}; one that does not fit into one AMP value (65,535
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

The modules: L{kvpaxos.node.peer_commands} (the AMP commands, errors and
limits), L{kvpaxos.node.peer_flow} (stream reassembly, the send bound),
L{kvpaxos.node.peer_protocol} (one connection) and this one (the links).
"""

from __future__ import annotations

import random
from typing import Callable, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from kvpaxos.encoding.messages import encode
from kvpaxos.encoding.transfer import encode as encode_transfer
from kvpaxos.node.interfaces import IPeerTransport, Timing
from kvpaxos.node.connection_cap import ConnectionCap
from kvpaxos.node.peer_commands import DEFAULT_TIMING, PEER_BUFFER_BYTES, PEER_CONNECTIONS_MAX, PeerUnreachable
from kvpaxos.node.peer_flow import Complaints
from kvpaxos.node.peer_protocol import PeerProtocol

_log = Logger()


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
        self.complaints = Complaints()


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
    @param addresses: (peer, client) addresses this node reports in its
        handshakes, so that the leader can publish them (issue 11).
    @param connections_max: the most connections open at once on this
        node's peer port (L{server_factory}); one more is closed at once.
    @param buffer_bytes: the most bytes of partial messages a connection
        may hold, half for messages and half for forwarded commands.

    Issue 11: the node calls L{set_peers} with the replicated member set's
    peer addresses whenever it changes, and may set C{cluster_id} (a joining
    node learns it); both take effect for connections made from then on.
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
        addresses: tuple[str, str] = ("", ""),
        connections_max: int = PEER_CONNECTIONS_MAX,
        buffer_bytes: int = PEER_BUFFER_BYTES,
    ) -> None:
        super().__init__()
        self.connections_max = connections_max
        self.buffer_bytes = buffer_bytes
        self.node_id = node_id
        self.handler = handler
        self.cluster_id = cluster_id
        self.timing = timing
        self.addresses = addresses
        self._reactor = reactor
        self._timeout_s = timeout_s
        rng = rng or random.Random()
        self._retry_policy = backoffPolicy(
            initialDelay=0.1,
            maxDelay=retry_delay_max_s,
            jitter=lambda: rng.random() * retry_delay_max_s / 10,
        )
        self._endpoint_for = endpoint_for or tcp_endpoint
        self._links: dict[int, _Link] = {}
        # The connections peers opened to this node, once through their
        # handshake: closed when their peer is no longer listed.
        self._incoming: set[PeerProtocol] = set()
        # Refusals of links peers open to this node, each logged once.
        self._refusals = Complaints()
        #: Messages dropped because their peer's link was down or full.
        self.dropped_messages = 0
        self.set_peers(peers)

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        """
        Make the links match C{peers}: open links to new peers, close links
        to peers no longer listed, and reopen a link whose address changed.
        From then on only the listed peers may open links to this node, and
        the links a peer no longer listed opened are closed (a removed
        member is refused).
        """
        wanted = {i: tuple(a) for i, a in peers.items() if i != self.node_id}
        for protocol in sorted(self._incoming, key=lambda p: p.peer_id):
            if protocol.peer_id not in wanted and protocol.transport is not None:
                # Closed once what is written is sent: the answer to the
                # removed member's own MemberChange (its removal) goes first.
                protocol.transport.loseConnection()
        for peer_id in sorted(self._links):
            if wanted.get(peer_id) != self._links[peer_id].address:
                link = self._links.pop(peer_id)
                if peer_id in wanted:
                    _abort(link)  # a new address: nothing more goes to the old one
                else:
                    # A removed member: what is written goes first (the
                    # leader's last heartbeat tells it its removal is chosen).
                    _close(link)
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
        """Return the factory of the protocols this node serves its peers' links with."""
        return self._factory(
            is_member=self._links.__contains__,
            complaints=self._refusals,
            on_identified=self._incoming.add,
            on_lost=self._incoming.discard,
        )

    def listener_factory(self, tls=None) -> Factory:
        """
        Return the factory this node's peer port listens with: at most
        C{connections_max} connections open (one more is closed as it is
        accepted, before any TLS handshake, and logged), each behind C{tls}
        (a L{kvpaxos.tls.ServerTLS}) if given, served by L{server_factory}'s.
        """
        inner = self.server_factory()
        inner.noisy = False
        if tls is not None:
            inner = tls.wrap(inner)
        return ConnectionCap(inner, self.connections_max, "peer")

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
                addresses=self.addresses,
                buffer_bytes=self.buffer_bytes,
                **side,
            )
        )

    def connected(self) -> list[int]:
        """Return the ids of the peers whose link is up (through its handshake), in order."""
        return sorted(i for i, link in self._links.items() if link.protocol)

    def link_states(self) -> dict[int, bool]:
        """C{{peer id: whether its link is up}} for every peer this node links to (for the metrics)."""
        return {i: link.protocol is not None for i, link in self._links.items()}

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

    def send_stream(self, message) -> None:
        """
        Send snapshot transfer C{message} (L{kvpaxos.encoding.transfer}) on
        the link to C{message.dst}, or drop it (counted) as L{send} does.
        """
        protocol = self._protocol(message.dst)
        if protocol is None or not protocol.send_message(encode_transfer(message), stream=True):
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

    def lease_keep_alive(self, node_id: int, lease: int) -> Deferred:
        """
        Carry a keep-alive of lease C{lease} to node C{node_id} (the leader);
        see L{PeerProtocol.lease_keep_alive}.  Fails with L{PeerUnreachable}
        if there is no link to it.
        """
        protocol = self._protocol(node_id)
        if protocol is None:
            return fail(PeerUnreachable(f"no link to node {node_id}"))
        return protocol.lease_keep_alive(lease)

    def lease_time_to_live(self, node_id: int, lease: int) -> Deferred:
        """
        Ask node C{node_id} (the leader) how long lease C{lease} has to live;
        see L{PeerProtocol.lease_time_to_live}.  Fails with
        L{PeerUnreachable} if there is no link to it.
        """
        protocol = self._protocol(node_id)
        if protocol is None:
            return fail(PeerUnreachable(f"no link to node {node_id}"))
        return protocol.lease_time_to_live(lease)

    def member_change(self, node_id: int, kind: str, node: int, peer: str, client: str,
                      force: bool, timeout_s: float) -> Deferred:
        """
        Carry a membership change to node C{node_id} (the leader); see
        L{kvpaxos.node.peer_members.MembershipCalls.member_change}.  Fails
        with L{PeerUnreachable} if there is no link to it.
        """
        protocol = self._protocol(node_id)
        if protocol is None:
            return fail(PeerUnreachable(f"no link to node {node_id}"))
        return protocol.member_change(kind, node, peer, client, force, timeout_s)


def _close(link: _Link) -> None:
    protocol = link.connection
    if protocol is not None and protocol.transport is not None:
        protocol.transport.loseConnection()


def _abort(link: _Link) -> None:
    protocol = link.connection
    if protocol is not None and protocol.transport is not None:
        protocol.transport.abortConnection()


def tcp_endpoint(reactor, host: str, port: int):
    """The plain TCP client endpoint of a peer link to C{host:port} (IPv6 when the host has a colon)."""
    if ":" in host:
        return TCP6ClientEndpoint(reactor, host, port, timeout=5)
    return TCP4ClientEndpoint(reactor, host, port, timeout=5)
