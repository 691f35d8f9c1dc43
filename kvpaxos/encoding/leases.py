"""
The lease tables in bytes (issue 14): the lease table (C{id -> ttl}) and
the attachments of keys to leases (C{key -> lease}), the same in the LMDB
store, a snapshot, a transfer's tables 6 and 7 and a backup file::

    leases    := nleases:u64 (id:u64 ttl:u64)*nleases   (in id order)
    attached  := nattached:u64 (key_len:u16 key lease:u64)*nattached
                                                       (in key order)

(The snapshot's tail, after the history: L{kvpaxos.encoding.state}.)  A
lease id is 1 to L{MAX_LEASE_ID} and a TTL 1 to L{MAX_LEASE_TTL} seconds
(what a LEASE_GRANT in the log may hold); an attached key is a key of
1 to L{MAX_KEY_BYTES} bytes that has a record in the same state, and its
lease is in the same state's lease table.  L{lease_fault} and
L{attachment_fault} are the one statement of those bounds, for the
snapshot reader here and the transfer's check
(L{kvpaxos.storage.staging.StagingCheck}).  Readers treat their input as
hostile and raise L{CorruptState}.  No I/O.
"""

from __future__ import annotations

from struct import Struct
from typing import Optional

from kvpaxos.encoding.reader import U16, U64, Reader
from kvpaxos.kv.commands import MAX_KEY_BYTES, MAX_LEASE_ID, MAX_LEASE_TTL

#: One entry of the lease table: id, TTL.
LEASE_ENTRY = Struct(">QQ")
#: The least an attachment takes: a 1-byte key and its lease.
ATTACHMENT_MIN = U16.size + 1 + U64.size


def lease_fault(lease: int, ttl: int, previous: int) -> Optional[str]:
    """
    Return what is wrong with lease C{lease} of C{ttl} seconds after lease
    C{previous} (0 for the first) in a lease table, or None.
    """
    if not previous < lease <= MAX_LEASE_ID:
        return f"lease {lease} after lease {previous} (ids increase, 1 to {MAX_LEASE_ID})"
    if not 1 <= ttl <= MAX_LEASE_TTL:
        return f"lease {lease} of TTL {ttl} (1 to {MAX_LEASE_TTL} s)"
    return None


def attachment_fault(key: bytes, previous: bytes) -> Optional[str]:
    """
    Return what is wrong with an attachment of C{key} after one of
    C{previous} (b"" for the first), or None; that its key is a record and
    its lease in the lease table is the caller's check.
    """
    if not 0 < len(key) <= MAX_KEY_BYTES:
        return f"an attached key of {len(key)} bytes"
    if key <= previous:
        return "attached keys out of order"
    return None


def write_leases(leases, attached, out: list) -> None:
    """
    Append the lease table C{leases} (C{(id, ttl)} in id order) and the
    attachments C{attached} (C{(key, lease)} in key order) to C{out}.
    """
    pack, u16, u64 = LEASE_ENTRY.pack, U16.pack, U64.pack
    out.append(u64(len(leases)))
    for lease, ttl in leases:
        out.append(pack(lease, ttl))
    out.append(u64(len(attached)))
    for key, lease in attached:
        out += [u16(len(key)), key, u64(lease)]


def read_leases(reader: Reader, records) -> tuple[tuple, tuple]:
    """
    Read what L{write_leases} wrote, for a state whose records are
    C{records} (L{KeyValue}s in key order): return C{(leases, attached)}.
    Every attachment's key must be one of C{records} and its lease in the
    table (else the reader fails).
    """
    count = reader.count(U64, LEASE_ENTRY.size)
    leases = []
    previous = 0
    for _ in range(count):
        lease, ttl = reader.unpack(LEASE_ENTRY)
        fault = lease_fault(lease, ttl, previous)
        if fault is not None:
            reader.fail(fault)
        leases.append((lease, ttl))
        previous = lease
    ids = {lease for lease, _ in leases}
    count = reader.count(U64, ATTACHMENT_MIN)
    attached = []
    last = b""
    at = 0  # records[at] is the first record whose key is not below the last attached key
    for _ in range(count):
        key = reader.u16_bytes()
        lease = reader.u64()
        fault = attachment_fault(key, last)
        if fault is not None:
            reader.fail(fault)
        while at < len(records) and records[at].key < key:
            at += 1
        if at == len(records) or records[at].key != key:
            reader.fail(f"key {key!r} is attached to lease {lease} but has no record")
        if lease not in ids:
            reader.fail(f"key {key!r} is attached to lease {lease}, which is not in the lease table")
        attached.append((key, lease))
        last = key
    return tuple(leases), tuple(attached)


__all__ = [
    "ATTACHMENT_MIN",
    "LEASE_ENTRY",
    "attachment_fault",
    "lease_fault",
    "read_leases",
    "write_leases",
]
