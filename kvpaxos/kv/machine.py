"""
How commands apply to key-value data, independent of where the data lives.

A storage provider hands L{apply} a transaction object with C{get(key)},
C{put(key, value)} and C{delete(key) -> bool}; it runs every chosen batch
through it inside the same atomic write that records the applied index.

Snapshots of the data are encoded with L{encode_snapshot} and read back with
L{decode_snapshot}: a sequence of (key length, key, value length, value).
"""

from __future__ import annotations

import struct
from typing import Iterable, Iterator

from kvpaxos.kv.commands import CorruptCommand, Op, Request, Result, decode_request

_LENGTH = struct.Struct(">I")


def apply(txn, request: Request) -> Result:
    """Apply one decoded request to C{txn} and return its L{Result}."""
    key = request.key
    if request.op is Op.PUT:
        existed = txn.get(key) is not None
        txn.put(key, request.value)
        return Result(existed)
    if request.op is Op.DELETE:
        return Result(txn.delete(key))
    old = txn.get(key)
    new = (old or b"") + request.value
    txn.put(key, new)
    return Result(old is not None, new)


def apply_batch(txn, commands: Iterable[bytes]) -> list[tuple[Request, Result]]:
    """
    Apply every command of a chosen batch in order; return each decoded
    request with its result.  A command that does not decode is skipped on
    every replica alike (it was validated before it was proposed, so only a
    misbehaving peer can put one in the log).
    """
    results = []
    for data in commands:
        try:
            request = decode_request(data)
        except CorruptCommand:
            continue
        results.append((request, apply(txn, request)))
    return results


def encode_snapshot(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Return the snapshot bytes of the (key, value) pairs in C{items}."""
    parts = []
    pack = _LENGTH.pack
    for key, value in items:
        parts.append(pack(len(key)))
        parts.append(key)
        parts.append(pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def decode_snapshot(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """
    Yield the (key, value) pairs of snapshot C{data}.

    @raise ValueError: C{data} is truncated.
    """
    view = memoryview(data)
    offset = 0
    size = _LENGTH.size
    while offset < len(view):
        if offset + size > len(view):
            raise ValueError("truncated snapshot")
        (klen,) = _LENGTH.unpack_from(view, offset)
        offset += size
        key = bytes(view[offset:offset + klen])
        offset += klen
        if offset + size > len(view):
            raise ValueError("truncated snapshot")
        (vlen,) = _LENGTH.unpack_from(view, offset)
        offset += size
        value = bytes(view[offset:offset + vlen])
        offset += vlen
        if len(key) != klen or len(value) != vlen:
            raise ValueError("truncated snapshot")
        yield key, value
