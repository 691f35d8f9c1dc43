"""
The in-memory storage providers: L{MemoryStorage}, a real L{IReplicaStorage}
whose "disk" is a Python object, and L{MemoryStore}, the L{INodeStore} built
on it with a L{MemoryState} for the replicated state (records, revision,
sessions, the auth table).  Tests, the simulator and the benchmarks use
them; a simulated crash keeps the provider (what was saved) and drops the
replica (what was not).  Nothing here touches a disk.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, insort

from zope.interface import implementer

from kvpaxos.encoding import state as encoded
from kvpaxos.kv import machine
from kvpaxos.kv.commands import InvalidArgument, RangeResult, check_range, range_query
from kvpaxos.kv.sessions import DEFAULT_LIMITS, FIRST_CLIENT_ID, SessionLimits
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import Snapshot
from kvpaxos.paxos.state import HardState
from kvpaxos.storage.apply import apply_committed
from kvpaxos.storage.interfaces import Commit, INodeStore, IReplicaStorage, IStateView
from kvpaxos.storage.memory_transfer import MemorySnapshotStream, MemoryStaging
from kvpaxos.storage.staging import StagedState
from kvpaxos.storage.state_machine import StateMachineView


@implementer(IReplicaStorage)
class MemoryStorage:
    """
    Keeps a replica's durable state in memory.

    @param config: the initial member set, stored as the bootstrap snapshot
        (index 0).  A node that joins an existing cluster starts with an
        empty member set and learns the real one from the leader.
    """

    name = "memory"

    def __init__(self, config: Config | None = None) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot(0, config or Config(frozenset()))
        self._entries: dict = {}
        #: How many saves were made (for benchmarks and tests).
        self.saves = 0

    def hard_state(self) -> HardState:
        return self._hard_state

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def entries(self, first_slot: int) -> list:
        first = max(first_slot, self._snapshot.index + 1)
        return sorted((s, e) for s, e in self._entries.items() if s >= first)

    def save(self, hard_state, entries, snapshot) -> None:
        self.saves += 1
        if hard_state is not None:
            self._hard_state = hard_state
        if snapshot is not None and snapshot.index >= self._snapshot.index:
            self._snapshot = snapshot
            self._entries = {
                s: e for s, e in self._entries.items() if s > snapshot.index
            }
        floor = self._snapshot.index
        for slot, entry in entries:
            if slot > floor:
                self._entries[slot] = entry


@implementer(IStateView)
class MemoryState:
    """
    The replicated state in memory, its own L{IStateView} (what
    L{machine.apply_batch} applies through): records by key with their keys kept sorted,
    the revision, the session table with its least-recently-used order,
    the next client id, the auth table with its keys kept sorted.

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
        self.journal: list | None = None

    @classmethod
    def from_snapshot(cls, data: bytes) -> "MemoryState":
        """
        Return the state in snapshot C{data}.

        @raise kvpaxos.encoding.errors.CorruptState: C{data} is not a snapshot.
        """
        found = encoded.decode_snapshot(data)
        return cls.of(found.revision, found.next_client_id, found.records, found.sessions, found.auth)

    @classmethod
    def of(cls, revision: int, next_client_id: int, records, sessions, auth) -> "MemoryState":
        """
        Return the state of checked C{records} (in key order), C{(client
        id, Session)}s and auth C{(key, value)}s (in key order).
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
        return state

    def snapshot_data(self) -> bytes:
        """Return this state as snapshot bytes (L{kvpaxos.encoding.state.encode_snapshot})."""
        return _encode_state(
            self._revision, self._next_client_id, self.keys, self.records, self.sessions,
            self.auth_keys, self.auth,
        )

    def snapshot_copy(self) -> tuple:
        """
        Return what L{snapshot_data} encodes, for L{encode_snapshot_copy}:
        shallow copies of the tables (their records and sessions are
        frozen; auth values are bytes), nothing encoded: C{(revision,
        next_client_id, keys, records, sessions, auth_keys, auth)}.  Copies
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
            else:
                self._next_client_id = old


_RECORD, _SESSION, _REVISION, _NEXT_CLIENT_ID, _AUTH = range(5)


def _encode_state(revision: int, next_client_id: int, keys, records, sessions, auth_keys, auth) -> bytes:
    """The snapshot bytes of a state's parts (see L{MemoryState.snapshot_data})."""
    return encoded.encode_snapshot(
        revision,
        next_client_id,
        [(key, encoded.encode_record(records[key])) for key in keys],
        [(c, encoded.encode_session(sessions[c])) for c in sorted(sessions)],
        [(key, auth[key]) for key in auth_keys],
    )


def encode_snapshot_copy(copy: tuple) -> bytes:
    """Return the snapshot bytes of a L{MemoryState.snapshot_copy}."""
    return _encode_state(*copy)


