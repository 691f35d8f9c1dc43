"""
A client library for kvpaxos over its public gRPC API
(C{proto/kvpaxos/v1/kv.proto}): a blocking L{Client} on grpcio and an
L{AsyncClient} on C{grpc.aio} (asyncio), with the same methods.

    with Client("10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379") as kv:
        kv.put(b"k", b"v")
        kv.get(b"k")                                    # b"v"
        kv.cas(b"k", b"w", expected_value=b"v")         # (True, None)
        kv.txn([compare_value(b"k", "==", b"w")], [put_op(b"k", b"x")], [get_op(b"k")])

Keys and values are C{bytes}; C{str} is accepted and encoded as UTF-8.

What lives here, in this order: the errors (one hierarchy under
L{ClientError}); the txn builders; the operations (pure: a request, which
RPC, how to read the answer); the retry policy (L{Directory}, L{Backoff},
L{Attempts}: pure objects that are told the time and never sleep, send or
read a clock); the L{SessionPool}; and the two clients, which only drive
the policy with their own I/O.  Nothing here knows how the cluster works
beyond the gRPC API.

Routing and retries
===================
  - Writes and linearizable or lease reads go to the leader when the
    client knows its address; serializable reads, and everything while the
    leader's address is unknown, go to the endpoint that last answered.
    (Any node serves any request: a follower forwards, so this only saves
    a hop.)  The client learns C{member_id -> endpoint} and the leader from
    every response header and the leader from UNAVAILABLE messages
    (C{"...; leader is 2"}).  While the leader's address is unknown it
    prefers endpoints whose member id it has not seen yet, so ordinary
    traffic finds the leader without extra RPCs.
  - UNAVAILABLE (which is also how grpcio reports a connection failure)
    moves on to the named leader or the next endpoint at once; once every
    endpoint has failed since the last pause, the client pauses, with
    exponential backoff and jitter (L{Backoff}), and starts another round.
    It gives up with L{Unavailable} when the next pause would pass the
    call's deadline: C{timeout_s} from the start of the call, shared by
    every RPC of the call (each RPC gets the time remaining).
  - DEADLINE_EXCEEDED is retried like UNAVAILABLE for reads and for writes
    in a session; a write without a session raises L{OutcomeUnknown}.
  - INVALID_ARGUMENT raises L{InvalidArgument} at once; any other status
    raises L{RequestFailed} at once.

Exactly-once writes
===================
With C{session=True} (the default) every write (put, delete, append, txn,
cas) carries C{(client_id, sequence)}: the client opens a session lazily
(OpenSession) before its first write, numbers writes 1, 2, 3, ..., and sends
every retry of one write with the same pair, so the cluster applies it at
most once and a retry gets the original answer.

Concurrency: a session has one write in flight at a time (the server
requires it).  The client keeps a small pool of sessions: a write takes an
idle one or opens a new one, and puts it back when its outcome is settled.
A client used by one thread at a time therefore uses one session; N threads
writing at once use up to N sessions.  Sessions live in the cluster's
session table (10,000 by default, least recently used evicted), so prefer
one long-lived client per process over many short-lived ones.

FAILED_PRECONDITION "session expired" drops the session (the next write
opens a new one) and raises L{SessionExpired}: the outcome of the write is
unknown when an earlier attempt of it may have been applied.  If the very
first attempt of a write got "session expired" (the session expired while
idle), the cluster applied nothing, and the write is sent once more in a
fresh session instead.  "stale sequence" means this client numbered its
requests wrongly (a bug): L{StaleSequence}, and the session is dropped.

An L{Unavailable} or L{OutcomeUnknown} from a write means the outcome is
unknown (an attempt may have been applied, or still be); the next write
uses the next sequence, which the cluster handles correctly.

Without a session, a write that got UNAVAILABLE is still sent again
(at-least-once: an append may then apply twice); use sessions for
anything that is not idempotent.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import grpc

from kvpaxos.client_endpoints import (
    BadEndpoint,
    open_aio_channel,
    open_channel,
    parse_endpoint,
    parse_endpoints,
)
from kvpaxos.kv.commands import MAX_KEY_BYTES, TO_THE_END, prefix_end  # "\0": every key from the start on
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc

__all__ = [
    "AsyncClient", "Client", "ClientError", "InvalidArgument", "OutcomeUnknown", "RangeResult",
    "RequestFailed", "SessionExpired", "StaleSequence", "Unavailable",
    "compare_create_revision", "compare_exists", "compare_mod_revision", "compare_value",
    "compare_version", "delete_op", "get_op", "prefix_end", "put_op", "range_op",
]

BytesLike = Union[bytes, str]

# --- errors ------------------------------------------------------------------


class ClientError(Exception):
    """A request failed; the message says where and why."""


class Unavailable(ClientError):
    """
    No endpoint served the request before the call's deadline.

    @ivar leader: the leader last named by the cluster, or None.
    @ivar failures: the last failure of each endpoint tried, in endpoint order.
    """

    def __init__(self, message: str, leader: Optional[int] = None, failures: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.leader = leader
        self.failures = tuple(failures)


class InvalidArgument(ClientError, ValueError):
    """
    The request is malformed or outside the limits (the caller's fault):
    refused by the cluster (INVALID_ARGUMENT, nothing changed) or by this
    library before sending.
    """


class OutcomeUnknown(ClientError):
    """A write may or may not have been applied, and cannot be retried safely."""


class SessionExpired(OutcomeUnknown):
    """
    The write's session was expired or evicted by the cluster.

    @ivar maybe_applied: an earlier attempt of the write may have been
        applied (when false, the cluster applied nothing).
    """

    def __init__(self, message: str, maybe_applied: bool) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class StaleSequence(ClientError):
    """The cluster saw a sequence below the session's last one: a bug in this client."""


class RequestFailed(ClientError):
    """
    The cluster answered with a status this library does not retry
    (INTERNAL, UNIMPLEMENTED, ...).

    @ivar code: the C{grpc.StatusCode}.
    @ivar details: the server's message.
    """

    def __init__(self, message: str, code: Optional[grpc.StatusCode], details: str) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


_LEADER_NAMED = re.compile(r"\bleader is (\d+)\b")


def describe_failure(endpoint: str, code: Optional[grpc.StatusCode], details: str) -> str:
    """Return C{"endpoint: CODE: details"}, the form every error message uses."""
    name = code.name if code is not None else "ERROR"
    return f"{endpoint}: {name}: {details or 'no details'}"


def error_for(
    endpoint: str, code: Optional[grpc.StatusCode], details: str, *, retry_deadline: bool, maybe_applied: bool
) -> Optional[ClientError]:
    """
    Return the error a failed RPC means, or None when the request may be
    sent again (UNAVAILABLE; DEADLINE_EXCEEDED when C{retry_deadline}).

    @param maybe_applied: an earlier attempt of the same request was sent.
    """
    described = describe_failure(endpoint, code, details)
    if code is grpc.StatusCode.UNAVAILABLE:
        return None
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return None if retry_deadline else OutcomeUnknown(f"{described} (the write may have been applied)")
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(described)
    if code is grpc.StatusCode.FAILED_PRECONDITION and details.startswith("session expired"):
        outcome = (
            "the outcome of this write is unknown: an earlier attempt may have been applied"
            if maybe_applied else "this write was not applied"
        )
        return SessionExpired(f"{described} ({outcome}; the next write uses a new session)", maybe_applied)
    if code is grpc.StatusCode.FAILED_PRECONDITION and details.startswith("stale sequence"):
        return StaleSequence(f"{described} (a bug in the client: it reused a sequence number)")
    return RequestFailed(described, code, details)


def _leader_named(details: str) -> Optional[int]:
    match = _LEADER_NAMED.search(details or "")
    return int(match.group(1)) if match else None


def _rpc_error_parts(error: grpc.RpcError) -> tuple[Optional[grpc.StatusCode], str]:
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    return (code() if callable(code) else None), ((details() if callable(details) else None) or str(error))


# --- txn builders ------------------------------------------------------------


def _bytes(value: BytesLike, what: str = "key") -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InvalidArgument(f"{what} must be bytes or str, not {type(value).__name__}")


_COMPARISONS = {
    "==": kv_pb2.Compare.EQUAL, "!=": kv_pb2.Compare.NOT_EQUAL,
    "<": kv_pb2.Compare.LESS, ">": kv_pb2.Compare.GREATER,
}


def _comparison(op: str) -> int:
    try:
        return _COMPARISONS[op]
    except KeyError:
        raise InvalidArgument(f"comparison {op!r} is not one of {', '.join(_COMPARISONS)}") from None


def compare_value(key: BytesLike, op: str, value: BytesLike) -> kv_pb2.Compare:
    """
    A Txn condition on C{key}'s value; C{op} is C{"=="}, C{"!="}, C{"<"} or
    C{">"} (bytewise).  Every value compare on a missing key is false.
    """
    return kv_pb2.Compare(key=_bytes(key), target=kv_pb2.Compare.VALUE, result=_comparison(op),
                          value=_bytes(value, "value"))


def compare_version(key: BytesLike, op: str, version: int) -> kv_pb2.Compare:
    """A Txn condition on C{key}'s version (0 for a missing key)."""
    return kv_pb2.Compare(key=_bytes(key), target=kv_pb2.Compare.VERSION, result=_comparison(op), version=version)


def compare_create_revision(key: BytesLike, op: str, revision: int) -> kv_pb2.Compare:
    """A Txn condition on the revision that created C{key} (0 for a missing key)."""
    return kv_pb2.Compare(key=_bytes(key), target=kv_pb2.Compare.CREATE_REVISION, result=_comparison(op),
                          create_revision=revision)


def compare_mod_revision(key: BytesLike, op: str, revision: int) -> kv_pb2.Compare:
    """A Txn condition on the revision of C{key}'s latest write (0 for a missing key)."""
    return kv_pb2.Compare(key=_bytes(key), target=kv_pb2.Compare.MOD_REVISION, result=_comparison(op),
                          mod_revision=revision)


def compare_exists(key: BytesLike, exists: bool = True) -> kv_pb2.Compare:
    """A Txn condition that holds when C{key} exists (or, with C{exists=False}, when it does not)."""
    return kv_pb2.Compare(key=_bytes(key), target=kv_pb2.Compare.EXISTS, result=kv_pb2.Compare.EQUAL,
                          exists=bool(exists))




def _range_end(key: bytes, range_end: Optional[BytesLike], prefix: bool) -> bytes:
    if prefix:
        if range_end is not None:
            raise InvalidArgument("give a range end or prefix=True, not both")
        return prefix_end(key)
    return b"" if range_end is None else _bytes(range_end, "range end")


def put_op(key: BytesLike, value: BytesLike, prev_kv: bool = False) -> kv_pb2.RequestOp:
    """A Txn operation that sets C{key} to C{value}."""
    return kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=_bytes(key), value=_bytes(value, "value"),
                                                          prev_kv=prev_kv))


