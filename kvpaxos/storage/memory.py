"""
The in-memory storage providers: L{MemoryStorage}, a real L{IReplicaStorage}
whose "disk" is a Python object, and L{MemoryStore}, the L{INodeStore} built
on it with a L{MemoryState} (L{kvpaxos.storage.memory_state}, imported
here for its users) for the replicated state (records, revision,
sessions, the auth table, the history of writes, the leases).  Tests, the simulator and the benchmarks use
them; a simulated crash keeps the provider (what was saved) and drops the
replica (what was not).  Nothing here touches a disk.
"""

from __future__ import annotations

import threading

from zope.interface import implementer

from kvpaxos.kv import machine
from kvpaxos.kv.commands import InvalidArgument, RangeResult, check_range, range_query
from kvpaxos.kv.sessions import DEFAULT_LIMITS, SessionLimits
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import Snapshot
from kvpaxos.paxos.state import HardState
from kvpaxos.storage.apply import apply_committed
from kvpaxos.storage.interfaces import Commit, INodeStore, IReplicaStorage
from kvpaxos.storage.memory_state import MemoryState, encode_snapshot_copy
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

    def history(self, start: int, max_events: int) -> list:
        """
        L{INodeStore.history}: the C{(revision, Event)}s from revision
        C{start} on, whole revisions, as of the last commit (under the lock).

        @raise kvpaxos.kv.history.HistoryCompacted: C{start} is below the
            compacted revision.
        """
        with self._lock:
            return self._state.events(start, max_events)

    def compacted_revision(self) -> int:
        """L{INodeStore.compacted_revision}: as of the last commit."""
        with self._lock:
            return self._state.compacted_revision()

    def lease_ttl(self, lease: int):
        """L{INodeStore.lease_ttl}: lease C{lease}'s TTL as granted, or None, as of the last commit."""
        with self._lock:
            return self._state.lease_ttl(lease)

    def lease_items(self) -> list:
        """L{INodeStore.lease_items}: every C{(id, ttl)} in id order, as of the last commit."""
        with self._lock:
            return list(self._state.lease_items())

    def lease_keys(self, lease: int) -> list:
        """L{INodeStore.lease_keys}: the keys attached to C{lease}, in key order, as of the last commit."""
        with self._lock:
            return list(self._state.lease_keys(lease))

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


__all__ = ["MemoryState", "MemoryStorage", "MemoryStore", "encode_snapshot_copy"]
