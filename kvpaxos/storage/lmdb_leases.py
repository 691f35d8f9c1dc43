"""
The leases (issue 14) in an L{kvpaxos.storage.lmdb.LMDBStore}: three
sub-databases kept in step by the state machine's view
(L{kvpaxos.storage.lmdb_view.LMDBView}):

  - C{leases}: C{id:u64 -> ttl:u64}, the lease table (the staging's
    C{staged_leases} alike);
  - C{key_leases}: C{key -> lease:u64}, each attached key's lease (the
    staging's C{staged_key_leases} alike);
  - C{lease_keys}: C{id:u64 -> key}, a C{dupsort} database (LMDB keeps a
    lease's keys as its sorted duplicates), so a lease's keys are read in
    key order from one cursor position.  Duplicates rather than C{id +
    key} keys because a client key may be LMDB's longest (511 bytes) and
    a duplicate may be as long as a key; it is derived from
    C{key_leases} (a transfer stages only that) and never sent.

Integers big-endian (L{kvpaxos.encoding.values}), so LMDB's order is the
ids' order.  Functions of a transaction and its databases; nothing here
opens, commits or aborts a transaction.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

from kvpaxos.encoding import values


class LeaseTables(NamedTuple):
    """The three sub-databases of the leases (see the module docstring)."""

    leases: object
    key_leases: object
    lease_keys: object


def open_tables(env) -> LeaseTables:
    """Open (creating if missing) the lease sub-databases of environment C{env}."""
    return LeaseTables(env.open_db(b"leases"), env.open_db(b"key_leases"),
                       env.open_db(b"lease_keys", dupsort=True))


def ttl(txn, tables: LeaseTables, lease: int) -> Optional[int]:
    """Return lease C{lease}'s TTL, or None if there is no such lease."""
    data = txn.get(values.encode_u64(lease), db=tables.leases)
    return None if data is None else values.decode_u64(data)


def put(txn, tables: LeaseTables, lease: int, ttl: int) -> None:
    """Store lease C{lease} of C{ttl} seconds, replacing any."""
    txn.put(values.encode_u64(lease), values.encode_u64(ttl), db=tables.leases)


def remove(txn, tables: LeaseTables, lease: int) -> None:
    """
    Remove lease C{lease} (no error if there is none).

    @raise AssertionError: a key is still attached to it (the state
        machine detaches every one first); nothing is removed.
    """
    key = values.encode_u64(lease)
    cursor = txn.cursor(db=tables.lease_keys)
    if cursor.set_key(key):
        raise AssertionError(f"lease {lease} removed with key {cursor.value()!r} attached")
    txn.delete(key, db=tables.leases)


def items(txn, tables: LeaseTables) -> Iterator[tuple[int, int]]:
    """Yield every lease's C{(id, ttl)}, in id order."""
    decode = values.decode_u64
    for key, data in txn.cursor(db=tables.leases).iternext():
        yield decode(key), decode(data)


def any_attached(txn, tables: LeaseTables) -> bool:
    """Whether any key is attached to a lease."""
    return txn.cursor(db=tables.key_leases).first()


def key_lease(txn, tables: LeaseTables, key: bytes) -> int:
    """Return the lease C{key} is attached to, or 0."""
    data = txn.get(key, db=tables.key_leases)
    return 0 if data is None else values.decode_u64(data)


def attach(txn, tables: LeaseTables, key: bytes, lease: int) -> None:
    """
    Attach C{key}, attached to none, to C{lease}.

    @raise AssertionError: C{key} is attached already (the state machine
        detaches it first); nothing is written.
    """
    id_bytes = values.encode_u64(lease)
    if not txn.put(key, id_bytes, db=tables.key_leases, overwrite=False):
        raise AssertionError(f"key {key!r} attached to lease {lease} while attached to another")
    txn.put(id_bytes, key, db=tables.lease_keys)


def detach(txn, tables: LeaseTables, key: bytes) -> None:
    """Detach C{key} from its lease (nothing if it has none)."""
    id_bytes = txn.pop(key, db=tables.key_leases)
    if id_bytes is not None:
        txn.delete(id_bytes, key, db=tables.lease_keys)


def keys(txn, tables: LeaseTables, lease: int) -> Iterator[bytes]:
    """Yield the keys attached to C{lease}, in key order."""
    cursor = txn.cursor(db=tables.lease_keys)
    if cursor.set_key(values.encode_u64(lease)):
        yield from cursor.iternext_dup(keys=False)


def replace(txn, tables: LeaseTables, leases, attached) -> None:
    """
    Replace the leases with C{leases} (stored C{(id, ttl)} bytes, in id
    order) and the attachments with C{attached} (stored C{(key, lease)}
    bytes, in key order), C{lease_keys} derived from them.
    """
    for db in tables:
        txn.drop(db, delete=False)
    consumed, added = txn.cursor(db=tables.leases).putmulti(leases, append=True)
    if consumed != added:
        raise AssertionError(f"{consumed - added} of {consumed} leases out of order")
    by_lease = txn.cursor(db=tables.lease_keys)
    cursor = txn.cursor(db=tables.key_leases)
    for key, id_bytes in attached:
        if not cursor.put(key, id_bytes, append=True):
            raise AssertionError(f"attached key {key!r} out of order")
        by_lease.put(id_bytes, key)


__all__ = ["LeaseTables", "any_attached", "attach", "detach", "items", "key_lease", "keys", "open_tables",
           "put", "remove", "replace", "ttl"]
