"""
Tests for the client library (L{kvpaxos.client}): routing to the leader,
retries with backoff under one deadline, exactly-once sessions, range
paging, the txn builders and compare-and-swap, for the blocking client and
(more briefly) the asyncio one.  No network, no sleeping: channels come from
L{FakeCluster}, and the clock, sleep and jitter are injected.
"""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Optional

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos import client as kvclient
from kvpaxos.client import (
    AsyncClient,
    Backoff,
    Client,
    InvalidArgument,
    OutcomeUnknown,
    RequestFailed,
    SessionExpired,
    StaleSequence,
    Unavailable,
)
from kvpaxos.api import errors
from kvpaxos.api.endpoints import BadEndpoint
from kvpaxos.v1 import kv_pb2
from tests.fake_grpc import RPC_OF_KIND, FakeAioStreamCall, FakeRpcError, FakeStreamCall, unavailable

A, B, C = "a:1", "b:1", "c:1"


class FakeChannel:
    """A channel whose calls are served by a L{FakeCluster} as one endpoint."""

    def __init__(self, cluster: "FakeCluster", endpoint: str, aio: bool) -> None:
        self._cluster, self._endpoint, self._aio = cluster, endpoint, aio
        self.closed = False

    def unary_unary(self, path: str, request_serializer=None, response_deserializer=None, **_):
        rpc = path.rsplit("/", 1)[1]

        def call(request, timeout=None):
            # Through the wire format, as grpcio would: the client may not
            # rely on sharing objects with the server.
            request = type(request).FromString(request_serializer(request))
            return response_deserializer(
                self._cluster.serve(self._endpoint, rpc, request, timeout, via="unary").SerializeToString())

        if not self._aio:
            return call

        async def acall(request, timeout=None):
            return call(request, timeout)

        return acall

    def stream_stream(self, path: str, **_):
        """C{KV.Stream}: each request served as its unary RPC (or UNIMPLEMENTED, as a server without it)."""
        def serve(rpc, request, timeout):
            return self._cluster.serve(self._endpoint, rpc, request, timeout, via="stream")

        def call(requests):
            self._cluster.streams_opened.append(self._endpoint)
            return (FakeAioStreamCall if self._aio else FakeStreamCall)(requests, serve)

        def unimplemented(requests):
            self._cluster.streams_opened.append(self._endpoint)
            return (_AioUnimplemented if self._aio else _Unimplemented)()

        def breaking(requests):
            self._cluster.streams_opened.append(self._endpoint)
            self._cluster.break_stream.discard(self._endpoint)
            return _BreaksAfterServing(requests, serve)

        if self._endpoint in self._cluster.no_stream:
            return unimplemented
        return breaking if self._endpoint in self._cluster.break_stream and not self._aio else call

    def close(self):
        self.closed = True
        if self._aio:
            return asyncio.sleep(0)


class _Unimplemented:
    """A blocking stream call to a server without C{KV.Stream}: it ends UNIMPLEMENTED."""

    def __iter__(self):
        return self

    def __next__(self):
        raise FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    def cancel(self):
        pass


class _AioUnimplemented(_Unimplemented):
    def __aiter__(self):
        return self

    async def __anext__(self):
        raise FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


