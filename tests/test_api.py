"""
Tests for the gRPC edge (L{kvpaxos.api.server}, L{kvpaxos.api.statuses}, L{kvpaxos.api.errors}).

A real grpcio server listens on 127.0.0.1 with an ephemeral port, in front of
L{FakeNode}.  There is no global reactor: L{ThreadedTestReactor} queues what
grpcio's threads hand to C{callFromThread}, and the test thread runs that
queue (it *is* the reactor thread), so the test decides exactly when the
node is called.  Every wait is bounded; nothing sleeps.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kvpaxos.api import errors, statuses
from kvpaxos.api.endpoints import CHANNEL_OPTIONS, BadEndpoint
from kvpaxos.api.limits import MAX_MESSAGE_BYTES
from kvpaxos.api.server import SERVICE_NAMES, GrpcServer, ReactorCrossing
from kvpaxos.api.servicers import NODE_TIMEOUT_SHARE
from kvpaxos.kv import machine
from kvpaxos.kv.commands import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    TO_THE_END,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    InvalidArgument,
    Op,
    Put,
    Range,
    Request,
    SessionExpired,
    StaleSequence,
    Txn,
    compare_and_swap,
    prefix_end,
)
from kvpaxos.encoding.commands import decode_request, encode_request
from kvpaxos.node.interfaces import IKeyValueNode, NodeStatus, NotLeaderError, Unavailable
from kvpaxos.storage.memory import MemoryState
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc

#: The longest any test waits for anything.
BOUND_S = 10.0


class ThreadedTestReactor:
    """
    Just C{callFromThread}: calls from any thread are queued, and the test
    thread runs them in L{pump_until}.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()

    def callFromThread(self, f, *args, **kwargs) -> None:
        self._queue.put((f, args, kwargs))

    def wake(self, *ignored) -> None:
        """Make a pumping test thread look at its condition again."""
        self._queue.put((lambda: None, (), {}))

    def idle(self) -> bool:
        """Return whether no call is queued."""
        return self._queue.empty()

    def pump_until(self, done: Callable[[], bool], bound_s: float = BOUND_S) -> None:
        """Run queued calls until C{done()}; fail the test after C{bound_s}."""
        deadline = time.monotonic() + bound_s
        while not done():
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                f, args, kwargs = self._queue.get(timeout=remaining)
            except queue.Empty:
                raise AssertionError(f"not done within {bound_s}s") from None
            f(*args, **kwargs)


@implementer(IKeyValueNode)
class FakeNode:
    """
    An in-memory L{IKeyValueNode}: each submitted request is encoded and
    decoded as the log would carry it and applied to a L{MemoryState} by the
    real state machine (revisions, transactions and sessions included);
    reads are served from that state.  Records its calls and the thread they
    came from.  C{answer}, when set, replaces the result of C{submit},
    C{get} and C{range}: it is called and returns a Deferred (or raises).
    """

    def __init__(self) -> None:
        self.state = MemoryState()
        self.slot = 0
        self.calls: list[tuple] = []
        self.threads: set[int] = set()
        self.answer: Callable[[], defer.Deferred] | None = None

    def write(self, key: bytes, value: bytes) -> None:
        """Put C{value} under C{key} directly, without recording a call."""
        self._apply(Request(Op.PUT, key, value))

    def submit(self, request: Request, timeout_s: float) -> defer.Deferred:
        self._called("submit", request, timeout_s)
        if self.answer is not None:
            return self.answer()
        return defer.succeed(self._apply(request))

    def get(self, key: bytes, timeout_s: float, consistency: str = "linearizable") -> defer.Deferred:
        self._called("get", key, timeout_s, consistency)
        if self.answer is not None:
            return self.answer()
        kv = self.state.get(key)
        return defer.succeed(None if kv is None else kv.value)

    def range(self, query: Range, timeout_s: float, consistency: str = "linearizable") -> defer.Deferred:
        self._called("range", query, timeout_s, consistency)
        if self.answer is not None:
            return self.answer()
        return defer.succeed(machine.read_range(self.state, query))

    def status(self) -> NodeStatus:
        self.threads.add(threading.get_ident())
        return NodeStatus(
            member_id=1, role="follower", leader=2, voters=(3, 1, 2), learners=(4,),
            chosen_index=17, applied_index=16, ballot_round=5,
        )

    def _apply(self, request: Request):
        self.slot += 1
        return machine.apply(self.state, decode_request(encode_request(request)), self.slot)

    def _called(self, *call) -> None:
        self.threads.add(threading.get_ident())
        self.calls.append(call)


class ServerFixture:
    """Starting, calling and stopping servers on ephemeral ports."""

    def start_server(self, request_timeout_s: float = 5.0) -> GrpcServer:
        """Start a server on 127.0.0.1 and an ephemeral port; stop it in cleanup."""
        server = GrpcServer(self.node, "127.0.0.1:0", self.reactor, request_timeout_s=request_timeout_s)
        server.startService()
        self.addCleanup(self.stop, server)
        return server

    def stop(self, server: GrpcServer) -> None:
        """Stop C{server}, pumping until its stop Deferred fires."""
        stopped = server.stopService()
        self.reactor.pump_until(lambda: stopped.called)

    def connect(self, server: GrpcServer) -> grpc.Channel:
        """Return a channel to C{server}, closed in cleanup."""
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS)
        self.addCleanup(channel.close)
        return channel

    def rpc(self, method, request, timeout_s: float = BOUND_S):
        """Start C{method(request)} and pump until it completes; return its future."""
        call = method.future(request, timeout=timeout_s)
        call.add_done_callback(self.reactor.wake)
        self.reactor.pump_until(call.done)
        return call

    def assertStatus(self, call, code: grpc.StatusCode, reason=None, metadata=None) -> str:
        """
        Assert that C{call} failed with C{code} and, if given, an ErrorInfo
        of C{reason} holding C{metadata} (and the answering member's id);
        return its details.
        """
        error = call.exception()
        self.assertIsNotNone(error, "the call succeeded")
        self.assertEqual(error.code(), code, error.details())
        if reason is not None:
            info = errors.error_details(error)
            self.assertIsNotNone(info, "no ErrorInfo attached")
            self.assertEqual(info.reason, reason)
            self.assertEqual(errors.REASONS[reason], code)
            for key, value in (metadata or {}).items():
                self.assertEqual(info.metadata.get(key), str(value), key)
        return error.details()


class RunningServer(ServerFixture):
    """A started server in front of a fresh L{FakeNode}, with stubs for it."""

    request_timeout_s = 5.0

    def setUp(self) -> None:
        self.reactor = ThreadedTestReactor()
        self.node = FakeNode()
        self.server = self.start_server(self.request_timeout_s)
        self.channel = self.connect(self.server)
        self.kv = kv_pb2_grpc.KVStub(self.channel)
        self.cluster = kv_pb2_grpc.ClusterStub(self.channel)


