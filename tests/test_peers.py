"""
Tests for the peer transport (L{kvpaxos.node.peers} and its modules): AMP pairs wired with
L{twisted.test.iosim}, and L{PeerNetwork} on a L{MemoryReactorClock}.  No
real ports, no sleeps.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from kvpaxos.encoding.messages import encode
from kvpaxos.node.interfaces import IPeerHandler, NotLeaderError, Timing
from kvpaxos.node.peer_commands import (
    CHUNK_BYTES,
    ChunkError,
    Forward,
    ForwardFailed,
    PaxosChunk,
    PaxosMessage,
    PeerRequestError,
    PeerUnreachable,
)
from kvpaxos.node.peer_flow import ChunkStreams, SendGate
from kvpaxos.node.peer_protocol import PeerProtocol
from kvpaxos.node.peers import PeerNetwork

#: The cluster id both sides of a pair use, and each side's timing.
CLUSTER = 0x1234_5678_9ABC_DEF0
CLIENT_TIMING = Timing(tick_ms=50, election_ticks=10, lease_reads=False)
SERVER_TIMING = Timing(tick_ms=20, election_ticks=12, lease_reads=True)
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import (
    Accept,
    Ballot,
    Batch,
    Heartbeat,
    InstallSnapshot,
    Snapshot,
)

B = Ballot(3, 1)


def heartbeat(dst=2, chosen=7):
    return Heartbeat(1, dst, B, chosen, 1)


@implementer(IPeerHandler)
class RecordingNode:
    """An L{IPeerHandler} that records what arrives and answers as told."""

    def __init__(self):
        self.messages = []
        self.forwarded = []
        self.timings = []
        self.answer = lambda: succeed(None)
        self.index = lambda: succeed(42)

    def peer_timing(self, peer_id, timing):
        self.timings.append((peer_id, timing))

    def message_received(self, message):
        self.messages.append(message)

    def proposals_forwarded(self, commands):
        self.forwarded.append(list(commands))
        return self.answer()

    def read_index_requested(self):
        return self.index()


def listener(node, clock, node_id=2, cluster_id=CLUSTER, **kwargs):
    """Return the listening side of a link, for node C{node_id}."""
    return PeerProtocol(
        node, node_id, clock=clock, cluster_id=cluster_id, timing=SERVER_TIMING, **kwargs
    )


def opener(node, clock, node_id=1, peer_id=2, cluster_id=CLUSTER, **kwargs):
    """Return the opening side of a link from node C{node_id} to C{peer_id}."""
    return PeerProtocol(
        node, node_id, clock=clock, cluster_id=cluster_id, timing=CLIENT_TIMING,
        peer_id=peer_id, **kwargs
    )


class PairMixin:
    """
    Node 1's link to node 2: an opening L{PeerProtocol} connected to a
    listening one, through the handshake.
    """

    def setUp(self):
        self.clock = Clock()
        self.node = RecordingNode()
        self.client_node = RecordingNode()
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: listener(self.node, self.clock),
            lambda: opener(self.client_node, self.clock),
        )
        self.assertEqual((self.client.peer_id, self.server.peer_id), (2, 1))

    def results(self, d):
        out = []
        d.addBoth(out.append)
        self.pump.flush()
        self.assertEqual(len(out), 1, "the Deferred did not fire")
        return out[0]


class MessageTests(PairMixin, SynchronousTestCase):
    """Paxos messages over one connection."""

    def test_round_trip(self):
        """A message sent by the client arrives at the server's node, equal."""
        self.assertTrue(self.client.send_message(encode(heartbeat())))
        self.pump.flush()
        self.assertEqual(self.node.messages, [heartbeat()])

    def test_large_snapshot_in_chunks(self):
        """A 200 kB InstallSnapshot travels as chunks and arrives whole."""
        sent = []
        real = self.client.callRemote
        self.client.callRemote = lambda c, **kw: (sent.append(c), real(c, **kw))[1]
        snapshot = Snapshot(9, Config(frozenset({1, 2, 3})), bytes(range(256)) * 800)
        message = InstallSnapshot(1, 2, snapshot)
        self.client.send_message(encode(message))
        self.pump.flush()
        self.assertEqual(self.node.messages, [message])
        self.assertEqual(set(sent), {PaxosChunk})
        self.assertEqual(len(sent), 4)

    def test_huge_command_in_chunks(self):
        """A batch holding one 1 MiB command arrives whole."""
        message = Accept(1, 2, B, 5, (Batch((b"x" * 2**20, b"y")),), 4)
        self.client.send_message(encode(message))
        self.client.send_message(encode(heartbeat()))
        self.pump.flush()
        self.assertEqual(self.node.messages, [message, heartbeat()])

    def test_malformed_encoding_dropped(self):
        """A box whose data is not a valid encoding is dropped; later ones arrive."""
        self.client.callRemote(PaxosMessage, data=b"\x01\x06garbage")
        self.client.send_message(encode(heartbeat()))
        self.pump.flush()
        self.assertEqual(self.node.messages, [heartbeat()])
        self.assertEqual(self.server.malformed, 1)
        self.assertFalse(self.server.transport.disconnecting)

    def test_misaddressed_dropped(self):
        """A message addressed to another node is dropped."""
        self.client.send_message(encode(heartbeat(dst=3)))
        self.pump.flush()
        self.assertEqual(self.node.messages, [])
        self.assertEqual(self.server.malformed, 1)

    def test_node_failure_contained(self):
        """A node that raises on one message is logged and still gets the next."""
        calls = []

        def fragile(message):
            calls.append(message)
            if len(calls) == 1:
                raise RuntimeError("boom")

        self.node.message_received = fragile
        self.client.send_message(encode(heartbeat(chosen=1)))
        self.client.send_message(encode(heartbeat(chosen=2)))
        self.pump.flush()
        self.assertEqual([m.chosen_index for m in calls], [1, 2])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_send_after_close_drops(self):
        """Sending on a closed connection returns False and raises nothing."""
        self.client.transport.loseConnection()
        self.pump.flush()
        self.assertFalse(self.client.send_message(encode(heartbeat())))


