"""
A snapshot transfer in chunks on the LMDB provider (issue 11): the
sender's L{LMDBSnapshotStream} (the state read from one read transaction,
a chunk at a time) and the receiver's L{LMDBStaging} (chunks staged in six
sub-databases, C{staged_kv}, C{staged_sessions}, C{staged_auth},
C{staged_history}, C{staged_leases} and C{staged_key_leases}, and
installed in the write transaction of the Ready that installs the
snapshot; the compacted revision rides in the staged state,
L{StagedState.compacted}).

Threads and the read gate (L{kvpaxos.storage.gate.ReadGate}): a stream's
read transaction stays open for the whole transfer, but it is *used* only
while a chunk is read, and each chunk is one long read of the gate (in a
pool thread, bounded by the chunk size).  Between chunks (the stream waits
for the receiver's acks) the transaction is idle: no LMDB call is in flight
on it, so the writer may abort a write transaction or grow the map without
waiting for it.  Growing the map kills the idle transaction (py-lmdb
invalidates every read transaction of the environment on C{set_mapsize}),
so the stream notes the store's map epoch when it opens and, at its next
chunk, gives up (L{StreamInterrupted}): the transfer starts over from a
new transaction.  That is rare (the map doubles each time) and never makes
the writer or the reactor wait for a transfer.

An idle read transaction still pins the pages it sees: while a transfer
runs, pages freed by later commits are not reused, so the file may grow
by what is written meanwhile (LMDB's known cost of long readers).  The
sender's timeout bounds it.

Staging is written by the writer thread (the only LMDB writer), one write
transaction per chunk.  It is not kept across a restart (L{LMDBStaging.clear}
runs when the store opens): a restart drops the link, and a new transfer
starts from a new read transaction anyway.
"""

from __future__ import annotations

from typing import Optional

import lmdb

from kvpaxos.encoding import state, values
from kvpaxos.encoding.state import decode_session
from kvpaxos.encoding.transfer import (
    TABLE_AUTH,
    TABLE_COMPACTED,
    TABLE_HISTORY,
    TABLE_LEASE_KEYS,
    TABLE_LEASES,
    TABLE_RECORDS,
    TABLE_SESSIONS,
)
from kvpaxos.storage import lmdb_auth, lmdb_history, lmdb_leases
from kvpaxos.storage.lmdb_view import LMDBView
from kvpaxos.storage.staging import ChunkCutter, StagedState, StagingCheck, StreamInterrupted, history_triples


def copy_step(items, pairs: list, step_bytes: int) -> bool:
    """
    A step of a whole-state copy (L{kvpaxos.storage.lmdb.LMDBStore.snapshot_now}):
    move C{(key, value)} pairs from the iterator C{items} to C{pairs}
    until they add up to C{step_bytes} (at least one pair); return whether
    C{items} may hold more.
    """
    size = 0
    add = pairs.append
    for pair in items:
        add(pair)
        size += len(pair[0]) + len(pair[1])
        if size >= step_bytes:
            return True
    return False


class LMDBSnapshotStream:
    """
    The state of an L{kvpaxos.storage.lmdb.LMDBStore} as of one read
    transaction, read out in chunks.  C{index} is the applied slot the
    state is at; C{revision} and C{next_client_id} its counters.  For a
    pool thread: L{next_chunk} and L{close} one at a time.
    """

    def __init__(self, store) -> None:
        self._store = store
        self._gate = store._gate
        with self._gate.reading_long():
            self._epoch = store.map_growths
            txn = self._txn = store._env.begin()
            try:
                view = LMDBView(txn, store._tables)
                self.index = values.decode_slot(txn.get(b"applied", db=store._meta))
                self.revision = view.revision()
                self.next_client_id = view.next_client_id()
            except BaseException:
                txn.abort()
                raise
        self._cutter = ChunkCutter(self._triples(txn, store))
        self.closed = False

    @staticmethod
    def _triples(txn, store):
        for table, db in ((TABLE_RECORDS, store._kv), (TABLE_SESSIONS, store._sessions)):
            for key, value in txn.cursor(db=db).iternext():
                yield table, key, value
        for key, value in lmdb_auth.items(txn, store._auth):
            yield TABLE_AUTH, key, value
        yield from history_triples(lmdb_history.compacted(txn, store._meta), txn.cursor(db=store._history).iternext())
        # Stored as they travel: id -> ttl, key -> lease.
        for table, db in ((TABLE_LEASES, store._leases.leases), (TABLE_LEASE_KEYS, store._leases.key_leases)):
            for key, value in txn.cursor(db=db).iternext():
                yield table, key, value

    def next_chunk(self, max_bytes: int) -> Optional[bytes]:
        """
        Return the next chunk's records (at most C{max_bytes}), or None
        at the end (the transaction is then closed).

        @raise StreamInterrupted: the transaction is gone (the map grew, or
            the stream or store was closed): start over.
        """
        if self.closed:
            raise StreamInterrupted("the snapshot stream is closed")
        with self._gate.reading_long():
            if self._store.map_growths != self._epoch:
                self.closed = True
                raise StreamInterrupted("the LMDB map grew under the snapshot stream")
            try:
                chunk = self._cutter.next_chunk(max_bytes)
            except lmdb.Error as e:
                self.closed = True
                raise StreamInterrupted(f"the snapshot's read transaction is gone: {e}") from None
            # A chunk is one step of a long read: the writer waits for it.
            self._gate.asked()
        if chunk is None:
            self.close()
        return chunk

    def close(self) -> None:
        """Close the read transaction (again: nothing); a pool thread's, as every LMDB read."""
        txn, self._txn = self._txn, None
        self.closed = True
        if txn is not None:
            with self._gate.reading_long():
                try:
                    txn.abort()
                except lmdb.Error:
                    pass  # invalidated already (the map grew, the store closed)