def delete_op(
    key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False, prev_kv: bool = False
) -> kv_pb2.RequestOp:
    """A Txn operation that deletes C{key} (or the keys in [key, range_end), or those starting with C{key})."""
    key = _bytes(key)
    return kv_pb2.RequestOp(request_delete_range=kv_pb2.DeleteRangeRequest(
        key=key, range_end=_range_end(key, range_end, prefix), prev_kv=prev_kv))


def range_op(
    key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False, limit: int = 0,
    keys_only: bool = False, count_only: bool = False,
) -> kv_pb2.RequestOp:
    """
    A Txn operation that reads the keys in [key, range_end): C{range_end}
    None means the one key, L{TO_THE_END} every key from C{key} on;
    C{prefix=True} every key starting with C{key}.  Not paged: a Txn read
    returns at most what fits one response.
    """
    key = _bytes(key)
    return kv_pb2.RequestOp(request_range=kv_pb2.RangeRequest(
        key=key, range_end=_range_end(key, range_end, prefix), limit=limit,
        keys_only=keys_only, count_only=count_only))


def get_op(key: BytesLike) -> kv_pb2.RequestOp:
    """A Txn operation that reads C{key}."""
    return range_op(key)


# --- operations: requests and how to read their answers (pure) --------------

_CONSISTENCIES = {
    "linearizable": kv_pb2.LINEARIZABLE, "serializable": kv_pb2.SERIALIZABLE, "lease": kv_pb2.LEASE,
}


