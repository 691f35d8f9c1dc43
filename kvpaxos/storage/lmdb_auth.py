"""
The auth table (C{bytes -> bytes}, keys of 1 to
L{kvpaxos.encoding.state.AUTH_KEY_MAX_BYTES} bytes) in an LMDB
sub-database of an L{kvpaxos.storage.lmdb.LMDBStore}: the store's C{auth}
and the staging's C{staged_auth} alike.

LMDB refuses keys over 511 bytes, and auth keys go to 512, so no auth key
is stored as it is unless it is shorter than 511 bytes:

  - a key of fewer than 511 bytes is the LMDB key, its value the LMDB
    value;
  - every key of 511 bytes or more is kept under its first 511 bytes, in
    one C{auth_group} (L{kvpaxos.encoding.state.encode_auth_group}) of the
    C{(tail, value)} of each such key, C{tail} being what follows those 511
    bytes (empty for the 511-byte key itself).

So an LMDB key of 511 bytes always holds a group and a shorter one a plain
value, and LMDB's order is the auth keys' order: a group's keys all follow
its 511 bytes and sort among themselves by their tails, and no other
stored key starts with those 511 bytes.  Groups exist only for keys that
long (one write of such a key rewrites its group, at most 257 entries).

Functions of a transaction and a database; nothing here opens, commits or
aborts a transaction, nor checks an entry's bounds (the view does, before
it writes).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterator, Optional

from kvpaxos.encoding.state import decode_auth_group, encode_auth_group

#: LMDB's longest key: the length of the LMDB key that holds a group.
GROUP_KEY_BYTES = 511


def get(txn, db, key: bytes) -> Optional[bytes]:
    """Return the value under auth key C{key} in C{db}, or C{None} (also for C{b""}, never an auth key)."""
    if not key:
        return None  # LMDB refuses an empty key
    if len(key) < GROUP_KEY_BYTES:
        return txn.get(key, db=db)
    stored = txn.get(key[:GROUP_KEY_BYTES], db=db)
    if stored is None:
        return None
    tail = key[GROUP_KEY_BYTES:]
    for found, value in decode_auth_group(stored):
        if found == tail:
            return value
    return None


def put(txn, db, key: bytes, value: bytes) -> None:
    """Store C{value} under auth key C{key} in C{db}, replacing any."""
    if len(key) < GROUP_KEY_BYTES:
        txn.put(key, value, db=db)
        return
    _change_group(txn, db, key, value)


def delete(txn, db, key: bytes) -> None:
    """Remove auth key C{key} from C{db}, if it is there."""
    if not key:
        return  # never an auth key; LMDB refuses it
    if len(key) < GROUP_KEY_BYTES:
        txn.delete(key, db=db)
        return
    _change_group(txn, db, key, None)


def _change_group(txn, db, key: bytes, value: Optional[bytes]) -> None:
    """Set (C{value} None: remove) C{key}'s entry in its group."""
    start, tail = key[:GROUP_KEY_BYTES], key[GROUP_KEY_BYTES:]
    stored = txn.get(start, db=db)
    members = [] if stored is None else decode_auth_group(stored)
    tails = [t for t, _ in members]
    at = bisect_left(tails, tail)
    present = at < len(tails) and tails[at] == tail
    if value is None:
        if not present:
            return
        del members[at]
    elif present:
        members[at] = (tail, value)
    else:
        members.insert(at, (tail, value))
    if members:
        txn.put(start, encode_auth_group(members), db=db)
    else:
        txn.delete(start, db=db)


def entries(pairs) -> Iterator[tuple]:
    """
    Return an iterator over the auth C{(key, value)} of C{pairs}, the
    stored C{(LMDB key, LMDB value)} of an auth database in its order (a
    cursor's C{iternext()}, or a copy of it): the auth table in key order.

    @raise kvpaxos.encoding.errors.CorruptState: a group does not decode.
    """
    for start, stored in pairs:
        if len(start) < GROUP_KEY_BYTES:
            yield start, stored
            continue
        for tail, value in decode_auth_group(stored):
            yield start + tail, value


def items(txn, db) -> Iterator[tuple]:
    """Return an iterator over the auth table in C{db}, in key order."""
    return entries(txn.cursor(db=db).iternext())
