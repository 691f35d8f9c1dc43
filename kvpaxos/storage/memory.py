"""
The in-memory storage providers: L{MemoryStorage}, a real L{IReplicaStorage}
whose "disk" is a Python object, and L{MemoryStore}, the L{INodeStore} built
on it with a dict for the data.  Tests, the simulator and the benchmarks use
them; a simulated crash keeps the provider (what was saved) and drops the
replica (what was not).  Nothing here touches a disk.
"""

from __future__ import annotations

import threading

from zope.interface import implementer

from kvpaxos.kv import machine
from kvpaxos.kv.commands import MAX_KEY_BYTES, InvalidArgument
from kvpaxos.paxos.messages import Batch, Config, Snapshot
from kvpaxos.paxos.state import HardState
from kvpaxos.storage.interfaces import INodeStore, IReplicaStorage
from kvpaxos.storage.providers import StateMachineView


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


class _Staged:
    """
    The C{get}/C{put}/C{delete} transaction of one L{MemoryStore.commit}:
    writes gather here and reach the data only if the whole commit succeeds.
    """

    __slots__ = ("base", "writes")

    def __init__(self, base: dict) -> None:
        self.base = base
        #: key → new value, or C{None} for deleted.
        self.writes: dict = {}

    def get(self, key: bytes):
        writes = self.writes
        if key in writes:
            return writes[key]
        return self.base.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: bytes) -> bool:
        existed = self.get(key) is not None
        self.writes[key] = None
        return existed


@implementer(INodeStore)
class MemoryStore:
    """
    An L{INodeStore} in memory: a L{MemoryStorage} for the acceptor state
    and a dict for the data.  Commits are atomic (a failing one changes
    nothing) but nothing survives the process; for tests and
    C{--storage=memory}.

    Threads: L{commit} on one writer thread; reads on any thread (a lock
    keeps them from seeing half a commit).

    @param config: the member set of the bootstrap snapshot (index 0);
        C{None} means an empty one, for a node that joins a cluster.
    """

    name = "memory"

    def __init__(self, config: Config | None = None) -> None:
        #: The acceptor state, a plain L{MemoryStorage}.
        self.storage = MemoryStorage(config)
        self._data: dict = {}
        self._applied = 0
        self._lock = threading.Lock()
        #: The L{IStateMachine} face of this store; see L{StateMachineView}.
        self.state_machine = StateMachineView(self)

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
        if not isinstance(key, bytes) or not 0 < len(key) <= MAX_KEY_BYTES:
            raise InvalidArgument(f"key must be 1 to {MAX_KEY_BYTES} bytes")
        with self._lock:
            return self._data.get(key)

    def snapshot_data(self) -> bytes:
        """
        Return the data as of the last commit, encoded with
        L{machine.encode_snapshot} (keys in byte order, as LMDB keeps them,
        so equal data gives equal bytes whichever provider holds it).
        """
        with self._lock:
            items = sorted(self._data.items())
        return machine.encode_snapshot(items)

    def save(self, hard_state, entries, snapshot) -> None:
        """L{IReplicaStorage.save}: L{commit} with nothing to install or apply."""
        self.commit(hard_state, entries, snapshot, False, [])

    def commit(self, hard_state, entries, snapshot, install, committed) -> list:
        """
        L{INodeStore.commit}, atomically: the install and the batches are
        worked out first, and the store changes only once all of it worked.

        @return: the C{(Request, Result)} of every command applied, in order.
        @raise ValueError: C{install} without a snapshot, or with one older
            than the saved snapshot (caller misuse); or the snapshot's data
            is truncated.  Nothing is changed.
        @raise AssertionError: C{committed} does not continue the applied
            slots one by one.  Nothing is changed.
        """
        if install:
            if snapshot is None:
                raise ValueError("install needs a snapshot")
            floor = self.storage.snapshot().index
            if snapshot.index < floor:
                raise ValueError(
                    f"cannot install snapshot {snapshot.index} below saved snapshot {floor}"
                )
            base = dict(machine.decode_snapshot(snapshot.data))
            applied = snapshot.index
        else:
            base = self._data
            applied = self._applied
        staged = _Staged(base)
        results: list = []
        for slot, value in committed:
            # Invariant: slots apply one by one, each exactly once.
            assert slot == applied + 1, f"applying slot {slot} after {applied}"
            if type(value) is Batch:
                results.extend(machine.apply_batch(staged, value.commands))
            applied = slot

        with self._lock:
            self.storage.save(hard_state, list(entries), snapshot)
            data = base
            for key, value in staged.writes.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
            self._data = data
            self._applied = applied
        return results

    def close(self) -> None:
        """Nothing to release; the data stays readable until dropped."""