class _BreaksAfterServing(_Unimplemented):
    """A blocking stream call that serves the first message's requests, then breaks (INTERNAL) unanswered."""

    def __init__(self, requests, serve) -> None:
        self._requests, self._serve = requests, serve

    def __next__(self):
        for one in kv_pb2.StreamRequests.FromString(next(self._requests).SerializeToString()).requests:
            kind = one.WhichOneof("request")
            self._serve(RPC_OF_KIND[kind], getattr(one, kind), None)
        raise FakeRpcError(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2")


class FakeCluster:
    """
    Three members (a:1 is 1, b:1 is 2, c:1 is 3) sharing one dict, with
    exactly-once sessions like the real table.  C{leader} is the leader id
    every header names; with C{followers_refuse}, members other than the
    leader answer every request with UNAVAILABLE naming it.  C{errors[e]}
    is a list of errors endpoint C{e} raises, one per request, before it
    serves again; C{down} endpoints always fail to connect.
    """

    MEMBERS = {A: 1, B: 2, C: 3}

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.versions: dict[bytes, int] = {}
        self.leader = 3
        self.followers_refuse = False
        self.errors: dict[str, list] = {}
        self.down: set[str] = set()
        self.requests: list[tuple[str, str, object, Optional[float]]] = []
        self.listings: list[tuple[str, Optional[float]]] = []
        self.sessions: dict[int, tuple[int, object]] = {}
        self.next_client_id = 7
        self.page_size = 0
        self.applied: list[tuple[str, bytes]] = []
        self.channels: list[FakeChannel] = []
        self.put_barrier: Optional[threading.Barrier] = None
        #: How each request came: "unary" or "stream" (parallel to C{requests}).
        self.ways: list[str] = []
        #: The endpoint of every stream call opened; endpoints answering it UNIMPLEMENTED.
        self.streams_opened: list[str] = []
        self.no_stream: set[str] = set()
        #: Endpoints whose next stream serves its first message, then breaks unanswered.
        self.break_stream: set[str] = set()
        self._lock = threading.Lock()

    def channel(self, endpoint: str, aio: bool = False) -> FakeChannel:
        channel = FakeChannel(self, endpoint, aio)
        self.channels.append(channel)
        return channel

    def aio_channel(self, endpoint: str) -> FakeChannel:
        return self.channel(endpoint, aio=True)

    def sent(self, rpc: Optional[str] = None) -> list:
        """The requests sent, as C{(endpoint, rpc, request, timeout)}, of one RPC if given."""
        return [r for r in self.requests if rpc is None or r[1] == rpc]

    def header(self, endpoint: str) -> kv_pb2.ResponseHeader:
        return kv_pb2.ResponseHeader(member_id=self.MEMBERS[endpoint], leader_id=self.leader, revision=len(self.applied))

    def serve(self, endpoint: str, rpc: str, request, timeout, via: str = "unary"):
        with self._lock:  # streamed requests of many threads arrive at once
            if rpc != "Put" or self.put_barrier is None:
                return self._serve(endpoint, rpc, request, timeout, via)
        return self._serve(endpoint, rpc, request, timeout, via)  # it waits for the others at the barrier

    def _serve(self, endpoint: str, rpc: str, request, timeout, via: str):
        if rpc == "MemberList":
            # Not one of C{requests}: the member list is the client's own
            # business, tested in tests.test_client_members.  These members
            # answer as a server older than MemberList.
            self.listings.append((endpoint, timeout))
            raise FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        self.requests.append((endpoint, rpc, request, timeout))
        self.ways.append(via)
        if endpoint in self.down:
            raise unavailable("failed to connect to all addresses", reason=None)
        if self.errors.get(endpoint):
            raise self.errors[endpoint].pop(0)
        if self.followers_refuse and self.MEMBERS[endpoint] != self.leader:
            raise unavailable(f"not the leader; leader is {self.leader}", self.leader, errors.NOT_LEADER)
        return getattr(self, rpc)(endpoint, request)

    def _exactly_once(self, request, apply):
        if not request.client_id:
            return apply()
        if request.client_id not in self.sessions:
            raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "session expired: the outcome ... is unknown",
                               errors.SESSION_EXPIRED, {errors.CLIENT_ID: request.client_id})
        last, response = self.sessions[request.client_id]
        if request.sequence == last:
            return response
        if request.sequence < last:
            raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "stale sequence: below 3", errors.STALE_SEQUENCE)
        response = apply()
        self.sessions[request.client_id] = (request.sequence, response)
        return response

    def _write(self, key: bytes, value: Optional[bytes]) -> None:
        self.applied.append((key, value))
        if value is None:
            self.data.pop(key, None)
            self.versions.pop(key, None)
        else:
            self.data[key] = value
            self.versions[key] = self.versions.get(key, 0) + 1

    def _kv(self, key: bytes) -> kv_pb2.KeyValue:
        return kv_pb2.KeyValue(key=key, value=self.data[key], version=self.versions[key])

    def OpenSession(self, endpoint, request):
        client_id, self.next_client_id = self.next_client_id, self.next_client_id + 1
        self.sessions[client_id] = (0, None)
        return kv_pb2.OpenSessionResponse(header=self.header(endpoint), client_id=client_id)

    def Get(self, endpoint, request):
        found = request.key in self.data
        return kv_pb2.GetResponse(header=self.header(endpoint), found=found, value=self.data.get(request.key, b""),
                                  kv=self._kv(request.key) if found else None)

    def Put(self, endpoint, request):
        if self.put_barrier is not None:
            self.put_barrier.wait(timeout=5)

        def apply():
            existed = request.key in self.data
            self._write(request.key, request.value)
            return kv_pb2.PutResponse(header=self.header(endpoint), existed=existed)
        return self._exactly_once(request, apply)

    def Delete(self, endpoint, request):
        def apply():
            existed = request.key in self.data
            self._write(request.key, None)
            return kv_pb2.DeleteResponse(header=self.header(endpoint), deleted=existed)
        return self._exactly_once(request, apply)

    def Append(self, endpoint, request):
        def apply():
            self._write(request.key, self.data.get(request.key, b"") + request.value)
            return kv_pb2.AppendResponse(header=self.header(endpoint), value=self.data[request.key])
        return self._exactly_once(request, apply)

    def Txn(self, endpoint, request):
        return self._exactly_once(request, lambda: kv_pb2.TxnResponse(header=self.header(endpoint), succeeded=True))

    def CompareAndSwap(self, endpoint, request):
        def apply():
            which = request.WhichOneof("expected")
            key = request.key
            holds = {
                None: key not in self.data,
                "expected_value": self.data.get(key) == request.expected_value,
                "expected_version": self.versions.get(key, 0) == request.expected_version,
            }[which]
            if holds:
                self._write(key, request.value)
                return kv_pb2.CompareAndSwapResponse(header=self.header(endpoint), succeeded=True)
            current = self._kv(key) if key in self.data else None
            return kv_pb2.CompareAndSwapResponse(header=self.header(endpoint), succeeded=False, current=current)
        return self._exactly_once(request, apply)

    def Range(self, endpoint, request):
        if request.range_end == b"":
            keys = [request.key] if request.key in self.data else []
        else:
            keys = sorted(k for k in self.data if k >= request.key and (request.range_end == b"\0" or k < request.range_end))
        count = len(keys)
        page = min(n for n in (request.limit, self.page_size, len(keys)) if n) if keys else 0
        shown = [] if request.count_only else keys[:page]
        kvs = [kv_pb2.KeyValue(key=k) if request.keys_only else self._kv(k) for k in shown]
        more = not request.count_only and len(shown) < count
        return kv_pb2.RangeResponse(header=self.header(endpoint), kvs=kvs, more=more, count=count)

    def Status(self, endpoint, request):
        member = self.MEMBERS[endpoint]
        return kv_pb2.StatusResponse(header=self.header(endpoint), member_id=member, leader_id=self.leader,
                                     role="leader" if member == self.leader else "follower", voters=[1, 2, 3])