def _consistency(consistency: Union[str, int]) -> int:
    if isinstance(consistency, str):
        try:
            return _CONSISTENCIES[consistency.lower()]
        except KeyError:
            raise InvalidArgument(
                f"consistency {consistency!r} is not one of {', '.join(_CONSISTENCIES)}") from None
    if consistency in _CONSISTENCIES.values():
        return consistency
    raise InvalidArgument(f"unknown consistency {consistency!r}")


@dataclass(frozen=True)
class Operation:
    """
    One request and what to do with it.

    @ivar service: C{"kv"} or C{"cluster"}, the stub to call C{rpc} on.
    @ivar write: a write: stamped with the session's C{(client_id,
        sequence)}, and a DEADLINE_EXCEEDED is not retried without a session.
    @ivar leader: send it to the leader when its address is known.
    """

    service: str
    rpc: str
    request: Any
    write: bool = False
    leader: bool = True

    def stamped(self, client_id: int, sequence: int) -> Any:
        """Return a copy of the request carrying the session fields."""
        request = type(self.request)()
        request.CopyFrom(self.request)
        request.client_id, request.sequence = client_id, sequence
        return request


def _to_leader(consistency: Union[str, int]) -> bool:
    """Whether a read of this consistency is best sent to the leader (all but serializable)."""
    return _consistency(consistency) != kv_pb2.SERIALIZABLE


def get_operation(key: BytesLike, consistency: Union[str, int] = "linearizable") -> Operation:
    request = kv_pb2.GetRequest(key=_bytes(key), consistency=_consistency(consistency))
    return Operation("kv", "Get", request, leader=_to_leader(consistency))


def put_operation(key: BytesLike, value: BytesLike, prev_kv: bool = False) -> Operation:
    request = kv_pb2.PutRequest(key=_bytes(key), value=_bytes(value, "value"), prev_kv=prev_kv)
    return Operation("kv", "Put", request, write=True)


def delete_operation(key: BytesLike, prev_kv: bool = False) -> Operation:
    return Operation("kv", "Delete", kv_pb2.DeleteRequest(key=_bytes(key), prev_kv=prev_kv), write=True)


def append_operation(key: BytesLike, value: BytesLike) -> Operation:
    return Operation("kv", "Append", kv_pb2.AppendRequest(key=_bytes(key), value=_bytes(value, "value")), write=True)


def txn_operation(
    compares: Iterable[kv_pb2.Compare], success: Iterable[kv_pb2.RequestOp] = (),
    failure: Iterable[kv_pb2.RequestOp] = (),
) -> Operation:
    request = kv_pb2.TxnRequest(compare=list(compares), success=list(success), failure=list(failure))
    return Operation("kv", "Txn", request, write=True)


