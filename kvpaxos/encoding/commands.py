"""
The log format of client commands: L{encode_request} turns a checked
L{kvpaxos.kv.commands.Request} into the bytes a node proposes, and
L{decode_request} turns log bytes back into one, validating them (a command
in the log is always one L{encode_request} would have written; anything
else is L{MalformedCommand}, a L{kvpaxos.kv.commands.CorruptCommand}).

Layout (command version L{COMMAND_VERSION}; one layout for every op)::

    command := version:u8 op:u8 origin:u32 request_id:u64 flags:u8
               [client_id:u64 sequence:u64]          (if flags & SESSION)
               [user_len:u8 user]                    (if flags & USER; UTF-8)
               [lease:u64]                           (if flags & LEASE; a PUT's)
               body
    body    := key_len:u16 key value_len:u32 value   (PUT, DELETE, APPEND)
             | txn                                   (TXN)
             |                                       (OPEN_SESSION)
             | auth_command                          (AUTH: L{kvpaxos.encoding.auth})
             | revision:u64                          (COMPACT)
             | lease:u64 ttl:u64                     (LEASE_GRANT)
             | lease:u64                             (LEASE_REVOKE, LEASE_EXPIRE)
    txn     := ncompares:u16 compare*ncompares
               nsuccess:u16 op*nsuccess nfailure:u16 op*nfailure
    compare := target:u8 result:u8 key_len:u16 key operand
    operand := value_len:u32 value | exists:u8 | number:u64
    op      := tag:u8 flags:u8 key_len:u16 key [end_len:u16 end]
               (PUT: value_len:u32 value [lease:u64, if flags & LEASE]
                | RANGE: limit:u64)

Integers are big-endian (as everywhere in L{kvpaxos.encoding}).  Nothing
here decides what a command means: that is L{kvpaxos.kv.commands}
(validation) and L{kvpaxos.kv.machine} (applying).
"""

from __future__ import annotations

from struct import Struct

from kvpaxos.encoding import auth as encoded_auth
from kvpaxos.encoding.errors import MalformedCommand
from kvpaxos.encoding.reader import U8, U16, U32, U64, Reader, as_bytes
from kvpaxos.kv.commands import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    InvalidArgument,
    Op,
    Put,
    Range,
    Request,
    Txn,
    TxnOp,
    validate_request,
)

#: The version byte every command starts with (1 and 2 were the layouts
#: before kvpaxos.encoding; they are refused).
COMMAND_VERSION = 3

_HEAD = Struct(">BBIQB")  # version, op, origin, request_id, flags
_SESSION = Struct(">QQ")  # client id, sequence
_COMPARE_HEAD = Struct(">BBH")  # target, result, key length
_OP_HEAD = Struct(">BBH")  # tag, flags, key length

# Request flags.
_PREV_KV = 1
_HAS_SESSION = 2
_HAS_USER = 4
_HAS_LEASE = 8
# Transaction op flags (_PREV_KV as above).
_HAS_END = 2
_KEYS_ONLY = 4
_COUNT_ONLY = 8
_OP_LEASE = 16
_TAG_PUT, _TAG_DELETE, _TAG_RANGE = 1, 2, 3
_OP_FLAGS = {_TAG_PUT: _PREV_KV | _OP_LEASE, _TAG_DELETE: _PREV_KV | _HAS_END,
             _TAG_RANGE: _HAS_END | _KEYS_ONLY | _COUNT_ONLY}
_KEYED = (Op.PUT, Op.DELETE, Op.APPEND)


