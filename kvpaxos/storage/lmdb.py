"""
The LMDB storage provider: L{LMDBStore}, an L{INodeStore} kept in one LMDB
environment in a directory.  The default provider of a node.

Layout (named sub-databases of the one environment):

  - C{meta}: C{format} (L{STORE_FORMAT}), C{hard_state}, C{snapshot} (the
    latest snapshot's index and member set), C{applied} (8-byte slot), and
    the state machine's C{revision}, C{next_client_id} and C{compacted}
    (the history's compacted revision; 8 bytes each);
  - C{log}: slot (8-byte big-endian, so keys sort as slots do) → entry;
  - C{kv}: client key → its record (version, create and mod revision,
    value), unprefixed (client keys are up to 511 bytes, LMDB's key limit);
  - C{sessions}: client id (8 bytes) → session entry;
  - C{session_use}: (last-used slot, client id) → empty: the eviction
    order, kept in step with C{sessions} by
    L{kvpaxos.storage.lmdb_view.LMDBView}, the state machine's view;
  - C{auth}: the auth table, key → value (L{kvpaxos.storage.lmdb_auth}:
    keys of 511 bytes and more are grouped under their first 511);
  - C{history}: the history of writes, (revision, index) → event
    (L{kvpaxos.storage.lmdb_history});
  - C{leases}, C{key_leases}, C{lease_keys}: the lease table (id → TTL)
    and the attachments both ways (key → lease; lease → its keys, as
    sorted duplicates) (L{kvpaxos.storage.lmdb_leases});
  - C{snapshot}: C{data} → the latest snapshot's data;
  - C{staged_kv}, C{staged_sessions}, C{staged_auth}, C{staged_history},
    C{staged_leases}, C{staged_key_leases}: the records, sessions, auth
    table, history, lease table and attachments of a snapshot transfer
    being received (L{kvpaxos.storage.lmdb_transfer}); emptied when the
    store opens.  (Added without a format change, as C{auth} was: a store
    without them gets them empty, and nothing else reads them.)

Every record is laid out by L{kvpaxos.encoding} (acceptor records by
L{kvpaxos.encoding.values}, the state by L{kvpaxos.encoding.state}), as it
is on the wire.  A directory of another L{STORE_FORMAT} is refused when
the store opens (L{StoreFormatError}), never read, but for the one before
it, converted (L{kvpaxos.storage.lmdb_format}).

Durability: the environment is opened with C{sync=True} and
C{metasync=True}, C{writemap} and C{map_async} off, so a committed write
transaction has been fsynced.  Everything one L{LMDBStore.commit} does is one
write transaction: the acceptor state, the data it applies and the applied
index move together or not at all.

Threads: L{LMDBStore.commit} runs on one writer thread (an LMDB write
transaction begins and ends on one thread; only one is open at a time).
Reads use read transactions and may run on any thread.  Growing the map
invalidates open transactions, so reads and growth are kept apart by
L{kvpaxos.storage.gate.ReadGate}, which never makes a short read (the
reactor's) wait behind the long one (a snapshot for a peer, O(state), in a
pool thread).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Optional

import lmdb
from twisted.logger import Logger
from zope.interface import implementer

from kvpaxos.encoding import state, values
from kvpaxos.encoding.history import encode_event, encode_history_key
from kvpaxos.kv import machine
from kvpaxos.kv.commands import InvalidArgument, RangeResult, check_range, range_query
from kvpaxos.kv.sessions import DEFAULT_LIMITS, SessionLimits
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import Snapshot
from kvpaxos.paxos.state import HardState
from kvpaxos.storage import lmdb_history, lmdb_leases
from kvpaxos.storage.apply import apply_committed
from kvpaxos.storage.gate import ReadGate
from kvpaxos.storage.interfaces import Commit, INodeStore
from kvpaxos.storage.lmdb_format import (  # STORE_FORMAT: re-exported (__all__)
    APPLIED as _APPLIED,
    HARD_STATE as _HARD_STATE,
    SNAPSHOT as _SNAPSHOT,
    SNAPSHOT_DATA as _SNAPSHOT_DATA,
    STORE_FORMAT,
    bootstrap,
)
from kvpaxos.storage.lmdb_transfer import LMDBSnapshotStream, LMDBStaging, snapshot_now
from kvpaxos.storage.lmdb_view import LMDBView, Tables
from kvpaxos.storage.staging import StagedState
from kvpaxos.storage.state_machine import StateMachineView

#: The map a new environment starts with; it doubles whenever it is full.
INITIAL_MAP_BYTES = 64 << 20

#: About how many bytes of stored records one step of a snapshot copy
#: reads before it looks whether the writer waits for it (L{ReadGate}):
#: the bound on that wait.  (A step holds at least one record.)
SNAPSHOT_STEP_BYTES = 1 << 20

#: The staging's sub-databases: records, sessions, the auth table, the
#: history, the lease table and the attachments.
_STAGED = (b"staged_kv", b"staged_sessions", b"staged_auth", b"staged_history", b"staged_leases",
           b"staged_key_leases")

#: Room for the sub-databases above (seventeen) and a few to come.
_MAX_DBS = 24

_log = Logger()


def _read_or_error(view, query, revision: int):
    """The query's L{RangeResult} over C{view}, or the L{InvalidArgument} it raises."""
    try:
        checked = range_query(query.key, query.end, query.limit, query.keys_only, query.count_only)
        return machine.read_range(view, checked, revision)
    except InvalidArgument as error:
        return error


