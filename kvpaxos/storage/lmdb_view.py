"""
L{LMDBView}: the L{IStateView} the state machine applies through inside an
L{kvpaxos.storage.lmdb.LMDBStore} transaction, over the store's
sub-databases (L{Tables}; their layout is described in
L{kvpaxos.storage.lmdb}).  Records and sessions are encoded by
L{kvpaxos.encoding.state}, keys and counters by
L{kvpaxos.encoding.values}; the auth table is kept by
L{kvpaxos.storage.lmdb_auth}.  It opens, commits and aborts nothing.
"""

from __future__ import annotations

from typing import NamedTuple

from zope.interface import implementer

from kvpaxos.encoding import state, values
from kvpaxos.storage import lmdb_auth
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


@implementer(IStateView)
class LMDBView:
    """
    The L{IStateView} of one LMDB transaction over the store's sub-databases
    C{tables}; read-only use over a read transaction is fine.
    """

    __slots__ = ("_txn", "_meta", "_kv", "_sessions", "_use", "_auth")

    def __init__(self, txn, tables: Tables) -> None:
        self._txn = txn
        self._meta = tables.meta
        self._kv = tables.kv
        self._sessions = tables.sessions
        self._use = tables.session_use
        self._auth = tables.auth

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
