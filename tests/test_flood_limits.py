"""
Limits against floods on the peer and admin ports (issue 13, part 6):
connections past a port's cap are closed as they are accepted, logged, and
free a place when they go; a peer connection's partial messages are
bounded by the configured buffer; the limits are configuration keys.
"""

from __future__ import annotations

import socket

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvpaxos.config import ConfigError, build
from kvpaxos.node.connection_cap import ConnectionCap
from kvpaxos.node.peer_flow import ChunkError
from kvpaxos.testing.processes import ProcessCluster
from kvpaxos.v1 import kv_pb2
from twisted.internet.protocol import Factory, Protocol


class ConnectionCapTests(SynchronousTestCase):
    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        if protocol is None:
            return None
        protocol.makeConnection(StringTransport())
        return protocol

    def test_cap(self):
        """At most C{limit} open; one more is refused and logged (first, then powers of ten); a closed one frees a place."""
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        factory = ConnectionCap(Factory.forProtocol(Protocol), 3, "peer")
        opened = [self.connect(factory) for _ in range(3)]
        self.assertEqual(factory.open, 3)
        for _ in range(10):
            self.assertIsNone(self.connect(factory))
        self.assertEqual(factory.refused.count, 10)
        lines = [e for e in logged if "refused a peer connection" in e.get("log_format", "")]
        self.assertEqual(len(lines), 2)  # the 1st and the 10th
        opened[0].connectionLost(Failure(ConnectionDone()))
        self.assertEqual(factory.open, 2)
        self.assertIsNotNone(self.connect(factory))


class PeerBufferTests(SynchronousTestCase):
    def test_partial_messages_are_bounded(self):
        """
        The peer network's buffer reaches each connection it serves: its
        partial messages, and its forwarded commands, may each hold half.
        """
        from twisted.internet.task import Clock

        from kvpaxos.node.peers import PeerNetwork

        network = PeerNetwork(1, {}, None, Clock(), buffer_bytes=8 * 1024 * 1024)
        protocol = network.listener_factory().wrappedFactory.buildProtocol(None)
        piece = b"x" * 60_000
        for streams in (protocol._messages, protocol._commands):
            taken = 0
            with self.assertRaises(ChunkError):
                for index in range(200):
                    streams.add(0, index, False, piece)
                    taken += len(piece)
            self.assertLessEqual(taken, 4 * 1024 * 1024)
            self.assertGreater(taken, 4 * 1024 * 1024 - len(piece) * 2)


class AdminIdleTests(SynchronousTestCase):
    def test_idle_connection_is_closed(self):
        """An admin connection that sends nothing (an idle socket, a stalled handshake) is closed after IDLE_S."""
        from twisted.internet.task import Clock

        from kvpaxos.admin import server

        class Node:
            reactor = Clock()

        protocol = server.admin_factory(Node()).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        Node.reactor.advance(server.IDLE_S - 1)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"\x00")  # a byte resets it
        Node.reactor.advance(server.IDLE_S - 1)
        self.assertFalse(transport.disconnecting)
        Node.reactor.advance(2)
        self.assertTrue(transport.disconnecting)


class LimitConfigTests(SynchronousTestCase):
    def test_keys(self):
        node = build({"peer_connections_max": 8, "peer_buffer_bytes": 8 << 20, "admin_connections_max": 5,
                      "admin_buffer_bytes": 8192})
        self.assertEqual((node.peer_connections_max, node.peer_buffer_bytes, node.admin_connections_max,
                          node.admin_buffer_bytes), (8, 8 << 20, 5, 8192))
        for values, says in (({"peer_connections_max": 1}, "at least 4"),
                             ({"peer_buffer_bytes": 1 << 20}, "at least 8 MiB"),
                             ({"admin_buffer_bytes": 10}, "at least 4096")):
            self.assertIn(says, str(self.assertRaises(ConfigError, build, values)))


class FloodClusterTests(TestCase):
    def test_peer_and_admin_ports_cap_connections(self):
        """
        A real node with caps of 8: 40 idle connections to each port leave
        at most 8 open (the rest closed by the node at once), the refusals
        are logged, and the node keeps serving writes and its admin port
        once they go.
        """
        cluster = ProcessCluster(self.mktemp(), size=1,
                                 settings={"peer_connections_max": 8, "admin_connections_max": 8})
        self.addCleanup(cluster.stop)
        cluster.start()
        node = cluster.nodes[cluster.wait_for_leader(timeout_s=20)]
        for port, what in ((node.peer_port, "peer"), (node.admin_port, "admin")):
            sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
            open_ = 0
            for s in sockets:
                s.settimeout(0.5)
                try:
                    closed = s.recv(1) == b""
                except socket.timeout:
                    closed = False
                except ConnectionResetError:
                    closed = True
                open_ += not closed
            self.assertLessEqual(open_, 8, what)
            self.assertGreaterEqual(open_, 1, what)
            cluster.wait_for(lambda: f"refused a {what} connection" in node.log(), 10, f"the {what} refusal logged")
            for s in sockets:
                s.close()
        node.kv().Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=5)
        status, members, stderr = cluster.wait_for(
            lambda: (lambda r: r if r[0] == 0 else None)(cluster.admin(node.id, "member", "list")), 20,
            "the admin port to serve again")
        self.assertEqual([m["member_id"] for m in members["members"]], [node.id])