class FakeTime:
    """A clock that only moves when slept on; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


class LowRandom(random.Random):
    """Jitter that always draws the lowest value, so pauses are exact."""

    def random(self) -> float:
        return 0.0


class ClientTestCase(SynchronousTestCase):
    """A L{Client} over a L{FakeCluster} with fake time."""

    endpoints = (A, B, C)
    #: KV requests over C{KV.Stream} (the default), or unary RPCs (the
    #: C{Unary...} twin of every test class, at the end of this module).
    stream = True

    def setUp(self) -> None:
        self.cluster = FakeCluster()
        self.time = FakeTime()
        self.client = self.make_client()

    def make_client(self, **kwargs) -> Client:
        options = dict(timeout_s=5.0, channel_factory=self.cluster.channel, sleep=self.time.sleep,
                       clock=self.time.clock, rng=LowRandom(), stream=self.stream)
        options.update(kwargs)
        client = Client(list(self.endpoints), **options)
        self.addCleanup(client.close)
        return client

    def endpoints_sent(self, rpc: Optional[str] = None) -> list[str]:
        return [r[0] for r in self.cluster.sent(rpc)]


class LeaderTests(ClientTestCase):
    """Finding the leader and following redirects."""

    def test_redirect_to_named_leader(self) -> None:
        """UNAVAILABLE naming a leader sends the request on at once, and the leader is used from then on."""
        self.cluster.followers_refuse = True
        client = self.make_client(session=False)
        client.put(b"k", b"v")
        client.put(b"k", b"w")
        # a names leader 3, whose address is unknown: try the unmapped b, then c.
        self.assertEqual(self.endpoints_sent(), [A, B, C, C])
        self.assertEqual((self.time.sleeps, client.leader), ([], 3))

    def test_leader_from_status(self) -> None:
        """Status answers map members to endpoints, so writes go straight to the leader."""
        for endpoint in (A, B, C):
            self.client.member_status(endpoint)
        self.cluster.requests.clear()
        self.client.append(b"k", b"x")
        self.assertEqual(self.endpoints_sent(), [C, C])

    def test_status_retried(self) -> None:
        """status() asks another endpoint when the first is down."""
        self.cluster.down.add(A)
        self.assertEqual(self.client.status().member_id, 2)

    def test_serializable_read_stays(self) -> None:
        """Serializable reads go to the endpoint that last answered, not to the leader."""
        for endpoint in (C, A):
            self.client.member_status(endpoint)
        self.cluster.requests.clear()
        self.client.get(b"k", consistency="serializable")
        self.client.get(b"k")
        self.assertEqual(self.endpoints_sent("Get"), [A, C])

    def test_leader_down(self) -> None:
        """When the leader's endpoint fails, the request goes to another member."""
        for endpoint in (A, B, C):
            self.client.member_status(endpoint)
        self.cluster.down.add(C)
        self.cluster.requests.clear()
        self.assertEqual(self.client.get(b"k"), None)
        self.assertEqual(self.endpoints_sent(), [C, A])

    def test_member_status_once(self) -> None:
        """member_status asks one endpoint once and reports its failure in the CLI's form."""
        self.cluster.down.add(B)
        with self.assertRaises(Unavailable) as caught:
            self.client.member_status(B)
        self.assertEqual(str(caught.exception), "b:1: UNAVAILABLE: failed to connect to all addresses")
        self.assertEqual(len(self.cluster.requests), 1)


