"""
The limits of the API (documented for users in README.md), the range-end
conventions, and the checks of a key and a value against them.

Keys are 1..L{MAX_KEY_BYTES} bytes (LMDB's key limit, the same for every
storage provider), values 0..L{MAX_VALUE_BYTES} bytes; a transaction holds
at most L{MAX_TXN_OPS} compares and ops per branch and L{MAX_TXN_BYTES} of
keys, values and operands; no gRPC message exceeds L{MAX_MESSAGE_BYTES}.
A range end of L{TO_THE_END} means every key from the start on (etcd's).

This module imports only L{kvpaxos.api.errors}: the state machine's
validation (L{kvpaxos.kv.commands}), the gRPC edge and the client check
against these same numbers, so they cannot drift apart.
"""

from __future__ import annotations

from kvpaxos.api.errors import InvalidArgument

#: LMDB's key limit; the same for every storage provider.
MAX_KEY_BYTES = 511
#: 1 MiB.
MAX_VALUE_BYTES = 1 << 20
#: The largest lease id (etcd's are int64, and never negative).
MAX_LEASE_ID = (1 << 63) - 1
#: The longest lease TTL granted, in seconds (etcd's C{MaxLeaseTTL}).
MAX_LEASE_TTL = 9_000_000_000
#: Compares, and ops per branch, in one transaction (etcd's default).
MAX_TXN_OPS = 128
#: The keys, values and operands of one transaction (etcd takes 1.5 MiB
#: requests by default).
MAX_TXN_BYTES = 2 << 20
#: The largest gRPC message either end sends or accepts: a maximal value and
#: key plus framing, with room to spare (4 MiB).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
assert MAX_MESSAGE_BYTES > MAX_VALUE_BYTES + MAX_KEY_BYTES + 1024
#: A range end meaning "every key from the start on" (etcd's convention).
TO_THE_END = b"\x00"
#: The most bytes of a user or role name (UTF-8).
MAX_NAME_BYTES = 128


def check_name(name, what: str = "user name") -> None:
    """
    @raise InvalidArgument: C{name} is not a str of 1 to
        L{MAX_NAME_BYTES} bytes of UTF-8 without control characters
        (C{what} names it in the message).
    """
    if type(name) is not str:
        raise InvalidArgument(f"{what} must be a string")
    if not name:
        raise InvalidArgument(f"{what} is empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid Unicode") from None
    if size > MAX_NAME_BYTES or any(c < " " or c == "\x7f" for c in name):
        raise InvalidArgument(f"{what} must be 1 to {MAX_NAME_BYTES} bytes of UTF-8 without control characters")


def check_key(key, what: str = "key") -> None:
    """
    @raise InvalidArgument: C{key} is not 1 to L{MAX_KEY_BYTES} bytes
        (C{what} names it in the message: C{"range end"}, ...).
    """
    if not isinstance(key, bytes) or not key:
        raise InvalidArgument(f"{what} must be 1 to {MAX_KEY_BYTES} bytes; got an empty {what}")
    if len(key) > MAX_KEY_BYTES:
        raise InvalidArgument(f"{what} must be 1 to {MAX_KEY_BYTES} bytes; got {len(key)}")


def check_value(value) -> None:
    """@raise InvalidArgument: C{value} is not bytes, or longer than L{MAX_VALUE_BYTES}."""
    if not isinstance(value, bytes):
        raise InvalidArgument("value must be bytes")
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidArgument(f"value must be at most {MAX_VALUE_BYTES} bytes; got {len(value)}")


def prefix_end(prefix: bytes) -> bytes:
    """
    Return the range end that makes [C{prefix}, end) every key starting with
    C{prefix}: the prefix with its last byte below 0xff incremented (and
    what follows dropped), or L{TO_THE_END} if every byte is 0xff.
    """
    ending = bytearray(prefix)
    while ending:
        if ending[-1] < 0xFF:
            ending[-1] += 1
            return bytes(ending)
        ending.pop()
    return TO_THE_END
