"""
What the client sends (pure: no I/O): the txn builders (L{compare_value},
L{put_op}, ...), the L{Operation}s (a request, which RPC, whether it is a
write and goes to the leader), and the paging of ranges (L{RangePager}).

Keys and values are C{bytes}; C{str} is accepted and encoded as UTF-8.  A
builder given something that is not a key, a value or a known comparison
raises L{InvalidArgument} before anything is sent.  The limits are the
API's (L{kvpaxos.api.limits}).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

from kvpaxos.api.limits import MAX_KEY_BYTES, MAX_LEASE_ID, MAX_LEASE_TTL, TO_THE_END, prefix_end
from kvpaxos.client.errors import Compacted, InvalidArgument
from kvpaxos.v1 import kv_pb2, lease_pb2

__all__ = [
    "BytesLike", "MAX_LEASE_ID", "MAX_LEASE_TTL", "Operation", "RangePager", "RangeResult", "TO_THE_END",
    "compare_create_revision", "compare_exists", "compare_mod_revision", "compare_value",
    "compare_version", "delete_op", "get_op", "prefix_end", "put_op", "range_op",
]

BytesLike = Union[bytes, str]

#: The largest lease id and the longest TTL (seconds) the API takes
#: (C{proto/kvpaxos/v1/lease.proto}; etcd's int64 ids and C{MaxLeaseTTL}).

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


def lease_id_of(lease) -> int:
    """
    The lease id a put names: C{lease} itself (an int; 0 or None: no
    lease), or a held lease's C{id} (L{kvpaxos.client.lease.Lease}).

    @raise LeaseExpired: C{lease} is a held lease found gone (its C{lost}).
    @raise InvalidArgument: not an id from 0 to L{MAX_LEASE_ID}, nor a
        granted lease.
    """
    if lease is None:
        return 0
    if not isinstance(lease, int):
        lost = getattr(lease, "lost", None)
        if lost is not None:
            raise lost
        lease = getattr(lease, "id", lease)
    if type(lease) is not int or not 0 <= lease <= MAX_LEASE_ID:
        raise InvalidArgument(f"a lease must be a granted lease or an id from 0 (none) to {MAX_LEASE_ID}, "
                              f"not {lease!r}")
    return lease


def put_op(key: BytesLike, value: BytesLike, prev_kv: bool = False, lease=0) -> kv_pb2.RequestOp:
    """A Txn operation that sets C{key} to C{value}, attached to C{lease} (an id or a held lease; 0: none)."""
    return kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=_bytes(key), value=_bytes(value, "value"),
                                                          prev_kv=prev_kv, lease=lease_id_of(lease)))


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
    @ivar session: a write that goes in a session when the client has
        them; False for a write whose request has no session fields (an
        auth change), whose DEADLINE_EXCEEDED is then an unknown outcome.
    @ivar credential: carries the client's token, if it has a user (False:
        the server needs none, as for the status and the member list).
    """

    service: str
    rpc: str
    request: Any
    write: bool = False
    leader: bool = True
    session: bool = True
    credential: bool = True

    def stamped(self, client_id: int, sequence: int) -> Any:
        """Return a copy of the request carrying the session fields."""
        request = type(self.request)()
        request.CopyFrom(self.request)
        request.client_id, request.sequence = client_id, sequence
        return request


def to_leader(consistency: Union[str, int]) -> bool:
    """Whether a read of this consistency is best sent to the leader (all but serializable)."""
    return _consistency(consistency) != kv_pb2.SERIALIZABLE


def get_operation(key: BytesLike, consistency: Union[str, int] = "linearizable") -> Operation:
    request = kv_pb2.GetRequest(key=_bytes(key), consistency=_consistency(consistency))
    return Operation("kv", "Get", request, leader=to_leader(consistency))


def put_operation(key: BytesLike, value: BytesLike, prev_kv: bool = False, lease=0) -> Operation:
    """A put of C{key}, attached to C{lease} (L{lease_id_of}; 0: none, which detaches it from any)."""
    request = kv_pb2.PutRequest(key=_bytes(key), value=_bytes(value, "value"), prev_kv=prev_kv,
                                lease=lease_id_of(lease))
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

#: The greatest revision a request carries (an int64).
_REVISION_MAX = (1 << 63) - 1