class RetryTests(ClientTestCase):
    """Retries, backoff and the call's deadline."""

    def test_retries_keep_session_fields(self) -> None:
        """Every attempt of one write carries the same (client_id, sequence), and it is applied once."""
        self.client.put(b"k", b"0")
        self.cluster.errors = {C: [unavailable("no quorum; leader is 3", 3)], A: [unavailable()], B: [unavailable()]}
        self.client.append(b"k", b"1")
        appends = [(r[2].client_id, r[2].sequence) for r in self.cluster.sent("Append")]
        self.assertEqual(appends, [(7, 2)] * 4)
        self.assertEqual(self.cluster.data[b"k"], b"01")

    def test_backoff_grows_and_stops_at_deadline(self) -> None:
        """With every endpoint down, pauses double up to the cap and the call gives up before its deadline."""
        self.cluster.down.update({A, B, C})
        client = self.make_client(backoff=Backoff(first_s=0.1, max_s=0.8))
        with self.assertRaises(Unavailable) as caught:
            client.get(b"k")
        # Lowest jitter: half of 0.1, 0.2, 0.4, 0.8, 0.8, ...
        self.assertEqual(self.time.sleeps[:5], [0.05, 0.1, 0.2, 0.4, 0.4])
        self.assertEqual(set(self.time.sleeps[4:]), {0.4})
        self.assertLess(self.time.now, 105.0)
        self.assertGreater(self.time.now + 0.4, 105.0)
        self.assertEqual(len(self.cluster.requests), 3 * (len(self.time.sleeps) + 1))
        self.assertTrue(str(caught.exception).startswith("no endpoint answered: a:1: UNAVAILABLE"))

    def test_each_rpc_gets_remaining_time(self) -> None:
        """Each attempt's RPC deadline is the time left of the call's timeout_s."""
        self.cluster.down.update({A, B, C})
        with self.assertRaises(Unavailable):
            self.client.get(b"k")
        timeouts = [r[3] for r in self.cluster.requests]
        self.assertEqual(timeouts[:3], [5.0, 5.0, 5.0])
        self.assertAlmostEqual(timeouts[3], 5.0 - self.time.sleeps[0])
        self.assertEqual(timeouts, sorted(timeouts, reverse=True))

    def test_unavailable_names_leader(self) -> None:
        """The Unavailable raised at the deadline carries the leader last named."""
        self.cluster.errors = {e: [unavailable("no quorum; leader is 2", 2)] * 1000 for e in (A, B, C)}
        with self.assertRaises(Unavailable) as caught:
            self.make_client(session=False).put(b"k", b"v")
        self.assertEqual(caught.exception.leader, 2)

    def test_invalid_argument_not_retried(self) -> None:
        """INVALID_ARGUMENT raises InvalidArgument (a ValueError) after one request."""
        self.cluster.errors[A] = [FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "key is empty", errors.INVALID_ARGUMENT)]
        with self.assertRaises(ValueError) as caught:
            self.client.get(b"k")
        self.assertIsInstance(caught.exception, InvalidArgument)
        self.assertEqual(str(caught.exception), "a:1: INVALID_ARGUMENT: key is empty")
        self.assertEqual((len(self.cluster.requests), self.time.sleeps), (1, []))

    def test_other_status_not_retried(self) -> None:
        """A status the client does not retry raises RequestFailed with its code."""
        self.cluster.errors[A] = [FakeRpcError(grpc.StatusCode.INTERNAL, "internal error: boom", errors.INTERNAL)]
        with self.assertRaises(RequestFailed) as caught:
            self.client.get(b"k")
        self.assertEqual((caught.exception.code, len(self.cluster.requests)), (grpc.StatusCode.INTERNAL, 1))

    def test_read_deadline_retried(self) -> None:
        """A read whose RPC timed out is sent to the next endpoint."""
        self.cluster.data[b"k"], self.cluster.versions[b"k"] = b"v", 1
        self.cluster.errors[A] = [FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")]
        self.assertEqual(self.client.get(b"k"), b"v")

    def test_write_deadline_without_session(self) -> None:
        """A sessionless write whose RPC timed out is not sent again: its outcome is unknown."""
        self.cluster.errors[A] = [FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")]
        with self.assertRaises(OutcomeUnknown):
            self.make_client(session=False).append(b"k", b"v")
        self.assertEqual(len(self.cluster.requests), 1)

    def test_write_deadline_in_session_retried(self) -> None:
        """A write in a session whose RPC timed out is sent again with the same sequence."""
        self.client.put(b"k", b"v")
        self.cluster.errors[C] = [FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")]
        self.client.put(b"k", b"w")
        self.assertEqual([r[2].sequence for r in self.cluster.sent("Put")], [1, 2, 2])


class ErrorDetailsTests(ClientTestCase):
    """The client decides from a failure's code and ErrorInfo, never from its message's text."""

    def test_session_expired_in_other_words(self) -> None:
        """SESSION_EXPIRED with a message in other words is still a session expired: resent in a new session."""
        self.client.put(b"k", b"v")
        self.cluster.errors[C] = [FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "Sitzung abgelaufen",
                                               errors.SESSION_EXPIRED, {errors.CLIENT_ID: 7})]
        self.client.put(b"k", b"w")
        self.assertEqual([(r[2].client_id, r[2].sequence) for r in self.cluster.sent("Put")], [(7, 1), (7, 2), (8, 1)])

    def test_words_alone_not_understood(self) -> None:
        """A message that reads "session expired" but carries no ErrorInfo is no SessionExpired: not resent."""
        self.client.put(b"k", b"v")
        self.cluster.errors[C] = [FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "session expired: open a new one")]
        with self.assertRaises(RequestFailed) as caught:
            self.client.put(b"k", b"w")
        self.assertIsNone(caught.exception.reason)
        self.assertEqual(len(self.cluster.sent("Put")), 2)

    def test_stale_sequence_in_other_words(self) -> None:
        """STALE_SEQUENCE is StaleSequence whatever the message says."""
        self.client.put(b"k", b"v")
        self.cluster.errors[C] = [FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "?", errors.STALE_SEQUENCE)]
        self.assertRaises(StaleSequence, self.client.put, b"k", b"w")

    def test_leader_from_metadata_not_words(self) -> None:
        """The leader hint is the ErrorInfo's leader_id: a message naming another leader is not read."""
        for endpoint in (A, B, C):
            self.client.member_status(endpoint)
        self.cluster.requests.clear()
        self.cluster.leader = 2
        self.cluster.errors[C] = [unavailable("not the leader; leader is 1", 2, errors.NOT_LEADER)]
        self.client.get(b"k")
        self.assertEqual(self.endpoints_sent(), [C, B])
        self.assertEqual(self.client.leader, 2)

    def test_unavailable_words_name_no_leader(self) -> None:
        """An UNAVAILABLE whose words name a leader but whose ErrorInfo does not leaves the leader unknown."""
        self.cluster.errors = {e: [unavailable("no quorum; leader is 2")] * 1000 for e in (A, B, C)}
        with self.assertRaises(Unavailable) as caught:
            self.make_client(session=False).put(b"k", b"v")
        self.assertIsNone(caught.exception.leader)

    def test_member_status_leader_from_metadata(self) -> None:
        """member_status's Unavailable names the leader from the ErrorInfo."""
        self.cluster.errors[A] = [unavailable("stopping", 3, errors.SHUTTING_DOWN)]
        with self.assertRaises(Unavailable) as caught:
            self.client.member_status(A)
        self.assertEqual(caught.exception.leader, 3)