@implementer(INodeStore)
class LMDBStore:
    """
    A node's acceptor state and key-value data in one LMDB environment.

    @param directory: where the environment lives (created if missing).
    @param config: the member set a new store is bootstrapped with (the
        snapshot at index 0; C{None} means an empty one, for a node that
        joins an existing cluster).  Ignored when C{directory} already holds
        a store: everything is read back from it.
    @param map_bytes: the map size to start with; the map grows (doubling)
        whenever a commit needs more, so this only tunes how soon.
    @param limits: the session table's bounds; the same on every node.

    @raise StoreFormatError: C{directory} holds a store of another format
        version (but the one L{kvpaxos.storage.lmdb_format} converts), or
        an LMDB environment that is not a kvpaxos store (the message names
        the directory and what to do).
    """

    name = "lmdb"

    def __init__(
        self,
        directory: str,
        config: Optional[Config] = None,
        map_bytes: int = INITIAL_MAP_BYTES,
        limits: SessionLimits = DEFAULT_LIMITS,
    ) -> None:
        self.directory = directory
        self.limits = limits
        os.makedirs(directory, exist_ok=True)
        self._env = lmdb.open(
            directory,
            map_size=map_bytes,
            subdir=True,
            max_dbs=_MAX_DBS,
            sync=True,
            metasync=True,
            writemap=False,
            map_async=False,
        )
        self._gate = ReadGate()
        #: How many times the map grew (for tests and benchmarks).
        self.map_growths = 0
        #: How long the last commit's page writes and fsyncs took (the
        #: kvpaxos_fsync_seconds metric), or None (none yet, or it failed).
        self.last_sync_s: Optional[float] = None
        #: The L{IStateMachine} face of this store; see L{StateMachineView}.
        self.state_machine = StateMachineView(self)
        try:
            self._meta = self._env.open_db(b"meta")
            self._log = self._env.open_db(b"log")
            self._kv = self._env.open_db(b"kv")
            self._snapshot = self._env.open_db(b"snapshot")
            self._sessions = self._env.open_db(b"sessions")
            self._session_use = self._env.open_db(b"session_use")
            self._auth = self._env.open_db(b"auth")
            self._history = self._env.open_db(b"history")
            self._leases = lmdb_leases.open_tables(self._env)
            self._tables = Tables(
                self._meta, self._kv, self._sessions, self._session_use, self._auth, self._history,
                self._leases,
            )
            #: The incoming snapshot transfer's chunks (L{LMDBStaging}).
            self._staged = tuple(self._env.open_db(name) for name in _STAGED)
            self.staging = self._staging = LMDBStaging(self, *self._staged)
            with self._env.begin(write=True) as txn:
                bootstrap(txn, directory, self._meta, self._snapshot, config or Config(frozenset()))
            self._transact(self._staging.clear)
            #: Bytes of the pages in use (every database's, not the free
            #: ones LMDB reuses), as of the last commit: what the space
            #: quota counts.  Written by the writer thread, read anywhere.
            self.used_bytes = 0
            with self._env.begin() as txn:
                self.used_bytes = self._pages_in_use(txn)
        except BaseException:
            self._env.close()
            raise

    # --- reads (any thread) ---------------------------------------------------

    @contextmanager
    def _reading(self):
        with self._gate.reading():
            with self._env.begin() as txn:
                yield txn

    def hard_state(self) -> HardState:
        """Return the last committed L{HardState}."""
        with self._reading() as txn:
            return values.decode_hard_state(txn.get(_HARD_STATE, db=self._meta))

    def snapshot(self) -> Snapshot:
        """
        Return the latest saved L{Snapshot} (L{IReplicaStorage}); for the
        current data as snapshot bytes see L{snapshot_data}.
        """
        with self._reading() as txn:
            return values.decode_snapshot_meta(
                txn.get(_SNAPSHOT, db=self._meta),
                txn.get(_SNAPSHOT_DATA, db=self._snapshot),
            )

    def entries(self, first_slot: int) -> list:
        """Return the saved C{(slot, Entry)} at slots >= C{first_slot}, in order."""
        with self._reading() as txn:
            floor = values.decode_snapshot_meta(txn.get(_SNAPSHOT, db=self._meta)).index
            first = max(first_slot, floor + 1)
            cursor = txn.cursor(db=self._log)
            if not cursor.set_range(values.encode_slot(first)):
                return []
            return [
                (values.decode_slot(key), values.decode_entry(value))
                for key, value in cursor.iternext()
            ]

    def applied_index(self) -> int:
        """Return the slot through which the data has applied."""
        with self._reading() as txn:
            return values.decode_slot(txn.get(_APPLIED, db=self._meta))

    def get(self, key: bytes) -> Optional[bytes]:
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
        with self._reading() as txn:
            return LMDBView(txn, self._tables).get(key)

    def range(self, start: bytes, end=None, limit: int = 0, keys_only: bool = False,
              count_only: bool = False) -> RangeResult:
        """
        L{INodeStore.range}: the records of C{start}..C{end} as of the last
        commit, read in one read transaction (records and revision agree).

        @raise InvalidArgument: a bad key, end or limit.
        """
        query = range_query(start, end, limit, keys_only, count_only)
        with self._reading() as txn:
            return machine.read_range(LMDBView(txn, self._tables), query)

    def read_ranges(self, queries) -> list:
        """
        L{INodeStore.read_ranges}: every query's L{RangeResult} (or the
        L{InvalidArgument} it raised), all read in one read transaction.
        """
        with self._reading() as txn:
            view = LMDBView(txn, self._tables)
            revision = view.revision()
            return [_read_or_error(view, query, revision) for query in queries]

    def revision(self) -> int:
        """Return the store's revision as of the last commit."""
        with self._reading() as txn:
            return LMDBView(txn, self._tables).revision()

    def auth_items(self) -> list:
        """L{INodeStore.auth_items}: the auth table as of the last commit, in key order (one read)."""
        with self._reading() as txn:
            return list(LMDBView(txn, self._tables).auth_items())

    def history(self, start: int, max_events: int) -> list:
        """
        L{INodeStore.history}: the C{(revision, Event)}s from revision
        C{start} on, whole revisions, as of the last commit: one short read
        transaction, in which the compacted revision is checked too.

        @raise kvpaxos.kv.history.HistoryCompacted: C{start} is below the
            compacted revision.
        """
        with self._reading() as txn:
            return lmdb_history.events(txn, self._meta, self._history, start, max_events)

    def compacted_revision(self) -> int:
        """L{INodeStore.compacted_revision}: as of the last commit."""
        with self._reading() as txn:
            return lmdb_history.compacted(txn, self._meta)

    def lease_ttl(self, lease: int) -> Optional[int]:
        """L{INodeStore.lease_ttl}: lease C{lease}'s TTL as granted, or None, as of the last commit."""
        with self._reading() as txn:
            return lmdb_leases.ttl(txn, self._leases, lease)

    def lease_items(self) -> list:
        """L{INodeStore.lease_items}: every C{(id, ttl)} in id order, as of the last commit (one read)."""
        with self._reading() as txn:
            return list(lmdb_leases.items(txn, self._leases))

    def lease_keys(self, lease: int) -> list:
        """L{INodeStore.lease_keys}: the keys attached to C{lease}, in key order, as of the last commit (one read)."""
        with self._reading() as txn:
            return list(lmdb_leases.keys(txn, self._leases, lease))

    def snapshot_data(self) -> bytes:
        """
        Return the state as of the last commit, encoded with
        L{state.encode_snapshot} (records in byte order of their keys).
        This is the L{IStateMachine} C{snapshot()}; see L{StateMachineView}.
        O(state): for a pool thread, as L{snapshot_now}.
        """
        return self.snapshot_now()[1]

    def snapshot_now(self) -> tuple[int, bytes]:
        """
        Return the applied index and L{snapshot_data} as of the last commit,
        read in one read transaction (O(state): for a pool thread; see
        L{kvpaxos.storage.lmdb_transfer.snapshot_now}).
        """
        return snapshot_now(self, SNAPSHOT_STEP_BYTES)

    def open_snapshot_stream(self) -> LMDBSnapshotStream:
        """
        L{INodeStore.open_snapshot_stream}: the state as of the last
        commit, from one read transaction, in chunks (a pool thread's).
        """
        return LMDBSnapshotStream(self)

    # --- writes (the one writer thread) -------------------------------------

    def save(self, hard_state, entries, snapshot) -> None:
        """L{IReplicaStorage.save}: L{commit} with nothing to install or apply."""
        self.commit(Commit(hard_state, entries, snapshot))

    def commit(self, work: Commit, on_applied=None) -> list:
        """
        Store C{hard_state}, C{entries} and C{snapshot}, install C{snapshot}'s
        data if C{install}, and apply C{committed}, in one fsynced write
        transaction (see L{INodeStore.commit}).  If the map fills up, the
        transaction is aborted, the map doubled and the whole commit redone.

        @return: the C{(Request, Result)} of every command applied, in order.
        @raise ValueError: C{install} without a snapshot, or with one older
            than the saved snapshot (caller misuse); or the snapshot's data
            is truncated.  Nothing is changed.
        @raise AssertionError: C{committed} does not continue the applied
            slots one by one.  Nothing is changed.
        """
        hard_state, entries, snapshot = work.hard_state, work.entries, work.snapshot
        install, committed, decoded = work.install, work.committed, work.decoded
        if install and (snapshot is None or snapshot.data is None):
            raise ValueError("install needs a snapshot with its data")
        # Encode once, outside the transaction (and its retries).
        encoded = [(values.encode_slot(s), s, values.encode_entry(e)) for s, e in entries]

        used = []

        def write(txn) -> list:
            results = self._write(txn, hard_state, encoded, snapshot, install, committed, decoded)
            if on_applied is not None and results:
                on_applied(results)
            used[:] = [self._pages_in_use(txn)]
            return results

        results = self._transact(write)
        self.used_bytes = used[0]
        if install and isinstance(snapshot.data, StagedState):
            self._staging.installed()
        return results

    def _pages_in_use(self, txn) -> int:
        """Bytes of the pages every database holds in C{txn} (free pages not counted), and the two meta pages."""
        pages = 2
        size = 0
        for db in (None, self._meta, self._log, self._kv, self._snapshot, self._sessions, self._session_use,
                   self._auth, self._history, *self._leases, *self._staged):
            stat = txn.stat(db) if db is not None else txn.stat()
            size = stat["psize"]
            pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return pages * size

    def _transact(self, work):
        """
        Return C{work(txn)} run in one write transaction, committed (the
        writer thread's).  If the map fills up, the transaction is aborted,
        the map doubled and C{work} redone.
        """
        while True:
            self.last_sync_s = None
            txn = self._env.begin(write=True)
            try:
                result = work(txn)
                started = time.monotonic()
                txn.commit()
                self.last_sync_s = time.monotonic() - started
                return result
            except lmdb.MapFullError:
                # The map is full: abort, grow and redo it all.  The gate
                # waits here (the writer thread) for a step of any snapshot
                # copy; the reactor's reads wait only for the abort and the
                # remap (see ReadGate).
                with self._gate.exclusive():
                    txn.abort()
                    self._grow()
            except BaseException:
                with self._gate.exclusive():
                    txn.abort()
                raise

    def _write(self, txn, hard_state, encoded, snapshot, install, committed, decoded) -> list:
        meta = self._meta
        if hard_state is not None:
            txn.put(_HARD_STATE, values.encode_hard_state(hard_state), db=meta)

        floor = values.decode_snapshot_meta(txn.get(_SNAPSHOT, db=meta)).index
        if snapshot is not None:
            if install and snapshot.index < floor:
                raise ValueError(
                    f"cannot install snapshot {snapshot.index} below saved snapshot {floor}"
                )
            # A snapshot replaces one at the same or a lower index, never a
            # higher one, and the log through it is dropped.
            if snapshot.index >= floor:
                txn.put(_SNAPSHOT, values.encode_snapshot_meta(snapshot), db=meta)
                if snapshot.data is None or isinstance(snapshot.data, StagedState):
                    # A compaction point, or a transfer installed: the
                    # data is this store's own.
                    txn.delete(_SNAPSHOT_DATA, db=self._snapshot)
                else:
                    txn.put(_SNAPSHOT_DATA, snapshot.data, db=self._snapshot)
                self._drop_log_through(txn, snapshot.index)
                floor = snapshot.index

        log = self._log
        for key, slot, record in encoded:
            if slot > floor:
                txn.put(key, record, db=log)

        applied = before = values.decode_slot(txn.get(_APPLIED, db=meta))
        if install:
            if isinstance(snapshot.data, StagedState):
                self._staging.install(txn, snapshot.data, self._tables)
            else:
                self._install(txn, state.decode_snapshot(snapshot.data))
            applied = snapshot.index

        # The applied index is written below, in this same transaction.
        applied, results = apply_committed(
            LMDBView(txn, self._tables), committed, applied, self.limits, decoded
        )
        if applied != before or install:
            txn.put(_APPLIED, values.encode_slot(applied), db=meta)
        return results

    def _install(self, txn, found: state.SnapshotState) -> None:
        """Replace the whole replicated state with C{found} (decoded, so checked), its history and leases too."""
        for db in (self._kv, self._sessions, self._session_use, self._auth):
            txn.drop(db, delete=False)
        txn.cursor(db=self._kv).putmulti(
            (kv.key, state.encode_record(kv)) for kv in found.records
        )
        view = LMDBView(txn, self._tables)
        for client_id, session in found.sessions:
            view.put_session(client_id, session)
        for key, value in found.auth:
            view.auth_put(key, value)
        view.set_revision(found.revision)
        view.set_next_client_id(found.next_client_id)
        lmdb_history.replace(txn, self._meta, self._history, found.compacted, (
            (encode_history_key(revision, index), encode_event(event)) for revision, index, event in found.events
        ))
        u64 = values.encode_u64
        lmdb_leases.replace(txn, self._leases, ((u64(lease), u64(ttl)) for lease, ttl in found.leases),
                            ((key, u64(lease)) for key, lease in found.attached))

    def _drop_log_through(self, txn, index: int) -> None:
        limit = values.encode_slot(index)
        cursor = txn.cursor(db=self._log)
        doomed = []
        for key in cursor.iternext(values=False):
            if key > limit:
                break
            doomed.append(key)
        for key in doomed:
            txn.delete(key, db=self._log)

    def _grow(self) -> None:
        """Double the map; the caller holds the gate shut."""
        size = self._env.info()["map_size"] * 2
        self._env.set_mapsize(size)
        self.map_growths += 1
        _log.info(
            "LMDB map in {directory} grown to {size} bytes",
            directory=self.directory,
            size=size,
        )

    def close(self) -> None:
        """Close the environment.  A second close does nothing."""
        self._env.close()


__all__ = ["INITIAL_MAP_BYTES", "LMDBStore", "SNAPSHOT_STEP_BYTES", "STORE_FORMAT"]
