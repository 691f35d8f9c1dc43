"""
Client commands as they travel through the log, and what applying them
returns.

A L{Request} is encoded to bytes (L{kvpaxos.encoding.commands}) by the node that
took it from a client and proposed it; every replica decodes it when it is chosen and
applies it (L{kvpaxos.kv.machine}).  C{origin} and C{request_id} let the
proposing node find the client waiting for the result; they do not affect
what is applied.  C{client_id} and C{sequence} name a session
(L{kvpaxos.kv.sessions}): they do.

Ops: C{PUT}, C{DELETE} and C{APPEND} of one key; C{TXN}, an etcd-style
transaction (L{Txn}: compares, then the C{success} or the C{failure} ops,
atomically, in one revision); C{OPEN_SESSION}, which assigns a client id;
C{AUTH}, a change of users, roles or the enabled flag
(L{kvpaxos.kv.auth.AuthCommand}).  C{user} names who asked (b"" while
auth is disabled); the apply checks its permission (L{kvpaxos.kv.auth}).
Reads that are not part of a transaction are not log commands: the node
serves them from its store after a read index.

Limits (documented for users in README.md): keys are 1..L{MAX_KEY_BYTES}
bytes, values 0..L{MAX_VALUE_BYTES} bytes, a transaction at most
L{MAX_TXN_OPS} compares and ops per branch and L{MAX_TXN_BYTES} of keys,
values and operands.
Anything else is the client's fault: L{InvalidArgument}.  The limits, the
key and value checks and L{InvalidArgument} itself are the API's
(L{kvpaxos.api.limits}, L{kvpaxos.api.errors}), re-exported here.

The log format (C{encode_request}, C{decode_request}) is
L{kvpaxos.encoding.commands}.  Result types live here too; their byte
format (for the session table) is in L{kvpaxos.encoding.state}.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Union

# The API's limits and its one InvalidArgument, re-exported: the state
# machine enforces the numbers the client checks against.
from kvpaxos.api.errors import InvalidArgument
from kvpaxos.api.limits import (  # noqa: F401 (re-exported)
    MAX_KEY_BYTES,
    MAX_LEASE_ID,
    MAX_LEASE_TTL,
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    MAX_VALUE_BYTES,
    TO_THE_END,
    check_key as _check_key,
    check_name,
    check_value as _check_value,
    prefix_end,  # noqa: F401
)

_U64_MAX = (1 << 64) - 1


class Op(enum.IntEnum):
    """What a command does."""

    PUT = 1
    DELETE = 2
    APPEND = 3
    TXN = 4
    OPEN_SESSION = 5
    AUTH = 6
    COMPACT = 7
    LEASE_GRANT = 8
    LEASE_REVOKE = 9
    LEASE_EXPIRE = 10


class CompareTarget(enum.IntEnum):
    """What a L{Compare} looks at (EXISTS is ours, not etcd's)."""

    VALUE = 1
    VERSION = 2
    CREATE_REVISION = 3
    MOD_REVISION = 4
    EXISTS = 5


class CompareResult(enum.IntEnum):
    """How a L{Compare} relates the key's field to the operand."""

    EQUAL = 1
    NOT_EQUAL = 2
    LESS = 3
    GREATER = 4


class CorruptCommand(ValueError):
    """Bytes in the log that are not a command (a misbehaving peer or bug)."""


class CorruptRecord(ValueError):
    """
    Stored or transferred state (a key's record, a session, a snapshot) that
    is not of this format: a damaged disk, a misbehaving peer, or data
    written by another (newer) version of kvpaxos.  Not the caller's fault;
    the node must not guess what it meant.  L{kvpaxos.encoding.errors}
    raises it as C{CorruptState}.
    """


# --- requests ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compare:
    """
    One condition of a L{Txn}: C{key}'s C{target} field, related by
    C{result} to C{operand}.  The operand is C{bytes} for VALUE, an C{int}
    >= 0 for VERSION, CREATE_REVISION and MOD_REVISION, and a C{bool} for
    EXISTS.  A missing key has version and revisions 0 and no value: every
    VALUE compare on it is false (etcd's rule).
    """

    key: bytes
    target: CompareTarget
    result: CompareResult
    operand: Union[bytes, int, bool]


@dataclass(frozen=True, slots=True)
class Put:
    """
    A transaction op: store C{value} under C{key}; C{prev_kv}: return the
    old record; C{lease}: attach the key to that lease (0: none).
    """

    key: bytes
    value: bytes = b""
    prev_kv: bool = False
    lease: int = 0


@dataclass(frozen=True, slots=True)
class DeleteRange:
    """
    A transaction op: delete C{key} (C{end} None) or every key in
    [C{key}, C{end}) (C{end} L{TO_THE_END}: every key >= C{key});
    C{prev_kv}: return the deleted records.
    """

    key: bytes
    end: Optional[bytes] = None
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class Range:
    """
    A transaction op, and the shape of a local read: the records of C{key}
    (C{end} None) or of [C{key}, C{end}), in key order, at most C{limit}
    of them (0: all); C{keys_only} leaves values out, C{count_only} returns
    only the count.
    """

    key: bytes
    end: Optional[bytes] = None
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False


TxnOp = Union[Put, DeleteRange, Range]


@dataclass(frozen=True, slots=True)
class Txn:
    """
    If every one of C{compares} holds, apply the C{success} ops in order,
    else the C{failure} ops; atomically, all writes in one revision.  Ops
    see the writes of the ops before them.  A branch may not write one key
    twice (a put key twice, or a put key inside a deleted range): etcd's
    rule, refused as L{InvalidArgument}.
    """

    compares: tuple = ()
    success: tuple = ()
    failure: tuple = ()


@dataclass(frozen=True, slots=True)
class Request:
    """
    One client command: C{op} on C{key} with C{value} for put/append;
    C{txn} for TXN (C{key} and C{value} empty).  C{client_id} and
    C{sequence} (both 0: no session) make it exactly-once; C{prev_kv} asks
    a put, delete or append for the record it replaced.  C{user}: who
    asked ("" none: auth was off when it was taken); C{auth}: an AUTH's
    L{kvpaxos.kv.auth.AuthCommand} (checked by its encoding,
    L{kvpaxos.encoding.auth}); C{compact_revision}: a COMPACT's revision
    (L{kvpaxos.kv.compaction}).  C{lease}: the lease a PUT attaches its
    key to (0: none), or the lease a LEASE_GRANT makes (with C{ttl}
    seconds) or a LEASE_REVOKE (a client's) or LEASE_EXPIRE (the leader's)
    ends (L{kvpaxos.kv.leases}).
    """

    op: Op
    key: bytes = b""
    value: bytes = b""
    origin: int = 0
    request_id: int = 0
    client_id: int = 0
    sequence: int = 0
    prev_kv: bool = False
    txn: Optional[Txn] = None
    user: str = ""
    auth: Optional[object] = None
    compact_revision: int = 0
    lease: int = 0
    ttl: int = 0


# --- results -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    """
    A key's record.  C{version}: writes since it was created (1 on create);
    C{create_revision}, C{mod_revision}: the store revisions of its creation
    and its latest write.
    """

    key: bytes
    value: bytes
    version: int
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Result:
    """
    What applying a put, delete or append did.  C{existed}: the key was
    present before.  C{value}: the value after an append (None for put and
    delete).  C{revision}: the store's revision after the request.
    C{prev}: the record before, if the request asked for C{prev_kv}.
    """

    existed: bool = False
    value: Optional[bytes] = None
    revision: int = 0
    prev: Optional[KeyValue] = None


@dataclass(frozen=True, slots=True)
class RangeResult:
    """
    What a range read found: C{kvs} in key order, C{count} keys in the
    range in all (whatever the limit), C{more} if the limit left some out;
    C{revision}: the store's revision the read saw.
    """

    kvs: tuple = ()
    count: int = 0
    more: bool = False
    revision: int = 0


@dataclass(frozen=True, slots=True)
class PutResponse:
    """A transaction's put: C{prev}, the replaced record if asked for (else None)."""

    prev: Optional[KeyValue] = None


@dataclass(frozen=True, slots=True)
class DeleteResponse:
    """A transaction's delete: how many keys it deleted, and their records if asked for."""

    deleted: int = 0
    prevs: tuple = ()


@dataclass(frozen=True, slots=True)
class TxnResult:
    """
    What a transaction did: C{succeeded} (every compare held), one response
    per op of the branch applied (L{PutResponse}, L{DeleteResponse},
    L{RangeResult}), and the store's revision after it.
    """

    succeeded: bool
    responses: tuple = ()
    revision: int = 0


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """An OPEN_SESSION applied: the new session's C{client_id}."""

    client_id: int
    revision: int = 0


@dataclass(frozen=True, slots=True)
class StaleSequence:
    """
    Refused, nothing applied: C{sequence} is below the session's last one,
    C{last_sequence} (a client bug, or a very late duplicate).
    """

    client_id: int
    sequence: int
    last_sequence: int


@dataclass(frozen=True, slots=True)
class SessionExpired:
    """
    Refused, nothing applied: the session C{client_id} is not in the table
    (never opened, evicted, or expired).  The outcome of the session's
    earlier unanswered requests is unknown; the client opens a new session.
    """

    client_id: int
    sequence: int


# --- validation ----------------------------------------------------------------


def check_range(key: bytes, end: Optional[bytes]) -> None:
    """
    Raise L{InvalidArgument} unless C{key} is a key and C{end} is None, a
    key, or L{TO_THE_END}.
    """
    _check_key(key)
    if end is not None:
        _check_key(end, "range end")


def validate(op: Op, key: bytes, value: bytes = b"") -> None:
    """
    Raise L{InvalidArgument} unless C{key} and C{value} are within limits
    for a put, delete or append.
    """
    _check_key(key)
    _check_value(value)
    if op is Op.DELETE and value:
        raise InvalidArgument("delete takes no value")


def _check_uint(number, what: str, maximum: int = _U64_MAX) -> None:
    if type(number) is not int or not 0 <= number <= maximum:
        raise InvalidArgument(f"{what} must be an integer from 0 to {maximum}")


def _check_compare(compare) -> None:
    if type(compare) is not Compare:
        raise InvalidArgument(f"not a compare: {compare!r}")
    _check_key(compare.key)
    target, operand = compare.target, compare.operand
    if not isinstance(target, CompareTarget) or not isinstance(compare.result, CompareResult):
        raise InvalidArgument("compare target and result must be CompareTarget and CompareResult")
    if target is CompareTarget.VALUE:
        _check_value(operand)
    elif target is CompareTarget.EXISTS:
        if type(operand) is not bool:
            raise InvalidArgument("an EXISTS compare takes True or False")
    else:
        _check_uint(operand, f"a {target.name} compare operand", (1 << 63) - 1)


def _check_branch(ops, name: str) -> int:
    """Check a branch's ops; return the bytes of keys, values and ends it holds."""
    if not isinstance(ops, tuple) or len(ops) > MAX_TXN_OPS:
        raise InvalidArgument(f"{name} must be a tuple of at most {MAX_TXN_OPS} ops")
    puts: set = set()
    deletes = []
    size = 0
    for op in ops:
        kind = type(op)
        if kind is Put:
            key, value = op.key, op.value
            # The common case inline; the checks raise with their message.
            if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_BYTES:
                _check_key(key)
            if type(value) is not bytes or len(value) > MAX_VALUE_BYTES:
                _check_value(value)
            if key in puts:
                raise InvalidArgument(f"{name} puts key {key!r} twice")
            if op.lease:
                _check_uint(op.lease, "a lease id", MAX_LEASE_ID)
            puts.add(key)
            size += len(key) + len(value)
        elif kind is DeleteRange:
            check_range(op.key, op.end)
            deletes.append((op.key, op.end))
            size += len(op.key) + len(op.end or b"")
        elif kind is Range:
            check_range(op.key, op.end)
            _check_uint(op.limit, "a range limit", (1 << 63) - 1)
            size += len(op.key) + len(op.end or b"")
        else:
            raise InvalidArgument(f"not a transaction op: {op!r}")
    for key in puts:
        for start, end in deletes:
            if in_range(key, start, end):
                raise InvalidArgument(f"{name} puts key {key!r} inside a range it deletes")
    return size


def _check_lease_fields(request: Request) -> None:
    op = request.op
    if op in (Op.LEASE_GRANT, Op.LEASE_REVOKE, Op.LEASE_EXPIRE):
        if type(request.lease) is not int or not 1 <= request.lease <= MAX_LEASE_ID:
            raise InvalidArgument(f"a lease id must be an integer from 1 to {MAX_LEASE_ID}")
    elif op is Op.PUT:
        _check_uint(request.lease, "a lease id", MAX_LEASE_ID)
    elif request.lease:
        raise InvalidArgument(f"a {op.name} carries no lease")
    if op is Op.LEASE_GRANT:
        if type(request.ttl) is not int or not 1 <= request.ttl <= MAX_LEASE_TTL:
            raise InvalidArgument(f"a lease TTL must be from 1 to {MAX_LEASE_TTL} seconds")
    elif request.ttl:
        raise InvalidArgument(f"a {op.name} carries no TTL")


def validate_request(request: Request) -> None:
    """
    Raise L{InvalidArgument} unless C{request} is a well-formed command
    within every limit.
    """
    if not isinstance(request.op, Op):
        raise InvalidArgument(f"unknown op {request.op!r}")
    _check_uint(request.client_id, "client id")
    _check_uint(request.sequence, "sequence")
    if (request.client_id == 0) != (request.sequence == 0):
        raise InvalidArgument("client id and sequence are both 0 (no session) or both set")
    if request.user != "":
        check_name(request.user)
    op = request.op
    if op is not Op.AUTH and request.auth is not None:
        raise InvalidArgument(f"a {op.name} carries no auth command")
    if op is Op.COMPACT:
        _check_uint(request.compact_revision, "a compaction revision", (1 << 63) - 1)
    elif request.compact_revision:
        raise InvalidArgument(f"a {op.name} carries no compaction revision")
    _check_lease_fields(request)
    if op in (Op.PUT, Op.DELETE, Op.APPEND):
        validate(op, request.key, request.value)
        if request.txn is not None:
            raise InvalidArgument(f"a {op.name} carries no transaction")
        return
    if request.key or request.value or request.prev_kv:
        raise InvalidArgument(f"a {op.name} takes no key, value or prev_kv")
    if op is Op.AUTH:
        if request.txn is not None or request.client_id or request.auth is None:
            raise InvalidArgument("an AUTH carries an auth command, no transaction and no session")
        return
    if op in (Op.OPEN_SESSION, Op.COMPACT, Op.LEASE_GRANT, Op.LEASE_REVOKE, Op.LEASE_EXPIRE):
        if request.txn is not None or request.client_id:
            raise InvalidArgument(f"{op.name} carries no transaction and no session")
        return
    txn = request.txn
    if type(txn) is not Txn:
        raise InvalidArgument("a TXN carries a Txn")
    if not isinstance(txn.compares, tuple) or len(txn.compares) > MAX_TXN_OPS:
        raise InvalidArgument(f"a transaction has at most {MAX_TXN_OPS} compares")
    for compare in txn.compares:
        _check_compare(compare)
    size = _check_branch(txn.success, "success") + _check_branch(txn.failure, "failure")
    size += sum(len(c.key) + (len(c.operand) if type(c.operand) is bytes else 8) for c in txn.compares)
    if size > MAX_TXN_BYTES:
        raise InvalidArgument(f"a transaction must hold at most {MAX_TXN_BYTES} bytes of keys and values")


# --- ranges and helpers ------------------------------------------------------


def in_range(key: bytes, start: bytes, end: Optional[bytes]) -> bool:
    """Whether C{key} is in the range C{start}..C{end} (etcd's conventions, as L{Range})."""
    if end is None:
        return key == start
    if end == TO_THE_END:
        return key >= start
    return start <= key < end


def range_query(
    start: bytes,
    end: Optional[bytes] = None,
    limit: int = 0,
    keys_only: bool = False,
    count_only: bool = False,
) -> Range:
    """
    Return the L{Range} of a local read, checked.

    @raise InvalidArgument: a bad key or end, or a negative limit.
    """
    check_range(start, end)
    _check_uint(limit, "a range limit", (1 << 63) - 1)
    return Range(start, end, limit, bool(keys_only), bool(count_only))


def compare_and_swap(
    key: bytes,
    value: bytes,
    *,
    expected_value: Optional[bytes] = None,
    expected_version: Optional[int] = None,
    prev_kv: bool = False,
    client_id: int = 0,
    sequence: int = 0,
) -> Request:
    """
    Return a TXN request that puts C{value} under C{key} if the key holds
    C{expected_value}, or is at C{expected_version} (exactly one of the
    two; version 0 means "the key does not exist", so it creates), and
    otherwise reads the key.  Its L{TxnResult}: C{succeeded} says whether
    it swapped; when it did not, C{responses[0]} is a L{RangeResult}
    holding the current record (none if missing).

    @raise InvalidArgument: neither or both expectations given, or bad
        key or value.
    """
    if (expected_value is None) == (expected_version is None):
        raise InvalidArgument("compare-and-swap takes an expected value or an expected version")
    if expected_value is not None:
        compare = Compare(key, CompareTarget.VALUE, CompareResult.EQUAL, expected_value)
    else:
        compare = Compare(key, CompareTarget.VERSION, CompareResult.EQUAL, expected_version)
    txn = Txn((compare,), (Put(key, value, prev_kv),), (Range(key),))
    request = Request(Op.TXN, txn=txn, client_id=client_id, sequence=sequence)
    validate_request(request)
    return request
