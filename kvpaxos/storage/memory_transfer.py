"""
A snapshot transfer in chunks on the in-memory provider (issue 11): the
sender's L{MemorySnapshotStream} and the receiver's L{MemoryStaging}, the
same interface as L{kvpaxos.storage.lmdb_transfer} offers (see there, and
L{kvpaxos.storage.staging} for the halves both share).  Its user is
L{kvpaxos.storage.memory.MemoryStore}; nothing here touches a disk.
"""

from __future__ import annotations

from kvpaxos.storage.staging import (
    TABLE_AUTH,
    TABLE_HISTORY,
    TABLE_LEASE_KEYS,
    TABLE_LEASES,
    TABLE_RECORDS,
    TABLE_SESSIONS,
    ChunkCutter,
    StagedState,
    StagingCheck,
    memory_triples,
)


class MemorySnapshotStream:
    """
    L{INodeStore.open_snapshot_stream} of a L{MemoryStore}: the tables as
    of the last commit (shallow copies taken under its lock; records,
    sessions, auth values and events are immutable), encoded a chunk at a
    time: the records, the sessions, the auth table, the compacted
    revision, the history, the leases, the attached keys.
    """

    def __init__(self, store) -> None:
        with store._lock:
            self.index, copy = store._applied, store._state.snapshot_copy()
        self.revision, self.next_client_id = copy[0], copy[1]
        self._cutter = ChunkCutter(memory_triples(copy))
        self.closed = False

    def next_chunk(self, max_bytes: int):
        """The next chunk's records (at most C{max_bytes}), or None at the end."""
        chunk = None if self.closed else self._cutter.next_chunk(max_bytes)
        if chunk is None:
            self.close()
        return chunk

    def close(self) -> None:
        self._cutter = ChunkCutter(iter(()))
        self.closed = True


class MemoryStaging:
    """The chunks of one incoming transfer, checked and kept decoded (the writer's)."""

    def __init__(self) -> None:
        self.discard()

    def begin(self, transfer: tuple, revision: int, next_client_id: int) -> None:
        """Discard whatever was staged and stage transfer C{transfer}."""
        self.discard()
        self._transfer = transfer
        self._check = StagingCheck(revision, next_client_id)

    def stage(self, transfer: tuple, records: bytes) -> None:
        """Check and stage one chunk's records (raises as L{StagingCheck.take})."""
        self._expect(transfer)
        tables = {TABLE_RECORDS: self._records, TABLE_SESSIONS: self._sessions, TABLE_AUTH: self._auth,
                  TABLE_LEASES: self._leases, TABLE_LEASE_KEYS: self._attached}
        for table, key, value, decoded in self._check.take(records):
            if table == TABLE_HISTORY:
                # As MemoryState keeps it: (history key, event bytes, Event).
                self._history.append((key, value, decoded[2]))
            elif table in tables:
                tables[table].append(decoded)
            # TABLE_COMPACTED: the check keeps it (StagedState.compacted).

    def finish(self, transfer: tuple) -> StagedState:
        """Mark C{transfer} wholly staged; return the handle that installs it."""
        self._expect(transfer)
        self._check.finish()
        self.complete = True
        return self._check.staged(transfer)

    def discard(self) -> None:
        """Drop whatever is staged."""
        self._transfer = self._check = None
        self._records: list = []
        self._sessions: list = []
        self._auth: list = []
        self._history: list = []
        self._leases: list = []
        self._attached: list = []
        self.complete = False

    installed = discard

    def _expect(self, transfer: tuple) -> None:
        if self._transfer != transfer or self._check is None:
            raise ValueError(f"transfer {transfer} is not being staged")

    def state(self, staged: StagedState) -> tuple:
        """
        The staged state of C{staged}, to install: C{(revision,
        next_client_id, records, sessions, auth, compacted, history, leases,
        attached)} for C{MemoryState.of}.

        @raise ValueError: C{staged} is not the transfer wholly staged here.
        """
        if not self.complete or staged.transfer != self._transfer:
            raise ValueError(f"transfer {staged.transfer} is not staged")
        return (staged.revision, staged.next_client_id, self._records, self._sessions, self._auth,
                staged.compacted_revision, self._history, self._leases, self._attached)
