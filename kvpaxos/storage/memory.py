"""
The in-memory storage provider: a real L{IReplicaStorage} whose "disk" is a
Python object.  Tests, the simulator and the benchmarks use it; a simulated
crash keeps the provider (what was saved) and drops the replica (what was
not).
"""

from __future__ import annotations

from zope.interface import implementer

from kvpaxos.paxos.messages import Config, Snapshot
from kvpaxos.paxos.state import HardState
from kvpaxos.storage.interfaces import IReplicaStorage


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