@implementer(INodeStore)
class MemoryStore:
    """
    An L{INodeStore} in memory: a L{MemoryStorage} for the acceptor state
    and a L{MemoryState} for the replicated state.  Commits are atomic (a
    failing one is rolled back and changes nothing) but nothing survives the
    process; for tests and C{--storage=memory}.

    Threads: L{commit} on one writer thread; reads on any thread (a lock
    keeps them from seeing half a commit).  L{snapshot_now} holds the lock
    only to copy the state's tables, never while it encodes them.

    @param config: the member set of the bootstrap snapshot (index 0);
        C{None} means an empty one, for a node that joins a cluster.
    @param limits: the session table's bounds; the same on every node.
    """

    name = "memory"

    def __init__(self, config: Config | None = None, limits: SessionLimits = DEFAULT_LIMITS) -> None:
        #: The acceptor state, a plain L{MemoryStorage}.
        self.storage = MemoryStorage(config)
        self.limits = limits
        self._state = MemoryState()
        self._applied = 0
        self._lock = threading.Lock()
        #: The L{IStateMachine} face of this store; see L{StateMachineView}.
        self.state_machine = StateMachineView(self)
        #: The incoming snapshot transfer's chunks.
        self.staging = MemoryStaging()

    def open_snapshot_stream(self) -> MemorySnapshotStream:
        """L{INodeStore.open_snapshot_stream}: the state as of the last commit, in chunks."""
        return MemorySnapshotStream(self)

    def hard_state(self) -> HardState:
        with self._lock:
            return self.storage.hard_state()

    def snapshot(self) -> Snapshot:
        """
        Return the latest saved L{Snapshot} (L{IReplicaStorage}); for the
        current data as snapshot bytes see L{snapshot_data}.
        """
        with self._lock:
            return self.storage.snapshot()

    def entries(self, first_slot: int) -> list:
        with self._lock:
            return self.storage.entries(first_slot)

    def applied_index(self) -> int:
        with self._lock:
            return self._applied

    def get(self, key: bytes):
        """
        Return the value under C{key}, or C{None}.

        @raise InvalidArgument: C{key} is empty or over 511 bytes.
        """
        kv = self.get_record(key)
        return None if kv is None else kv.value

    def get_record(self, key: bytes):
        """
        Return the L{KeyValue} record of C{key}, or C{None}.

        @raise InvalidArgument: C{key} is empty or over 511 bytes.
        """
        check_range(key, None)
        with self._lock:
            return self._state.get(key)

    def range(self, start: bytes, end=None, limit: int = 0, keys_only: bool = False,
              count_only: bool = False) -> RangeResult:
        """
        L{INodeStore.range}: the records of C{start}..C{end}, as of the last
        commit.

        @raise InvalidArgument: a bad key, end or limit.
        """
        query = range_query(start, end, limit, keys_only, count_only)
        with self._lock:
            return machine.read_range(self._state, query)

    def read_ranges(self, queries) -> list:
        """L{INodeStore.read_ranges}, under the lock (one state for all)."""
        results = []
        with self._lock:
            state = self._state
            for query in queries:
                try:
                    checked = range_query(
                        query.key, query.end, query.limit, query.keys_only, query.count_only
                    )
                    results.append(machine.read_range(state, checked))
                except InvalidArgument as error:
                    results.append(error)
        return results

    def revision(self) -> int:
        """Return the store's revision as of the last commit."""
        with self._lock:
            return self._state.revision()

    def auth_items(self) -> list:
        """L{INodeStore.auth_items}: the auth table as of the last commit, in key order."""
        with self._lock:
            return list(self._state.auth_items())

    def snapshot_data(self) -> bytes:
        """
        Return the state as of the last commit, encoded with
        L{kvpaxos.encoding.state.encode_snapshot} (records in byte order of their keys, as
        LMDB keeps them, so equal states give equal bytes whichever provider
        holds them).
        """
        return self.snapshot_now()[1]

    def snapshot_now(self) -> tuple[int, bytes]:
        """
        Return the applied index and L{snapshot_data}, as of the last commit.
        For a pool thread: the encoding, O(state) in Python, runs after the
        lock is let go; under it only the tables are copied (still
        O(state), at C speed: a persistent map would remove even that).
        """
        with self._lock:
            applied, copy = self._applied, self._state.snapshot_copy()
        return applied, encode_snapshot_copy(copy)

    def save(self, hard_state, entries, snapshot) -> None:
        """L{IReplicaStorage.save}: L{commit} with nothing to install or apply."""
        self.commit(Commit(hard_state, entries, snapshot))

    def commit(self, work: Commit, on_applied=None) -> list:
        """
        L{INodeStore.commit}, atomically: the install and the batches are
        worked out under the lock, and a failure rolls the state back.

        @return: the C{(Request, result)} of every command applied, in order.
        @raise ValueError: C{install} without a snapshot, or with one older
            than the saved snapshot (caller misuse); or the snapshot's data
            is not a snapshot (L{CorruptRecord}).  Nothing is changed.
        @raise AssertionError: C{committed} does not continue the applied
            slots one by one.  Nothing is changed.
        """
        hard_state, entries, snapshot = work.hard_state, work.entries, work.snapshot
        install, committed, decoded = work.install, work.committed, work.decoded
        with self._lock:
            if install:
                if snapshot is None or snapshot.data is None:
                    raise ValueError("install needs a snapshot with its data")
                floor = self.storage.snapshot().index
                if snapshot.index < floor:
                    raise ValueError(
                        f"cannot install snapshot {snapshot.index} below saved snapshot {floor}"
                    )
                staged = isinstance(snapshot.data, StagedState)
                if staged:
                    state = MemoryState.of(*self.staging.state(snapshot.data))
                    # This store is its own snapshot from now on.
                    snapshot = Snapshot(snapshot.index, snapshot.config, None)
                else:
                    state = MemoryState.from_snapshot(snapshot.data)
                applied = snapshot.index
            else:
                state = self._state
                applied = self._applied
            state.journal = []
            try:
                applied, results = apply_committed(state, committed, applied, self.limits, decoded)
            except BaseException:
                state.rollback()
                raise
            state.journal = None
            self.storage.save(hard_state, list(entries), snapshot)
            self._state = state
            self._applied = applied
            if install and staged:
                self.staging.installed()
        if on_applied is not None and results:
            on_applied(results)
        return results

    def close(self) -> None:
        """Nothing to release; the data stays readable until dropped."""