class HostileTests(PairMixin, SynchronousTestCase):
    """A misbehaving peer loses its message or its connection, never the node."""

    def test_garbage_bytes(self):
        """Garbage bytes that are not AMP framing drop the connection cleanly."""
        self.server.dataReceived(b"\xff\xffnot amp at all" * 10)
        self.pump.flush()
        self.assertTrue(self.pump.serverIO.disconnected)

    def test_box_without_command(self):
        """A box that is no command, answer or error drops the connection."""
        self.server.dataReceived(amp.AmpBox(foo=b"bar").serialize())
        self.pump.flush()
        self.assertTrue(self.pump.serverIO.disconnected)

    def test_answer_to_nothing(self):
        """An answer to a question never asked drops the connection."""
        self.server.dataReceived(amp.AmpBox(_answer=b"99").serialize())
        self.pump.flush()
        self.assertTrue(self.pump.serverIO.disconnected)

    def test_unknown_command_answered(self):
        """An unknown command that asks for an answer gets an error; the link stays."""
        d = self.client.callRemote(UnknownCommand)
        failure = self.results(d)
        failure.trap(amp.UnhandledCommand)
        self.client.send_message(encode(heartbeat()))
        self.pump.flush()
        self.assertEqual(self.node.messages, [heartbeat()])

    def test_bad_argument_drops(self):
        """A chunk whose index is not an integer drops the connection."""
        box = amp.AmpBox(_command=b"PaxosChunk", stream=b"1", index=b"x", last=b"True")
        box[b"data"] = b"abc"
        self.server.dataReceived(box.serialize())
        self.pump.flush()
        self.assertTrue(self.pump.serverIO.disconnected)
        self.assertTrue(self.flushLoggedErrors(ValueError))

    def test_chunk_out_of_order(self):
        """A chunk stream that skips a piece drops the connection."""
        self.client.callRemote(PaxosChunk, stream=1, index=0, last=False, data=b"a")
        self.client.callRemote(PaxosChunk, stream=1, index=2, last=True, data=b"b")
        self.pump.flush()
        self.assertTrue(self.pump.serverIO.disconnected)
        self.assertEqual(self.node.messages, [])

    def test_oversized_box(self):
        """A box with more values than any command needs drops the connection."""
        box = amp.AmpBox(_command=b"PaxosMessage")
        for i in range(4):
            box[b"pad%d" % i] = b"p" * 60_000
        self.server.dataReceived(box.serialize())
        self.pump.flush()
        self.assertTrue(self.pump.serverIO.disconnected)

    def test_streams_bound_bytes(self):
        """Reassembly refuses streams that together exceed the byte bound."""
        streams = ChunkStreams(bytes_max=10, streams_max=4)
        streams.add(1, 0, False, b"123456")
        self.assertRaises(ChunkError, streams.add, 2, 0, False, b"12345")

    def test_streams_bound_count(self):
        """Reassembly refuses more concurrent streams than its bound."""
        streams = ChunkStreams(bytes_max=100, streams_max=2)
        streams.add(1, 0, False, b"a")
        streams.add(2, 0, False, b"b")
        self.assertRaises(ChunkError, streams.add, 3, 0, False, b"c")
        self.assertEqual(streams.add(1, 1, True, b"z"), b"az")
        self.assertIsNone(streams.add(3, 0, False, b"c"))