class GrpcServerTests(RunningServer, SynchronousTestCase):
    """A real grpcio server on 127.0.0.1 in front of a L{FakeNode}."""

    def test_put_then_get(self) -> None:
        """A Put reaches the node as a Request and a Get reads the value back."""
        put = self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v")).result()
        got = self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k")).result()
        self.assertFalse(put.existed)
        self.assertEqual((got.found, got.value), (True, b"v"))
        self.assertEqual(self.node.calls[0][:2], ("submit", Request(Op.PUT, b"k", b"v")))
        self.assertEqual(self.node.calls[1][:2], ("range", Range(b"k")))

    def test_header(self) -> None:
        """Every response names the answering member and the leader it knows of."""
        put = self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v")).result()
        self.assertEqual((put.header.member_id, put.header.leader_id), (1, 2))

    def test_put_existed(self) -> None:
        """A second Put of a key reports that the key existed."""
        self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v")).result()
        put = self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"w")).result()
        self.assertTrue(put.existed)

    def test_get_missing(self) -> None:
        """A Get of a missing key answers found=false with an empty value and no record."""
        got = self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"nope")).result()
        self.assertEqual((got.found, got.value, got.HasField("kv")), (False, b"", False))

    def test_get_empty_value(self) -> None:
        """A key holding the empty value is found."""
        self.node.write(b"k", b"")
        got = self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k")).result()
        self.assertEqual((got.found, got.value), (True, b""))

    def test_delete(self) -> None:
        """Delete maps to a DELETE request and reports whether the key existed."""
        self.node.write(b"k", b"v")
        first = self.rpc(self.kv.Delete, kv_pb2.DeleteRequest(key=b"k")).result()
        second = self.rpc(self.kv.Delete, kv_pb2.DeleteRequest(key=b"k")).result()
        self.assertEqual((first.deleted, second.deleted), (True, False))
        self.assertEqual(self.node.calls[0][1], Request(Op.DELETE, b"k"))

    def test_append(self) -> None:
        """Append maps to an APPEND request and returns the new value."""
        first = self.rpc(self.kv.Append, kv_pb2.AppendRequest(key=b"k", value=b"ab")).result()
        second = self.rpc(self.kv.Append, kv_pb2.AppendRequest(key=b"k", value=b"cd")).result()
        self.assertEqual((first.value, first.existed), (b"ab", False))
        self.assertEqual((second.value, second.existed), (b"abcd", True))
        self.assertEqual(self.node.calls[1][1], Request(Op.APPEND, b"k", b"cd"))

    def test_status(self) -> None:
        """Status reports the node's view of the cluster."""
        status = self.rpc(self.cluster.Status, kv_pb2.StatusRequest()).result()
        self.assertEqual(
            (status.member_id, status.role, status.leader_id, list(status.voters),
             list(status.learners), status.chosen_index, status.applied_index, status.ballot_round),
            (1, "follower", 2, [1, 2, 3], [4], 17, 16, 5),
        )
        self.assertEqual(status.header.member_id, 1)

    def test_node_called_in_reactor_thread(self) -> None:
        """The node is called only in the thread that runs the reactor."""
        self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v")).result()
        self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k")).result()
        self.assertEqual(self.node.threads, {threading.get_ident()})

    def test_node_timeout_within_request_timeout(self) -> None:
        """The node is given a timeout no longer than the server's request timeout."""
        self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k")).result()
        self.assertTrue(0 < self.node.calls[0][2] <= self.request_timeout_s)

    def test_node_timeout_within_client_deadline(self) -> None:
        """A client deadline shorter than the request timeout bounds the node's timeout."""
        self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k"), timeout_s=2.0).result()
        self.assertTrue(0 < self.node.calls[0][2] <= 2.0)

    def test_largest_value(self) -> None:
        """A value of exactly 1 MiB passes through gRPC and validation."""
        value = b"x" * MAX_VALUE_BYTES
        self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=value)).result()
        got = self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k")).result()
        self.assertEqual(got.value, value)

    def test_empty_key(self) -> None:
        """An empty key is INVALID_ARGUMENT and never reaches the node."""
        details = self.assertStatus(
            self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"", value=b"v")),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        self.assertIn("empty key", details)
        self.assertEqual(self.node.calls, [])

    def test_long_key(self) -> None:
        """A 512-byte key is INVALID_ARGUMENT and never reaches the node."""
        details = self.assertStatus(
            self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k" * (MAX_KEY_BYTES + 1))),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        self.assertIn("512", details)
        self.assertEqual(self.node.calls, [])

    def test_long_value(self) -> None:
        """A value of 1 MiB + 1 byte is INVALID_ARGUMENT and never reaches the node."""
        details = self.assertStatus(
            self.rpc(self.kv.Append, kv_pb2.AppendRequest(key=b"k", value=b"x" * (MAX_VALUE_BYTES + 1))),
            grpc.StatusCode.INVALID_ARGUMENT, errors.INVALID_ARGUMENT, {errors.MEMBER_ID: 1},
        )
        self.assertIn(str(MAX_VALUE_BYTES + 1), details)
        self.assertEqual(self.node.calls, [])

    def test_node_invalid_argument(self) -> None:
        """An InvalidArgument from the node is INVALID_ARGUMENT with its message."""
        self.node.answer = lambda: defer.fail(InvalidArgument("bad"))
        details = self.assertStatus(
            self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v")),
            grpc.StatusCode.INVALID_ARGUMENT, errors.INVALID_ARGUMENT, {errors.MEMBER_ID: 1},
        )
        self.assertEqual(details, "bad")

    def test_unavailable(self) -> None:
        """An Unavailable from the node is UNAVAILABLE naming the leader it knows of, in words and as data."""
        self.node.answer = lambda: defer.fail(Unavailable("no quorum before deadline", leader=3))
        details = self.assertStatus(
            self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v")),
            grpc.StatusCode.UNAVAILABLE, errors.UNAVAILABLE, {errors.LEADER_ID: 3, errors.MEMBER_ID: 1},
        )
        self.assertEqual(details, "no quorum before deadline; leader is 3")

    def test_not_leader(self) -> None:
        """The node's NotLeaderError is the API's one not-leader error: UNAVAILABLE, reason NOT_LEADER, the leader's id."""
        self.node.answer = lambda: defer.fail(NotLeaderError(2))
        self.assertStatus(
            self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v")),
            grpc.StatusCode.UNAVAILABLE, errors.NOT_LEADER, {errors.LEADER_ID: 2},
        )

    def test_unavailable_leader_unknown(self) -> None:
        """An Unavailable naming no leader carries no leader id."""
        self.node.answer = lambda: defer.fail(Unavailable("no quorum before deadline"))
        call = self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v"))
        self.assertStatus(call, grpc.StatusCode.UNAVAILABLE, errors.UNAVAILABLE)
        self.assertNotIn(errors.LEADER_ID, errors.error_details(call.exception()).metadata)

    def test_internal(self) -> None:
        """Any other node failure is INTERNAL with its message, and is logged."""
        self.node.answer = lambda: defer.fail(RuntimeError("boom"))
        details = self.assertStatus(
            self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k")), grpc.StatusCode.INTERNAL, errors.INTERNAL
        )
        self.assertIn("boom", details)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_health_serving(self) -> None:
        """The standard health service reports SERVING for the server and each service."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        for service in ("", "kvpaxos.v1.KV", "kvpaxos.v1.Cluster"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=BOUND_S)
            self.assertEqual(response.status, health_pb2.HealthCheckResponse.SERVING, service)

    def test_reflection(self) -> None:
        """Server reflection lists KV, Cluster, health and reflection."""
        services = ProtoReflectionDescriptorDatabase(self.channel).get_services()
        self.assertEqual(sorted(services), sorted(SERVICE_NAMES))
        self.assertIn("kvpaxos.v1.KV", services)

    def test_batching(self) -> None:
        """Requests queued before the reactor turns cross into it in one drain."""
        count = 20
        queued = threading.Condition()
        enqueued = []
        enqueue = self.server.crossing.enqueue

        def counting_enqueue(call, done):
            crossing = enqueue(call, done)
            with queued:
                enqueued.append(crossing)
                queued.notify_all()
            return crossing

        self.server.crossing.enqueue = counting_enqueue
        calls = [self.kv.Get.future(kv_pb2.GetRequest(key=b"k%d" % i), timeout=BOUND_S) for i in range(count)]
        with queued:
            self.assertTrue(queued.wait_for(lambda: len(enqueued) == count, timeout=BOUND_S))
        for call in calls:
            call.add_done_callback(self.reactor.wake)
        self.reactor.pump_until(lambda: all(call.done() for call in calls))
        self.assertEqual([call.result().found for call in calls], [False] * count)
        self.assertEqual((self.server.crossing.drains, self.server.crossing.calls), (1, count))

    def test_bad_address(self) -> None:
        """An address without a port is refused when the server is made."""
        self.assertRaises(BadEndpoint, GrpcServer, self.node, "localhost", self.reactor)

    def test_port_in_use(self) -> None:
        """A second server on a bound port fails to start with CannotListenError."""
        other = GrpcServer(self.node, f"127.0.0.1:{self.server.port}", self.reactor)
        self.assertRaises(CannotListenError, other.startService)
        self.assertFalse(other.running)


class RevisionAndSessionTests(RunningServer, SynchronousTestCase):
    """Revisions in headers, records in reads, prev_kv, and exactly-once sessions."""

    def open_session(self) -> int:
        """Open a session through the API and return its client id."""
        return self.rpc(self.kv.OpenSession, kv_pb2.OpenSessionRequest()).result().client_id

    def test_get_record(self) -> None:
        """A Get answers the key's record and the revision it read at."""
        self.node.write(b"a", b"1")
        self.node.write(b"k", b"v")
        self.node.write(b"k", b"w")
        got = self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k")).result()
        self.assertEqual((got.found, got.value, got.header.revision), (True, b"w", 3))
        self.assertEqual(got.kv, kv_pb2.KeyValue(key=b"k", value=b"w", version=2, create_revision=2, mod_revision=3))

    def test_get_consistency(self) -> None:
        """A Get's read consistency reaches the node by name."""
        for consistency, name in ((kv_pb2.LINEARIZABLE, "linearizable"),
                                  (kv_pb2.SERIALIZABLE, "serializable"), (kv_pb2.LEASE, "lease")):
            self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k", consistency=consistency)).result()
            self.assertEqual(self.node.calls[-1][3], name)

    def test_unknown_consistency(self) -> None:
        """A read consistency this server does not know is INVALID_ARGUMENT and never reaches the node."""
        details = self.assertStatus(
            self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k", consistency=7)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        self.assertIn("consistency", details)
        self.assertEqual(self.node.calls, [])

    def test_write_revisions(self) -> None:
        """Put, Append and Delete headers carry the revision each write made."""
        put = self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v")).result()
        append = self.rpc(self.kv.Append, kv_pb2.AppendRequest(key=b"k", value=b"w")).result()
        delete = self.rpc(self.kv.Delete, kv_pb2.DeleteRequest(key=b"k")).result()
        self.assertEqual([r.header.revision for r in (put, append, delete)], [1, 2, 3])

    def test_put_prev_kv(self) -> None:
        """A Put with prev_kv answers the record it replaced, and none for a new key."""
        first = self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v", prev_kv=True)).result()
        second = self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"w", prev_kv=True)).result()
        self.assertFalse(first.HasField("prev_kv"))
        self.assertEqual(second.prev_kv, kv_pb2.KeyValue(key=b"k", value=b"v", version=1, create_revision=1, mod_revision=1))
        self.assertEqual(self.node.calls[1][1], Request(Op.PUT, b"k", b"w", prev_kv=True))

    def test_delete_prev_kv(self) -> None:
        """A Delete with prev_kv answers the record it deleted."""
        self.node.write(b"k", b"v")
        deleted = self.rpc(self.kv.Delete, kv_pb2.DeleteRequest(key=b"k", prev_kv=True)).result()
        self.assertEqual((deleted.deleted, deleted.prev_kv.value, deleted.header.revision), (True, b"v", 2))
        self.assertEqual(self.node.calls[0][1], Request(Op.DELETE, b"k", prev_kv=True))

    def test_open_session(self) -> None:
        """OpenSession submits an OPEN_SESSION request and answers the client id assigned."""
        self.assertEqual((self.open_session(), self.open_session()), (1, 2))
        self.assertEqual(self.node.calls[0][1], Request(Op.OPEN_SESSION))

    def test_session_fields(self) -> None:
        """Put, Delete and Append pass their client id and sequence to the node."""
        client = self.open_session()
        self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v", client_id=client, sequence=1)).result()
        self.rpc(self.kv.Append, kv_pb2.AppendRequest(key=b"k", value=b"w", client_id=client, sequence=2)).result()
        self.rpc(self.kv.Delete, kv_pb2.DeleteRequest(key=b"k", client_id=client, sequence=3)).result()
        self.assertEqual([call[1] for call in self.node.calls[1:]], [
            Request(Op.PUT, b"k", b"v", client_id=client, sequence=1),
            Request(Op.APPEND, b"k", b"w", client_id=client, sequence=2),
            Request(Op.DELETE, b"k", client_id=client, sequence=3),
        ])

    def test_retry_answered_again(self) -> None:
        """A retried Append with the same session and sequence applies once and gets the first answer."""
        client = self.open_session()
        request = kv_pb2.AppendRequest(key=b"k", value=b"ab", client_id=client, sequence=1)
        first = self.rpc(self.kv.Append, request).result()
        again = self.rpc(self.kv.Append, request).result()
        self.assertEqual((again.value, again.header.revision), (first.value, first.header.revision))
        self.assertEqual(self.node.state.get(b"k").value, b"ab")

    def test_half_a_session(self) -> None:
        """A client id without a sequence is INVALID_ARGUMENT and never reaches the node."""
        self.assertStatus(
            self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v", client_id=1)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        self.assertEqual(self.node.calls, [])

    def test_stale_sequence(self) -> None:
        """A sequence below the session's last is FAILED_PRECONDITION "stale sequence: ..."."""
        client = self.open_session()
        self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v", client_id=client, sequence=2)).result()
        details = self.assertStatus(
            self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"w", client_id=client, sequence=1)),
            grpc.StatusCode.FAILED_PRECONDITION, errors.STALE_SEQUENCE,
            {errors.CLIENT_ID: client, errors.SEQUENCE: 1, errors.LAST_SEQUENCE: 2},
        )
        self.assertEqual(details, f"stale sequence: sequence 1 of session {client} is below its last sequence, 2")

    def test_session_expired(self) -> None:
        """A request of a session the node does not hold is FAILED_PRECONDITION "session expired: ..."."""
        details = self.assertStatus(
            self.rpc(self.kv.Delete, kv_pb2.DeleteRequest(key=b"k", client_id=99, sequence=1)),
            grpc.StatusCode.FAILED_PRECONDITION, errors.SESSION_EXPIRED, {errors.CLIENT_ID: 99},
        )
        self.assertEqual(details, statuses.SESSION_EXPIRED)
        self.assertTrue(details.startswith("session expired: "))

    def test_sequence_reused(self) -> None:
        """A sequence first used by a Txn and then by a Put is FAILED_PRECONDITION, not a wrong answer."""
        client = self.open_session()
        self.rpc(self.kv.Txn, kv_pb2.TxnRequest(client_id=client, sequence=1)).result()
        details = self.assertStatus(
            self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v", client_id=client, sequence=1)),
            grpc.StatusCode.FAILED_PRECONDITION, errors.SEQUENCE_REUSED, {errors.CLIENT_ID: client, errors.SEQUENCE: 1},
        )
        self.assertIn("sequence reused", details)


