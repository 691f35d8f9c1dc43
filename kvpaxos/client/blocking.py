"""
The blocking L{Client} (on grpcio) and what it shares with the asyncio one
(L{kvpaxos.client.aio.AsyncClient}): the connections, the retry policy and
the session pool.  The client only drives the policy
(L{kvpaxos.client.retry}) with its own sleep and RPCs; see the package
docstring (L{kvpaxos.client}) for routing, retries and sessions.
"""

from __future__ import annotations

import random
import threading
import time
from functools import partial
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import grpc

from kvpaxos.api.endpoints import CHANNEL_OPTIONS, parse_endpoint, parse_endpoints
from kvpaxos.client import requests
from kvpaxos.client.auth import AuthMethods, authenticate_operation, credentials_of, unauthenticated
from kvpaxos.client.concurrency_blocking import RecipeMethods
from kvpaxos.client.errors import (
    AuthNotEnabled, ClientError, Compacted, LeaseExists, LeaseNotFound, OutcomeUnknown, Unavailable, member_error,
    rpc_failure,
)
from kvpaxos.client.lease import Lease, LeaseStub
from kvpaxos.client.requests import MAX_LEASE_ID, BytesLike, Operation, RangePager, RangeResult
from kvpaxos.client.retry import Backoff, Directory, Pause, Refresh, RetryPolicy, Session, SessionPool
from kvpaxos.client.stream import KIND_OF_RPC, BlockingMultiplexer, as_unavailable, broken
from kvpaxos.client.watch import Watch, watch_request
from kvpaxos.tls import grpc_channel_credentials
from kvpaxos.v1 import auth_pb2_grpc, kv_pb2, kv_pb2_grpc, lease_pb2

__all__ = ["Client", "Connection", "DEFAULT_REFRESH_S", "Reply", "open_channel"]

#: How many ids a grant this client picks the id of tries, while the id
#: picked is taken (a collision of random 63-bit ids: never, in practice).
GRANT_ATTEMPTS = 8

#: How often a client lists the members by default (seconds): often enough
#: to follow a membership change within a minute, rare enough to cost
#: nothing (a MemberList is served locally by the member that answers).
DEFAULT_REFRESH_S = 30.0


def open_channel(endpoint: str, credentials: Optional[grpc.ChannelCredentials] = None) -> grpc.Channel:
    """
    Return a gRPC channel to C{endpoint} with the API's C{CHANNEL_OPTIONS}:
    over TLS with C{credentials} (L{kvpaxos.tls.grpc_channel_credentials}),
    else plaintext.
    """
    if credentials is not None:
        return grpc.secure_channel(endpoint, credentials, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)


def tls_channel_factory(opener, cacert: Optional[str], cert: Optional[str], key: Optional[str]):
    """
    Return C{opener} (an endpoint -> channel function taking
    C{credentials}) bound to the credentials of C{cacert}, C{cert} and
    C{key}, or C{opener} itself when all three are None (plaintext).

    @raise kvpaxos.tls.TLSError: a file does not load (a ValueError).
    """
    if cacert is None and cert is None and key is None:
        return opener
    return partial(opener, credentials=grpc_channel_credentials(cacert, cert, key))


class Reply(NamedTuple):
    """A response and the endpoint that gave it."""

    endpoint: str
    response: Any


class Connection:
    """
    The stubs for one endpoint, over one channel, and the C{KV.Stream}
    multiplexer (C{stream}) its KV requests go through when the client
    streams (None: unary RPCs, also after the member turned out to have
    no C{KV.Stream}).  C{aio}: the channel is grpc.aio's.
    """

    def __init__(self, channel, multiplexer: Optional[Callable[[Any], Any]] = None, aio: bool = False) -> None:
        self.channel = channel
        self.kv = kv_pb2_grpc.KVStub(channel)
        self.cluster = kv_pb2_grpc.ClusterStub(channel)
        self.auth = auth_pb2_grpc.AuthStub(channel)
        self.lease = LeaseStub(channel, aio)
        self.stream = multiplexer(channel) if multiplexer is not None else None

    @staticmethod
    def streamed_kind(operation: Operation) -> Optional[str]:
        """The stream request kind C{operation} goes as, or None when it is not a KV request."""
        return KIND_OF_RPC.get(operation.rpc) if operation.service == "kv" else None

    def stream_failed(self, stream, error: grpc.RpcError) -> None:
        """
        A request sent over C{stream} failed with C{error}: return when the
        member has no C{KV.Stream} (UNIMPLEMENTED for the whole stream:
        nothing ran), the connection then sending unary RPCs; else raise
        the error the retry policy reads: the request's own, or a broken
        stream's as UNAVAILABLE (its outcome unknown, as a unary call's
        that lost its connection; CANCELLED as it is once the client was
        closed).
        """
        if not broken(error):
            raise error
        if error.code() is grpc.StatusCode.UNIMPLEMENTED:
            self.stream = None
            return
        if error.code() is grpc.StatusCode.CANCELLED and stream.closed:
            raise error
        raise as_unavailable(error) from None