def encode_request(request: Request) -> bytes:
    """
    Return the log bytes of C{request}.

    @raise InvalidArgument: C{request} is not valid (L{validate_request}).
    """
    validate_request(request)
    op = request.op
    session = bool(request.client_id or request.sequence)
    user = request.user.encode("utf-8") if request.user else b""
    keyed_lease = op is Op.PUT and request.lease
    flags = (_PREV_KV if request.prev_kv else 0) | (_HAS_SESSION if session else 0) | (_HAS_USER if user else 0) \
        | (_HAS_LEASE if keyed_lease else 0)
    parts = [_HEAD.pack(COMMAND_VERSION, op, request.origin, request.request_id, flags)]
    if session:
        parts.append(_SESSION.pack(request.client_id, request.sequence))
    if user:
        parts += [U8.pack(len(user)), user]
    if keyed_lease:
        parts.append(U64.pack(request.lease))
    if op is Op.AUTH:
        parts.append(encoded_auth.encode_command(request.auth))
    elif op is Op.TXN:
        _write_txn(request.txn, parts)
    elif op in _KEYED:
        parts += [U16.pack(len(request.key)), request.key,
                  U32.pack(len(request.value)), request.value]
    elif op is Op.COMPACT:
        parts.append(U64.pack(request.compact_revision))
    elif op is Op.LEASE_GRANT:
        parts += [U64.pack(request.lease), U64.pack(request.ttl)]
    elif op is Op.LEASE_REVOKE or op is Op.LEASE_EXPIRE:
        parts.append(U64.pack(request.lease))
    return b"".join(parts)


def _write_txn(txn: Txn, parts: list) -> None:
    parts.append(U16.pack(len(txn.compares)))
    for c in txn.compares:
        parts += [_COMPARE_HEAD.pack(c.target, c.result, len(c.key)), c.key]
        if c.target is CompareTarget.VALUE:
            parts += [U32.pack(len(c.operand)), c.operand]
        elif c.target is CompareTarget.EXISTS:
            parts.append(U8.pack(int(c.operand)))
        else:
            parts.append(U64.pack(c.operand))
    op_head, u32 = _OP_HEAD.pack, U32.pack
    for branch in (txn.success, txn.failure):
        parts.append(U16.pack(len(branch)))
        for op in branch:
            kind = type(op)
            if kind is Put:  # the common op, written directly
                flags = (_PREV_KV if op.prev_kv else 0) | (_OP_LEASE if op.lease else 0)
                parts += [op_head(_TAG_PUT, flags, len(op.key)), op.key, u32(len(op.value)), op.value]
                if op.lease:
                    parts.append(U64.pack(op.lease))
                continue
            end = getattr(op, "end", None)
            flags = (_HAS_END if end is not None else 0) | (_PREV_KV if getattr(op, "prev_kv", False) else 0)
            if kind is Range:
                flags |= (_KEYS_ONLY if op.keys_only else 0) | (_COUNT_ONLY if op.count_only else 0)
            if kind is DeleteRange:
                tag = _TAG_DELETE
            elif kind is Range:
                tag = _TAG_RANGE
            else:  # validate_request refuses it first; never written as something else
                raise InvalidArgument(f"unknown transaction op {kind.__name__}")
            parts += [op_head(tag, flags, len(op.key)), op.key]
            if end is not None:
                parts += [U16.pack(len(end)), end]
            if kind is Range:
                parts.append(U64.pack(op.limit))


def decode_request(data) -> Request:
    """
    Return the L{Request} encoded in C{data} (bytes-like).

    @raise MalformedCommand: C{data} is not an encoded, valid request.
    """
    reader = Reader(as_bytes(data, MalformedCommand), MalformedCommand, "command")
    if not reader.data:
        reader.fail("empty")
    if reader.data[0] != COMMAND_VERSION:
        reader.fail(f"version {reader.data[0]}, not {COMMAND_VERSION}")
    _, code, origin, request_id, flags = reader.unpack(_HEAD)
    op = _enum(reader, Op, code)
    if flags & ~(_PREV_KV | _HAS_SESSION | _HAS_USER | _HAS_LEASE):
        reader.fail(f"unknown request flags {flags}")
    client_id = sequence = 0
    if flags & _HAS_SESSION:
        client_id, sequence = reader.unpack(_SESSION)
        if not (client_id or sequence):
            reader.fail("session flag without a session")
    user = ""
    if flags & _HAS_USER:
        try:
            user = reader.take(reader.u8()).decode("utf-8")
        except UnicodeDecodeError:
            reader.fail("user name is not UTF-8")
        if not user:
            reader.fail("user flag without a user")
    lease = ttl = 0
    if flags & _HAS_LEASE:
        lease = reader.u64()
        if op is not Op.PUT or not lease:
            reader.fail("lease flag on a request that is not a put with a lease")
    key = value = b""
    txn = auth = None
    compact_revision = 0
    if op is Op.AUTH:
        auth = encoded_auth.read_command(reader)
    elif op is Op.TXN:
        txn = _read_txn(reader)
    elif op in _KEYED:
        key = reader.u16_bytes()
        value = reader.u32_bytes()
    elif op is Op.COMPACT:
        compact_revision = reader.u64()
    elif op is Op.LEASE_GRANT:
        lease, ttl = reader.u64(), reader.u64()
    elif op is Op.LEASE_REVOKE or op is Op.LEASE_EXPIRE:
        lease = reader.u64()
    reader.end()
    request = Request(op, key, value, origin, request_id, client_id, sequence,
                      bool(flags & _PREV_KV), txn, user, auth, compact_revision, lease, ttl)
    try:
        validate_request(request)
    except InvalidArgument as error:
        reader.fail(f"invalid: {error}")
    return request