class RangeTests(RunningServer, SynchronousTestCase):
    """The Range RPC: conversion to a L{Range} query, and paging under the message limit."""

    def range(self, **fields) -> kv_pb2.RangeResponse:
        """Return the answer to a RangeRequest of C{fields}."""
        return self.rpc(self.kv.Range, kv_pb2.RangeRequest(**fields)).result()

    def write_keys(self, *keys: bytes) -> None:
        """Write each key with itself as its value."""
        for key in keys:
            self.node.write(key, key)

    def test_range(self) -> None:
        """A Range answers the records in [key, range_end) in key order, with count and revision."""
        self.write_keys(b"a", b"b", b"c", b"d")
        got = self.range(key=b"b", range_end=b"d", consistency=kv_pb2.SERIALIZABLE)
        self.assertEqual([kv.key for kv in got.kvs], [b"b", b"c"])
        self.assertEqual((got.count, got.more, got.header.revision), (2, False, 4))
        self.assertEqual(self.node.calls[0][1:2] + self.node.calls[0][3:], (Range(b"b", b"d"), "serializable"))

    def test_one_key(self) -> None:
        """An empty range_end asks for the one key (end None)."""
        self.write_keys(b"a", b"ab")
        got = self.range(key=b"a")
        self.assertEqual([kv.key for kv in got.kvs], [b"a"])
        self.assertEqual(self.node.calls[0][1], Range(b"a"))

    def test_limit_keys_only_count_only(self) -> None:
        """limit, keys_only and count_only reach the node; count stays the range's total."""
        self.write_keys(b"a", b"b", b"c")
        limited = self.range(key=b"a", range_end=TO_THE_END, limit=2, keys_only=True)
        counted = self.range(key=b"a", range_end=TO_THE_END, count_only=True)
        self.assertEqual([(kv.key, kv.value) for kv in limited.kvs], [(b"a", b""), (b"b", b"")])
        self.assertEqual((limited.more, limited.count), (True, 3))
        self.assertEqual((len(counted.kvs), counted.count), (0, 3))
        self.assertEqual(self.node.calls[0][1], Range(b"a", TO_THE_END, 2, keys_only=True))
        self.assertEqual(self.node.calls[1][1], Range(b"a", TO_THE_END, count_only=True))

    def test_bad_range(self) -> None:
        """A negative limit or an empty key is INVALID_ARGUMENT and never reaches the node."""
        for request in (kv_pb2.RangeRequest(key=b"a", limit=-1), kv_pb2.RangeRequest(range_end=b"z")):
            self.assertStatus(self.rpc(self.kv.Range, request), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(self.node.calls, [])

    def test_paging(self) -> None:
        """Many large values come back in pages under the message limit, each with more=True but the last."""
        keys = [b"k%d" % i for i in range(8)]
        for key in keys:
            self.node.write(key, b"x" * MAX_VALUE_BYTES)
        seen, pages, start, more = [], 0, b"k", True
        while more:
            got = self.range(key=start, range_end=prefix_end(b"k"))
            self.assertLess(got.ByteSize(), MAX_MESSAGE_BYTES)
            self.assertGreater(len(got.kvs), 0)
            self.assertEqual(got.count, len(keys) - len(seen))
            seen += [kv.key for kv in got.kvs]
            pages, start, more = pages + 1, got.kvs[-1].key + b"\0", got.more
        self.assertEqual(seen, keys)
        self.assertGreater(pages, 2)


EQ, NE, LT, GT = (kv_pb2.Compare.EQUAL, kv_pb2.Compare.NOT_EQUAL, kv_pb2.Compare.LESS,
                  kv_pb2.Compare.GREATER)


def put_op(key: bytes, value: bytes, prev_kv: bool = False) -> kv_pb2.RequestOp:
    """Return a RequestOp putting C{value} under C{key}."""
    return kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=key, value=value, prev_kv=prev_kv))


