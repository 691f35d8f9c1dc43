"""
Tests for the peer links' handshake (L{kvpaxos.node.peer_commands.Hello}, issue 9):
who may open a link, what is taken before and after it, and what each side
reports to its node.  AMP pairs wired with L{twisted.test.iosim} and
L{PeerNetwork} on a L{MemoryReactorClock}; no real ports, no sleeps.

A "raw" client here is a bare L{amp.AMP}: anything that speaks well-formed
AMP to the peer port, without (or before) a handshake.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kvpaxos.encoding.messages import encode
from kvpaxos.node.interfaces import IPeerTransport, Timing
from kvpaxos.node.peer_commands import (
    BadHello,
    Forward,
    ForwardChunk,
    Hello,
    NotIdentified,
    PaxosChunk,
    PaxosMessage,
    ReadIndex,
    UnknownMember,
    WrongCluster,
)
from kvpaxos.node.peers import PeerNetwork
from kvpaxos.paxos.messages import Heartbeat
from tests.test_peers import (
    B,
    CLIENT_TIMING,
    CLUSTER,
    SERVER_TIMING,
    PairMixin,
    RecordingNode,
    heartbeat,
    listener,
    opener,
)


def hello(cluster=CLUSTER, member=1, timing=CLIENT_TIMING):
    """The arguments of a Hello from C{member}."""
    return dict(
        cluster=cluster,
        member=member,
        tick_ms=timing.tick_ms,
        election_ticks=timing.election_ticks,
        lease_reads=timing.lease_reads,
    )


def given(answer):
    """A Hello answer without the optional fields it left out (addresses)."""
    return {k: v for k, v in answer.items() if v is not None}


class Results:
    """Fire what the pump carries and return a Deferred's one result."""

    def results(self, d):
        out = []
        d.addBoth(out.append)
        self.pump.flush()
        self.assertEqual(len(out), 1, "the Deferred did not fire")
        return out[0]


class RawClientTests(Results, SynchronousTestCase):
    """A listener for node 2 (peers 1 and 3) and a raw AMP client."""

    def setUp(self):
        self.clock = Clock()
        self.node = RecordingNode()
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: listener(self.node, self.clock, is_member=lambda m: m in (1, 3)),
            amp.AMP,
        )

    def send_heartbeat(self):
        """Send node 1's heartbeat to node 2 as a raw PaxosMessage."""
        self.client.callRemote(PaxosMessage, data=encode(heartbeat()))
        self.pump.flush()

    def refused(self, kind, **arguments):
        """Say Hello with C{arguments}; check it is refused with C{kind} and closed."""
        failure = self.results(self.client.callRemote(Hello, **arguments))
        failure.trap(kind)
        self.assertTrue(self.pump.serverIO.disconnected)
        return failure.value

    def test_hello_answered(self):
        """A Hello from a listed peer of this cluster is answered with the listener's cluster, id and timing."""
        answer = self.results(self.client.callRemote(Hello, **hello()))
        self.assertEqual(given(answer), hello(member=2, timing=SERVER_TIMING))
        self.assertEqual(self.server.peer_id, 1)
        self.send_heartbeat()
        self.assertEqual(self.node.messages, [heartbeat()])

    def test_wrong_cluster_refused(self):
        """A Hello of another cluster is refused with WRONG_CLUSTER, the connection closed, nothing delivered."""
        error = self.refused(WrongCluster, **hello(cluster=CLUSTER + 1))
        self.assertIn("cluster_token", str(error))
        self.assertIsNone(self.server.peer_id)
        self.send_heartbeat()
        self.assertEqual((self.node.messages, self.node.timings), ([], []))

    def test_unlisted_member_refused(self):
        """A Hello from a member the listener does not list is refused with UNKNOWN_MEMBER."""
        error = self.refused(UnknownMember, **hello(member=9))
        self.assertIn("member 9 is not a peer of node 2", str(error))
        self.send_heartbeat()
        self.assertEqual(self.node.messages, [])

    def test_own_id_refused(self):
        """A Hello that claims the listener's own id is refused: a peer address points back at it."""
        error = self.refused(UnknownMember, **hello(member=2))
        self.assertIn("points back at this node", str(error))

    def test_bad_timing_refused(self):
        """A Hello with a timing out of range is refused with BAD_HELLO."""
        self.refused(BadHello, **hello(timing=Timing(0, 10, False)))
        self.assertEqual(self.node.timings, [])

    def test_second_hello_refused(self):
        """A second Hello on one link is refused and the connection closed."""
        self.results(self.client.callRemote(Hello, **hello()))
        self.refused(BadHello, **hello(member=3))
        self.assertEqual(self.server.peer_id, 1)

    def test_message_before_hello_dropped(self):
        """Messages and chunks before the handshake are dropped and counted; the connection stays."""
        self.send_heartbeat()
        self.client.callRemote(PaxosChunk, stream=0, index=0, last=True, data=encode(heartbeat()))
        self.pump.flush()
        self.assertEqual(self.node.messages, [])
        self.assertEqual(self.server.malformed, 2)
        self.assertFalse(self.pump.serverIO.disconnected)

    def test_requests_before_hello_refused(self):
        """Forward, ForwardChunk and ReadIndex before the handshake are refused with NOT_IDENTIFIED."""
        outcomes = []
        for d in (
            self.client.callRemote(Forward, commands=[b"cmd"]),
            self.client.callRemote(ForwardChunk, stream=0, index=0, last=True, data=b"cmd"),
            self.client.callRemote(ReadIndex),
        ):
            d.addBoth(outcomes.append)
        self.pump.flush()
        self.assertEqual(len(outcomes), 3)
        for outcome in outcomes:
            outcome.trap(NotIdentified)
        self.assertEqual(self.node.forwarded, [])
        self.assertEqual(self.server.malformed, 3)

    def test_no_hello_in_time(self):
        """A connection that says no Hello within the timeout is closed."""
        self.clock.advance(4.9)
        self.pump.flush()
        self.assertFalse(self.pump.serverIO.disconnected)
        self.clock.advance(0.2)
        self.pump.flush()
        self.assertTrue(self.pump.serverIO.disconnected)

    def test_refusals_logged_once(self):
        """The same refusal on many connections to one listener is logged once."""
        network = PeerNetwork(2, {1: ("h1", 1)}, self.node, Clock(), cluster_id=CLUSTER)
        with capturedLogs() as events:
            for _ in range(3):
                client, _, pump = iosim.connectedServerAndClient(
                    lambda: network.server_factory().buildProtocol(None), amp.AMP
                )
                d = client.callRemote(Hello, **hello(cluster=CLUSTER + 1))
                d.addErrback(lambda f: f.trap(WrongCluster))
                pump.flush()
                self.assertTrue(pump.serverIO.disconnected)
        refusals = [e for e in events if "refused a peer link" in e.get("log_format", "")]
        self.assertEqual(len(refusals), 1)


