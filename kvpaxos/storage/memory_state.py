"""
L{MemoryState}: the replicated state in memory (records, revision,
sessions, the auth table, the history of writes, the leases), the L{IStateView} the
state machine applies through on the in-memory provider
(L{kvpaxos.storage.memory.MemoryStore}), and the reference model's state
(L{kvpaxos.testing.reference}).  It undoes a failed commit from its own
journal.  Nothing here touches a disk or takes a lock.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from itertools import islice

from zope.interface import implementer

from kvpaxos.encoding import state as encoded
from kvpaxos.encoding.history import encode_event, encode_history_key
from kvpaxos.kv import machine
from kvpaxos.kv.history import HistoryCompacted, delete_event, put_event, whole_revisions
from kvpaxos.kv.sessions import FIRST_CLIENT_ID
from kvpaxos.storage.interfaces import IStateView


@implementer(IStateView)
class MemoryState:
    """
    The replicated state in memory, its own L{IStateView} (what
    L{machine.apply_batch} applies through): records by key with their keys kept sorted,
    the revision, the session table with its least-recently-used order,
    the next client id, the auth table with its keys kept sorted, the
    history's compacted revision and its events (C{history}: C{(history
    key, event bytes, Event)} in key order, the bytes encoded once, as
    they are written, so a snapshot only joins them), the lease table
    (C{leases}: id -> TTL) and the attachments both ways (C{key_leases}:
    key -> lease; C{lease_pairs}: C{(lease, key)}, sorted, so a lease's
    keys are one slice in key order).

    While C{journal} is a list, every change notes what it replaced there,
    so that L{rollback} undoes a commit that failed halfway.
    """

    def __init__(self) -> None:
        self.records: dict = {}
        self.keys: list = []
        self.sessions: dict = {}
        #: (last-used slot, client id), sorted: the eviction order.
        self.by_use: list = []
        self._revision = 0
        self._next_client_id = FIRST_CLIENT_ID
        #: The auth table (bytes -> bytes) and its keys, sorted.
        self.auth: dict = {}
        self.auth_keys: list = []
        #: The history's compacted revision and its (key, bytes, Event)s.
        self.compacted = 0
        self.history: list = []
        #: The lease table (id -> TTL), each key's lease, and the sorted (lease, key)s.
        self.leases: dict = {}
        self.key_leases: dict = {}
        self.lease_pairs: list = []
        self.journal: list | None = None

    @classmethod
    def from_snapshot(cls, data: bytes) -> "MemoryState":
        """
        Return the state in snapshot C{data}.

        @raise kvpaxos.encoding.errors.CorruptState: C{data} is not a snapshot.
        """
        found = encoded.decode_snapshot(data)
        history = [(encode_history_key(revision, index), encode_event(event), event)
                   for revision, index, event in found.events]
        return cls.of(found.revision, found.next_client_id, found.records, found.sessions, found.auth,
                      found.compacted, history, found.leases, found.attached)

    @classmethod
    def of(cls, revision: int, next_client_id: int, records, sessions, auth, compacted: int = 0,
           history=(), leases=(), attached=()) -> "MemoryState":
        """
        Return the state of checked C{records} (in key order), C{(client
        id, Session)}s, auth C{(key, value)}s (in key order), compacted
        revision, history (C{(history key, event bytes, Event)}s in
        key order), leases (C{(id, ttl)}s) and attachments (C{(key,
        lease)}s).
        """
        state = cls()
        state._revision = revision
        state._next_client_id = next_client_id
        state.records = {kv.key: kv for kv in records}
        state.keys = [kv.key for kv in records]
        state.sessions = dict(sessions)
        state.by_use = sorted((s.last_used, c) for c, s in sessions)
        state.auth = dict(auth)
        state.auth_keys = [key for key, _ in auth]
        state.compacted = compacted
        state.history = list(history)
        state.leases = dict(leases)
        state.key_leases = dict(attached)
        state.lease_pairs = sorted((lease, key) for key, lease in attached)
        return state

    def snapshot_data(self) -> bytes:
        """Return this state as snapshot bytes (L{kvpaxos.encoding.state.encode_snapshot})."""
        return _encode_state(
            self._revision, self._next_client_id, self.keys, self.records, self.sessions,
            self.auth_keys, self.auth, self.compacted, self.history, self.leases, self.key_leases,
        )

    def snapshot_copy(self) -> tuple:
        """
        Return what L{snapshot_data} encodes, for L{encode_snapshot_copy}:
        shallow copies of the tables (their records and sessions are
        frozen; auth values are bytes; events are frozen and their bytes
        encoded), nothing encoded: C{(revision, next_client_id, keys,
        records, sessions, auth_keys, auth, compacted, history, leases,
        key_leases)} (the last two dicts, sorted as they are encoded).  Copies
        at C speed, so that a lock need only be held while they are taken,
        not while they are encoded.
        """
        return (
            self._revision,
            self._next_client_id,
            list(self.keys),
            dict(self.records),
            dict(self.sessions),
            list(self.auth_keys),
            dict(self.auth),
            self.compacted,
            list(self.history),
            dict(self.leases),
            dict(self.key_leases),
        )

    # --- records ---

    def get(self, key: bytes):
        return self.records.get(key)

    def put(self, kv) -> None:
        self._set_record(kv.key, kv)

    def write(self, key: bytes, value: bytes, revision: int, want_prev: bool) -> tuple:
        return machine.write_record(self, key, value, revision, want_prev)

    def delete(self, key: bytes) -> None:
        self._set_record(key, None)

    def scan(self, start: bytes, stop):
        keys, records = self.keys, self.records
        for index in range(bisect_left(keys, start), len(keys)):
            key = keys[index]
            if stop is not None and key >= stop:
                return
            yield records[key]

    def revision(self) -> int:
        return self._revision

    def set_revision(self, revision: int) -> None:
        self._note(_REVISION, None, self._revision)
        self._revision = revision

    # --- sessions ---

    def session(self, client_id: int):
        return self.sessions.get(client_id)

    def session_sequence(self, client_id: int):
        session = self.sessions.get(client_id)
        return None if session is None else session.sequence

    def put_session(self, client_id: int, session) -> None:
        self._set_session(client_id, session)

    def delete_session(self, client_id: int) -> None:
        self._set_session(client_id, None)

    def session_count(self) -> int:
        return len(self.sessions)

    def sessions_by_use(self):
        return iter(self.by_use)

    def next_client_id(self) -> int:
        return self._next_client_id

    def set_next_client_id(self, client_id: int) -> None:
        self._note(_NEXT_CLIENT_ID, None, self._next_client_id)
        self._next_client_id = client_id

    # --- the auth table ---

    def auth_get(self, key: bytes):
        return self.auth.get(key)

    def auth_put(self, key: bytes, value: bytes) -> None:
        encoded.check_auth_entry(key, value)
        self._set_auth(key, value)

    def auth_delete(self, key: bytes) -> None:
        self._set_auth(key, None)

    def auth_items(self):
        auth = self.auth
        for key in self.auth_keys:
            yield key, auth[key]

    # --- the history ---

    def write_with_event(self, key: bytes, value: bytes, revision: int, index: int,
                         want_prev: bool = True) -> tuple:
        """
        L{write} (the previous record returned whatever C{want_prev} says)
        and record the put's event, the C{index}th of C{revision}.
        """
        existed, prev = machine.write_record(self, key, value, revision, True)
        self._add_event(revision, index, put_event(self.records[key], prev))
        return existed, prev

    def delete_with_event(self, key: bytes, revision: int, index: int):
        """Delete C{key} and record the event, if it has a record; return that record (or None: nothing done)."""
        prev = self.records.get(key)
        if prev is not None:
            self._set_record(key, None)
            self._add_event(revision, index, delete_event(prev, revision))
        return prev

    def _add_event(self, revision: int, index: int, event) -> None:
        key = encode_history_key(revision, index)
        history = self.history
        # Invariant: the history is in (revision, index) order, each once;
        # the state machine numbers a revision's events 0, 1, 2... as it applies.
        if history and history[-1][0] >= key:
            raise AssertionError(f"event ({revision}, {index}) does not follow the history's last")
        self._note(_EVENT, None, None)
        history.append((key, encode_event(event), event))

    def compacted_revision(self) -> int:
        return self.compacted

    def compact_history(self, revision: int) -> None:
        history = self.history
        cut = bisect_left(history, (encode_history_key(revision, 0),))
        self._note(_COMPACTED, history[:cut], self.compacted)
        del history[:cut]
        self.compacted = revision

    def events(self, start: int, max_events: int) -> list:
        """L{kvpaxos.storage.interfaces.IStateView.events}: whole revisions from C{start} on."""
        if start < self.compacted:
            raise HistoryCompacted(self.compacted)
        history = self.history
        at = bisect_left(history, (encode_history_key(start, 0),))
        return whole_revisions(((e.revision, e) for _, _, e in islice(history, at, None)), max_events)

    # --- the leases ---

    def lease_ttl(self, lease: int):
        return self.leases.get(lease)

    def lease_put(self, lease: int, ttl: int) -> None:
        self._set_lease(lease, ttl)

    def lease_remove(self, lease: int) -> None:
        """Remove lease C{lease} (no error if it is not there); its keys were detached first."""
        pairs = self.lease_pairs
        at = bisect_left(pairs, (lease, b""))
        # Invariant: no key is attached to a lease not in the table (the
        # state machine detaches every key of a lease before it removes it).
        if at < len(pairs) and pairs[at][0] == lease:
            raise AssertionError(f"lease {lease} removed with key {pairs[at][1]!r} attached")
        self._set_lease(lease, None)

    def lease_items(self):
        return iter(sorted(self.leases.items()))

    def key_lease(self, key: bytes) -> int:
        return self.key_leases.get(key, 0)

    def lease_attach(self, key: bytes, lease: int) -> None:
        # Invariant: a key has one lease at most (the state machine detaches first).
        if key in self.key_leases:
            raise AssertionError(f"key {key!r} attached to lease {lease} while on lease {self.key_leases[key]}")
        self._set_attachment(key, lease)

    def lease_detach(self, key: bytes) -> None:
        if key in self.key_leases:
            self._set_attachment(key, 0)

    def lease_keys(self, lease: int):
        pairs = self.lease_pairs
        for index in range(bisect_left(pairs, (lease, b"")), len(pairs)):
            owner, key = pairs[index]
            if owner != lease:
                return
            yield key

    # --- changes and their undoing ---

    def _note(self, kind: int, key, old) -> None:
        if self.journal is not None:
            self.journal.append((kind, key, old))

    def _set_record(self, key: bytes, kv) -> None:
        old = self.records.get(key)
        self._note(_RECORD, key, old)
        if kv is None:
            if old is not None:
                del self.records[key]
                del self.keys[bisect_left(self.keys, key)]
        else:
            if old is None:
                insort(self.keys, key)
            self.records[key] = kv

    def _set_session(self, client_id: int, session) -> None:
        old = self.sessions.get(client_id)
        self._note(_SESSION, client_id, old)
        if old is not None:
            del self.by_use[bisect_left(self.by_use, (old.last_used, client_id))]
            del self.sessions[client_id]
        if session is not None:
            insort(self.by_use, (session.last_used, client_id))
            self.sessions[client_id] = session

    def _set_auth(self, key: bytes, value) -> None:
        old = self.auth.get(key)
        self._note(_AUTH, key, old)
        if value is None:
            if old is not None:
                del self.auth[key]
                del self.auth_keys[bisect_left(self.auth_keys, key)]
        else:
            if old is None:
                insort(self.auth_keys, key)
            self.auth[key] = value

    def _set_lease(self, lease: int, ttl) -> None:
        self._note(_LEASE, lease, self.leases.get(lease))
        if ttl is None:
            self.leases.pop(lease, None)
        else:
            self.leases[lease] = ttl

    def _set_attachment(self, key: bytes, lease: int) -> None:
        """Attach C{key} to C{lease} alone (0: to none)."""
        old = self.key_leases.get(key, 0)
        self._note(_ATTACH, key, old)
        pairs = self.lease_pairs
        if old:
            del pairs[bisect_left(pairs, (old, key))]
            del self.key_leases[key]
        if lease:
            insort(pairs, (lease, key))
            self.key_leases[key] = lease

    def rollback(self) -> None:
        """Undo every change noted in the journal, newest first."""
        journal, self.journal = self.journal or [], None
        for kind, key, old in reversed(journal):
            if kind == _RECORD:
                self._set_record(key, old)
            elif kind == _SESSION:
                self._set_session(key, old)
            elif kind == _AUTH:
                self._set_auth(key, old)
            elif kind == _REVISION:
                self._revision = old
            elif kind == _EVENT:
                self.history.pop()
            elif kind == _COMPACTED:
                self.history[:0] = key
                self.compacted = old
            elif kind == _LEASE:
                self._set_lease(key, old)
            elif kind == _ATTACH:
                self._set_attachment(key, old)
            else:
                self._next_client_id = old


_RECORD, _SESSION, _REVISION, _NEXT_CLIENT_ID, _AUTH, _EVENT, _COMPACTED, _LEASE, _ATTACH = range(9)


def _encode_state(revision: int, next_client_id: int, keys, records, sessions, auth_keys, auth,
                  compacted: int, history, leases, key_leases) -> bytes:
    """The snapshot bytes of a state's parts (see L{MemoryState.snapshot_data})."""
    return encoded.encode_snapshot(
        revision,
        next_client_id,
        [(key, encoded.encode_record(records[key])) for key in keys],
        [(c, encoded.encode_session(sessions[c])) for c in sorted(sessions)],
        [(key, auth[key]) for key in auth_keys],
        compacted,
        [(key, data) for key, data, _ in history],
        sorted(leases.items()),
        sorted(key_leases.items()),
    )


def encode_snapshot_copy(copy: tuple) -> bytes:
    """Return the snapshot bytes of a L{MemoryState.snapshot_copy}."""
    return _encode_state(*copy)

