"""
The log format of client commands: L{encode_request} turns a checked
L{kvpaxos.kv.commands.Request} into the bytes a node proposes, and
L{decode_request} turns log bytes back into one, validating them (a command
in the log is always one L{encode_request} would have written; anything
else is L{kvpaxos.kv.commands.CorruptCommand}).

Version 1 (the original) still encodes a put, delete or append without a
session or prev_kv, so those commands are byte-for-byte what they were;
everything else is version 2.  Both decode.  Nothing here decides what a
command means: that is L{kvpaxos.kv.commands} (validation) and
L{kvpaxos.kv.machine} (applying).
"""

from __future__ import annotations

import struct

from kvpaxos.kv.commands import (
    CompareResult,
    CompareTarget,
    Compare,
    CorruptCommand,
    DeleteRange,
    InvalidArgument,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Op,
    Put,
    Range,
    Request,
    Txn,
    TxnOp,
    validate_request,
)

_V1 = 1
_V2 = 2
_HEADER_V1 = struct.Struct(">BBIQH")  # version, op, origin, request_id, key length
_HEADER_V2 = struct.Struct(">BBIQQQB")  # version, op, origin, request_id, client, sequence, flags
_KEY = struct.Struct(">H")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_COMPARE_HEAD = struct.Struct(">BBH")  # target, result, key length
_OP_HEAD = struct.Struct(">BBH")  # tag, flags, key length

_PREV_KV = 1
_HAS_END = 2
_KEYS_ONLY = 4
_COUNT_ONLY = 8
_TAG_PUT, _TAG_DELETE, _TAG_RANGE = 1, 2, 3


def encode_request(request: Request) -> bytes:
    """
    Return the log bytes of C{request}.

    @raise InvalidArgument: C{request} is not valid (L{validate_request}).
    """
    validate_request(request)
    op = request.op
    if op in (Op.PUT, Op.DELETE, Op.APPEND) and not request.client_id and not request.prev_kv:
        head = _HEADER_V1.pack(_V1, op, request.origin, request.request_id, len(request.key))
        return head + request.key + request.value
    parts = [
        _HEADER_V2.pack(
            _V2, op, request.origin, request.request_id, request.client_id,
            request.sequence, _PREV_KV if request.prev_kv else 0,
        )
    ]
    if op is Op.TXN:
        _encode_txn(request.txn, parts)
    elif op is not Op.OPEN_SESSION:
        parts += [_KEY.pack(len(request.key)), request.key, request.value]
    return b"".join(parts)


def _encode_txn(txn: Txn, parts: list) -> None:
    parts.append(_U16.pack(len(txn.compares)))
    for c in txn.compares:
        parts += [_COMPARE_HEAD.pack(c.target, c.result, len(c.key)), c.key]
        if c.target is CompareTarget.VALUE:
            parts += [_U32.pack(len(c.operand)), c.operand]
        elif c.target is CompareTarget.EXISTS:
            parts.append(_U8.pack(int(c.operand)))
        else:
            parts.append(_U64.pack(c.operand))
    for branch in (txn.success, txn.failure):
        parts.append(_U16.pack(len(branch)))
        for op in branch:
            kind = type(op)
            end = getattr(op, "end", None)
            flags = (_HAS_END if end is not None else 0) | (_PREV_KV if getattr(op, "prev_kv", False) else 0)
            if kind is Range:
                flags |= (_KEYS_ONLY if op.keys_only else 0) | (_COUNT_ONLY if op.count_only else 0)
            tag = {Put: _TAG_PUT, DeleteRange: _TAG_DELETE, Range: _TAG_RANGE}[kind]
            parts += [_OP_HEAD.pack(tag, flags, len(op.key)), op.key]
            if end is not None:
                parts += [_KEY.pack(len(end)), end]
            if kind is Put:
                parts += [_U32.pack(len(op.value)), op.value]
            elif kind is Range:
                parts.append(_U64.pack(op.limit))


class _Reader:
    """
    Reads fields off hostile bytes (a C{bytes}: slices are copies, never
    views); running past the end is L{CorruptCommand}.
    """

    __slots__ = ("data", "offset")

    def __init__(self, data, offset: int) -> None:
        self.data = data
        self.offset = offset

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise CorruptCommand(f"truncated command: needs {end} bytes, has {len(self.data)}")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple:
        return layout.unpack(self.take(layout.size))

    def rest(self) -> bytes:
        chunk = self.data[self.offset:]
        self.offset = len(self.data)
        return chunk


def decode_request(data: bytes) -> Request:
    """
    Return the L{Request} encoded in C{data} (version 1 or 2).

    @raise CorruptCommand: C{data} is not an encoded, valid request.
    """
    if not data:
        raise CorruptCommand("empty command")
    if type(data) is not bytes:
        data = bytes(data)
    version = data[0]
    if version == _V1:
        request = _decode_v1(data)
    elif version == _V2:
        request = _decode_v2(data)
    else:
        raise CorruptCommand(f"unknown command version {version}")
    try:
        validate_request(request)
    except InvalidArgument as error:
        raise CorruptCommand(f"invalid command: {error}") from None
    return request