class LMDBStaging:
    """
    The chunks of one incoming transfer, staged in an
    L{kvpaxos.storage.lmdb.LMDBStore}'s C{staged_kv}, C{staged_sessions},
    C{staged_auth} (laid out as the store's C{auth},
    L{kvpaxos.storage.lmdb_auth}), C{staged_history}, C{staged_leases} and
    C{staged_key_leases} (laid out as the store's C{leases} and
    C{key_leases}) sub-databases.  Every method runs on the writer thread.
    """

    def __init__(self, store, staged_kv, staged_sessions, staged_auth, staged_history, staged_leases,
                 staged_key_leases) -> None:
        self._store = store
        self._dbs = {TABLE_RECORDS: staged_kv, TABLE_SESSIONS: staged_sessions, TABLE_AUTH: staged_auth,
                     TABLE_HISTORY: staged_history, TABLE_LEASES: staged_leases,
                     TABLE_LEASE_KEYS: staged_key_leases}
        self._transfer: Optional[tuple] = None
        self._check: Optional[StagingCheck] = None
        #: The read transaction of the chunk being checked (its check
        #: looks up attached keys among the records staged before).
        self._checking = None
        self.complete = False

    def clear(self, txn) -> None:
        """Empty the staging in write transaction C{txn}."""
        for db in self._dbs.values():
            txn.drop(db, delete=False)

    def begin(self, transfer: tuple, revision: int, next_client_id: int) -> None:
        """Discard whatever was staged and stage transfer C{transfer}."""
        self._transfer = None
        self._store._transact(self.clear)
        self._transfer = transfer
        self._check = StagingCheck(revision, next_client_id, self._staged_record)
        self.complete = False

    def _staged_record(self, key: bytes) -> bool:
        """Whether the records staged so far (committed by the chunks before) hold C{key}."""
        return self._checking.get(key, db=self._dbs[TABLE_RECORDS]) is not None

    def stage(self, transfer: tuple, records: bytes) -> None:
        """
        Check and stage one chunk's records of C{transfer}.

        @raise MalformedMessage, CorruptState: the records are unsound
            (nothing of them is staged; the caller discards the transfer).
        @raise ValueError: C{transfer} is not the one being staged.
        """
        self._expect(transfer)
        # Checked before the write, in a short read (the writer's own: the
        # gate is never shut while it runs), so a refused chunk aborts no
        # write transaction and a redo after the map grew is not checked twice.
        with self._store._reading() as txn:
            self._checking = txn
            try:
                found = self._check.take(records)
            finally:
                self._checking = None
        dbs = self._dbs

        def write(txn) -> None:
            for table, key, value, _ in found:
                if table == TABLE_AUTH:
                    lmdb_auth.put(txn, dbs[table], key, value)
                elif table != TABLE_COMPACTED:  # the check keeps that (StagedState.compacted)
                    txn.put(key, value, db=dbs[table])

        self._store._transact(write)

    def finish(self, transfer: tuple) -> StagedState:
        """
        Mark C{transfer} wholly staged; return the handle to install it.

        @raise CorruptState: its last value was cut short.
        """
        self._expect(transfer)
        self._check.finish()
        self.complete = True
        return self._check.staged(transfer)

    def discard(self) -> None:
        """Drop whatever is staged."""
        self._transfer = self._check = None
        self.complete = False
        self._store._transact(self.clear)

    def _expect(self, transfer: tuple) -> None:
        if self._transfer != transfer or self._check is None:
            raise ValueError(f"transfer {transfer} is not being staged")

    def install(self, txn, staged: StagedState, tables) -> None:
        """
        Replace the store's state with the staged one, in the Ready's write
        transaction C{txn} (so atomically with the snapshot's metadata and
        applied index).  The staging stays until L{installed}: a commit
        redone after the map grew installs it again.

        @raise ValueError: C{staged} is not the transfer wholly staged here.
        """
        if not self.complete or staged.transfer != self._transfer:
            raise ValueError(f"transfer {staged.transfer} is not staged")
        for db in (tables.kv, tables.sessions, tables.session_use, tables.auth):
            txn.drop(db, delete=False)
        staged_kv = self._dbs[TABLE_RECORDS]
        txn.cursor(db=tables.kv).putmulti(txn.cursor(db=staged_kv).iternext())
        # The staged auth table is laid out as the store's: copied as stored.
        txn.cursor(db=tables.auth).putmulti(txn.cursor(db=self._dbs[TABLE_AUTH]).iternext())
        view = LMDBView(txn, tables)
        for key, value in txn.cursor(db=self._dbs[TABLE_SESSIONS]).iternext():
            view.put_session(values.decode_u64(key), decode_session(value))
        view.set_revision(staged.revision)
        view.set_next_client_id(staged.next_client_id)
        lmdb_history.replace(txn, tables.meta, tables.history, staged.compacted_revision,
                             txn.cursor(db=self._dbs[TABLE_HISTORY]).iternext())
        lmdb_leases.replace(txn, tables.leases, txn.cursor(db=self._dbs[TABLE_LEASES]).iternext(),
                            txn.cursor(db=self._dbs[TABLE_LEASE_KEYS]).iternext())
        self.clear(txn)

    def installed(self) -> None:
        """The install committed: nothing is staged any more."""
        self._transfer = self._check = None
        self.complete = False