class _Base(AuthMethods):
    """What both clients share: the policy, the sessions, the credentials and the connections."""

    #: Whether the channels are grpc.aio's.
    _aio = False

    def __init__(self, endpoints, timeout_s, session, channel_factory, clock, rng, backoff, refresh_s,
                 multiplexer, user=None, password=None) -> None:
        self._credentials = credentials_of(user, password)
        if self._credentials is not None:
            multiplexer = None  # a token is one call's credential: unary RPCs
        self._policy = RetryPolicy(
            Directory(parse_endpoints(endpoints), refresh_s), backoff or Backoff(), rng or random.Random(), timeout_s)
        self._sessions = SessionPool() if session else None
        self._channel_factory = channel_factory
        self._clock = clock
        self._connections: dict[str, Connection] = {}
        self._connections_lock = threading.Lock()
        self._closed = False
        # Streams stamp each request's time left on the client's clock.
        self._multiplexer = partial(multiplexer, clock=clock) if multiplexer is not None else None

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints known: the seeds given, then those the member list named."""
        return self._policy.directory.endpoints

    @property
    def leader(self) -> Optional[int]:
        """The leader last heard of, or None."""
        return self._policy.directory.leader

    def _renews(self, operation: Operation, failure, metadata: Optional[tuple], renewed: bool) -> bool:
        """
        Whether a request answered C{failure} authenticates again and is
        sent once more (UNAUTHENTICATED, once per call, for a client with
        a user); if so its token is dropped.
        """
        if self._credentials is None or renewed or not operation.credential or not unauthenticated(failure):
            return False
        self._credentials.refused(metadata)
        return True

    def _connection(self, endpoint: str) -> Connection:
        with self._connections_lock:
            if self._closed:
                raise ClientError("the client is closed")
            connection = self._connections.get(endpoint)
            if connection is None:
                connection = self._connections[endpoint] = Connection(self._channel_factory(endpoint),
                                                                      self._multiplexer, self._aio)
            return connection

    def _pick_lease_id(self) -> int:
        """A random lease id, for a grant that lets this client pick one (so that it can be resent)."""
        return (self._policy.rng.getrandbits(63) & MAX_LEASE_ID) or 1

    def _take_connections(self) -> list[Connection]:
        with self._connections_lock:
            self._closed = True
            connections, self._connections = list(self._connections.values()), {}
        return connections


def _granted_earlier(lease_id: int, found: lease_pb2.LeaseTimeToLiveResponse,
                     refusal: LeaseExists) -> lease_pb2.LeaseGrantResponse:
    """The grant's answer, from the time-to-live C{found} of the lease an earlier attempt granted."""
    if found.ttl < 0:
        raise OutcomeUnknown(f"{refusal} (an earlier attempt of this grant applied, and lease {lease_id:016x} is "
                             "gone already)") from refusal
    return lease_pb2.LeaseGrantResponse(header=found.header, id=lease_id, ttl=found.granted_ttl)


def _call_with(stub_method, request: Any, timeout_s: float, metadata: Optional[tuple]):
    if metadata is None:
        return stub_method(request, timeout=timeout_s)
    return stub_method(request, timeout=timeout_s, metadata=metadata)