class PairTests(PairMixin, Results, SynchronousTestCase):
    """Node 1's link to node 2 through the handshake (see L{PairMixin})."""

    def test_timing_reported_both_ways(self):
        """Each side reports the other's timing, and its id, to its node."""
        self.assertEqual(self.node.timings, [(1, CLIENT_TIMING)])
        self.assertEqual(self.client_node.timings, [(2, SERVER_TIMING)])
        self.assertEqual(self.server.peer_timing, CLIENT_TIMING)

    def test_src_other_than_hello_dropped(self):
        """A message whose src is not the member the handshake named is dropped and counted."""
        forged = Heartbeat(3, 2, B, 7, 1)
        self.client.send_message(encode(forged))
        self.client.send_message(encode(heartbeat()))
        self.pump.flush()
        self.assertEqual(self.node.messages, [heartbeat()])
        self.assertEqual(self.server.malformed, 1)

    def test_node_without_peer_timing(self):
        """A node that has no peer_timing yet still gets the link."""
        node = RecordingNode()
        node.peer_timing = None
        client, server, pump = iosim.connectedServerAndClient(
            lambda: listener(node, self.clock), lambda: opener(RecordingNode(), self.clock)
        )
        self.assertEqual(server.peer_id, 1)
        client.send_message(encode(heartbeat()))
        pump.flush()
        self.assertEqual(node.messages, [heartbeat()])

    def test_peer_timing_failure_contained(self):
        """A node that raises in peer_timing is logged; the link still comes up."""

        def fragile(peer_id, timing):
            raise RuntimeError("boom")

        node = RecordingNode()
        node.peer_timing = fragile
        client, server, pump = iosim.connectedServerAndClient(
            lambda: listener(node, self.clock), lambda: opener(RecordingNode(), self.clock)
        )
        self.assertEqual((client.peer_id, server.peer_id), (2, 1))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class OpenerTests(SynchronousTestCase):
    """The side that opens a link checks the answer before it uses the link."""

    def connect(self, server, peer_id=2, cluster_id=CLUSTER):
        self.clock = Clock()
        self.identified = []
        self.client_node = RecordingNode()
        client, server, pump = iosim.connectedServerAndClient(
            server,
            lambda: opener(
                self.client_node, self.clock, peer_id=peer_id, cluster_id=cluster_id,
                on_identified=self.identified.append,
            ),
        )
        return client, pump

    def assertNotUp(self, client, pump):
        self.assertEqual((self.identified, self.client_node.timings), ([], []))
        self.assertIsNone(client.peer_id)
        self.assertTrue(pump.clientIO.disconnected)

    def test_identified(self):
        """A correct answer identifies the link, with the listener's id and timing."""
        client, pump = self.connect(lambda: listener(RecordingNode(), None))
        self.assertEqual(self.identified, [client])
        self.assertEqual((client.peer_id, client.peer_timing), (2, SERVER_TIMING))

    def test_other_member_answers(self):
        """A link meant for node 3 that reaches node 2 is closed, never up."""
        node = RecordingNode()
        client, pump = self.connect(lambda: listener(node, None), peer_id=3)
        self.assertNotUp(client, pump)

    def test_refused(self):
        """A link the listener refuses (another cluster) is closed, never up."""
        node = RecordingNode()
        client, pump = self.connect(lambda: listener(node, None), cluster_id=CLUSTER + 1)
        self.assertNotUp(client, pump)
        self.assertEqual(node.timings, [])

    def test_answer_of_other_cluster(self):
        """A listener that accepts anything but answers for another cluster is not used."""

        class Careless(amp.AMP):
            @Hello.responder
            def hello(self, **ignored):
                return hello(cluster=CLUSTER + 1, member=2)

        client, pump = self.connect(Careless)
        self.assertNotUp(client, pump)

    def test_no_answer(self):
        """A listener that never answers the Hello has the link closed after the timeout."""

        class Silent(amp.AMP):
            @Hello.responder
            def hello(self, **ignored):
                from twisted.internet.defer import Deferred

                return Deferred()

        client, pump = self.connect(Silent)
        self.clock.advance(5.1)
        pump.flush()
        self.assertNotUp(client, pump)

    def test_hello_to_opener_refused(self):
        """The listening side cannot say Hello on a link it did not open."""
        client, pump = self.connect(lambda: listener(RecordingNode(), None))
        server = pump.server
        d = server.callRemote(Hello, **hello(member=2))
        failures = []
        d.addErrback(failures.append)
        pump.flush()
        failures[0].trap(BadHello)


