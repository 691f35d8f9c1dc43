"""
Client commands as they travel through the log, and their results.

A L{Request} is encoded to bytes (L{encode_request}) by the node that took it
from a client and proposed it; every replica decodes it when it is chosen and
applies it.  C{origin} and C{request_id} let the proposing node find the
client waiting for the result; they do not affect what is applied.

Limits (documented for users in README.md): keys are 1..L{MAX_KEY_BYTES}
bytes, values 0..L{MAX_VALUE_BYTES} bytes.  Anything else is the client's
fault: L{InvalidArgument}.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

#: LMDB's key limit; the same for every storage provider.
MAX_KEY_BYTES = 511
#: 1 MiB.
MAX_VALUE_BYTES = 1 << 20

_VERSION = 1
_HEADER = struct.Struct(">BBIQH")  # version, op, origin, request_id, key length


class Op(enum.IntEnum):
    """What a command does to its key."""

    PUT = 1
    DELETE = 2
    APPEND = 3


class InvalidArgument(ValueError):
    """A client sent a bad key or value (the client's fault)."""


class CorruptCommand(ValueError):
    """Bytes in the log that are not a command (a misbehaving peer or bug)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One client command: C{op} on C{key}, with C{value} for put/append."""

    op: Op
    key: bytes
    value: bytes = b""
    origin: int = 0
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    """
    What applying a L{Request} did.  C{existed}: the key was present before.
    C{value}: the value after an append (None for put and delete).
    """

    existed: bool
    value: bytes | None = None


def validate(op: Op, key: bytes, value: bytes = b"") -> None:
    """
    Raise L{InvalidArgument} unless C{key} and C{value} are within limits.
    """
    if not isinstance(key, bytes) or not key:
        raise InvalidArgument("key must be 1 to 511 bytes; got an empty key")
    if len(key) > MAX_KEY_BYTES:
        raise InvalidArgument(f"key must be 1 to {MAX_KEY_BYTES} bytes; got {len(key)}")
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidArgument(
            f"value must be at most {MAX_VALUE_BYTES} bytes; got {len(value)}"
        )
    if op is Op.DELETE and value:
        raise InvalidArgument("delete takes no value")


def encode_request(request: Request) -> bytes:
    """Return the log bytes of C{request} (validated)."""
    validate(request.op, request.key, request.value)
    return (
        _HEADER.pack(
            _VERSION, request.op, request.origin, request.request_id, len(request.key)
        )
        + request.key
        + request.value
    )


def decode_request(data: bytes) -> Request:
    """
    Return the L{Request} encoded in C{data}.

    @raise CorruptCommand: C{data} is not an encoded request.
    """
    if len(data) < _HEADER.size:
        raise CorruptCommand(f"command of {len(data)} bytes is too short")
    version, op, origin, request_id, key_length = _HEADER.unpack_from(data)
    if version != _VERSION:
        raise CorruptCommand(f"unknown command version {version}")
    try:
        op = Op(op)
    except ValueError:
        raise CorruptCommand(f"unknown op {op}") from None
    end = _HEADER.size + key_length
    if key_length == 0 or key_length > MAX_KEY_BYTES or end > len(data):
        raise CorruptCommand(f"bad key length {key_length}")
    key = bytes(data[_HEADER.size:end])
    value = bytes(data[end:])
    if len(value) > MAX_VALUE_BYTES:
        raise CorruptCommand(f"value of {len(value)} bytes is too long")
    return Request(op, key, value, origin, request_id)
