"""
Tests for the gRPC edge (L{kvpaxos.api.server}, L{kvpaxos.api.errors}).

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

from kvpaxos.api import errors
from kvpaxos.api.server import SERVICE_NAMES, GrpcServer, ReactorCrossing
from kvpaxos.client_endpoints import CHANNEL_OPTIONS, BadEndpoint
from kvpaxos.kv.commands import MAX_KEY_BYTES, MAX_VALUE_BYTES, InvalidArgument, Op, Request, Result
from kvpaxos.node.interfaces import IKeyValueNode, NodeStatus, Unavailable
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
    An in-memory L{IKeyValueNode} that records its calls and the thread they
    came from.  C{answer}, when set, replaces the result of C{submit} and
    C{get}: it is called and returns a Deferred (or raises).
    """

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.calls: list[tuple] = []
        self.threads: set[int] = set()
        self.answer: Callable[[], defer.Deferred] | None = None

    def submit(self, request: Request, timeout_s: float) -> defer.Deferred:
        self._called("submit", request, timeout_s)
        if self.answer is not None:
            return self.answer()
        existed = request.key in self.data
        if request.op is Op.PUT:
            self.data[request.key] = request.value
            return defer.succeed(Result(existed))
        if request.op is Op.DELETE:
            self.data.pop(request.key, None)
            return defer.succeed(Result(existed))
        value = self.data.get(request.key, b"") + request.value
        self.data[request.key] = value
        return defer.succeed(Result(existed, value))

    def get(self, key: bytes, timeout_s: float) -> defer.Deferred:
        self._called("get", key, timeout_s)
        if self.answer is not None:
            return self.answer()
        return defer.succeed(self.data.get(key))

    def status(self) -> NodeStatus:
        self.threads.add(threading.get_ident())
        return NodeStatus(
            member_id=1, role="follower", leader=2, voters=(3, 1, 2), learners=(4,),
            chosen_index=17, applied_index=16,
        )

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

    def assertStatus(self, call, code: grpc.StatusCode) -> str:
        """Assert that C{call} failed with C{code}; return its details."""
        error = call.exception()
        self.assertIsNotNone(error, "the call succeeded")
        self.assertEqual(error.code(), code, error.details())
        return error.details()