class SessionTests(ClientTestCase):
    """Exactly-once sessions."""

    def test_opened_lazily(self) -> None:
        """No session is opened until the first write; then writes are numbered 1, 2, 3, ..."""
        self.client.get(b"k")
        self.assertEqual(self.cluster.sent("OpenSession"), [])
        self.client.put(b"k", b"v")
        self.client.append(b"k", b"w")
        self.client.delete(b"k")
        self.client.cas(b"k", b"x", expected_absent=True)
        self.client.txn([], [kvclient.put_op(b"j", b"y")])
        writes = [(r[1], r[2].client_id, r[2].sequence) for r in self.cluster.requests if r[1] not in ("Get", "OpenSession")]
        self.assertEqual(writes, [("Put", 7, 1), ("Append", 7, 2), ("Delete", 7, 3), ("CompareAndSwap", 7, 4), ("Txn", 7, 5)])
        self.assertEqual(len(self.cluster.sent("OpenSession")), 1)

    def test_without_session(self) -> None:
        """With session=False writes carry no session and none is opened."""
        self.make_client(session=False).put(b"k", b"v")
        self.assertEqual([r[1] for r in self.cluster.requests], ["Put"])
        self.assertEqual(self.cluster.requests[0][2].client_id, 0)

    def test_expired_after_retry(self) -> None:
        """Session expired after a retry: the outcome is unknown, the error says so, and the next write uses a new session."""
        self.client.put(b"k", b"v")
        del self.cluster.sessions[7]
        self.cluster.errors[C] = [unavailable("no answer; leader is 3", 3)]
        with self.assertRaises(SessionExpired) as caught:
            self.client.put(b"k", b"w")
        self.assertTrue(caught.exception.maybe_applied)
        self.assertIn("outcome of this write is unknown", str(caught.exception))
        self.client.put(b"k", b"x")
        self.assertEqual([(r[2].client_id, r[2].sequence) for r in self.cluster.sent("Put")],
                         [(7, 1), (7, 2), (7, 2), (8, 1)])
        self.assertEqual(self.cluster.applied, [(b"k", b"v"), (b"k", b"x")])

    def test_expired_while_idle(self) -> None:
        """Session expired on a write's only attempt: nothing was applied, so it is sent once more in a new session."""
        self.client.put(b"k", b"v")
        del self.cluster.sessions[7]
        self.client.put(b"k", b"w")
        self.assertEqual([(r[2].client_id, r[2].sequence) for r in self.cluster.sent("Put")], [(7, 1), (7, 2), (8, 1)])
        self.assertEqual(self.cluster.data[b"k"], b"w")

    def test_stale_sequence(self) -> None:
        """A stale sequence is a client bug: StaleSequence, and the session is dropped."""
        self.client.put(b"k", b"v")
        self.cluster.sessions[7] = (5, None)
        with self.assertRaises(StaleSequence):
            self.client.put(b"k", b"w")
        self.assertEqual(self.client._sessions.idle(), [])

    def test_threads(self) -> None:
        """Writes from two threads at once use two sessions, each numbered 1, 2, 3, ... without gaps or repeats."""
        self.cluster.put_barrier = threading.Barrier(2)
        failures: list[BaseException] = []

        def writer(name: bytes) -> None:
            try:
                for i in range(20):
                    if i == 1:
                        # Only the first write of each thread meets the other.
                        self.cluster.put_barrier = None
                    self.client.put(name, b"%d" % i)
            except BaseException as error:  # reported below
                failures.append(error)

        threads = [threading.Thread(target=writer, args=(name,)) for name in (b"x", b"y")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        self.assertEqual((failures, [t.is_alive() for t in threads]), ([], [False, False]))
        by_session: dict[int, list[int]] = {}
        for _, _, request, _ in self.cluster.sent("Put"):
            by_session.setdefault(request.client_id, []).append(request.sequence)
        self.assertEqual(len(by_session), 2)
        for sequences in by_session.values():
            self.assertEqual(sequences, list(range(1, len(sequences) + 1)))
        self.assertEqual(sum(map(len, by_session.values())), 40)


class RangeTests(ClientTestCase):
    """Ranges and their pages."""

    def setUp(self) -> None:
        super().setUp()
        for key in (b"a", b"b", b"b1", b"b2", b"c", b"d"):
            self.cluster.data[key] = key.upper()
            self.cluster.versions[key] = 1
        self.cluster.page_size = 2

    def test_follows_more(self) -> None:
        """range() follows `more`, each page starting just after the last key returned."""
        result = self.client.range(b"a", kvclient.TO_THE_END)
        self.assertEqual([kv.key for kv in result.kvs], [b"a", b"b", b"b1", b"b2", b"c", b"d"])
        self.assertEqual((result.count, result.more), (6, False))
        self.assertEqual([r[2].key for r in self.cluster.sent("Range")], [b"a", b"b\0", b"b2\0"])

    def test_limit_across_pages(self) -> None:
        """A limit counts over every page, and `more` says keys were left out."""
        result = self.client.range(b"a", b"z", limit=3)
        self.assertEqual(([kv.key for kv in result.kvs], result.more), ([b"a", b"b", b"b1"], True))
        self.assertEqual([r[2].limit for r in self.cluster.sent("Range")], [3, 1])

    def test_prefix(self) -> None:
        """prefix=True reads the keys starting with the key."""
        result = self.client.range(b"b", prefix=True, keys_only=True)
        self.assertEqual([(kv.key, kv.value) for kv in result.kvs], [(b"b", b""), (b"b1", b""), (b"b2", b"")])
        self.assertEqual(self.cluster.sent("Range")[0][2].range_end, b"c")

    def test_count_only(self) -> None:
        """count_only is one request, and gives the count without records."""
        result = self.client.range(b"a", kvclient.TO_THE_END, count_only=True)
        self.assertEqual((result.count, result.kvs, len(self.cluster.sent("Range"))), (6, [], 1))

    def test_pages(self) -> None:
        """range_pages yields each response as it comes."""
        pages = list(self.client.range_pages(b"b", prefix=True, consistency="serializable"))
        self.assertEqual([[kv.key for kv in page.kvs] for page in pages], [[b"b", b"b1"], [b"b2"]])
        self.assertEqual(self.cluster.sent("Range")[0][2].consistency, kv_pb2.SERIALIZABLE)

    def test_prefix_end(self) -> None:
        """The prefix end increments the last byte below 0xff; all 0xff means every key after."""
        self.assertEqual(
            [kvclient.prefix_end(p) for p in (b"ab", b"a\xff", b"\xff\xff")], [b"ac", b"b", kvclient.TO_THE_END])

    def test_bad_consistency(self) -> None:
        """An unknown consistency is refused before anything is sent."""
        with self.assertRaises(InvalidArgument):
            self.client.range(b"a", consistency="eventual")
        self.assertEqual(self.cluster.requests, [])


class TxnTests(ClientTestCase):
    """The txn builders and compare-and-swap."""

    def test_compare_builders(self) -> None:
        """The compare builders set the target, the result and the right operand."""
        self.assertEqual(
            kvclient.compare_value("k", "==", "v"),
            kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.VALUE, result=kv_pb2.Compare.EQUAL, value=b"v"))
        self.assertEqual(
            kvclient.compare_version(b"k", "<", 3),
            kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.VERSION, result=kv_pb2.Compare.LESS, version=3))
        self.assertEqual(kvclient.compare_mod_revision(b"k", ">", 9).WhichOneof("operand"), "mod_revision")
        self.assertEqual(kvclient.compare_create_revision(b"k", "!=", 0).result, kv_pb2.Compare.NOT_EQUAL)
        absent = kvclient.compare_exists(b"k", False)
        self.assertEqual((absent.target, absent.WhichOneof("operand"), absent.exists), (kv_pb2.Compare.EXISTS, "exists", False))

    def test_op_builders(self) -> None:
        """The op builders fill the matching RequestOp field."""
        self.assertEqual(kvclient.put_op(b"k", b"v").request_put, kv_pb2.PutRequest(key=b"k", value=b"v"))
        self.assertEqual(kvclient.get_op(b"k").request_range, kv_pb2.RangeRequest(key=b"k"))
        self.assertEqual(kvclient.delete_op(b"p", prefix=True).request_delete_range,
                         kv_pb2.DeleteRangeRequest(key=b"p", range_end=b"q"))
        self.assertEqual(kvclient.range_op(b"a", b"c", limit=2).request_range,
                         kv_pb2.RangeRequest(key=b"a", range_end=b"c", limit=2))

    def test_bad_comparison(self) -> None:
        """An unknown comparison is the caller's error, raised before sending."""
        with self.assertRaises(InvalidArgument):
            kvclient.compare_value(b"k", "=", b"v")

    def test_txn_request(self) -> None:
        """txn sends the compares and both branches, in the session."""
        compare = kvclient.compare_value(b"k", "==", b"v")
        self.assertTrue(self.client.txn([compare], [kvclient.put_op(b"k", b"w")], [kvclient.get_op(b"k")]).succeeded)
        request = self.cluster.sent("Txn")[0][2]
        self.assertEqual((list(request.compare), len(request.success), len(request.failure)), ([compare], 1, 1))
        self.assertEqual((request.client_id, request.sequence), (7, 1))

    def test_cas_value(self) -> None:
        """cas with an expected value sets expected_value and swaps when it matches."""
        self.cluster.data[b"k"], self.cluster.versions[b"k"] = b"v", 1
        self.assertEqual(self.client.cas(b"k", b"w", expected_value=b"v"), (True, None))
        self.assertEqual(self.cluster.sent("CompareAndSwap")[0][2].WhichOneof("expected"), "expected_value")

    def test_cas_empty_value(self) -> None:
        """An empty expected value is an expectation, not "absent"."""
        self.client.cas(b"k", b"w", expected_value=b"")
        self.assertEqual(self.cluster.sent("CompareAndSwap")[0][2].WhichOneof("expected"), "expected_value")

    def test_cas_version_fails(self) -> None:
        """cas with a wrong expected version returns False and the current record."""
        self.cluster.data[b"k"], self.cluster.versions[b"k"] = b"v", 4
        succeeded, current = self.client.cas(b"k", b"w", expected_version=3)
        self.assertEqual((succeeded, current.value, current.version), (False, b"v", 4))

    def test_cas_absent(self) -> None:
        """cas expecting absence sets no expectation; on a missing key it swaps."""
        self.assertEqual(self.client.cas(b"k", b"w", expected_absent=True), (True, None))
        self.assertEqual(self.cluster.sent("CompareAndSwap")[0][2].WhichOneof("expected"), None)
        self.assertEqual(self.client.cas(b"k", b"x", expected_absent=True)[0], False)

    def test_cas_needs_one_expectation(self) -> None:
        """cas without exactly one expectation raises InvalidArgument and sends nothing."""
        with self.assertRaises(InvalidArgument):
            self.client.cas(b"k", b"w")
        with self.assertRaises(InvalidArgument):
            self.client.cas(b"k", b"w", expected_value=b"v", expected_version=1)
        self.assertEqual(self.cluster.requests, [])


