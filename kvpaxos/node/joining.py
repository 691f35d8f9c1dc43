"""
L{Joiner}: how a node started with C{--join} and an empty data directory
becomes a member (issue 11).

The sequence, repeated with a bounded backoff until the node's store has a
member set (the core asks the leader for a snapshot once the leader's
heartbeats reach it, and installs it):

  1. learn the cluster from the client addresses given
     (L{fetch_members}, blocking, run in a thread: its cluster id, its
     leader and each member's peer and client address);
  2. point the peer links at those members with that cluster id, so that
     the leader's link to this node passes the handshake once it lists
     this node;
  3. unless the member list already holds this node (C{member add} ran
     first) at this node's peer address, send L{Join} to the leader's (or
     else any member's) peer port on a connection of its own; it is
     answered once the ADD_LEARNER is chosen.  The same id at another peer
     address is the operator's mistake: logged, and asked again later.

Until then the node serves no client (L{kvpaxos.node.service} refuses with
UNAVAILABLE).  A node whose store has a member set never joins: it takes
its peers from its store.  Nothing here decides a membership rule; the
leader checks the change like any other.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.logger import Logger
from twisted.protocols import amp

from kvpaxos.api.endpoints import BadEndpoint, split_host_port
from kvpaxos.node.interfaces import MembershipRejected, Unavailable
from kvpaxos.node.peer_commands import Join

#: How long one Join may wait for its change to be chosen.
JOIN_TIMEOUT_S = 10.0


def fetch_members(client_addresses: list[str], timeout_s: float = 5.0, credentials=None):
    """
    Ask the members at C{client_addresses} (gRPC), in order until one
    answers, for the member list: return C{(cluster_id, {id: (peer,
    client)}, leader or None)}.  Blocking: run it in a thread.

    It calls the read-only C{kvpaxos.v1.Cluster/MemberList} RPC
    (C{MemberListResponse(header, cluster_id, leader_id,
    members=[Member(member_id, role, peer_address, client_address)])}).

    @param credentials: C{grpc.ChannelCredentials} for members that serve
        TLS, or None (plaintext).
    @raise Unavailable: no member answered (each one's failure in the text).
    """
    import grpc

    from kvpaxos.api.endpoints import CHANNEL_OPTIONS
    from kvpaxos.v1 import kv_pb2, kv_pb2_grpc

    request_class = kv_pb2.MemberListRequest
    stub_class = kv_pb2_grpc.ClusterStub
    failures = []
    for address in client_addresses:
        channel = (grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS) if credentials is not None
                   else grpc.insecure_channel(address, options=CHANNEL_OPTIONS))
        with channel:
            try:
                response = stub_class(channel).MemberList(request_class(), timeout=timeout_s)
            except grpc.RpcError as error:
                failures.append(f"{address}: {error.code().name} {error.details()}")
                continue
        members = {m.member_id: (m.peer_address, m.client_address) for m in response.members}
        return response.cluster_id, members, response.leader_id or None
    raise Unavailable(f"no member answered the member list: {'; '.join(failures)}")


def send_join(reactor, peer_address: str, cluster_id: int, member: int, peer: str,
              client: str, timeout_s: float, endpoint_for: Optional[Callable] = None) -> defer.Deferred:
    """
    Send L{Join} to the peer listener at C{peer_address} on a connection of
    its own (closed after the answer): a Deferred firing once the change is
    chosen, or failing (L{MembershipRejected}, L{Unavailable}, a refused
    connection, a timeout after C{timeout_s}).  C{endpoint_for(reactor,
    host, port)} makes the client endpoint (the peer links' own, TLS when
    they are); by default plain TCP.
    """
    host, port = split_host_port(peer_address)
    if endpoint_for is not None:
        endpoint = endpoint_for(reactor, host, port)
    else:
        endpoint = (TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint)(
            reactor, host, port, timeout=max(1, int(timeout_s)))

    def connected(protocol):
        d = protocol.callRemote(Join, cluster=cluster_id, member=member, peer=peer,
                                client=client, timeout_ms=max(1, int(timeout_s * 1000)))
        d.addTimeout(timeout_s + 1.0, reactor)

        def close(result):
            protocol.transport.loseConnection()
            return result

        return d.addBoth(close)

    return connectProtocol(endpoint, amp.AMP()).addCallback(connected)


class Joiner(Service):
    """
    Makes this node a member of the cluster reached at C{join} (see the
    module docstring); a service that does nothing once C{has_state()}.

    @param node_id: this node's id.
    @param addresses: (peer, client) addresses of this node, reachable ones.
    @param join: client addresses of existing members.
    @param has_state: whether this node's store has a member set.
    @param peers: the node's L{kvpaxos.node.peers.PeerNetwork} (its
        C{cluster_id} and C{set_peers} are set here until then).
    @param reactor: timers and threads.
    @param fetch: C{fetch(join)} -> Deferred of C{(cluster_id, members,
        leader)}; by default L{fetch_members} in a thread.
    @param join_call: C{join_call(peer_address, cluster_id, member, peer,
        client, timeout_s)} -> Deferred; by default L{send_join}.
    @param retry_s: (first, longest) wait between attempts.
    @param credentials: C{grpc.ChannelCredentials} for the members' client
        ports when they serve TLS (the default C{fetch}), or None.
    @param endpoint_for: the peer links' client endpoints (the default
        C{join_call}), or None: plain TCP.
    """

    log = Logger()
    name = "joiner"

    def __init__(self, node_id: int, addresses: tuple[str, str], join: list[str],
                 has_state: Callable[[], bool], peers, reactor,
                 fetch: Optional[Callable] = None, join_call: Optional[Callable] = None,
                 retry_s: tuple[float, float] = (0.5, 10.0), credentials=None,
                 endpoint_for: Optional[Callable] = None) -> None:
        self.node_id = node_id
        self.addresses = addresses
        self.join = list(join)
        self._has_state = has_state
        self._peers = peers
        self._reactor = reactor
        self._fetch = fetch or (lambda addresses: threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), fetch_members, addresses, 5.0, credentials))
        self._join_call = join_call or (lambda *args: send_join(reactor, *args, endpoint_for=endpoint_for))
        self._retry_min_s, self._retry_max_s = retry_s
        self._delay_s = self._retry_min_s
        self._next = None
        self._logged: Optional[str] = None
        #: Attempts made (each: learn the cluster, then ask if need be).
        self.attempts = 0

    def startService(self) -> None:
        super().startService()
        if self._has_state():
            self.log.info("node {node} has a member set: --join is ignored", node=self.node_id)
            return
        self.log.info("node {node} joins the cluster at {join}", node=self.node_id,
                      join=", ".join(self.join))
        self._next = self._reactor.callLater(0, self._attempt)

    def stopService(self):
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        return super().stopService()

    @defer.inlineCallbacks
    def _attempt(self):
        self._next = None
        if not self.running or self._has_state():
            return
        self.attempts += 1
        try:
            yield self._join_once()
        except Exception as error:
            self._say(f"join not done yet: {error.__class__.__name__}: {error}", warn=True)
        if self.running and not self._has_state():
            self._next = self._reactor.callLater(self._delay_s, self._attempt)
            self._delay_s = min(self._delay_s * 2, self._retry_max_s)
        elif self._has_state():
            self.log.info("node {node} has the member set: joined", node=self.node_id)

    @defer.inlineCallbacks
    def _join_once(self):
        cluster_id, members, leader = yield self._fetch(self.join)
        if not members:
            raise Unavailable("the member list is empty")
        links = {}
        for node, (peer, _) in sorted(members.items()):
            if node != self.node_id and peer:
                try:
                    links[node] = split_host_port(peer)
                except BadEndpoint:
                    pass
        self._peers.cluster_id = cluster_id
        self._peers.set_peers(links)
        peer, client = self.addresses
        mine = members.get(self.node_id)
        if mine is not None:
            if mine[0] != peer:
                raise MembershipRejected(
                    f"node {self.node_id} is already a member at peer address {mine[0]!r},"
                    f" not this node's {peer!r}: remove it first, or start with that address"
                )
            self._say(f"node {self.node_id} is a member: waiting for the state from the leader")
            return
        target = members[leader][0] if leader in members else members[min(members)][0]
        yield self._join_call(target, cluster_id, self.node_id, peer, client, JOIN_TIMEOUT_S)
        self._say(f"node {self.node_id} was added as a learner: waiting for the state")

    def _say(self, text: str, warn: bool = False) -> None:
        """Log C{text} unless it was the last thing said."""
        if text != self._logged:
            self._logged = text
            (self.log.warn if warn else self.log.info)("{text}", text=text)
