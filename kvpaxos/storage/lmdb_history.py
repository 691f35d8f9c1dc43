"""
The history of writes (issue 14) in an L{kvpaxos.storage.lmdb.LMDBStore}:
the C{history} sub-database (C{history_key -> event}, laid out by
L{kvpaxos.encoding.history}; the staging's C{staged_history} alike) and
the compacted revision, the C{meta} key C{compacted} (8 bytes).

Keys are C{revision:u64 index:u32} big-endian, so LMDB's order is the
history's, and every event is written after the ones before it: L{add}
appends (C{MDB_APPEND}, no search down the tree), and an event that does
not follow the last is a broken invariant (an L{AssertionError}), never
an overwrite.  Functions of a transaction and its databases; nothing here
opens, commits or aborts a transaction.
"""

from __future__ import annotations

from kvpaxos.encoding import values
from kvpaxos.encoding.history import HISTORY_KEY, decode_event, encode_history_key
from kvpaxos.kv.history import HistoryCompacted, whole_revisions

#: The C{meta} key of the compacted revision.
COMPACTED = b"compacted"


def compacted(txn, meta) -> int:
    """Return the compacted revision stored in C{txn}."""
    return values.decode_u64(txn.get(COMPACTED, db=meta))


def set_compacted(txn, meta, revision: int) -> None:
    """Store C{revision} as the compacted revision."""
    txn.put(COMPACTED, values.encode_u64(revision), db=meta)


def add(txn, db, key: bytes, event: bytes) -> None:
    """
    Append C{event} under history key C{key}, which must follow every key
    in C{db}.

    @raise AssertionError: it does not (the state machine numbers a
        revision's events 0, 1, 2... in apply order, and revisions only
        grow); nothing is written.
    """
    if not txn.put(key, event, db=db, append=True):
        revision, index = HISTORY_KEY.unpack(key)
        raise AssertionError(f"event ({revision}, {index}) does not follow the history's last")


def compact(txn, meta, db, revision: int) -> None:
    """Drop every event of a revision below C{revision}; the compacted revision becomes C{revision}."""
    limit = encode_history_key(revision, 0)
    cursor = txn.cursor(db=db)
    if cursor.first():
        while cursor.key() < limit:
            if not cursor.delete():  # deletes and moves to the next; False past the end
                break
    set_compacted(txn, meta, revision)


def events(txn, meta, db, start: int, max_events: int) -> list:
    """
    Return the C{(revision, Event)}s of C{db} from revision C{start} on,
    whole revisions, about C{max_events} of them
    (L{kvpaxos.kv.history.whole_revisions}), all read in C{txn}.

    @raise HistoryCompacted: C{start} is below the compacted revision (read
        in the same C{txn}, so no reader gets a silent gap).
    @raise kvpaxos.encoding.errors.CorruptState: a stored event does not decode.
    """
    floor = compacted(txn, meta)
    if start < floor:
        raise HistoryCompacted(floor)
    cursor = txn.cursor(db=db)
    if not cursor.set_range(encode_history_key(start, 0)):
        return []
    unpack = HISTORY_KEY.unpack
    stored = whole_revisions(((unpack(key)[0], data) for key, data in cursor.iternext()), max_events)
    return [(revision, decode_event(revision, data)) for revision, data in stored]


def replace(txn, meta, db, revision: int, pairs) -> None:
    """Replace the history with C{pairs} (stored C{(history_key, event)}, in key order) compacted at C{revision}."""
    txn.drop(db, delete=False)
    consumed, added = txn.cursor(db=db).putmulti(pairs, append=True)
    if consumed != added:
        raise AssertionError(f"{consumed - added} of {consumed} events out of order")
    set_compacted(txn, meta, revision)