class LifecycleTests(ClientTestCase):
    """Endpoints, reads and closing."""

    def test_endpoint_string(self) -> None:
        """Endpoints may be one comma-separated string."""
        self.assertEqual(Client("a:1, b:2,a:1", channel_factory=self.cluster.channel).endpoints, ("a:1", "b:2"))

    def test_bad_endpoint(self) -> None:
        """An endpoint that is not host:port is a ValueError at construction."""
        self.assertRaises(BadEndpoint, Client, ["nope"])
        self.assertRaises(BadEndpoint, Client, [])

    def test_get_and_get_kv(self) -> None:
        """get returns the value or None; get_kv the record."""
        self.client.put("k", "v")
        self.assertEqual((self.client.get("k"), self.client.get("missing")), (b"v", None))
        self.assertEqual(self.client.get_kv(b"k").version, 1)

    def test_close(self) -> None:
        """Closing (or leaving the with block) closes every channel, and the client refuses further calls."""
        with self.make_client() as client:
            client.get(b"k")
        self.assertTrue(all(channel.closed for channel in self.cluster.channels))
        self.assertRaises(kvclient.ClientError, client.get, b"k")


class AsyncClientTests(SynchronousTestCase):
    """The asyncio client over fake aio channels."""

    stream = True

    def setUp(self) -> None:
        self.cluster = FakeCluster()
        self.time = FakeTime()

    def run_client(self, body, **kwargs):
        """Run C{body(client)} in a fresh event loop with an AsyncClient; return its result."""
        async def main():
            async with AsyncClient([A, B, C], channel_factory=self.cluster.aio_channel, sleep=self.time.async_sleep,
                                   clock=self.time.clock, rng=LowRandom(), **{"stream": self.stream, **kwargs}) as client:
                return await body(client)
        return asyncio.run(main())

    def test_reads_and_writes(self) -> None:
        """The async client puts, appends and gets, numbering writes in one session."""
        async def body(client):
            await client.put(b"k", b"a")
            appended = await client.append(b"k", b"b")
            return appended, await client.get(b"k"), await client.cas(b"k", b"c", expected_value=b"ab")

        self.assertEqual(self.run_client(body), (b"ab", b"ab", (True, None)))
        writes = [(r[1], r[2].sequence) for r in self.cluster.requests if r[1] in ("Put", "Append", "CompareAndSwap")]
        self.assertEqual(writes, [("Put", 1), ("Append", 2), ("CompareAndSwap", 3)])
        self.assertTrue(all(channel.closed for channel in self.cluster.channels))

    def test_retries_with_backoff(self) -> None:
        """The async client pauses between rounds and keeps the write's sequence."""
        self.cluster.errors = {e: [unavailable()] * 2 for e in (A, B, C)}
        self.cluster.errors[A].insert(0, unavailable())  # OpenSession's first attempt

        async def body(client):
            return await client.put(b"k", b"v")

        self.assertFalse(self.run_client(body).existed)
        self.assertEqual(self.time.sleeps, [0.025, 0.05])
        self.assertEqual({(r[2].client_id, r[2].sequence) for r in self.cluster.sent("Put")}, {(7, 1)})

    def test_range_pages(self) -> None:
        """range follows `more` in the async client too, and range_pages is an async iterator."""
        self.cluster.page_size = 1
        for key in (b"a", b"b", b"c"):
            self.cluster.data[key], self.cluster.versions[key] = key, 1

        async def body(client):
            pages = [page async for page in client.range_pages(b"a", b"c")]
            return len(pages), [kv.key for kv in (await client.range(b"a", kvclient.TO_THE_END)).kvs]

        self.assertEqual(self.run_client(body), (2, [b"a", b"b", b"c"]))

    def test_unavailable(self) -> None:
        """The async client gives up at the deadline with Unavailable."""
        self.cluster.down.update({A, B, C})

        async def body(client):
            return await client.get(b"k")

        self.assertRaises(Unavailable, self.run_client, body, timeout_s=1.0)
        self.assertLess(self.time.now, 101.0)