class Client(RecipeMethods, _Base):
    """
    A blocking kvpaxos client.  Thread-safe: see the module docstring for
    how sessions are shared.  Every method may raise L{ClientError} (see the
    subclasses); each call takes at most about C{timeout_s}.

    @param endpoints: C{["host:port", ...]} or C{"host:port,host:port"}.
    @param timeout_s: the deadline of each call, retries included.
    @param session: send writes in exactly-once sessions.
    @param channel_factory: endpoint -> C{grpc.Channel} (tests pass a fake).
    @param sleep: waits between rounds of retries.
    @param clock: monotonic seconds.
    @param rng: jitter for the pauses.
    @param stream: send the KV requests of concurrent calls to a member
        over one C{KV.Stream} (L{kvpaxos.client.stream}), several to a
        message when they queue up; each is still its own request, with
        its own retries, result and error.  A member without C{KV.Stream}
        is sent unary RPCs.  False: unary RPCs only.
    @param refresh_s: list the members (C{Cluster.MemberList}) before the
        first request, then every C{refresh_s} seconds and after a round in
        which every endpoint failed, and try the members' client addresses
        after the C{endpoints} given (which are always kept); None: only
        ever use C{endpoints}.  A failed listing is not the request's error.
    @param cacert: TLS: the CA certificates (PEM file) that sign the
        members' certificates; with C{cert} and C{key}, this client's
        certificate and key (a member with C{client_cert_auth} asks for
        them).  All None: plaintext.  Ignored with a C{channel_factory}.
    @param user: with C{password}, the user this client names once auth is
        enabled: it authenticates lazily and renews its token when a
        request is answered UNAUTHENTICATED (L{kvpaxos.client.auth}); its
        requests are unary (C{stream} is ignored).  None: no user (or the
        client certificate's common name, with C{client_cert_auth}).
    @raise kvpaxos.api.endpoints.BadEndpoint: an endpoint is not
        C{host:port} (a ValueError).
    @raise kvpaxos.tls.TLSError: a TLS file does not load (a ValueError).
    """

    def __init__(
        self, endpoints: Union[Sequence[str], str], timeout_s: float = 5.0, session: bool = True,
        channel_factory: Optional[Callable[[str], Any]] = None, sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic, rng: Optional[random.Random] = None,
        backoff: Optional[Backoff] = None, refresh_s: Optional[float] = DEFAULT_REFRESH_S, stream: bool = True,
        cacert: Optional[str] = None, cert: Optional[str] = None, key: Optional[str] = None,
        user: Optional[str] = None, password: Optional[str] = None,
    ) -> None:
        channel_factory = channel_factory or tls_channel_factory(open_channel, cacert, cert, key)
        super().__init__(endpoints, timeout_s, session, channel_factory, clock, rng, backoff, refresh_s,
                         BlockingMultiplexer if stream else None, user, password)
        self._sleep = sleep

    # -- driving the policy

    def _metadata(self, operation: Operation, deadline: float) -> Optional[tuple]:
        """
        The metadata C{operation} carries: the token (authenticating first
        if there is none, one call at a time), or None.
        """
        credentials = self._credentials
        if credentials is None or not operation.credential:
            return None
        needs, metadata, _ = credentials.current()
        if not needs:
            return metadata
        remaining = deadline - self._clock()
        if remaining <= 0 or not credentials.single_flight.acquire(timeout=remaining):
            raise Unavailable("no token before the deadline: another call's Authenticate did not finish", None, [])
        try:
            needs, metadata, generation = credentials.current()
            if not needs:
                return metadata  # the call that held it authenticated
            try:
                token = self._attempt(authenticate_operation(credentials), None, deadline, False).response.token
            except AuthNotEnabled:
                token = None
            credentials.authenticated(token, generation)
        finally:
            credentials.single_flight.release()
        return credentials.current()[1]

    def _attempt(self, operation: Operation, request: Any, deadline: float, in_session: bool) -> Reply:
        attempts = self._policy.attempts(operation, deadline, in_session)
        request = operation.request if request is None else request
        metadata, renewed = self._metadata(operation, deadline), False
        while True:
            step = attempts.next_step(self._clock())
            if isinstance(step, Pause):
                self._sleep(step.delay_s)
                continue
            if isinstance(step, Refresh):
                try:
                    listing = self._connection(step.endpoint).cluster.MemberList(
                        kv_pb2.MemberListRequest(), timeout=step.timeout_s)
                except grpc.RpcError:
                    continue  # not the request's failure: it goes on with what it knows
                attempts.listed(step.endpoint, listing)
                continue
            try:
                response = self._send(self._connection(step.endpoint), operation, request, step.timeout_s, metadata)
            except grpc.RpcError as error:
                failure = rpc_failure(error)
                if self._renews(operation, failure, metadata, renewed):
                    attempts.renewed()
                    metadata, renewed = self._metadata(operation, deadline), True
                    continue  # the same request (session fields included), with a new token
                attempts.failed(step.endpoint, failure)
                continue
            attempts.answered(step.endpoint, response.header)
            return Reply(step.endpoint, response)

    @staticmethod
    def _send(connection: Connection, operation: Operation, request: Any, timeout_s: float,
              metadata: Optional[tuple] = None) -> Any:
        stream, kind = connection.stream, connection.streamed_kind(operation)
        if stream is not None and kind is not None:
            try:
                return stream.request(kind, request, timeout_s)
            except grpc.RpcError as error:
                connection.stream_failed(stream, error)
        return _call_with(getattr(getattr(connection, operation.service), operation.rpc), request, timeout_s,
                          metadata)

    def call(self, operation: Operation) -> Reply:
        """
        Send C{operation} (in a session if it is a write and sessions are
        on), retrying as the module docstring says; return the reply.
        """
        deadline = self._policy.deadline(self._clock())
        if not operation.write or not operation.session or self._sessions is None:
            return self._attempt(operation, operation.request, deadline, False)
        resent = False
        while True:
            session = self._sessions.take()
            if session is None:
                session = Session(self._attempt(requests.OPEN_SESSION, requests.OPEN_SESSION.request, deadline, False).response.client_id)
            request = operation.stamped(session.client_id, session.next_sequence())
            try:
                reply = self._attempt(operation, request, deadline, True)
            except BaseException as error:
                if self._sessions.settle(session, error, resent):
                    resent = True
                    continue
                raise
            self._sessions.settle(session, None, resent)
            return reply

    def _auth_result(self, operation: Operation, read: Callable[[Any], Any]) -> Any:
        return read(self.call(operation).response)

    # -- the API

    def get(self, key: BytesLike, consistency: Union[str, int] = "linearizable") -> Optional[bytes]:
        """Return C{key}'s value, or None when it does not exist."""
        response = self.call(requests.get_operation(key, consistency)).response
        return response.value if response.found else None

    def get_kv(self, key: BytesLike, consistency: Union[str, int] = "linearizable") -> Optional[kv_pb2.KeyValue]:
        """Return C{key}'s record (value, version, revisions), or None when it does not exist."""
        response = self.call(requests.get_operation(key, consistency)).response
        return response.kv if response.found else None

    def put(self, key: BytesLike, value: BytesLike, prev_kv: bool = False, lease=0) -> kv_pb2.PutResponse:
        """
        Set C{key} to C{value}; the response says whether it existed (and,
        if asked, its old record).  C{lease}: attach the key to that lease
        (an id, or a held L{Lease}; 0: none, and a put without a lease
        detaches the key from any it had).

        @raise LeaseNotFound: no such lease (nothing applied).
        @raise LeaseExpired: C{lease} is a held lease that is gone (found now,
            or before: then nothing is sent).
        """
        operation = requests.put_operation(key, value, prev_kv, lease)
        try:
            return self.call(operation).response
        except LeaseNotFound as error:
            if isinstance(lease, Lease):
                raise lease.gone(error) from None
            raise

    def delete(self, key: BytesLike, prev_kv: bool = False) -> kv_pb2.DeleteResponse:
        """Delete C{key}; C{response.deleted} is false when it did not exist."""
        return self.call(requests.delete_operation(key, prev_kv)).response

    def append(self, key: BytesLike, value: BytesLike) -> bytes:
        """Append C{value} to C{key}'s value (missing: empty) and return the new value."""
        return self.call(requests.append_operation(key, value)).response.value

    def range_pages(self, key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False,
                    limit: int = 0, keys_only: bool = False, count_only: bool = False,
                    consistency: Union[str, int] = "linearizable") -> Iterator[kv_pb2.RangeResponse]:
        """
        Yield the pages (C{RangeResponse}s) of the keys in [key, range_end):
        C{range_end} None is the one key, L{TO_THE_END} every key from
        C{key} on; C{prefix=True} every key starting with C{key}.  At most
        C{limit} keys in all (0: no limit).  Each page is its own read.
        """
        pager = RangePager(requests.range_request(key, range_end, prefix, limit, keys_only, count_only, consistency))
        leader = requests.to_leader(consistency)
        while (request := pager.next_request()) is not None:
            response = self.call(Operation("kv", "Range", request, leader=leader)).response
            pager.add(response)
            yield response

    def range(self, key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False,
              limit: int = 0, keys_only: bool = False, count_only: bool = False,
              consistency: Union[str, int] = "linearizable") -> RangeResult:
        """Return every page of L{range_pages} joined in one L{RangeResult}."""
        pager = RangePager(requests.range_request(key, range_end, prefix, limit, keys_only, count_only, consistency))
        leader = requests.to_leader(consistency)
        while (request := pager.next_request()) is not None:
            pager.add(self.call(Operation("kv", "Range", request, leader=leader)).response)
        return pager.result

    def txn(self, compares: Iterable[kv_pb2.Compare], success: Iterable[kv_pb2.RequestOp] = (),
            failure: Iterable[kv_pb2.RequestOp] = ()) -> kv_pb2.TxnResponse:
        """
        If every compare holds apply C{success}, else C{failure}, atomically
        (build them with L{compare_value}, L{put_op}, ...); return the
        C{TxnResponse} (C{succeeded}, one C{responses} entry per op).
        """
        return self.call(requests.txn_operation(compares, success, failure)).response

    def cas(self, key: BytesLike, value: BytesLike, *, expected_value: Optional[BytesLike] = None,
            expected_version: Optional[int] = None,
            expected_absent: bool = False) -> tuple[bool, Optional[kv_pb2.KeyValue]]:
        """
        Set C{key} to C{value} if it holds C{expected_value}, has version
        C{expected_version}, or (C{expected_absent=True}) does not exist;
        give exactly one.  Return C{(succeeded, current)}: C{current} is the
        key's record when the swap did not happen (None if absent, and on
        success).

        @raise InvalidArgument: not exactly one expectation given.
        """
        operation = requests.cas_operation(key, value, expected_value=expected_value, expected_version=expected_version,
                                  expected_absent=expected_absent)
        return requests.cas_result(self.call(operation).response)

    def compact(self, revision: int) -> int:
        """
        Drop every event of a revision below C{revision} from the history
        of writes (what a watch replays); keys are untouched.  Return the
        history's compacted revision: C{revision}, or (when a resent
        attempt found it compacted already, see
        L{kvpaxos.client.requests.compacted_by_retry}) one at or past it.

        @raise Compacted: the history is already compacted at or past
            C{revision} (its C{compact_revision} says where).
        @raise FutureRevision: C{revision} is above the store's revision.
        @raise InvalidArgument: C{revision} is negative or not a whole number.
        @raise OutcomeUnknown: the RPC timed out (it may have applied; it
            is safe to call again).
        """
        try:
            return self.call(requests.compact_operation(revision)).response.compact_revision
        except Compacted as refusal:
            compacted = requests.compacted_by_retry(revision, refusal)
            if compacted is None:
                raise
            return compacted

    def watch(self, key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False,
              start_revision: int = 0, prev_kv: bool = False, no_put: bool = False,
              no_delete: bool = False) -> Watch:
        """
        Watch C{key} (or [key, range_end), or every key starting with it)
        from C{start_revision} (0: from now): a blocking iterator of
        L{kvpaxos.client.watch.WatchEvent}s that resumes on another member
        after a failure, without a gap or a duplicate; close it (or use it
        as a context manager) to stop.
        """
        return Watch(self, watch_request(key, range_end, prefix, start_revision, prev_kv, no_put, no_delete))

    # -- leases

    def lease(self, ttl: int, lease_id: int = 0, *, keep_alive: bool = True, revoke_on_close: bool = True,
              on_lost: Optional[Callable[[Lease], Any]] = None) -> Lease:
        """
        Grant a lease of C{ttl} seconds (L{lease_grant}) and hold it: a
        L{Lease}, renewed every third of its TTL from a thread of its own
        (C{keep_alive}) until closed, and revoked when closed
        (C{revoke_on_close}); a context manager.  Once the cluster says it
        is gone, C{on_lost(lease)} is called and every later operation on
        it raises L{LeaseExpired} (see L{kvpaxos.client.lease}).
        """
        sent_at = self._clock()
        response = self.lease_grant(ttl, lease_id)
        return Lease(self, response.id, response.ttl, keep_alive=keep_alive, revoke_on_close=revoke_on_close,
                     on_lost=on_lost, granted_at=sent_at)

    def lease_grant(self, ttl: int, lease_id: int = 0) -> lease_pb2.LeaseGrantResponse:
        """
        Grant a lease of C{ttl} seconds (raised to the cluster's minimum)
        with id C{lease_id}; return the response (C{id}, C{ttl} granted).
        For id 0 this client picks a random one, so that a grant resent
        after UNAVAILABLE whose first attempt applied (refused
        LEASE_EXISTS) is known for its own: it answers that lease, as its
        time-to-live tells it.

        @raise LeaseExists: C{lease_id} is taken.
        @raise InvalidArgument: a TTL or id out of range.
        @raise OutcomeUnknown: the RPC timed out (a lease may have been
            granted: it runs out after its TTL unless kept alive).
        """
        picked = lease_id == 0
        refusal = None
        for _ in range(GRANT_ATTEMPTS if picked else 1):
            chosen = self._pick_lease_id() if picked else lease_id
            try:
                return self.call(requests.lease_grant_operation(ttl, chosen)).response
            except LeaseExists as error:
                if not picked:
                    raise
                refusal = error
                if error.maybe_applied:
                    return self._granted_before(chosen, error)
        raise refusal

    def _granted_before(self, lease_id: int, refusal: LeaseExists) -> lease_pb2.LeaseGrantResponse:
        """A grant of an id this client picked, resent and refused LEASE_EXISTS: its own earlier attempt applied."""
        found = self.lease_time_to_live(lease_id)
        return _granted_earlier(lease_id, found, refusal)

    def lease_revoke(self, lease_id: int) -> None:
        """
        Revoke lease C{lease_id}: its keys are deleted, in one revision.

        @raise LeaseNotFound: there is no such lease (unless an earlier
            attempt of this revoke may have done it: then it returns).
        """
        try:
            self.call(requests.lease_revoke_operation(lease_id))
        except LeaseNotFound as error:
            if not error.maybe_applied:
                raise

    def lease_keep_alive(self, lease_id: int) -> int:
        """Renew lease C{lease_id} once (at the leader); return its TTL, or 0 if there is no such lease."""
        return self.call(requests.lease_keep_alive_operation(lease_id)).response.ttl

    def lease_time_to_live(self, lease_id: int, keys: bool = False) -> lease_pb2.LeaseTimeToLiveResponse:
        """
        Return how long lease C{lease_id} has left (C{ttl}, whole seconds,
        as the leader counts them; -1: no such lease), its C{granted_ttl}
        and, with C{keys}, its keys.
        """
        return self.call(requests.lease_time_to_live_operation(lease_id, keys)).response

    def leases(self) -> list[int]:
        """Return the ids of every lease, as some member's store has them."""
        return list(self.call(requests.leases_operation()).response.ids)

    def status(self) -> kv_pb2.StatusResponse:
        """Return the cluster status as some member (retried like a read) sees it."""
        return self.call(requests.status_operation()).response

    def member_list(self) -> kv_pb2.MemberListResponse:
        """
        Return the member list as some member (retried like a read) knows
        it, and take its client addresses as endpoints (see C{refresh_s}).
        """
        reply = self.call(requests.member_list_operation())
        self._policy.directory.listed(reply.endpoint, reply.response)
        return reply.response

    def member_status(self, endpoint: str) -> kv_pb2.StatusResponse:
        """
        Return the status as the member at C{endpoint} sees it: one attempt,
        no retry (an operator's view of that member).

        @raise ClientError: that member did not answer (L{Unavailable}) or failed.
        """
        endpoint = parse_endpoint(endpoint)
        timeout_s = self._policy.timeout_s
        try:
            response = self._connection(endpoint).cluster.Status(kv_pb2.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError as error:
            raise member_error(endpoint, rpc_failure(error)) from None
        self._policy.directory.answered(endpoint, response.header)
        return response

    def close(self) -> None:
        """Close every channel; the client cannot be used afterwards."""
        for connection in self._take_connections():
            if connection.stream is not None:
                connection.stream.close()
            connection.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
