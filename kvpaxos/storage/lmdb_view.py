"""
L{LMDBView}: the L{IStateView} the state machine applies through inside an
L{kvpaxos.storage.lmdb.LMDBStore} transaction, over the store's
sub-databases (L{Tables}; their layout is described in
L{kvpaxos.storage.lmdb}).  Records and sessions are encoded by
L{kvpaxos.encoding.state}, keys and counters by
L{kvpaxos.encoding.values}; the auth table is kept by
L{kvpaxos.storage.lmdb_auth}, the history of writes by
L{kvpaxos.storage.lmdb_history} (events encoded from the stored bytes of
the records, L{kvpaxos.encoding.history}), the leases by
L{kvpaxos.storage.lmdb_leases}.  It opens, commits and aborts nothing.
"""

from __future__ import annotations

from typing import NamedTuple

from zope.interface import implementer

from kvpaxos.encoding import state, values
from kvpaxos.encoding.history import encode_delete_event_of, encode_history_key, encode_put_event_of
from kvpaxos.storage import lmdb_auth, lmdb_history, lmdb_leases
from kvpaxos.storage.interfaces import IStateView

#: Keys of the C{meta} sub-database that the state machine's view owns.
REVISION = b"revision"
NEXT_CLIENT_ID = b"next_client_id"


class Tables(NamedTuple):
    """The sub-databases of a store's environment that a view reads and writes."""

    meta: object
    kv: object
    sessions: object
    session_use: object
    auth: object
    history: object
    #: L{lmdb_leases.LeaseTables}.
    leases: lmdb_leases.LeaseTables