class GrpcServerTests(ServerFixture, SynchronousTestCase):
    """A real grpcio server on 127.0.0.1 in front of a L{FakeNode}."""

    request_timeout_s = 5.0

    def setUp(self) -> None:
        self.reactor = ThreadedTestReactor()
        self.node = FakeNode()
        self.server = self.start_server(self.request_timeout_s)
        self.channel = self.connect(self.server)
        self.kv = kv_pb2_grpc.KVStub(self.channel)
        self.cluster = kv_pb2_grpc.ClusterStub(self.channel)

    def test_put_then_get(self) -> None:
        """A Put reaches the node as a Request and a Get reads the value back."""
        put = self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v")).result()
        got = self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k")).result()
        self.assertFalse(put.existed)
        self.assertEqual((got.found, got.value), (True, b"v"))
        self.assertEqual(self.node.calls[0][:2], ("submit", Request(Op.PUT, b"k", b"v")))
        self.assertEqual(self.node.calls[1][:2], ("get", b"k"))

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
        """A Get of a missing key answers found=false with an empty value."""
        got = self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"nope")).result()
        self.assertEqual((got.found, got.value), (False, b""))

    def test_get_empty_value(self) -> None:
        """A key holding the empty value is found."""
        self.node.data[b"k"] = b""
        got = self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k")).result()
        self.assertEqual((got.found, got.value), (True, b""))

    def test_delete(self) -> None:
        """Delete maps to a DELETE request and reports whether the key existed."""
        self.node.data[b"k"] = b"v"
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
             list(status.learners), status.chosen_index, status.applied_index),
            (1, "follower", 2, [1, 2, 3], [4], 17, 16),
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
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        self.assertIn(str(MAX_VALUE_BYTES + 1), details)
        self.assertEqual(self.node.calls, [])

    def test_node_invalid_argument(self) -> None:
        """An InvalidArgument from the node is INVALID_ARGUMENT with its message."""
        self.node.answer = lambda: defer.fail(InvalidArgument("bad"))
        details = self.assertStatus(
            self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v")),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        self.assertEqual(details, "bad")

    def test_unavailable(self) -> None:
        """An Unavailable from the node is UNAVAILABLE naming the leader it knows of."""
        self.node.answer = lambda: defer.fail(Unavailable("no quorum before deadline", leader=3))
        details = self.assertStatus(
            self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v")),
            grpc.StatusCode.UNAVAILABLE,
        )
        self.assertEqual(details, "no quorum before deadline; leader is 3")

    def test_internal(self) -> None:
        """Any other node failure is INTERNAL with its message, and is logged."""
        self.node.answer = lambda: defer.fail(RuntimeError("boom"))
        details = self.assertStatus(
            self.rpc(self.kv.Get, kv_pb2.GetRequest(key=b"k")), grpc.StatusCode.INTERNAL
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

        def counting_enqueue(call):
            future = enqueue(call)
            with queued:
                enqueued.append(future)
                queued.notify_all()
            return future

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
        details = self.assertStatus(call, grpc.StatusCode.UNAVAILABLE)
        self.assertIn(errors.SHUTTING_DOWN, details)
        self.assertFalse(server.running)

    def test_stop_twice(self) -> None:
        """Stopping a stopped server, or one never started, succeeds at once."""
        server = GrpcServer(self.node, "127.0.0.1:0", self.reactor)
        self.successResultOf(server.stopService())


class ReactorCrossingTests(SynchronousTestCase):
    """The batched hand-over from grpcio's threads to the reactor thread."""

    def setUp(self) -> None:
        self.reactor = ThreadedTestReactor()
        self.crossing = ReactorCrossing(self.reactor)

    def test_one_drain_per_batch(self) -> None:
        """Calls queued from many threads before a drain all run in that one drain."""
        futures = []
        lock = threading.Lock()

        def enqueue(i: int) -> None:
            future = self.crossing.enqueue(lambda: i * 2)
            with lock:
                futures.append(future)

        threads = [threading.Thread(target=enqueue, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BOUND_S)
        self.reactor.pump_until(lambda: all(future.done() for future in futures))
        self.assertEqual(sorted(future.result(0) for future in futures), [i * 2 for i in range(8)])
        self.assertEqual((self.crossing.drains, self.crossing.calls), (1, 8))

    def test_next_batch_new_drain(self) -> None:
        """A call queued after a drain schedules a new drain."""
        first = self.crossing.enqueue(lambda: 1)
        self.reactor.pump_until(first.done)
        second = self.crossing.enqueue(lambda: 2)
        self.reactor.pump_until(second.done)
        self.assertEqual((first.result(0), second.result(0), self.crossing.drains), (1, 2, 2))

    def test_deferred_outcome(self) -> None:
        """A call's Deferred resolves its Future when it fires, later."""
        d = defer.Deferred()
        future = self.crossing.enqueue(lambda: d)
        self.reactor.pump_until(lambda: self.crossing.calls == 1)
        self.assertFalse(future.done())
        d.callback("done")
        self.assertEqual(future.result(0), "done")

    def test_failure_outcome(self) -> None:
        """A call that raises fails its Future with the exception."""
        future = self.crossing.enqueue(lambda: 1 / 0)
        self.reactor.pump_until(future.done)
        self.assertIsInstance(future.exception(0), ZeroDivisionError)

    def test_cancelled_not_run(self) -> None:
        """A call whose Future was cancelled before the drain does not run."""
        ran = []
        future = self.crossing.enqueue(lambda: ran.append(1))
        future.cancel()
        witness = self.crossing.enqueue(lambda: None)
        self.reactor.pump_until(witness.done)
        self.assertEqual(ran, [])

    def test_close(self) -> None:
        """Closing fails queued and running calls, and every later call, with the error given."""
        running = self.crossing.enqueue(defer.Deferred)
        self.reactor.pump_until(lambda: self.crossing.calls == 1)
        queued = self.crossing.enqueue(lambda: 1)
        self.crossing.close(lambda: Unavailable("node shutting down"))
        later = self.crossing.enqueue(lambda: 2)
        for future in (running, queued, later):
            self.assertIsInstance(future.exception(0), Unavailable)
        self.reactor.pump_until(self.reactor.idle)
        self.assertEqual(self.crossing.calls, 1)


class ErrorsTests(SynchronousTestCase):
    """The mapping from failures to gRPC status codes."""

    def test_unavailable_unknown_leader(self) -> None:
        """An Unavailable without a leader says the leader is unknown."""
        code, details, unexpected = errors.status_for(Unavailable("no quorum"))
        self.assertEqual((code, details, unexpected), (grpc.StatusCode.UNAVAILABLE, "no quorum; leader unknown", False))

    def test_unavailable_leader_named_once(self) -> None:
        """A message that already names the leader is not repeated."""
        details = errors.unavailable_message("not reachable; leader is 2", 2)
        self.assertEqual(details, "not reachable; leader is 2")

    def test_unexpected(self) -> None:
        """An unexpected exception is INTERNAL and flagged for logging."""
        code, details, unexpected = errors.status_for(KeyError("x"))
        self.assertEqual((code, unexpected), (grpc.StatusCode.INTERNAL, True))
        self.assertIn("x", details)

    def test_fake_node_provides_interface(self) -> None:
        """The fake node used here provides IKeyValueNode."""
        self.assertTrue(verifyObject(IKeyValueNode, FakeNode()))