def cas_operation(
    key: BytesLike, value: BytesLike, *, expected_value: Optional[BytesLike] = None,
    expected_version: Optional[int] = None, expected_absent: bool = False,
) -> Operation:
    given = (expected_value is not None) + (expected_version is not None) + bool(expected_absent)
    if given != 1:
        raise InvalidArgument("give exactly one of expected_value, expected_version, expected_absent=True")
    request = kv_pb2.CompareAndSwapRequest(key=_bytes(key), value=_bytes(value, "value"))
    if expected_value is not None:
        request.expected_value = _bytes(expected_value, "expected value")
    elif expected_version is not None:
        request.expected_version = expected_version
    return Operation("kv", "CompareAndSwap", request, write=True)


def cas_result(response: kv_pb2.CompareAndSwapResponse) -> tuple[bool, Optional[kv_pb2.KeyValue]]:
    """Return C{(succeeded, current)}: the key's record when the swap did not happen (None if absent)."""
    current = response.current if response.HasField("current") else None
    return response.succeeded, current


OPEN_SESSION = Operation("kv", "OpenSession", kv_pb2.OpenSessionRequest())


def status_operation() -> Operation:
    return Operation("cluster", "Status", kv_pb2.StatusRequest(), leader=False)


def range_request(
    key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False, limit: int = 0,
    keys_only: bool = False, count_only: bool = False, consistency: Union[str, int] = "linearizable",
) -> kv_pb2.RangeRequest:
    """The first page's request of L{Client.range}."""
    key = _bytes(key)
    if limit < 0:
        raise InvalidArgument(f"limit must be 0 (no limit) or more, not {limit}")
    return kv_pb2.RangeRequest(
        key=key, range_end=_range_end(key, range_end, prefix), limit=limit, keys_only=keys_only,
        count_only=count_only, consistency=_consistency(consistency))


@dataclass
class RangeResult:
    """
    Every page of a range, joined.

    @ivar kvs: the records, in key order.
    @ivar count: how many keys the range held when the first page was read.
    @ivar more: keys were left out because of the limit.
    @ivar revision: the store's revision when the first page was read.
    """

    kvs: list = field(default_factory=list)
    count: int = 0
    more: bool = False
    revision: int = 0


class RangePager:
    """
    The pages of one range (pure): C{next_request()} is the request for the
    next page, or None when done; C{add(response)} takes a page.  A page
    continues just after the previous page's last key, while the server says
    C{more} and the limit is not reached.  Pages are separate reads: a key
    written between two pages may or may not be seen.
    """

    def __init__(self, request: kv_pb2.RangeRequest) -> None:
        self._request = request
        self._limit = request.limit
        self._next: Optional[kv_pb2.RangeRequest] = request
        self.result = RangeResult()
        self._pages = 0

    def next_request(self) -> Optional[kv_pb2.RangeRequest]:
        return self._next

    def add(self, response: kv_pb2.RangeResponse) -> None:
        if self._pages == 0:
            self.result.count = response.count
            self.result.revision = response.header.revision
        self._pages += 1
        self.result.kvs.extend(response.kvs)
        got = len(self.result.kvs)
        self._next = None
        self.result.more = response.more
        if self._request.count_only or not response.more:
            return
        if self._limit and got >= self._limit:
            return
        if not response.kvs:
            # "more" with nothing returned would page forever: stop and
            # report more=True rather than loop.
            return
        start = _key_after(response.kvs[-1].key)
        if start is None:
            return  # nothing can follow the greatest possible key
        request = kv_pb2.RangeRequest()
        request.CopyFrom(self._request)
        request.key = start
        request.limit = self._limit - got if self._limit else 0
        self._next = request


def _key_after(key: bytes) -> Optional[bytes]:
    """
    Return the least valid key greater than C{key}: C{key + b"\0"} while
    that fits the key limit; for a key of the greatest length, the key with
    its last byte below 0xff incremented (trailing 0xff bytes dropped), or
    None if there is none.
    """
    if len(key) < MAX_KEY_BYTES:
        return key + b"\0"
    following = prefix_end(key)
    return None if following == TO_THE_END else following


# --- the retry policy (pure) -------------------------------------------------