def snapshot_now(store, step_bytes: int) -> tuple[int, bytes]:
    """
    Return C{store}'s applied index and its L{snapshot_data} as of the last commit,
    read in one read transaction (the data is the state at that index).

    O(state), so for a pool thread; it never holds up the reactor's
    reads.  The stored bytes are copied in bounded steps, a long read of
    L{ReadGate}, and encoded once the transaction is closed.  A commit
    that must grow the map (or abort) in the meantime makes the copy
    start over after it, which is rare: the map doubles each time.
    """
    while True:
        with store._gate.reading_long():
            with store._env.begin() as txn:
                copied = _copy_state(store, txn, step_bytes)
        if copied is not None:
            break
    applied, revision, next_client_id, compacted, records, sessions, auth, history, leases, attached = copied
    u64 = values.decode_u64
    return applied, state.encode_snapshot(
        revision,
        next_client_id,
        records,
        [(u64(key), value) for key, value in sessions],
        list(lmdb_auth.entries(auth)),
        compacted,
        history,
        [(u64(lease), u64(ttl)) for lease, ttl in leases],
        [(key, u64(lease)) for key, lease in attached],
    )


def _copy_state(store, txn, step_bytes: int) -> Optional[tuple]:
    """
    Return C{(applied, revision, next_client_id, compacted, records,
    sessions, auth, history, leases, attached)} as stored in C{txn}, each table as its stored
    C{(key, bytes)} pairs in key order (the auth table's as L{lmdb_auth}
    keeps them); or
    C{None} if the writer asked for the gate meanwhile (then the caller
    leaves it and starts over).
    """
    view = LMDBView(txn, store._tables)
    head = (
        values.decode_slot(txn.get(b"applied", db=store._meta)),
        view.revision(),
        view.next_client_id(),
        view.compacted_revision(),
    )
    tables = []
    for db in (store._kv, store._sessions, store._auth, store._history, store._leases.leases,
               store._leases.key_leases):
        pairs: list = []
        items = txn.cursor(db=db).iternext()
        while copy_step(items, pairs, step_bytes):
            if store._gate.asked():
                return None
        tables.append(pairs)
    return head + tuple(tables)