def range_op(key: bytes, range_end: bytes = b"") -> kv_pb2.RequestOp:
    """Return a RequestOp reading [key, range_end)."""
    return kv_pb2.RequestOp(request_range=kv_pb2.RangeRequest(key=key, range_end=range_end))


def delete_op(key: bytes, range_end: bytes = b"", prev_kv: bool = False) -> kv_pb2.RequestOp:
    """Return a RequestOp deleting [key, range_end)."""
    return kv_pb2.RequestOp(request_delete_range=kv_pb2.DeleteRangeRequest(
        key=key, range_end=range_end, prev_kv=prev_kv))


class TxnTests(RunningServer, SynchronousTestCase):
    """The Txn and CompareAndSwap RPCs."""

    def txn(self, **fields):
        """Return the call of a TxnRequest of C{fields}."""
        return self.rpc(self.kv.Txn, kv_pb2.TxnRequest(**fields))

    def test_compare_operands(self) -> None:
        """Each compare target reaches the node with the operand from its own oneof field."""
        self.node.write(b"k", b"v")
        compares = [
            kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.VALUE, result=EQ, value=b"v"),
            kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.VERSION, result=GT, version=0),
            kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.CREATE_REVISION, result=LT, create_revision=2),
            kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.MOD_REVISION, result=NE, mod_revision=5),
            kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.EXISTS, result=EQ, exists=True),
        ]
        got = self.txn(compare=compares).result()
        self.assertTrue(got.succeeded)
        self.assertEqual(self.node.calls[0][1].txn.compares, (
            Compare(b"k", CompareTarget.VALUE, CompareResult.EQUAL, b"v"),
            Compare(b"k", CompareTarget.VERSION, CompareResult.GREATER, 0),
            Compare(b"k", CompareTarget.CREATE_REVISION, CompareResult.LESS, 2),
            Compare(b"k", CompareTarget.MOD_REVISION, CompareResult.NOT_EQUAL, 5),
            Compare(b"k", CompareTarget.EXISTS, CompareResult.EQUAL, True),
        ))

    def test_ops_and_responses(self) -> None:
        """A Txn's put, delete-range and range ops reach the node, and each answers in kind at one revision."""
        self.node.write(b"a", b"1")
        self.node.write(b"b", b"2")
        got = self.txn(
            compare=[kv_pb2.Compare(key=b"a", target=kv_pb2.Compare.EXISTS, result=EQ, exists=True)],
            success=[put_op(b"a", b"one", prev_kv=True), delete_op(b"b", b"c", prev_kv=True), range_op(b"a", TO_THE_END)],
            failure=[range_op(b"a")],
            client_id=0,
        ).result()
        self.assertEqual(self.node.calls[0][1], Request(Op.TXN, txn=Txn(
            (Compare(b"a", CompareTarget.EXISTS, CompareResult.EQUAL, True),),
            (Put(b"a", b"one", True), DeleteRange(b"b", b"c", True), Range(b"a", TO_THE_END)),
            (Range(b"a"),),
        )))
        put, delete, read = (op.WhichOneof("response") for op in got.responses)
        self.assertEqual((put, delete, read), ("response_put", "response_delete_range", "response_range"))
        put, delete, read = got.responses
        self.assertEqual((got.succeeded, got.header.revision), (True, 3))
        self.assertEqual((put.response_put.existed, put.response_put.prev_kv.value), (True, b"1"))
        self.assertEqual((delete.response_delete_range.deleted, [kv.key for kv in delete.response_delete_range.prev_kvs]),
                         (1, [b"b"]))
        self.assertEqual([(kv.key, kv.value) for kv in read.response_range.kvs], [(b"a", b"one")])
        self.assertEqual(read.response_range.header, got.header)

    def test_failure_branch(self) -> None:
        """A compare that fails applies the failure ops and answers succeeded=false."""
        got = self.txn(
            compare=[kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.VALUE, result=EQ, value=b"v")],
            success=[put_op(b"k", b"v")],
            failure=[put_op(b"other", b"x")],
        ).result()
        self.assertFalse(got.succeeded)
        self.assertEqual((self.node.state.get(b"k"), self.node.state.get(b"other").value), (None, b"x"))

    def test_session_fields(self) -> None:
        """A Txn's client id and sequence reach the node; those inside its puts are ignored."""
        client = self.rpc(self.kv.OpenSession, kv_pb2.OpenSessionRequest()).result().client_id
        op = kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=b"k", value=b"v", client_id=7, sequence=9))
        self.txn(success=[op], client_id=client, sequence=1).result()
        request = self.node.calls[1][1]
        self.assertEqual((request.client_id, request.sequence, request.txn.success), (client, 1, (Put(b"k", b"v"),)))

    def test_invalid_txn(self) -> None:
        """A Txn that converts or validates badly is INVALID_ARGUMENT and never reaches the node."""
        bad = [
            {"success": [put_op(b"k", b"1"), put_op(b"k", b"2")]},
            {"compare": [kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.VERSION, value=b"1")]},
            {"compare": [kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.VERSION, version=-1)]},
            {"failure": [kv_pb2.RequestOp()]},
            {"success": [range_op(b"")]},
            {"client_id": 3},
        ]
        for fields in bad:
            self.assertStatus(self.txn(**fields), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(self.node.calls, [])

    def test_range_capped(self) -> None:
        """Ranges inside a Txn share the size cap and say more=True when cut."""
        for i in range(4):
            self.node.write(b"k%d" % i, b"x" * MAX_VALUE_BYTES)
        got = self.txn(success=[range_op(b"k", TO_THE_END), range_op(b"k", TO_THE_END)]).result()
        first, second = (op.response_range for op in got.responses)
        self.assertLess(got.ByteSize(), MAX_MESSAGE_BYTES)
        self.assertEqual((first.more, first.count, second.more, second.count), (True, 4, True, 4))
        self.assertGreater(len(first.kvs), 0)

    def test_response_too_large(self) -> None:
        """A Txn whose deleted records do not fit in one message is RESOURCE_EXHAUSTED naming its revision."""
        for i in range(5):
            self.node.write(b"k%d" % i, b"x" * MAX_VALUE_BYTES)
        details = self.assertStatus(
            self.txn(success=[delete_op(b"k", TO_THE_END, prev_kv=True)]), grpc.StatusCode.RESOURCE_EXHAUSTED,
            errors.RESPONSE_TOO_LARGE, {errors.REVISION: 6},
        )
        self.assertIn("applied at revision 6", details)
        self.assertIsNone(self.node.state.get(b"k0"))

    def test_cas_absent(self) -> None:
        """A CompareAndSwap with no expectation creates a missing key (expected version 0)."""
        got = self.rpc(self.kv.CompareAndSwap, kv_pb2.CompareAndSwapRequest(key=b"k", value=b"v")).result()
        self.assertEqual((got.succeeded, got.HasField("current"), got.header.revision), (True, False, 1))
        self.assertEqual(self.node.calls[0][1], compare_and_swap(b"k", b"v", expected_version=0))

    def test_cas_expected_value(self) -> None:
        """A CompareAndSwap on the expected value swaps it, with its session fields passed through."""
        self.node.write(b"k", b"v")
        client = self.rpc(self.kv.OpenSession, kv_pb2.OpenSessionRequest()).result().client_id
        request = kv_pb2.CompareAndSwapRequest(key=b"k", value=b"w", expected_value=b"v", client_id=client, sequence=1)
        got = self.rpc(self.kv.CompareAndSwap, request).result()
        self.assertTrue(got.succeeded)
        self.assertEqual(self.node.calls[1][1],
                         compare_and_swap(b"k", b"w", expected_value=b"v", client_id=client, sequence=1))
        self.assertEqual(self.node.state.get(b"k").value, b"w")

    def test_cas_failure_current(self) -> None:
        """A CompareAndSwap that does not swap answers the key's current record."""
        self.node.write(b"k", b"v")
        got = self.rpc(self.kv.CompareAndSwap, kv_pb2.CompareAndSwapRequest(key=b"k", value=b"w", expected_version=5)).result()
        self.assertFalse(got.succeeded)
        self.assertEqual(got.current, kv_pb2.KeyValue(key=b"k", value=b"v", version=1, create_revision=1, mod_revision=1))
        self.assertEqual(got.header.revision, 1)

    def test_cas_failure_absent(self) -> None:
        """A CompareAndSwap expecting a value of a missing key fails with no current record."""
        got = self.rpc(self.kv.CompareAndSwap, kv_pb2.CompareAndSwapRequest(key=b"k", value=b"w", expected_value=b"")).result()
        self.assertEqual((got.succeeded, got.HasField("current")), (False, False))

    def test_cas_sequence_reused(self) -> None:
        """A CompareAndSwap answered with a failed Txn's saved result is FAILED_PRECONDITION, not a wrong record."""
        client = self.rpc(self.kv.OpenSession, kv_pb2.OpenSessionRequest()).result().client_id
        exists = kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.EXISTS, result=EQ, exists=True)
        self.assertFalse(self.txn(compare=[exists], client_id=client, sequence=1).result().succeeded)
        request = kv_pb2.CompareAndSwapRequest(key=b"k", value=b"w", expected_value=b"v", client_id=client, sequence=1)
        details = self.assertStatus(self.rpc(self.kv.CompareAndSwap, request), grpc.StatusCode.FAILED_PRECONDITION,
                                    errors.SEQUENCE_REUSED)
        self.assertIn("sequence reused", details)

    def test_cas_invalid(self) -> None:
        """A CompareAndSwap with a negative expected version is INVALID_ARGUMENT and never reaches the node."""
        request = kv_pb2.CompareAndSwapRequest(key=b"k", value=b"w", expected_version=-1)
        self.assertStatus(self.rpc(self.kv.CompareAndSwap, request), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(self.node.calls, [])


class StoppingTests(ServerFixture, SynchronousTestCase):
    """Requests whose node Deferred never fires, and stopping with requests pending."""

    def setUp(self) -> None:
        self.reactor = ThreadedTestReactor()
        self.node = FakeNode()
        self.never: list[defer.Deferred] = []
        self.node.answer = self.hang

    def hang(self) -> defer.Deferred:
        """A node answer that never fires."""
        d = defer.Deferred()
        self.never.append(d)
        return d

    def test_request_timeout(self) -> None:
        """A node Deferred that never fires ends in UNAVAILABLE after the request timeout."""
        kv = kv_pb2_grpc.KVStub(self.connect(self.start_server(request_timeout_s=0.2)))
        call = self.rpc(kv.Get, kv_pb2.GetRequest(key=b"k"))
        details = self.assertStatus(call, grpc.StatusCode.UNAVAILABLE)
        self.assertIn("no answer from the node", details)
        self.assertEqual(len(self.never), 1)

    def test_stop_with_pending_request(self) -> None:
        """Stopping fails a request waiting on the node with UNAVAILABLE and completes."""
        server = GrpcServer(self.node, "127.0.0.1:0", self.reactor, request_timeout_s=3600.0)
        server.startService()
        kv = kv_pb2_grpc.KVStub(self.connect(server))
        call = kv.Put.future(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=3600.0)
        call.add_done_callback(self.reactor.wake)
        self.reactor.pump_until(lambda: len(self.never) == 1)
        stopped = server.stopService()
        self.reactor.pump_until(lambda: call.done() and stopped.called)
        details = self.assertStatus(call, grpc.StatusCode.UNAVAILABLE, errors.SHUTTING_DOWN)
        self.assertIn(statuses.SHUTTING_DOWN, details)
        self.assertFalse(server.running)

    def test_stop_twice(self) -> None:
        """Stopping a stopped server, or one never started, succeeds at once."""
        server = GrpcServer(self.node, "127.0.0.1:0", self.reactor)
        self.successResultOf(server.stopService())


class StreamTests(RunningServer, SynchronousTestCase):
    """KV.Stream: many requests over one call, each answered as its unary RPC would be."""

    def stream(self, *batches: kv_pb2.StreamRequests) -> list:
        """Send C{batches} on one Stream; return every answer, by id."""
        answers, done = [], threading.Event()

        def consume() -> None:
            try:
                for message in self.kv.Stream(iter(batches), timeout=BOUND_S):
                    answers.extend(message.responses)
            finally:
                done.set()
                self.reactor.wake()

        threading.Thread(target=consume, daemon=True).start()
        self.reactor.pump_until(done.is_set)
        return {answer.id: answer for answer in answers}

    def error_of(self, answer) -> tuple:
        """The code, message and ErrorInfo reason of an answer's error."""
        from google.rpc import error_details_pb2, status_pb2

        self.assertEqual(answer.WhichOneof("response"), "error")
        status = status_pb2.Status.FromString(answer.error)
        info = error_details_pb2.ErrorInfo()
        status.details[0].Unpack(info)
        return grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == status.code)), status.message, info.reason

    def test_each_request_answered(self) -> None:
        """Each request of a batch gets its own answer, a response or its own error, by its id."""
        answers = self.stream(kv_pb2.StreamRequests(requests=[
            kv_pb2.StreamRequest(id=1, put=kv_pb2.PutRequest(key=b"k", value=b"v")),
            kv_pb2.StreamRequest(id=2, put=kv_pb2.PutRequest(key=b"", value=b"v")),
            kv_pb2.StreamRequest(id=3),
        ]))
        self.assertEqual(sorted(answers), [1, 2, 3])
        self.assertEqual(answers[1].WhichOneof("response"), "put")
        self.assertFalse(answers[1].put.existed)
        self.assertGreater(answers[1].put.header.revision, 0)
        code, _, reason = self.error_of(answers[2])
        self.assertEqual((code, reason), (grpc.StatusCode.INVALID_ARGUMENT, errors.INVALID_ARGUMENT))
        code, message, reason = self.error_of(answers[3])
        self.assertEqual((code, reason), (grpc.StatusCode.INVALID_ARGUMENT, errors.INVALID_ARGUMENT))
        self.assertIn("no request", message)
        # Only the valid put reached the node.
        got = self.stream(kv_pb2.StreamRequests(requests=[
            kv_pb2.StreamRequest(id=7, get=kv_pb2.GetRequest(key=b"k")),
        ]))
        self.assertEqual((got[7].get.found, got[7].get.value), (True, b"v"))
        self.assertEqual(len([c for c in self.node.calls if c[0] == "submit"]), 1)

    def test_request_timeout_is_kept(self) -> None:
        """
        A streamed request's timeout bounds the node's wait as a unary
        deadline does; one without waits the request timeout; one whose
        timeout is up is answered UNAVAILABLE and never reaches the node.
        """
        timed = kv_pb2.StreamRequest(id=1, put=kv_pb2.PutRequest(key=b"a", value=b"v"))
        timed.timeout.FromMilliseconds(1500)
        untimed = kv_pb2.StreamRequest(id=2, put=kv_pb2.PutRequest(key=b"b", value=b"v"))
        expired = kv_pb2.StreamRequest(id=3, put=kv_pb2.PutRequest(key=b"c", value=b"v"))
        expired.timeout.FromNanoseconds(0)
        answers = self.stream(kv_pb2.StreamRequests(requests=[timed, untimed, expired]))
        self.assertEqual([answers[i].WhichOneof("response") for i in (1, 2)], ["put", "put"])
        code, message, reason = self.error_of(answers[3])
        self.assertEqual((code, reason), (grpc.StatusCode.UNAVAILABLE, errors.UNAVAILABLE))
        self.assertIn("timeout passed", message)
        waits = {call[1].key: call[2] for call in self.node.calls if call[0] == "submit"}
        self.assertEqual(sorted(waits), [b"a", b"b"])
        self.assertLessEqual(waits[b"a"], 1.5 * NODE_TIMEOUT_SHARE)
        self.assertGreater(waits[b"a"], 0.5)  # its own timeout, not the 5 s request timeout
        self.assertEqual(waits[b"b"], self.request_timeout_s * NODE_TIMEOUT_SHARE)

    def test_in_flight_caps(self) -> None:
        """
        Past the cap of one stream, and past the cap over every stream of
        the server, requests are refused one by one (RESOURCE_EXHAUSTED,
        TOO_MANY_REQUESTS) and never reach the node; the others run.
        """
        servicer = self.server.kv_servicer
        servicer.stream_requests_max, servicer.server_stream_requests_max = 3, 5
        hung = []

        def hang() -> defer.Deferred:
            hung.append(defer.Deferred())
            return hung[-1]

        self.node.answer = hang
        release = threading.Event()
        answers: dict = {"a": [], "b": []}
        ended = threading.Semaphore(0)

        def open_stream(name: str, count: int) -> None:
            batch = kv_pb2.StreamRequests(requests=[
                kv_pb2.StreamRequest(id=i, put=kv_pb2.PutRequest(key=b"%s%d" % (name.encode(), i), value=b"v"))
                for i in range(1, count + 1)])

            def requests():
                yield batch
                release.wait(BOUND_S)  # the stream stays open meanwhile

            def consume() -> None:
                try:
                    for message in self.kv.Stream(requests(), timeout=BOUND_S):
                        answers[name].extend(message.responses)
                        self.reactor.wake()
                finally:
                    ended.release()
                    self.reactor.wake()

            threading.Thread(target=consume, daemon=True).start()

        open_stream("a", 4)  # 3 run: the 4th is past the stream's cap
        self.reactor.pump_until(lambda: len(answers["a"]) == 1 and len(hung) == 3)
        open_stream("b", 3)  # 2 run: the 3rd is past the server's
        self.reactor.pump_until(lambda: len(answers["b"]) == 1 and len(hung) == 5)
        release.set()
        for d in hung:
            d.errback(Unavailable("released by the test"))
        finished = []
        self.reactor.pump_until(lambda: finished.append(ended.acquire(blocking=False)) or finished.count(True) == 2)
        refused = {name: [self.error_of(a) for a in got if self.error_of(a)[0] is grpc.StatusCode.RESOURCE_EXHAUSTED]
                   for name, got in answers.items()}
        self.assertEqual([(len(got), len(refused[name])) for name, got in sorted(answers.items())], [(4, 1), (3, 1)])
        self.assertEqual({reason for found in refused.values() for _, _, reason in found}, {errors.TOO_MANY_REQUESTS})
        self.assertEqual([message for found in refused.values() for _, message, _ in found],
                         ["more than 3 requests of one stream in flight",
                          "more than 5 streamed requests in flight at this member"])
        self.assertEqual(servicer._streamed_running, 0)
        self.assertEqual(len([c for c in self.node.calls if c[0] == "submit"]), 5)

    def test_answers_split_under_the_message_limit(self) -> None:
        """Answers settled together go in as many messages as keep each under the budget."""
        from kvpaxos.api.streaming import _StreamAnswers

        out = _StreamAnswers(None)
        out.budget = 150
        batch = [kv_pb2.StreamResponse(id=i, error=b"x" * 60) for i in range(5)]
        messages = list(out._messages(batch))
        self.assertEqual([len(m.responses) for m in messages], [2, 2, 1])
        self.assertEqual([a.id for m in messages for a in m.responses], list(range(5)))
        self.assertTrue(all(sum(a.ByteSize() for a in m.responses) <= 150 for m in messages))

    def test_node_refusal_is_that_request_only(self) -> None:
        """A request the node fails gets that failure; the others of its batch are answered."""
        answered = []

        def once() -> defer.Deferred:
            # The first submit fails; the node answers the others as usual.
            if not answered:
                answered.append(1)
                return defer.fail(NotLeaderError(2))
            self.node.answer = None
            return self.node.submit(*self.node.calls.pop()[1:])

        self.node.answer = once
        answers = self.stream(kv_pb2.StreamRequests(requests=[
            kv_pb2.StreamRequest(id=1, put=kv_pb2.PutRequest(key=b"a", value=b"1")),
        ]), kv_pb2.StreamRequests(requests=[
            kv_pb2.StreamRequest(id=2, put=kv_pb2.PutRequest(key=b"b", value=b"2")),
        ]))
        code, _, reason = self.error_of(answers[1])
        self.assertEqual((code, reason), (grpc.StatusCode.UNAVAILABLE, errors.NOT_LEADER))
        self.assertEqual(answers[2].WhichOneof("response"), "put")