class UnknownCommand(amp.Command):
    """A command no peer knows."""


class ForwardTests(PairMixin, SynchronousTestCase):
    """Forwarded proposals and read-index requests."""

    def test_forward(self):
        """Forwarded commands reach the leader's node and the call succeeds."""
        self.assertIsNone(self.results(self.client.forward([b"a", b"b"])))
        self.assertEqual(self.node.forwarded, [[b"a", b"b"]])

    def test_forward_nothing(self):
        """Forwarding no commands succeeds without a call."""
        self.assertIsNone(self.results(self.client.forward([])))
        self.assertEqual(self.node.forwarded, [])

    def test_forward_split(self):
        """A long list is split into calls under AMP's cap, keeping the order."""
        commands = [b"%05d" % i + b"." * 995 for i in range(200)]
        self.assertIsNone(self.results(self.client.forward(commands)))
        self.assertGreater(len(self.node.forwarded), 3)
        self.assertEqual(sum(self.node.forwarded, []), commands)

    def test_forward_huge_command(self):
        """A 1 MiB command is forwarded in chunks and proposed once, in order."""
        huge = bytes(range(256)) * 4096
        d = self.client.forward([b"before", huge, b"after"])
        self.assertIsNone(self.results(d))
        self.assertEqual(self.node.forwarded, [[b"before"], [huge], [b"after"]])

    def cause(self, failure, kind):
        """Return the cause of a ForwardFailed, checking it is of C{kind}."""
        failure.trap(ForwardFailed)
        self.assertTrue(failure.value.cause.check(kind), failure.value.cause)
        return failure.value

    def test_forward_not_leader(self):
        """NOT_LEADER comes back as a refusal: not proposed, safe to resend, with the leader id."""
        self.node.answer = lambda: fail(NotLeaderError(3))
        failed = self.cause(self.results(self.client.forward([b"a"])), NotLeaderError)
        self.assertEqual(failed.cause.value.leader, 3)
        self.assertEqual((failed.refused, failed.unknown), ([b"a"], []))

    def test_forward_not_leader_unknown(self):
        """NOT_LEADER with no known leader, for a chunked command, is a refusal of that command."""
        self.node.answer = lambda: fail(NotLeaderError(None))
        big = b"a" * 70_000
        failed = self.cause(self.results(self.client.forward([big])), NotLeaderError)
        self.assertIsNone(failed.cause.value.leader)
        self.assertEqual((failed.refused, failed.unknown), ([big], []))

    def test_forward_node_error(self):
        """Any other failure is an unknown outcome (PeerRequestError cause); the link stays."""
        self.node.answer = lambda: fail(RuntimeError("disk on fire"))
        failed = self.cause(self.results(self.client.forward([b"a"])), PeerRequestError)
        self.assertIn("disk on fire", str(failed.cause.value))
        self.assertEqual((failed.refused, failed.unknown), ([], [b"a"]))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(self.client.transport.disconnecting)

    def test_forward_timeout(self):
        """A forward the leader never answers fails after the timeout with an unknown outcome."""
        self.node.answer = Deferred
        d = self.client.forward([b"a"])
        self.pump.flush()
        self.clock.advance(5)
        failed = self.cause(self.results(d), TimeoutError)
        self.assertEqual(failed.unknown, [b"a"])

    def test_forward_partial_refusal(self):
        """When only some calls of a forward are refused, only their commands count as refused."""
        answers = iter([succeed(None), fail(NotLeaderError(2))])
        self.node.answer = lambda: next(answers)
        first = [b"x" * 40_000]
        second = [b"y" * 40_000]
        failed = self.cause(self.results(self.client.forward(first + second)), NotLeaderError)
        self.assertEqual((failed.refused, failed.unknown), (second, []))

    def test_forward_rejects_text(self):
        """Commands must be bytes: anything else is caller misuse."""
        self.assertRaises(TypeError, self.client.forward, ["text"])

    def test_read_index(self):
        """ReadIndex returns the leader's confirmed index."""
        self.assertEqual(self.results(self.client.read_index()), 42)

    def test_read_index_not_leader(self):
        """ReadIndex on a follower fails with NotLeaderError(leader)."""
        self.node.index = lambda: fail(NotLeaderError(5))
        failure = self.results(self.client.read_index())
        failure.trap(NotLeaderError)
        self.assertEqual(failure.value.leader, 5)

    def test_forward_command_sizes(self):
        """No Forward list reaches AMP's cap, whatever the command sizes."""
        sizes = []
        real = self.client.callRemote

        def spy(command, **kw):
            if command is Forward:
                sizes.append(sum(len(c) + 2 for c in kw["commands"]))
            return real(command, **kw)

        self.client.callRemote = spy
        commands = [b"c" * n for n in (CHUNK_BYTES - 2, CHUNK_BYTES - 1, 1, 30_000)]
        self.assertIsNone(self.results(self.client.forward(commands * 2)))
        self.assertLessEqual(max(sizes), 65_535)