def _op(code: int) -> Op:
    try:
        return Op(code)
    except ValueError:
        raise CorruptCommand(f"unknown op {code}") from None


def _decode_v1(data) -> Request:
    reader = _Reader(data, 0)
    _, op, origin, request_id, key_length = reader.unpack(_HEADER_V1)
    op = _op(op)
    if op not in (Op.PUT, Op.DELETE, Op.APPEND):
        raise CorruptCommand(f"op {op.name} has no version 1 encoding")
    if key_length == 0 or key_length > MAX_KEY_BYTES:
        raise CorruptCommand(f"bad key length {key_length}")
    key = reader.take(key_length)
    value = reader.rest()
    if len(value) > MAX_VALUE_BYTES:
        raise CorruptCommand(f"value of {len(value)} bytes is too long")
    return Request(op, key, value, origin, request_id)


def _decode_v2(data) -> Request:
    reader = _Reader(data, 0)
    _, op, origin, request_id, client_id, sequence, flags = reader.unpack(_HEADER_V2)
    op = _op(op)
    if flags & ~_PREV_KV:
        raise CorruptCommand(f"unknown request flags {flags}")
    key = value = b""
    txn = None
    if op is Op.TXN:
        txn = _decode_txn(reader)
        if reader.offset != len(data):
            raise CorruptCommand(f"{len(data) - reader.offset} trailing bytes")
    elif op is not Op.OPEN_SESSION:
        (key_length,) = reader.unpack(_KEY)
        key = reader.take(key_length)
        value = reader.rest()
    elif reader.offset != len(data):
        raise CorruptCommand(f"{len(data) - reader.offset} trailing bytes")
    return Request(op, key, value, origin, request_id, client_id, sequence, bool(flags), txn)


def _enum(kind, code: int):
    try:
        return kind(code)
    except ValueError:
        raise CorruptCommand(f"unknown {kind.__name__} {code}") from None


def _decode_txn(reader: _Reader) -> Txn:
    (count,) = reader.unpack(_U16)
    compares = []
    for _ in range(count):
        target, result, key_length = reader.unpack(_COMPARE_HEAD)
        target = _enum(CompareTarget, target)
        result = _enum(CompareResult, result)
        key = reader.take(key_length)
        if target is CompareTarget.VALUE:
            (length,) = reader.unpack(_U32)
            operand = reader.take(length)
        elif target is CompareTarget.EXISTS:
            (flag,) = reader.unpack(_U8)
            if flag > 1:
                raise CorruptCommand(f"EXISTS operand {flag}")
            operand = bool(flag)
        else:
            (operand,) = reader.unpack(_U64)
        compares.append(Compare(key, target, result, operand))
    branches = []
    for _ in range(2):
        (count,) = reader.unpack(_U16)
        branches.append(_decode_ops(reader, count))
    return Txn(tuple(compares), branches[0], branches[1])


_OP_FLAGS = {_TAG_PUT: _PREV_KV, _TAG_DELETE: _PREV_KV | _HAS_END,
             _TAG_RANGE: _HAS_END | _KEYS_ONLY | _COUNT_ONLY}


def _decode_ops(reader: _Reader, count: int) -> tuple:
    """
    Decode C{count} transaction ops.  Puts, by far the most common, are read
    inline (one C{unpack_from} per field, no intermediate copies); the rest
    go through L{_decode_op}.
    """
    data = reader.data
    size = len(data)
    offset = reader.offset
    op_head = _OP_HEAD.unpack_from
    u32 = _U32.unpack_from
    ops = []
    for _ in range(count):
        if offset + 4 <= size:
            tag, flags, key_length = op_head(data, offset)
            if tag == _TAG_PUT and not flags & ~_PREV_KV:
                value_at = offset + 4 + key_length + 4
                if value_at <= size:
                    (length,) = u32(data, value_at - 4)
                    end = value_at + length
                    if end <= size:
                        ops.append(Put(data[offset + 4:value_at - 4], data[value_at:end], flags == _PREV_KV))
                        offset = end
                        continue
        reader.offset = offset
        ops.append(_decode_op(reader))
        offset = reader.offset
    reader.offset = offset
    return tuple(ops)


def _decode_op(reader: _Reader) -> TxnOp:
    tag, flags, key_length = reader.unpack(_OP_HEAD)
    allowed = _OP_FLAGS.get(tag)
    if allowed is None:
        raise CorruptCommand(f"unknown transaction op {tag}")
    if flags & ~allowed:
        raise CorruptCommand(f"bad flags {flags} for transaction op {tag}")
    key = reader.take(key_length)
    end = None
    if flags & _HAS_END:
        (end_length,) = reader.unpack(_KEY)
        end = reader.take(end_length)
    if tag == _TAG_PUT:
        (length,) = reader.unpack(_U32)
        return Put(key, reader.take(length), bool(flags & _PREV_KV))
    if tag == _TAG_DELETE:
        return DeleteRange(key, end, bool(flags & _PREV_KV))
    (limit,) = reader.unpack(_U64)
    return Range(key, end, limit, bool(flags & _KEYS_ONLY), bool(flags & _COUNT_ONLY))