class Outcome:
    """What a crossed call's C{done} was given: C{ok} and C{value}, once."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, object]] = []

    def __call__(self, ok: bool, value) -> None:
        self.calls.append((ok, value))

    def done(self) -> bool:
        return bool(self.calls)

    @property
    def value(self):
        (ok, value), = self.calls  # exactly once
        return value


class ReactorCrossingTests(SynchronousTestCase):
    """The batched hand-over from the gRPC thread to the reactor thread."""

    def setUp(self) -> None:
        self.reactor = ThreadedTestReactor()
        self.crossing = ReactorCrossing(self.reactor)

    def enqueue(self, call) -> Outcome:
        outcome = Outcome()
        self.crossing.enqueue(call, outcome)
        return outcome

    def test_one_drain_per_batch(self) -> None:
        """Calls queued from many threads before a drain all run in that one drain."""
        outcomes = []
        lock = threading.Lock()

        def enqueue(i: int) -> None:
            outcome = self.enqueue(lambda: i * 2)
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=enqueue, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BOUND_S)
        self.reactor.pump_until(lambda: len(outcomes) == 8 and all(o.done() for o in outcomes))
        self.assertEqual(sorted(o.value for o in outcomes), [i * 2 for i in range(8)])
        self.assertEqual([o.calls[0][0] for o in outcomes], [True] * 8)
        self.assertEqual((self.crossing.drains, self.crossing.calls), (1, 8))

    def test_next_batch_new_drain(self) -> None:
        """A call queued after a drain schedules a new drain."""
        first = self.enqueue(lambda: 1)
        self.reactor.pump_until(first.done)
        second = self.enqueue(lambda: 2)
        self.reactor.pump_until(second.done)
        self.assertEqual((first.value, second.value, self.crossing.drains), (1, 2, 2))

    def test_deferred_outcome(self) -> None:
        """A call's Deferred gives its outcome when it fires, later."""
        d = defer.Deferred()
        outcome = self.enqueue(lambda: d)
        self.reactor.pump_until(lambda: self.crossing.calls == 1)
        self.assertFalse(outcome.done())
        d.callback("done")
        self.assertEqual(outcome.calls, [(True, "done")])

    def test_failure_outcome(self) -> None:
        """A call that raises, or whose Deferred fails, gives the exception."""
        raised = self.enqueue(lambda: 1 / 0)
        failed = self.enqueue(lambda: defer.fail(KeyError("k")))
        self.reactor.pump_until(lambda: raised.done() and failed.done())
        self.assertEqual(raised.calls[0][0], False)
        self.assertIsInstance(raised.value, ZeroDivisionError)
        self.assertEqual(failed.calls[0][0], False)
        self.assertIsInstance(failed.value, KeyError)

    def test_cancelled_not_run(self) -> None:
        """A call cancelled before the drain does not run, and nothing is handed its outcome."""
        ran = []
        outcome = Outcome()
        self.crossing.enqueue(lambda: ran.append(1), outcome).cancel()
        witness = self.enqueue(lambda: None)
        self.reactor.pump_until(witness.done)
        self.assertEqual((ran, outcome.calls), ([], []))

    def test_close(self) -> None:
        """Closing fails queued and running calls, and every later call, with the error given, once each."""
        hung = defer.Deferred()
        running = self.enqueue(lambda: hung)
        self.reactor.pump_until(lambda: self.crossing.calls == 1)
        queued = self.enqueue(lambda: 1)
        self.crossing.close(lambda: Unavailable("node shutting down"))
        later = self.enqueue(lambda: 2)
        for outcome in (running, queued, later):
            self.assertEqual(outcome.calls[0][0], False)
            self.assertIsInstance(outcome.value, Unavailable)
        hung.callback("too late")  # a running call's outcome after the close is dropped
        self.reactor.pump_until(self.reactor.idle)
        self.assertEqual(len(running.calls), 1)
        self.assertEqual(self.crossing.calls, 1)