class SendGateTests(SynchronousTestCase):
    """The bound on what queues behind a full send buffer."""

    def test_gate(self):
        """While paused (however often told), the gate admits up to its bound."""
        gate = SendGate(transport=None, bytes_max=100)
        self.assertTrue(gate.admit(1_000))
        gate.pauseProducing()
        self.assertTrue(gate.admit(60))
        gate.pauseProducing()
        self.assertFalse(gate.admit(60))
        gate.resumeProducing()
        self.assertTrue(gate.admit(60))

    def test_full_buffer_drops(self):
        """A protocol whose transport paused it drops messages past the bound."""
        client, server, pump = iosim.connectedServerAndClient(
            lambda: listener(RecordingNode(), None), lambda: opener(RecordingNode(), None)
        )
        client.transport.producer.pauseProducing()
        data = encode(heartbeat())
        self.patch(client._gate, "_bytes_max", len(data))
        self.assertTrue(client.send_message(data))
        self.assertFalse(client.send_message(data))


class NetworkTests(SynchronousTestCase):
    """L{PeerNetwork}: links per peer on an injected reactor."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.node = RecordingNode()
        self.network = PeerNetwork(
            1, {1: ("h1", 5001), 2: ("h2", 5002), 3: ("h3", 5003)}, RecordingNode(),
            self.reactor,
        )
        self.network.startService()
        self.addCleanup(self.network.stopService)

    def targets(self):
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def connect(self, index, node_id, greet=True, **kwargs):
        """
        Complete connection attempt C{index} to the listener of a node
        C{node_id} that lists node 1 among its peers (C{kwargs} go to its
        L{PeerNetwork}); with C{greet}, through the handshake.
        """
        factory = self.reactor.tcpClients[index][2]
        client = factory.buildProtocol(None)
        other = PeerNetwork(node_id, {1: ("h1", 5001)}, self.node, self.reactor, **kwargs)
        self.server = other.server_factory().buildProtocol(None)
        return iosim.connect(
            self.server, iosim.makeFakeServer(self.server), client,
            iosim.makeFakeClient(client), greet=greet,
        )

    def test_connects_to_each_peer(self):
        """Starting opens one link per peer, none to itself."""
        self.assertEqual(sorted(self.targets()), [("h2", 5002), ("h3", 5003)])

    def test_send_down_peer(self):
        """Sending to a peer with no link drops silently and counts the drop."""
        self.network.send(heartbeat(dst=2))
        self.network.send(heartbeat(dst=9))
        self.assertEqual(self.network.dropped_messages, 2)

    def test_forward_and_read_without_link(self):
        """Forward and ReadIndex to a peer with no link fail with PeerUnreachable."""
        self.failureResultOf(self.network.forward(2, [b"a"]), PeerUnreachable)
        self.failureResultOf(self.network.read_index(2), PeerUnreachable)

    def test_send_over_link(self):
        """Once a link is up, send, forward and read_index reach that peer."""
        pump = self.connect(self.targets().index(("h2", 5002)), 2)
        self.assertEqual(self.network.connected(), [2])
        self.network.send(heartbeat(dst=2))
        forwarded = self.network.forward(2, [b"cmd"])
        index = self.network.read_index(2)
        pump.flush()
        self.assertEqual(self.node.messages, [heartbeat(dst=2)])
        self.assertEqual(self.node.forwarded, [[b"cmd"]])
        self.assertIsNone(self.successResultOf(forwarded))
        self.assertEqual(self.successResultOf(index), 42)

    def test_reconnects_after_loss(self):
        """A lost link drops sends and is retried within the capped backoff."""
        pump = self.connect(self.targets().index(("h2", 5002)), 2)
        pump.clientIO.loseConnection()
        pump.flush()
        self.assertEqual(self.network.connected(), [])
        self.network.send(heartbeat(dst=2))
        self.assertEqual(self.network.dropped_messages, 1)
        attempts = len(self.reactor.tcpClients)
        self.reactor.advance(1.1)
        self.assertEqual(len(self.reactor.tcpClients), attempts + 1)
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("h2", 5002))

    def test_set_peers_adds_and_removes(self):
        """set_peers opens links to new peers and closes links to removed ones."""
        pump = self.connect(self.targets().index(("h2", 5002)), 2)
        self.network.set_peers({1: ("h1", 5001), 3: ("h3", 5003), 4: ("h4", 5004)})
        self.assertEqual(self.targets()[-1], ("h4", 5004))
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.assertIs(self.network.getServiceNamed("peer-4").parent, self.network)
        self.assertRaises(KeyError, self.network.getServiceNamed, "peer-2")
        pump.flush()
        self.assertTrue(pump.clientIO.disconnected)
        self.assertEqual(self.network.connected(), [])

    def test_stop_aborts_links(self):
        """Stopping the network aborts live links instead of waiting to flush."""
        pump = self.connect(self.targets().index(("h2", 5002)), 2)
        self.network.stopService()
        pump.flush()
        self.assertTrue(pump.clientIO.disconnected)
        self.assertEqual(self.network.connected(), [])

    def test_set_peers_new_address(self):
        """A peer whose address changed gets a new link to the new address."""
        self.network.set_peers({2: ("h2", 6002), 3: ("h3", 5003)})
        self.assertEqual(self.targets()[-1], ("h2", 6002))
        self.assertEqual(len(self.reactor.tcpClients), 3)