class NetworkHandshakeTests(SynchronousTestCase):
    """L{PeerNetwork}: a link is up only once its handshake is through."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.node = RecordingNode()
        self.network = PeerNetwork(
            1, {2: ("h2", 5002), 3: ("h3", 5003)}, RecordingNode(), self.reactor,
            cluster_id=CLUSTER, timing=CLIENT_TIMING,
        )
        self.network.startService()
        self.addCleanup(self.network.stopService)

    def connect(self, address, node_id, greet=True, **kwargs):
        """Connect the link to C{address} to the listener of node C{node_id}."""
        targets = [(host, port) for host, port, *_ in self.reactor.tcpClients]
        factory = self.reactor.tcpClients[targets.index(address)][2]
        client = factory.buildProtocol(None)
        kwargs.setdefault("cluster_id", CLUSTER)
        kwargs.setdefault("timing", SERVER_TIMING)
        other = PeerNetwork(node_id, {1: ("h1", 5001)}, self.node, self.reactor, **kwargs)
        server = other.server_factory().buildProtocol(None)
        return iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
            greet=greet,
        )

    def test_provides_transport(self):
        """PeerNetwork provides IPeerTransport."""
        self.assertTrue(verifyObject(IPeerTransport, self.network))

    def test_send_waits_for_handshake(self):
        """Until the answer to its Hello arrives, a link is not up and sends are dropped."""
        pump = self.connect(("h2", 5002), 2, greet=False)
        self.assertEqual(self.network.connected(), [])
        self.network.send(heartbeat(dst=2))
        self.assertEqual(self.network.dropped_messages, 1)
        pump.flush()
        self.assertEqual(self.network.connected(), [2])
        self.network.send(heartbeat(dst=2))
        pump.flush()
        self.assertEqual(self.node.messages, [heartbeat(dst=2)])
        self.assertEqual(self.node.timings, [(1, CLIENT_TIMING)])
        self.assertEqual(self.network.handler.timings, [(2, SERVER_TIMING)])

    def test_wrong_member_never_up(self):
        """The link for node 2 that reaches node 3 never comes up."""
        pump = self.connect(("h2", 5002), 3)
        self.assertEqual(self.network.connected(), [])
        self.assertTrue(pump.clientIO.disconnected)
        self.network.send(heartbeat(dst=2))
        self.network.send(heartbeat(dst=3))
        pump.flush()
        self.assertEqual(self.node.messages, [])

    def test_other_cluster_never_up(self):
        """A link to a node of another cluster never comes up, and that node is told nothing."""
        pump = self.connect(("h2", 5002), 2, cluster_id=CLUSTER ^ 1)
        self.assertEqual(self.network.connected(), [])
        self.assertTrue(pump.clientIO.disconnected)
        self.assertEqual(self.node.timings, [])

    def test_listener_takes_listed_peers_only(self):
        """The listener answers a Hello from a listed peer and refuses any other member."""
        for member, expected in ((3, None), (9, UnknownMember)):
            client, _, pump = iosim.connectedServerAndClient(
                lambda: self.network.server_factory().buildProtocol(None), amp.AMP
            )
            outcome = []
            client.callRemote(Hello, **hello(member=member)).addBoth(outcome.append)
            pump.flush()
            if expected is None:
                self.assertEqual([given(o) for o in outcome], [hello(member=1)])
            else:
                outcome[0].trap(expected)