class ErrorsTests(SynchronousTestCase):
    """The mapping from failures to gRPC status codes, messages and ErrorInfo reasons."""

    def status(self, error) -> tuple:
        status = statuses.status_for(error)
        return status.code, status.message, status.reason, dict(status.metadata), status.unexpected

    def test_unavailable_unknown_leader(self) -> None:
        """An Unavailable without a leader says the leader is unknown."""
        self.assertEqual(self.status(Unavailable("no quorum")), (
            grpc.StatusCode.UNAVAILABLE, "no quorum; leader unknown", errors.UNAVAILABLE,
            {errors.LEADER_ID: None}, False))

    def test_not_leader(self) -> None:
        """A NotLeaderError is UNAVAILABLE with reason NOT_LEADER and the leader's id."""
        code, _, reason, metadata, _ = self.status(NotLeaderError(3))
        self.assertEqual((code, reason, metadata), (grpc.StatusCode.UNAVAILABLE, errors.NOT_LEADER, {errors.LEADER_ID: 3}))

    def test_unavailable_leader_named_once(self) -> None:
        """A message that already names the leader is not repeated."""
        details = statuses.unavailable_message("not reachable; leader is 2", 2)
        self.assertEqual(details, "not reachable; leader is 2")

    def test_unexpected(self) -> None:
        """An unexpected exception is INTERNAL and flagged for logging."""
        code, details, reason, _, unexpected = self.status(KeyError("x"))
        self.assertEqual((code, reason, unexpected), (grpc.StatusCode.INTERNAL, errors.INTERNAL, True))
        self.assertIn("x", details)

    def test_stale_sequence(self) -> None:
        """A StaleSequence refusal is FAILED_PRECONDITION "stale sequence: ..." and not logged."""
        code, details, reason, metadata, unexpected = self.status(StaleSequence(4, 2, 3))
        self.assertEqual((code, reason, unexpected), (grpc.StatusCode.FAILED_PRECONDITION, errors.STALE_SEQUENCE, False))
        self.assertEqual(metadata, {errors.CLIENT_ID: 4, errors.SEQUENCE: 2, errors.LAST_SEQUENCE: 3})
        self.assertEqual(details, "stale sequence: sequence 2 of session 4 is below its last sequence, 3")

    def test_session_expired(self) -> None:
        """A SessionExpired refusal is FAILED_PRECONDITION telling the client to open a new session."""
        self.assertEqual(self.status(SessionExpired(4, 2)), (
            grpc.StatusCode.FAILED_PRECONDITION,
            "session expired: the outcome of this session's unanswered requests is unknown; open a new session",
            errors.SESSION_EXPIRED, {errors.CLIENT_ID: 4}, False,
        ))

    def test_reasons_have_codes(self) -> None:
        """Every reason the edge can give travels with the one code the catalogue names for it."""
        for error in (Unavailable("x"), NotLeaderError(1), KeyError("x"), StaleSequence(1, 1, 2),
                      SessionExpired(1, 1), InvalidArgument("x")):
            status = statuses.status_for(error)
            self.assertEqual(errors.REASONS[status.reason], status.code, status.reason)

    def test_details_round_trip(self) -> None:
        """The ErrorInfo the server attaches is read back by reason and metadata, None values left out."""
        status = errors.rich_status(grpc.StatusCode.UNAVAILABLE, "text", errors.NOT_LEADER,
                                    {errors.LEADER_ID: 2, errors.MEMBER_ID: None})

        class Call:
            def trailing_metadata(self):
                return status.trailing_metadata

        self.assertEqual(errors.error_details(Call()), errors.ErrorDetails(errors.NOT_LEADER, {errors.LEADER_ID: "2"}))

    def test_details_garbage(self) -> None:
        """Trailing metadata that is not a Status, or none at all, gives no details (not an error)."""
        class Call:
            def __init__(self, metadata):
                self.metadata = metadata

            def trailing_metadata(self):
                return self.metadata

        for metadata in (None, (), ((errors.DETAILS_KEY, b"\xff\xff garbage"),), (("other", b"x"),)):
            self.assertIsNone(errors.error_details(Call(metadata)), metadata)
        self.assertIsNone(errors.error_details(object()))

    def test_fake_node_provides_interface(self) -> None:
        """The fake node used here provides IKeyValueNode."""
        self.assertTrue(verifyObject(IKeyValueNode, FakeNode()))