@implementer(IStateView)
class LMDBView:
    """
    The L{IStateView} of one LMDB transaction over the store's sub-databases
    C{tables}; read-only use over a read transaction is fine.

    Every put asks for its key's lease (L{key_lease}), so the view learns
    once, at the first ask, whether any key is attached at all, and while
    none is, answers 0 without a lookup.  That holds only if nothing but
    this view attaches keys in its transaction while it is in use (an
    install writes the tables before the view that applies is made).
    """

    __slots__ = ("_txn", "_meta", "_kv", "_sessions", "_use", "_auth", "_history", "_leases", "_attached")

    def __init__(self, txn, tables: Tables) -> None:
        self._txn = txn
        self._meta = tables.meta
        self._kv = tables.kv
        self._sessions = tables.sessions
        self._use = tables.session_use
        self._auth = tables.auth
        self._history = tables.history
        self._leases = tables.leases
        #: Whether any key may be attached to a lease (None: not asked yet).
        self._attached = None

    def get(self, key: bytes):
        data = self._txn.get(key, db=self._kv)
        return None if data is None else state.decode_record(key, data)

    def put(self, kv) -> None:
        self._txn.put(kv.key, state.encode_record(kv), db=self._kv)

    def write(self, key: bytes, value: bytes, revision: int, want_prev: bool) -> tuple:
        """L{machine.write_record}, on the stored bytes (no record built unless asked for)."""
        txn, db = self._txn, self._kv
        old = txn.get(key, db=db)
        if old is None:
            txn.put(key, state.encode_record_of(value, 1, revision, revision), db=db)
            return False, None
        version, created, _ = state.record_header(old)
        txn.put(key, state.encode_record_of(value, version + 1, created, revision), db=db)
        return True, (state.decode_record(key, old) if want_prev else None)

    def delete(self, key: bytes) -> None:
        self._txn.delete(key, db=self._kv)

    def write_with_event(self, key: bytes, value: bytes, revision: int, index: int,
                         want_prev: bool = True) -> tuple:
        """
        L{write}, and the put's event recorded at C{(revision, index)}, both
        on the stored bytes: the new record is never decoded, the old one
        goes into the event as it is stored (and is decoded only if
        C{want_prev}).
        """
        txn, db = self._txn, self._kv
        old = txn.get(key, db=db)
        if old is None:
            record = state.encode_record_of(value, 1, revision, revision)
            prev = None
        else:
            version, created, _ = state.record_header(old)
            record = state.encode_record_of(value, version + 1, created, revision)
            prev = state.decode_record(key, old) if want_prev else None
        txn.put(key, record, db=db)
        lmdb_history.add(txn, self._history, encode_history_key(revision, index),
                         encode_put_event_of(key, record, old))
        return old is not None, prev

    def delete_with_event(self, key: bytes, revision: int, index: int):
        txn, db = self._txn, self._kv
        old = txn.get(key, db=db)
        if old is None:
            return None
        prev = state.decode_record(key, old)
        txn.delete(key, db=db)
        lmdb_history.add(txn, self._history, encode_history_key(revision, index),
                         encode_delete_event_of(key, old))
        return prev

    def compacted_revision(self) -> int:
        return lmdb_history.compacted(self._txn, self._meta)

    def compact_history(self, revision: int) -> None:
        lmdb_history.compact(self._txn, self._meta, self._history, revision)

    def events(self, start: int, max_events: int) -> list:
        return lmdb_history.events(self._txn, self._meta, self._history, start, max_events)

    def scan(self, start: bytes, stop):
        cursor = self._txn.cursor(db=self._kv)
        if not cursor.set_range(start):
            return
        for key, data in cursor.iternext():
            if stop is not None and key >= stop:
                return
            yield state.decode_record(key, data)

    def revision(self) -> int:
        return values.decode_u64(self._txn.get(REVISION, db=self._meta))

    def set_revision(self, revision: int) -> None:
        self._txn.put(REVISION, values.encode_u64(revision), db=self._meta)

    def session(self, client_id: int):
        data = self._txn.get(values.encode_u64(client_id), db=self._sessions)
        return None if data is None else state.decode_session(data)

    def session_sequence(self, client_id: int):
        data = self._txn.get(values.encode_u64(client_id), db=self._sessions)
        return None if data is None else state.decode_session_head(data)[0]

    def put_session(self, client_id: int, session) -> None:
        self.delete_session(client_id)
        txn = self._txn
        txn.put(values.encode_u64(client_id), state.encode_session(session), db=self._sessions)
        txn.put(values.encode_use_key(session.last_used, client_id), b"", db=self._use)

    def delete_session(self, client_id: int) -> None:
        key = values.encode_u64(client_id)
        old = self._txn.get(key, db=self._sessions)
        if old is not None:
            last_used = state.decode_session_head(old)[1]
            self._txn.delete(key, db=self._sessions)
            self._txn.delete(values.encode_use_key(last_used, client_id), db=self._use)

    def session_count(self) -> int:
        return self._txn.stat(self._sessions)["entries"]

    def sessions_by_use(self):
        for key in self._txn.cursor(db=self._use).iternext(values=False):
            yield values.decode_use_key(key)

    def next_client_id(self) -> int:
        return values.decode_u64(self._txn.get(NEXT_CLIENT_ID, db=self._meta))

    def set_next_client_id(self, client_id: int) -> None:
        self._txn.put(NEXT_CLIENT_ID, values.encode_u64(client_id), db=self._meta)

    def auth_get(self, key: bytes):
        return lmdb_auth.get(self._txn, self._auth, key)

    def auth_put(self, key: bytes, value: bytes) -> None:
        state.check_auth_entry(key, value)
        lmdb_auth.put(self._txn, self._auth, key, value)

    def auth_delete(self, key: bytes) -> None:
        lmdb_auth.delete(self._txn, self._auth, key)

    def auth_items(self):
        return lmdb_auth.items(self._txn, self._auth)

    def lease_ttl(self, lease: int):
        return lmdb_leases.ttl(self._txn, self._leases, lease)

    def lease_put(self, lease: int, ttl: int) -> None:
        lmdb_leases.put(self._txn, self._leases, lease, ttl)

    def lease_remove(self, lease: int) -> None:
        lmdb_leases.remove(self._txn, self._leases, lease)

    def lease_items(self):
        return lmdb_leases.items(self._txn, self._leases)

    def _any_attached(self) -> bool:
        attached = self._attached
        if attached is None:
            attached = self._attached = lmdb_leases.any_attached(self._txn, self._leases)
        return attached

    def key_lease(self, key: bytes) -> int:
        """The lease C{key} is attached to, or 0: the hot path of every put (see the class docstring)."""
        attached = self._attached
        if attached is None:
            attached = self._any_attached()
        if not attached:
            return 0
        return lmdb_leases.key_lease(self._txn, self._leases, key)

    def lease_attach(self, key: bytes, lease: int) -> None:
        lmdb_leases.attach(self._txn, self._leases, key, lease)
        self._attached = True

    def lease_detach(self, key: bytes) -> None:
        if self._any_attached():
            lmdb_leases.detach(self._txn, self._leases, key)

    def lease_keys(self, lease: int):
        return lmdb_leases.keys(self._txn, self._leases, lease)