def _enum(reader: Reader, kind, code: int):
    try:
        return kind(code)
    except ValueError:
        reader.fail(f"unknown {kind.__name__} {code}")


def _read_txn(reader: Reader) -> Txn:
    count = reader.count(U16, _COMPARE_HEAD.size + 1)
    compares = []
    for _ in range(count):
        target, result, key_length = reader.unpack(_COMPARE_HEAD)
        target = _enum(reader, CompareTarget, target)
        result = _enum(reader, CompareResult, result)
        key = reader.take(key_length)
        if target is CompareTarget.VALUE:
            operand = reader.u32_bytes()
        elif target is CompareTarget.EXISTS:
            operand = reader.flag()
        else:
            operand = reader.u64()
        compares.append(Compare(key, target, result, operand))
    branches = []
    for _ in range(2):
        count = reader.count(U16, _OP_HEAD.size)
        branches.append(_read_ops(reader, count))
    return Txn(tuple(compares), branches[0], branches[1])


def _read_ops(reader: Reader, count: int) -> tuple:
    """
    Read C{count} transaction ops.  Puts, by far the most common, are read
    inline (one C{unpack_from} per field, no intermediate copies); the rest,
    and anything short, go through L{_read_op}, which refuses what is wrong.
    """
    data = reader.data
    size = len(data)
    op_head = _OP_HEAD.unpack_from
    u32 = U32.unpack_from
    ops = []
    for _ in range(count):
        offset = reader.offset
        if offset + 4 <= size:
            tag, flags, key_length = op_head(data, offset)
            if tag == _TAG_PUT and not flags & ~_PREV_KV:
                value_at = offset + 4 + key_length + 4
                if value_at <= size:
                    (length,) = u32(data, value_at - 4)
                    end = value_at + length
                    if end <= size:
                        ops.append(Put(data[offset + 4:value_at - 4], data[value_at:end], flags == _PREV_KV))
                        reader.offset = end
                        continue
        ops.append(_read_op(reader))
    return tuple(ops)


def _read_op(reader: Reader) -> TxnOp:
    tag, flags, key_length = reader.unpack(_OP_HEAD)
    allowed = _OP_FLAGS.get(tag)
    if allowed is None:
        reader.fail(f"unknown transaction op {tag}")
    if flags & ~allowed:
        reader.fail(f"bad flags {flags} for transaction op {tag}")
    key = reader.take(key_length)
    end = reader.u16_bytes() if flags & _HAS_END else None
    if tag == _TAG_PUT:
        value = reader.u32_bytes()
        lease = reader.u64() if flags & _OP_LEASE else 0
        if flags & _OP_LEASE and not lease:
            reader.fail("lease flag on a put without a lease")
        return Put(key, value, bool(flags & _PREV_KV), lease)
    if tag == _TAG_DELETE:
        return DeleteRange(key, end, bool(flags & _PREV_KV))
    limit = reader.u64()
    return Range(key, end, limit, bool(flags & _KEYS_ONLY), bool(flags & _COUNT_ONLY))