def compact_operation(revision: int) -> Operation:
    """
    A C{Compact} at C{revision}: a write (to the leader) without a session
    (the request has no session fields).  Resent after UNAVAILABLE like
    any write: see L{compacted_by_retry}.

    @raise InvalidArgument: C{revision} is not a whole number from 0 to 2**63 - 1.
    """
    if type(revision) is not int or not 0 <= revision <= _REVISION_MAX:
        raise InvalidArgument(f"a compaction revision must be a whole number from 0 to {_REVISION_MAX}, "
                              f"not {revision!r}")
    return Operation("kv", "Compact", kv_pb2.CompactRequest(revision=revision), write=True, session=False)


def compacted_by_retry(revision: int, refusal: Compacted) -> Optional[int]:
    """
    The compacted revision to answer a compaction at C{revision} with,
    though it was refused C{refusal} (COMPACTED); None when it failed.

    A compaction is idempotent in effect: once one at C{revision} applied,
    the history keeps nothing below it, and every later one at
    C{revision} is refused COMPACTED.  So a refusal of an attempt resent
    after one that may have applied (C{maybe_applied}) whose compacted
    revision is at or past C{revision} means the effect asked for holds:
    success, with the history's compacted revision.  (Whether that first
    attempt or another compaction did it cannot be told, and need not
    be.)  Refused on its only attempt, the compaction failed: the history
    was already compacted there.
    """
    compacted = refusal.compact_revision
    if refusal.maybe_applied and compacted is not None and compacted >= revision:
        return compacted
    return None


# --- leases (kvpaxos.v1.Lease) -------------------------------------------------


def _lease_id(lease_id, what: str = "a lease id", lowest: int = 1) -> int:
    if type(lease_id) is not int or not lowest <= lease_id <= MAX_LEASE_ID:
        raise InvalidArgument(f"{what} must be a whole number from {lowest} to {MAX_LEASE_ID}, not {lease_id!r}")
    return lease_id


def lease_grant_operation(ttl: int, lease_id: int) -> Operation:
    """
    A C{Lease.Grant} of C{ttl} seconds with id C{lease_id} (0: the member
    picks one): a write without a session, to the leader.

    @raise InvalidArgument: a TTL that is not 1 to L{MAX_LEASE_TTL}, an id
        that is not 0 to L{MAX_LEASE_ID}.
    """
    if type(ttl) is not int or not 1 <= ttl <= MAX_LEASE_TTL:
        raise InvalidArgument(f"a lease TTL must be a whole number of seconds from 1 to {MAX_LEASE_TTL}, "
                              f"not {ttl!r}")
    request = lease_pb2.LeaseGrantRequest(ttl=ttl, id=_lease_id(lease_id, lowest=0))
    return Operation("lease", "Grant", request, write=True, session=False)


def lease_revoke_operation(lease_id: int) -> Operation:
    """A C{Lease.Revoke} of C{lease_id}: a write without a session, to the leader."""
    return Operation("lease", "Revoke", lease_pb2.LeaseRevokeRequest(id=_lease_id(lease_id)), write=True,
                     session=False)


def lease_keep_alive_operation(lease_id: int) -> Operation:
    """
    One keep-alive of C{lease_id}, over a C{Lease.KeepAlive} stream of its
    own (L{kvpaxos.client.lease.LeaseStub}): to the leader, retried like a
    read (renewing twice does no harm).
    """
    return Operation("lease", "KeepAliveOnce", lease_pb2.LeaseKeepAliveRequest(id=_lease_id(lease_id)))


def lease_time_to_live_operation(lease_id: int, keys: bool = False) -> Operation:
    """A C{Lease.TimeToLive} of C{lease_id} (with its keys if C{keys}), to the leader, retried like a read."""
    return Operation("lease", "TimeToLive", lease_pb2.LeaseTimeToLiveRequest(id=_lease_id(lease_id), keys=keys))


def leases_operation() -> Operation:
    """C{Lease.Leases}: the answering member's lease ids (any member)."""
    return Operation("lease", "Leases", lease_pb2.LeasesRequest(), leader=False)


def status_operation() -> Operation:
    return Operation("cluster", "Status", kv_pb2.StatusRequest(), leader=False, credential=False)


def member_list_operation() -> Operation:
    return Operation("cluster", "MemberList", kv_pb2.MemberListRequest(), leader=False, credential=False)


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