class Directory:
    """
    What the client knows of the cluster: its endpoints, which member
    answers at which endpoint, and the leader.  Shared by every call of a
    client (hence the lock); it never does I/O.
    """

    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise BadEndpoint("no endpoints given")
        self.endpoints = tuple(endpoints)
        self.leader: Optional[int] = None
        self._members: dict[int, str] = {}
        self._current = 0
        self._lock = threading.Lock()

    def leader_endpoint(self) -> Optional[str]:
        """The leader's endpoint, when both are known."""
        with self._lock:
            return self._members.get(self.leader) if self.leader is not None else None

    def member_endpoint(self, member_id: int) -> Optional[str]:
        with self._lock:
            return self._members.get(member_id)

    def pick(self, leader: bool, exclude: Iterable[str] = ()) -> Optional[str]:
        """
        Return the endpoint to try next, or None when every endpoint is in
        C{exclude}.  With C{leader}: the leader's endpoint if known; if the
        leader is known but not its endpoint, an endpoint whose member is
        not known yet (it may be the leader's).  Otherwise the endpoint that
        last answered, then the ones after it in order.
        """
        exclude = set(exclude)
        with self._lock:
            n = len(self.endpoints)
            order = [self.endpoints[(self._current + i) % n] for i in range(n)]
            candidates = [endpoint for endpoint in order if endpoint not in exclude]
            if not candidates:
                return None
            if leader and self.leader is not None:
                known = self._members.get(self.leader)
                if known is not None and known not in exclude:
                    return known
                if known is None:
                    mapped = set(self._members.values())
                    for endpoint in candidates:
                        if endpoint not in mapped:
                            return endpoint
            return candidates[0]

    def answered(self, endpoint: str, header: kv_pb2.ResponseHeader) -> None:
        """C{endpoint} answered with C{header}: learn who it is and whom it follows."""
        with self._lock:
            if header.member_id:
                for member, where in list(self._members.items()):
                    if where == endpoint or member == header.member_id:
                        del self._members[member]
                self._members[header.member_id] = endpoint
            self.leader = header.leader_id or None
            if endpoint in self.endpoints:
                self._current = self.endpoints.index(endpoint)

    def failed(self, endpoint: str, leader: Optional[int]) -> None:
        """
        C{endpoint} could not serve a request; C{leader} is the leader its
        message named, if any.
        """
        with self._lock:
            if leader is not None:
                self.leader = leader
            elif self.leader is not None and self._members.get(self.leader) == endpoint:
                self.leader = None
            if self.endpoints[self._current] == endpoint:
                self._current = (self._current + 1) % len(self.endpoints)


@dataclass(frozen=True)
class Backoff:
    """
    Pauses between rounds of attempts: the n-th pause is drawn uniformly
    from [c/2, c] with c = min(C{max_s}, C{first_s} * 2**(n-1)) ("equal
    jitter": it grows, yet clients that failed together spread out).
    """

    first_s: float = 0.05
    max_s: float = 1.0

    def delay_s(self, pause: int, rng: random.Random) -> float:
        """The length of pause number C{pause} (1 for the first)."""
        ceiling = min(self.max_s, self.first_s * 2 ** min(pause - 1, 62))
        return ceiling * (0.5 + 0.5 * rng.random())


@dataclass(frozen=True)
class Try:
    """Send the request to C{endpoint} with this RPC deadline."""

    endpoint: str
    timeout_s: float


@dataclass(frozen=True)
class Pause:
    """Wait this long, then ask for the next step."""

    delay_s: float


class Attempts:
    """
    The attempts of one request (pure: it is told the time).  Drive it as

        while True:
            step = attempts.next_step(now)      # Try or Pause; raises when out of time
            ... on a Try, send; then attempts.failed(...) (raises or returns)
            or attempts.answered(...) and stop.

    Every attempt of one request carries the same request (and so the same
    session fields): the caller stamps it once, before the first attempt.
    """

    def __init__(
        self, directory: Directory, backoff: Backoff, rng: random.Random, deadline: float,
        *, leader: bool, retry_deadline: bool,
    ) -> None:
        self._directory = directory
        self._backoff = backoff
        self._rng = rng
        self.deadline = deadline
        self._leader = leader
        self._retry_deadline = retry_deadline
        #: Endpoints that failed since the last pause.
        self._round: set[str] = set()
        self._pauses = 0
        self._failures: dict[str, str] = {}
        #: How many times the request was sent.
        self.sent = 0

    def next_step(self, now: float) -> Union[Try, Pause]:
        """
        Return the next L{Try} or L{Pause}.

        @raise Unavailable: the deadline has passed, or would pass during
            the next pause.
        """
        remaining = self.deadline - now
        if remaining <= 0:
            raise self._gave_up()
        endpoint = self._directory.pick(self._leader, self._round)
        if endpoint is None:
            self._pauses += 1
            delay_s = self._backoff.delay_s(self._pauses, self._rng)
            if delay_s >= remaining:
                raise self._gave_up()
            self._round.clear()
            return Pause(delay_s)
        self.sent += 1
        return Try(endpoint, remaining)

    def failed(self, endpoint: str, code: Optional[grpc.StatusCode], details: str) -> None:
        """
        The attempt on C{endpoint} failed with C{code}: return if the
        request may be sent again, else raise the error the caller gets.
        """
        error = error_for(endpoint, code, details, retry_deadline=self._retry_deadline,
                          maybe_applied=self.sent > 1)
        if error is not None:
            raise error
        self._directory.failed(endpoint, _leader_named(details))
        self._failures[endpoint] = describe_failure(endpoint, code, details)
        self._round.add(endpoint)

    def answered(self, endpoint: str, header: kv_pb2.ResponseHeader) -> None:
        """The attempt on C{endpoint} succeeded."""
        self._directory.answered(endpoint, header)

    def _gave_up(self) -> Unavailable:
        failures = [self._failures[e] for e in self._directory.endpoints if e in self._failures]
        if not failures:
            message = "no endpoint answered before the deadline"
        elif len(failures) == 1:
            message = failures[0]
        else:
            message = "no endpoint answered: " + "; ".join(failures)
        return Unavailable(message, self._directory.leader, failures)


