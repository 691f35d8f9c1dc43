"""
The format of an L{kvpaxos.storage.lmdb.LMDBStore}'s environment: its
version (L{STORE_FORMAT}, the C{meta} key C{format}), the bootstrap state
a new store is written with, the one conversion done when a store opens,
and the refusal of every other format.

  - C{kvpaxos-lmdb-6} (this version): the history of writes (the
    C{history} sub-database and the C{meta} key C{compacted},
    L{kvpaxos.storage.lmdb_history}) and the leases (the C{leases},
    C{key_leases} and C{lease_keys} sub-databases,
    L{kvpaxos.storage.lmdb_leases}).
  - C{kvpaxos-lmdb-5} (the same layout without the history and the
    leases) is converted when it opens, in one write transaction: its
    compacted revision is written as its revision + 1
    (L{compacted_without_history}: it has no events, so a watch from any
    of its revisions is told "compacted", never given a gap), its lease
    sub-databases are made empty (no leases: as the store opens them) and
    its format becomes 6.  Converted rather than refused: nothing in it
    changes meaning.  A kvpaxos of format 5 then
    refuses the directory, as it must (it would write without events,
    leaving gaps in the history).
  - Formats 1 to 4 (4 had member sets without their removed nodes, 3
    without addresses) and anything else are refused
    (L{StoreFormatError}, naming the directory and what to do), never read
    nor written.

Functions of a write transaction; nothing here opens or commits one.
"""

from __future__ import annotations

from kvpaxos.encoding import values
from kvpaxos.encoding.errors import StoreFormatError
from kvpaxos.kv.history import compacted_without_history
from kvpaxos.kv.sessions import FIRST_CLIENT_ID
from kvpaxos.paxos.messages import Snapshot
from kvpaxos.paxos.state import HardState
from kvpaxos.storage import lmdb_history
from kvpaxos.storage.lmdb_view import NEXT_CLIENT_ID, REVISION

#: The format version of the environment and every record in it.
STORE_FORMAT = b"kvpaxos-lmdb-6"
#: The format converted to L{STORE_FORMAT} when a store opens.
CONVERTED_FORMAT = b"kvpaxos-lmdb-5"
#: What every kvpaxos store's format starts with.
_FORMAT_FAMILY = b"kvpaxos-lmdb-"

FORMAT = b"format"
HARD_STATE = b"hard_state"
SNAPSHOT = b"snapshot"
APPLIED = b"applied"
SNAPSHOT_DATA = b"data"


def format_refusal(directory: str, found: bytes) -> str:
    """What to tell the operator of C{directory}, whose format is C{found}."""
    if found.startswith(_FORMAT_FAMILY):
        what = f"a kvpaxos store of format {found.decode('ascii', 'replace')}"
    else:
        what = f"an LMDB environment that is not a kvpaxos store (format {found!r})"
    return (
        f"data directory {directory} holds {what}; this kvpaxos reads only "
        f"{STORE_FORMAT.decode('ascii')} (and converts {CONVERTED_FORMAT.decode('ascii')} when it "
        f"opens one) and does not convert other stores.  Run the "
        f"kvpaxos version that wrote it, or move the directory aside and start "
        f"this node on an empty one (a new store: a voter of a running cluster "
        f"must not rejoin without its acceptor state)"
    )


def bootstrap(txn, directory: str, meta, snapshot_db, config) -> None:
    """
    In write transaction C{txn}: write a new store's bootstrap state
    (member set C{config} at index 0) unless the environment holds a
    store; convert a store of L{CONVERTED_FORMAT}.

    @raise StoreFormatError: it holds a store of another format, or an
        environment that is not a kvpaxos store (nothing written).
    """
    found = txn.get(FORMAT, db=meta)
    if found is not None:
        if found == CONVERTED_FORMAT:
            revision = values.decode_u64(txn.get(REVISION, db=meta))
            lmdb_history.set_compacted(txn, meta, compacted_without_history(revision))
            txn.put(FORMAT, STORE_FORMAT, db=meta)
        elif found != STORE_FORMAT:
            raise StoreFormatError(format_refusal(directory, found))
        return
    txn.put(FORMAT, STORE_FORMAT, db=meta)
    txn.put(HARD_STATE, values.encode_hard_state(HardState()), db=meta)
    txn.put(SNAPSHOT, values.encode_snapshot_meta(Snapshot(0, config)), db=meta)
    txn.put(SNAPSHOT_DATA, b"", db=snapshot_db)
    txn.put(APPLIED, values.encode_slot(0), db=meta)
    txn.put(REVISION, values.encode_u64(0), db=meta)
    txn.put(NEXT_CLIENT_ID, values.encode_u64(FIRST_CLIENT_ID), db=meta)
    lmdb_history.set_compacted(txn, meta, 0)