class KeyAfterTests(SynchronousTestCase):
    """The next page of a range starts at the least valid key after the last one."""

    def test_short_key(self):
        """After a key below the length limit comes the key with a zero byte appended."""
        from kvpaxos.client.requests import _key_after

        self.assertEqual(_key_after(b"abc"), b"abc\x00")

    def test_longest_key(self):
        """After a 511-byte key comes its last byte incremented, not a 512-byte key."""
        from kvpaxos.client.requests import _key_after

        self.assertEqual(_key_after(b"b" * 511), b"b" * 510 + b"c")
        self.assertEqual(_key_after(b"b" * 509 + b"\xff\xff"), b"b" * 508 + b"c")
        self.assertIsNone(_key_after(b"\xff" * 511))


class StreamPathTests(ClientTestCase):
    """Which way requests go: KV requests over one stream per member; the rest, and an old server's, unary."""

    def test_kv_requests_go_over_the_stream(self) -> None:
        """Every KV request (the session's opening too) is streamed, one stream per member; a status is unary."""
        self.client.put(b"k", b"v")
        self.client.get(b"k")
        self.client.txn([], [kvclient.put_op(b"t", b"1")])
        self.client.status()
        self.assertEqual([(r[1], way) for r, way in zip(self.cluster.requests, self.cluster.ways)],
                         [("OpenSession", "stream"), ("Put", "stream"), ("Get", "stream"), ("Txn", "stream"),
                          ("Status", "unary")])
        opened = self.cluster.streams_opened
        self.assertIn(C, opened)  # the leader's
        self.assertEqual(len(opened), len(set(opened)))  # each member's opened once

    def test_unary_when_asked(self) -> None:
        """With stream=False nothing is streamed."""
        client = self.make_client(stream=False)
        client.put(b"k", b"v")
        client.get(b"k")
        self.assertEqual(set(self.cluster.ways), {"unary"})
        self.assertEqual(self.cluster.streams_opened, [])

    def test_member_without_stream(self) -> None:
        """
        A member that has no KV.Stream (UNIMPLEMENTED for the stream) is
        sent the same request as a unary RPC, once, and unary from then on.
        """
        self.cluster.no_stream.update({A, B, C})
        self.client.put(b"k", b"v")
        self.client.put(b"k", b"w")
        self.assertEqual([(r[1], way) for r, way in zip(self.cluster.requests, self.cluster.ways)],
                         [("OpenSession", "unary"), ("Put", "unary"), ("Put", "unary")])
        opened = self.cluster.streams_opened
        self.assertIn(C, opened)
        self.assertEqual(len(opened), len(set(opened)))
        self.assertEqual(self.cluster.applied, [(b"k", b"v"), (b"k", b"w")])

    def test_broken_stream_is_retried_exactly_once(self) -> None:
        """
        A stream that breaks (INTERNAL) after its member applied a write is
        read as UNAVAILABLE: the write is sent again with its sequence, is
        applied once, and gets its answer; the next request opens a new
        stream.
        """
        self.client.put(b"k", b"v")  # the session is open, the leader known
        self.cluster.break_stream.add(C)
        self.client._connection(C).stream.close()  # the next request opens the breaking stream
        self.client._connections.pop(C)
        self.client.append(b"k", b"w")
        self.assertEqual(self.cluster.applied, [(b"k", b"v"), (b"k", b"vw")])
        appends = [(r[0], r[2].client_id, r[2].sequence) for r in self.cluster.sent("Append")]
        self.assertEqual(len(appends), 2)
        self.assertEqual({(client, sequence) for _, client, sequence in appends}, {(7, 2)})
        self.assertEqual(self.cluster.data[b"k"], b"vw")

    def test_streamed_error_is_the_unary_error(self) -> None:
        """A streamed request's failure is read as the unary RPC's: a named leader is followed."""
        self.cluster.leader = 1
        self.cluster.followers_refuse = True
        self.client.put(b"k", b"v")
        self.assertEqual(self.cluster.data, {b"k": b"v"})
        self.assertEqual(self.endpoints_sent("Put")[-1], A)
        self.assertEqual(set(self.cluster.ways), {"stream"})


def _unary_twin(case: type) -> type:
    """C{case} run with C{stream=False}: every behaviour holds on the unary path too."""
    return type(f"Unary{case.__name__}", (case,), {"stream": False, "__doc__": f"{case.__doc__} (unary RPCs)"})


UnaryLeaderTests = _unary_twin(LeaderTests)
UnaryRetryTests = _unary_twin(RetryTests)
UnaryErrorDetailsTests = _unary_twin(ErrorDetailsTests)
UnarySessionTests = _unary_twin(SessionTests)
UnaryRangeTests = _unary_twin(RangeTests)
UnaryTxnTests = _unary_twin(TxnTests)
UnaryLifecycleTests = _unary_twin(LifecycleTests)
UnaryAsyncClientTests = _unary_twin(AsyncClientTests)