class RetryPolicy:
    """The policy one client applies to every call: where to send, when to retry."""

    def __init__(self, directory: Directory, backoff: Backoff, rng: random.Random, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be more than 0, not {timeout_s!r}")
        self.directory = directory
        self.backoff = backoff
        self.rng = rng
        self.timeout_s = timeout_s

    def deadline(self, now: float) -> float:
        return now + self.timeout_s

    def attempts(self, operation: Operation, deadline: float, in_session: bool) -> Attempts:
        return Attempts(
            self.directory, self.backoff, self.rng, deadline, leader=operation.leader,
            retry_deadline=not operation.write or in_session,
        )


# --- sessions ----------------------------------------------------------------


@dataclass
class Session:
    """
    One exactly-once session: its id and the last sequence used.  Only the
    holder (who took it from the pool) touches C{last_sequence}.
    """

    client_id: int
    last_sequence: int = 0

    def next_sequence(self) -> int:
        self.last_sequence += 1
        return self.last_sequence


class SessionPool:
    """
    Idle sessions of one client.  A write L{take}s one (None: open a new
    one), so no two writes share a session at once, and L{settle}s it when
    its outcome is known.  Last in, first out: a client used by one thread
    keeps using one session.
    """

    def __init__(self) -> None:
        self._idle: list[Session] = []
        self._lock = threading.Lock()

    def take(self) -> Optional[Session]:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def settle(self, session: Session, error: Optional[BaseException], resent: bool) -> bool:
        """
        The write sent in C{session} ended with C{error} (None: answered).
        Keep the session or drop it; return True when the write should be
        sent again in a fresh session: its only attempt found the session
        expired, so nothing was applied (and it was not sent again yet).
        """
        if isinstance(error, (SessionExpired, StaleSequence)):
            return isinstance(error, SessionExpired) and not error.maybe_applied and not resent
        with self._lock:
            self._idle.append(session)
        return False

    def idle(self) -> list[Session]:
        with self._lock:
            return list(self._idle)


# --- the blocking client -----------------------------------------------------


class Reply(NamedTuple):
    """A response and the endpoint that gave it."""

    endpoint: str
    response: Any


class Connection:
    """The stubs for one endpoint, over one channel."""

    def __init__(self, channel) -> None:
        self.channel = channel
        self.kv = kv_pb2_grpc.KVStub(channel)
        self.cluster = kv_pb2_grpc.ClusterStub(channel)


def _endpoint_list(endpoints: Union[Sequence[str], str]) -> list[str]:
    if isinstance(endpoints, str):
        return parse_endpoints(endpoints)
    parsed: list[str] = []
    for endpoint in endpoints:
        endpoint = parse_endpoint(endpoint)
        if endpoint not in parsed:
            parsed.append(endpoint)
    if not parsed:
        raise BadEndpoint("no endpoints given")
    return parsed


class _Base:
    """What both clients share: the policy, the sessions and the connections."""

    def __init__(self, endpoints, timeout_s, session, channel_factory, clock, rng, backoff) -> None:
        self._policy = RetryPolicy(
            Directory(_endpoint_list(endpoints)), backoff or Backoff(), rng or random.Random(), timeout_s)
        self._sessions = SessionPool() if session else None
        self._channel_factory = channel_factory
        self._clock = clock
        self._connections: dict[str, Connection] = {}
        self._connections_lock = threading.Lock()
        self._closed = False

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._policy.directory.endpoints

    @property
    def leader(self) -> Optional[int]:
        """The leader last heard of, or None."""
        return self._policy.directory.leader

    def _connection(self, endpoint: str) -> Connection:
        with self._connections_lock:
            if self._closed:
                raise ClientError("the client is closed")
            connection = self._connections.get(endpoint)
            if connection is None:
                connection = self._connections[endpoint] = Connection(self._channel_factory(endpoint))
            return connection

    def _take_connections(self) -> list[Connection]:
        with self._connections_lock:
            self._closed = True
            connections, self._connections = list(self._connections.values()), {}
        return connections


class Client(_Base):
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
    @raise kvpaxos.client_endpoints.BadEndpoint: an endpoint is not
        C{host:port} (a ValueError).
    """

    def __init__(
        self, endpoints: Union[Sequence[str], str], timeout_s: float = 5.0, session: bool = True,
        channel_factory: Optional[Callable[[str], Any]] = None, sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic, rng: Optional[random.Random] = None,
        backoff: Optional[Backoff] = None,
    ) -> None:
        super().__init__(endpoints, timeout_s, session, channel_factory or open_channel, clock, rng, backoff)
        self._sleep = sleep

    # -- driving the policy

    def _attempt(self, operation: Operation, request: Any, deadline: float, in_session: bool) -> Reply:
        attempts = self._policy.attempts(operation, deadline, in_session)
        while True:
            step = attempts.next_step(self._clock())
            if isinstance(step, Pause):
                self._sleep(step.delay_s)
                continue
            stub = getattr(self._connection(step.endpoint), operation.service)
            try:
                response = getattr(stub, operation.rpc)(request, timeout=step.timeout_s)
            except grpc.RpcError as error:
                attempts.failed(step.endpoint, *_rpc_error_parts(error))
                continue
            attempts.answered(step.endpoint, response.header)
            return Reply(step.endpoint, response)

    def call(self, operation: Operation) -> Reply:
        """
        Send C{operation} (in a session if it is a write and sessions are
        on), retrying as the module docstring says; return the reply.
        """
        deadline = self._policy.deadline(self._clock())
        if not operation.write or self._sessions is None:
            return self._attempt(operation, operation.request, deadline, False)
        resent = False
        while True:
            session = self._sessions.take()
            if session is None:
                session = Session(self._attempt(OPEN_SESSION, OPEN_SESSION.request, deadline, False).response.client_id)
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

    # -- the API

    def get(self, key: BytesLike, consistency: Union[str, int] = "linearizable") -> Optional[bytes]:
        """Return C{key}'s value, or None when it does not exist."""
        response = self.call(get_operation(key, consistency)).response
        return response.value if response.found else None

    def get_kv(self, key: BytesLike, consistency: Union[str, int] = "linearizable") -> Optional[kv_pb2.KeyValue]:
        """Return C{key}'s record (value, version, revisions), or None when it does not exist."""
        response = self.call(get_operation(key, consistency)).response
        return response.kv if response.found else None

    def put(self, key: BytesLike, value: BytesLike, prev_kv: bool = False) -> kv_pb2.PutResponse:
        """Set C{key} to C{value}; the response says whether it existed (and, if asked, its old record)."""
        return self.call(put_operation(key, value, prev_kv)).response

    def delete(self, key: BytesLike, prev_kv: bool = False) -> kv_pb2.DeleteResponse:
        """Delete C{key}; C{response.deleted} is false when it did not exist."""
        return self.call(delete_operation(key, prev_kv)).response

    def append(self, key: BytesLike, value: BytesLike) -> bytes:
        """Append C{value} to C{key}'s value (missing: empty) and return the new value."""
        return self.call(append_operation(key, value)).response.value

    def range_pages(self, key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False,
                    limit: int = 0, keys_only: bool = False, count_only: bool = False,
                    consistency: Union[str, int] = "linearizable") -> Iterator[kv_pb2.RangeResponse]:
        """
        Yield the pages (C{RangeResponse}s) of the keys in [key, range_end):
        C{range_end} None is the one key, L{TO_THE_END} every key from
        C{key} on; C{prefix=True} every key starting with C{key}.  At most
        C{limit} keys in all (0: no limit).  Each page is its own read.
        """
        pager = RangePager(range_request(key, range_end, prefix, limit, keys_only, count_only, consistency))
        leader = _to_leader(consistency)
        while (request := pager.next_request()) is not None:
            response = self.call(Operation("kv", "Range", request, leader=leader)).response
            pager.add(response)
            yield response

    def range(self, key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False,
              limit: int = 0, keys_only: bool = False, count_only: bool = False,
              consistency: Union[str, int] = "linearizable") -> RangeResult:
        """Return every page of L{range_pages} joined in one L{RangeResult}."""
        pager = RangePager(range_request(key, range_end, prefix, limit, keys_only, count_only, consistency))
        leader = _to_leader(consistency)
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
        return self.call(txn_operation(compares, success, failure)).response

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
        operation = cas_operation(key, value, expected_value=expected_value, expected_version=expected_version,
                                  expected_absent=expected_absent)
        return cas_result(self.call(operation).response)

    def status(self) -> kv_pb2.StatusResponse:
        """Return the cluster status as some member (retried like a read) sees it."""
        return self.call(status_operation()).response

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
            code, details = _rpc_error_parts(error)
            raise _member_error(endpoint, code, details) from None
        self._policy.directory.answered(endpoint, response.header)
        return response

    def close(self) -> None:
        """Close every channel; the client cannot be used afterwards."""
        for connection in self._take_connections():
            connection.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _member_error(endpoint: str, code: Optional[grpc.StatusCode], details: str) -> ClientError:
    error = error_for(endpoint, code, details, retry_deadline=False, maybe_applied=False)
    if error is None or isinstance(error, OutcomeUnknown):
        described = describe_failure(endpoint, code, details)
        return Unavailable(described, _leader_named(details), [described])
    return error


# --- the asyncio client ------------------------------------------------------


class AsyncClient(_Base):
    """
    The asyncio twin of L{Client} on C{grpc.aio}: the same arguments
    (C{sleep} is a coroutine function, default C{asyncio.sleep}) and the
    same methods as coroutines; C{range_pages} is an async iterator,
    C{close} a coroutine, and it is an async context manager.  Use one
    AsyncClient from one event loop; concurrent coroutines share the
    session pool as threads do with L{Client}.  Channels are opened on
    first use, inside the running loop.
    """

    def __init__(
        self, endpoints: Union[Sequence[str], str], timeout_s: float = 5.0, session: bool = True,
        channel_factory: Optional[Callable[[str], Any]] = None, sleep: Callable[[float], Any] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic, rng: Optional[random.Random] = None,
        backoff: Optional[Backoff] = None,
    ) -> None:
        super().__init__(endpoints, timeout_s, session, channel_factory or open_aio_channel, clock, rng, backoff)
        self._sleep = sleep

    async def _attempt(self, operation: Operation, request: Any, deadline: float, in_session: bool) -> Reply:
        attempts = self._policy.attempts(operation, deadline, in_session)
        while True:
            step = attempts.next_step(self._clock())
            if isinstance(step, Pause):
                await self._sleep(step.delay_s)
                continue
            stub = getattr(self._connection(step.endpoint), operation.service)
            try:
                response = await getattr(stub, operation.rpc)(request, timeout=step.timeout_s)
            except grpc.RpcError as error:
                attempts.failed(step.endpoint, *_rpc_error_parts(error))
                continue
            attempts.answered(step.endpoint, response.header)
            return Reply(step.endpoint, response)

    async def call(self, operation: Operation) -> Reply:
        """See L{Client.call}."""
        deadline = self._policy.deadline(self._clock())
        if not operation.write or self._sessions is None:
            return await self._attempt(operation, operation.request, deadline, False)
        resent = False
        while True:
            session = self._sessions.take()
            if session is None:
                opened = await self._attempt(OPEN_SESSION, OPEN_SESSION.request, deadline, False)
                session = Session(opened.response.client_id)
            request = operation.stamped(session.client_id, session.next_sequence())
            try:
                reply = await self._attempt(operation, request, deadline, True)
            except BaseException as error:
                if self._sessions.settle(session, error, resent):
                    resent = True
                    continue
                raise
            self._sessions.settle(session, None, resent)
            return reply

    async def get(self, key: BytesLike, consistency: Union[str, int] = "linearizable") -> Optional[bytes]:
        """See L{Client.get}."""
        response = (await self.call(get_operation(key, consistency))).response
        return response.value if response.found else None

    async def get_kv(self, key: BytesLike, consistency: Union[str, int] = "linearizable") -> Optional[kv_pb2.KeyValue]:
        """See L{Client.get_kv}."""
        response = (await self.call(get_operation(key, consistency))).response
        return response.kv if response.found else None

    async def put(self, key: BytesLike, value: BytesLike, prev_kv: bool = False) -> kv_pb2.PutResponse:
        """See L{Client.put}."""
        return (await self.call(put_operation(key, value, prev_kv))).response

    async def delete(self, key: BytesLike, prev_kv: bool = False) -> kv_pb2.DeleteResponse:
        """See L{Client.delete}."""
        return (await self.call(delete_operation(key, prev_kv))).response

    async def append(self, key: BytesLike, value: BytesLike) -> bytes:
        """See L{Client.append}."""
        return (await self.call(append_operation(key, value))).response.value

    async def range_pages(self, key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False,
                          limit: int = 0, keys_only: bool = False, count_only: bool = False,
                          consistency: Union[str, int] = "linearizable") -> AsyncIterator[kv_pb2.RangeResponse]:
        """See L{Client.range_pages}."""
        pager = RangePager(range_request(key, range_end, prefix, limit, keys_only, count_only, consistency))
        leader = _to_leader(consistency)
        while (request := pager.next_request()) is not None:
            response = (await self.call(Operation("kv", "Range", request, leader=leader))).response
            pager.add(response)
            yield response

    async def range(self, key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False,
                    limit: int = 0, keys_only: bool = False, count_only: bool = False,
                    consistency: Union[str, int] = "linearizable") -> RangeResult:
        """See L{Client.range}."""
        pager = RangePager(range_request(key, range_end, prefix, limit, keys_only, count_only, consistency))
        leader = _to_leader(consistency)
        while (request := pager.next_request()) is not None:
            pager.add((await self.call(Operation("kv", "Range", request, leader=leader))).response)
        return pager.result

    async def txn(self, compares: Iterable[kv_pb2.Compare], success: Iterable[kv_pb2.RequestOp] = (),
                  failure: Iterable[kv_pb2.RequestOp] = ()) -> kv_pb2.TxnResponse:
        """See L{Client.txn}."""
        return (await self.call(txn_operation(compares, success, failure))).response

    async def cas(self, key: BytesLike, value: BytesLike, *, expected_value: Optional[BytesLike] = None,
                  expected_version: Optional[int] = None,
                  expected_absent: bool = False) -> tuple[bool, Optional[kv_pb2.KeyValue]]:
        """See L{Client.cas}."""
        operation = cas_operation(key, value, expected_value=expected_value, expected_version=expected_version,
                                  expected_absent=expected_absent)
        return cas_result((await self.call(operation)).response)

    async def status(self) -> kv_pb2.StatusResponse:
        """See L{Client.status}."""
        return (await self.call(status_operation())).response

    async def member_status(self, endpoint: str) -> kv_pb2.StatusResponse:
        """See L{Client.member_status}."""
        endpoint = parse_endpoint(endpoint)
        try:
            response = await self._connection(endpoint).cluster.Status(
                kv_pb2.StatusRequest(), timeout=self._policy.timeout_s)
        except grpc.RpcError as error:
            code, details = _rpc_error_parts(error)
            raise _member_error(endpoint, code, details) from None
        self._policy.directory.answered(endpoint, response.header)
        return response

    async def close(self) -> None:
        """Close every channel; the client cannot be used afterwards."""
        for connection in self._take_connections():
            await connection.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()
