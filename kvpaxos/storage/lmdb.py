"""
The LMDB storage provider: L{LMDBStore}, an L{INodeStore} kept in one LMDB
environment in a directory.  The default provider of a node.

Layout (named sub-databases of the one environment):

  - C{meta}: C{hard_state}, C{snapshot} (the latest snapshot's index and
    member set), C{applied} (8-byte big-endian slot), C{format};
  - C{log}: slot (8-byte big-endian, so keys sort as slots do) → entry;
  - C{meta} also holds the state machine's C{revision} and
    C{next_client_id} (8-byte big-endian);
  - C{log}: slot (8-byte big-endian, so keys sort as slots do) → entry;
  - C{kv}: client key → its record (version, create and mod revision,
    value: L{machine.encode_record}), unprefixed (client keys are up to 511
    bytes, LMDB's key limit);
  - C{sessions}: client id (8 bytes) → session entry
    (L{kvpaxos.kv.sessions.encode_session});
  - C{session_use}: (last-used slot, client id) → empty: the eviction
    order, kept in step with C{sessions} by L{_LMDBView};
  - C{snapshot}: C{data} → the latest snapshot's data.

Acceptor records are encoded by L{kvpaxos.storage.encoding}.

Durability: the environment is opened with C{sync=True} and
C{metasync=True}, C{writemap} and C{map_async} off, so a committed write
transaction has been fsynced.  Everything one L{LMDBStore.commit} does is one
write transaction: the acceptor state, the data it applies and the applied
index move together or not at all.

Threads: L{LMDBStore.commit} runs on one writer thread (an LMDB write
transaction begins and ends on one thread; only one is open at a time).
Reads use read transactions and may run on any thread.  Growing the map
invalidates open transactions, so reads and growth are kept apart by
L{_ReadGate}, which never makes a short read (the reactor's) wait behind
the long one (a snapshot for a peer, O(state), in a pool thread).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Optional

import lmdb
from twisted.logger import Logger
from zope.interface import implementer

from kvpaxos.kv import machine
from kvpaxos.kv.commands import InvalidArgument, RangeResult, check_range, range_query
from kvpaxos.kv.sessions import (
    DEFAULT_LIMITS,
    FIRST_CLIENT_ID,
    SessionLimits,
    decode_session,
    encode_session,
)
from kvpaxos.paxos.messages import Config, Snapshot
from kvpaxos.paxos.state import HardState
from kvpaxos.storage import encoding
from kvpaxos.storage.apply import apply_committed
from kvpaxos.storage.interfaces import Commit, INodeStore
from kvpaxos.storage.providers import StateMachineView

#: The map a new environment starts with; it doubles whenever it is full.
INITIAL_MAP_BYTES = 64 << 20

#: About how many bytes of stored records one step of a snapshot copy
#: reads before it looks whether the writer waits for it (L{_ReadGate}):
#: the bound on that wait.  (A step holds at least one record.)
SNAPSHOT_STEP_BYTES = 1 << 20

#: The layout version of the environment (the records carry their own).
STORE_FORMAT = b"kvpaxos-lmdb-2"

_HARD_STATE = b"hard_state"
_SNAPSHOT = b"snapshot"
_APPLIED = b"applied"
_FORMAT = b"format"
_SNAPSHOT_DATA = b"data"
_REVISION = b"revision"
_NEXT_CLIENT_ID = b"next_client_id"

_log = Logger()


class _ReadGate:
    """
    Keeps read transactions apart from map growth and from aborting a write
    transaction, without making a short read wait behind a long one.

    Why a gate: C{set_mapsize} replaces the map, and py-lmdb 3.0 then kills
    every read transaction open in this process (its next use raises
    C{lmdb.Error}); and a write transaction's abort waits until no LMDB
    call is in flight on any thread, which readers that never pause were
    seen to starve forever.  So the writer does both with the gate shut:
    no read transaction open.

    Two kinds of read hold the gate:

      - a short read (L{reading}): a few keys or ranges in one read
        transaction, as the reactor thread reads;
      - a long read (L{reading_long}): the whole state copied for a
        snapshot, O(state), in a pool thread.  It works in bounded steps
        (L{SNAPSHOT_STEP_BYTES}) and, between two steps, leaves as soon as
        L{asked} says the writer waits: it closes its transaction, and
        starts over once the writer is done.

    The writer (L{exclusive}) first I{asks}: no long read starts, the open
    ones leave at their next step, and short reads still come and go.  Only
    once no long read is open does it I{shut} the gate to short reads, wait
    for those in flight and do its abort or growth; then it opens the gate.

    Invariant (the reactor thread never waits behind a long operation): a
    short read waits only while the gate is shut, and the gate is shut only
    while no long read is open, for one write transaction's abort and one
    remap of the map.  The writer waits for at most one step of each long
    read and one short read of each reader; a long read waits for the
    writer.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._short = 0
        self._long = 0
        #: The writer waits for the long reads to leave; none may start.
        self._asked = False
        #: The writer waits for (or holds) the gate; no read may start.
        self._shut = False

    @contextmanager
    def reading(self):
        """Hold the gate for one short read (waiting only while it is shut)."""
        with self._condition:
            while self._shut:
                self._condition.wait()
            self._short += 1
        try:
            yield
        finally:
            with self._condition:
                self._short -= 1
                if not self._short and self._shut:
                    self._condition.notify_all()

    @contextmanager
    def reading_long(self):
        """
        Hold the gate for one long read, which calls L{asked} between its
        bounded steps and, when that says C{True}, closes its transaction
        and leaves.  Waits while the writer asks (for one step of the other
        long reads, and the writer's own work).
        """
        with self._condition:
            while self._asked:
                self._condition.wait()
            self._long += 1
        try:
            yield
        finally:
            with self._condition:
                self._long -= 1
                if not self._long and self._asked:
                    self._condition.notify_all()

    def asked(self) -> bool:
        """Whether the writer waits for the long reads to leave."""
        return self._asked

    @contextmanager
    def exclusive(self):
        """
        Hold the gate shut (no read open) for an abort or a map resize; the
        writer's, one caller at a time.  The exclusive side goes first once
        it asks.
        """
        try:
            with self._condition:
                assert not self._asked, "the gate has one writer"
                self._asked = True
                # Wakes anyone watching the gate (a test) as well.
                self._condition.notify_all()
                while self._long:
                    self._condition.wait()
                self._shut = True
                while self._short:
                    self._condition.wait()
            yield
        finally:
            with self._condition:
                self._asked = self._shut = False
                self._condition.notify_all()


class _LMDBView:
    """
    The transaction view that L{machine.apply_batch} expects (see
    L{kvpaxos.kv.machine} and L{kvpaxos.kv.sessions}), over one LMDB
    transaction; read-only use over a read transaction is fine.
    """

    __slots__ = ("_txn", "_meta", "_kv", "_sessions", "_use")

    def __init__(self, txn, store: "LMDBStore") -> None:
        self._txn = txn
        self._meta = store._meta
        self._kv = store._kv
        self._sessions = store._sessions
        self._use = store._session_use

    def get(self, key: bytes):
        data = self._txn.get(key, db=self._kv)
        return None if data is None else machine.decode_record(key, data)

    def put(self, kv) -> None:
        self._txn.put(kv.key, machine.encode_record(kv), db=self._kv)

    def write(self, key: bytes, value: bytes, revision: int, want_prev: bool) -> tuple:
        """L{machine.write_record}, on the stored bytes (no record built unless asked for)."""
        txn, db = self._txn, self._kv
        old = txn.get(key, db=db)
        if old is None:
            txn.put(key, machine.encode_record_of(value, 1, revision, revision), db=db)
            return False, None
        version, created, _ = machine.record_header(old)
        txn.put(key, machine.encode_record_of(value, version + 1, created, revision), db=db)
        return True, (machine.decode_record(key, old) if want_prev else None)

    def delete(self, key: bytes) -> None:
        self._txn.delete(key, db=self._kv)

    def scan(self, start: bytes, stop):
        cursor = self._txn.cursor(db=self._kv)
        if not cursor.set_range(start):
            return
        for key, data in cursor.iternext():
            if stop is not None and key >= stop:
                return
            yield machine.decode_record(key, data)

    def revision(self) -> int:
        return encoding.decode_u64(self._txn.get(_REVISION, db=self._meta))

    def set_revision(self, revision: int) -> None:
        self._txn.put(_REVISION, encoding.encode_u64(revision), db=self._meta)

    def session(self, client_id: int):
        data = self._txn.get(encoding.encode_u64(client_id), db=self._sessions)
        return None if data is None else decode_session(data)

    def put_session(self, client_id: int, session) -> None:
        self.delete_session(client_id)
        txn = self._txn
        txn.put(encoding.encode_u64(client_id), encode_session(session), db=self._sessions)
        txn.put(encoding.encode_use_key(session.last_used, client_id), b"", db=self._use)

    def delete_session(self, client_id: int) -> None:
        key = encoding.encode_u64(client_id)
        old = self._txn.get(key, db=self._sessions)
        if old is not None:
            last_used = decode_session(old).last_used
            self._txn.delete(key, db=self._sessions)
            self._txn.delete(encoding.encode_use_key(last_used, client_id), db=self._use)

    def session_count(self) -> int:
        return self._txn.stat(self._sessions)["entries"]

    def sessions_by_use(self):
        for key in self._txn.cursor(db=self._use).iternext(values=False):
            yield encoding.decode_use_key(key)

    def next_client_id(self) -> int:
        return encoding.decode_u64(self._txn.get(_NEXT_CLIENT_ID, db=self._meta))

    def set_next_client_id(self, client_id: int) -> None:
        self._txn.put(_NEXT_CLIENT_ID, encoding.encode_u64(client_id), db=self._meta)


def _step(items, pairs: list, step_bytes: int) -> bool:
    """
    Move C{(key, value)} pairs from the iterator C{items} to C{pairs}
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

    @raise encoding.CorruptRecord: C{directory} holds something that is not
        a store of this format.
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
            max_dbs=6,
            sync=True,
            metasync=True,
            writemap=False,
            map_async=False,
        )
        self._gate = _ReadGate()
        #: How many times the map grew (for tests and benchmarks).
        self.map_growths = 0
        #: The L{IStateMachine} face of this store; see L{StateMachineView}.
        self.state_machine = StateMachineView(self)
        try:
            self._meta = self._env.open_db(b"meta")
            self._log = self._env.open_db(b"log")
            self._kv = self._env.open_db(b"kv")
            self._snapshot = self._env.open_db(b"snapshot")
            self._sessions = self._env.open_db(b"sessions")
            self._session_use = self._env.open_db(b"session_use")
            self._bootstrap(config or Config(frozenset()))
        except BaseException:
            self._env.close()
            raise

    def _bootstrap(self, config: Config) -> None:
        """Write the bootstrap state unless the environment already has a store."""
        with self._env.begin(write=True) as txn:
            found = txn.get(_FORMAT, db=self._meta)
            if found is not None:
                if found != STORE_FORMAT:
                    raise encoding.CorruptRecord(
                        f"{self.directory} holds store format {found!r}, "
                        f"not {STORE_FORMAT!r}"
                    )
                return
            meta = self._meta
            txn.put(_FORMAT, STORE_FORMAT, db=meta)
            txn.put(_HARD_STATE, encoding.encode_hard_state(HardState()), db=meta)
            txn.put(_SNAPSHOT, encoding.encode_snapshot_meta(Snapshot(0, config)), db=meta)
            txn.put(_SNAPSHOT_DATA, b"", db=self._snapshot)
            txn.put(_APPLIED, encoding.encode_slot(0), db=meta)
            txn.put(_REVISION, encoding.encode_u64(0), db=meta)
            txn.put(_NEXT_CLIENT_ID, encoding.encode_u64(FIRST_CLIENT_ID), db=meta)

    # --- reads (any thread) ---------------------------------------------------

    @contextmanager
    def _reading(self):
        with self._gate.reading():
            with self._env.begin() as txn:
                yield txn

    def hard_state(self) -> HardState:
        """Return the last committed L{HardState}."""
        with self._reading() as txn:
            return encoding.decode_hard_state(txn.get(_HARD_STATE, db=self._meta))

    def snapshot(self) -> Snapshot:
        """
        Return the latest saved L{Snapshot} (L{IReplicaStorage}); for the
        current data as snapshot bytes see L{snapshot_data}.
        """
        with self._reading() as txn:
            return encoding.decode_snapshot_meta(
                txn.get(_SNAPSHOT, db=self._meta),
                txn.get(_SNAPSHOT_DATA, db=self._snapshot),
            )

    def entries(self, first_slot: int) -> list:
        """Return the saved C{(slot, Entry)} at slots >= C{first_slot}, in order."""
        with self._reading() as txn:
            floor = encoding.decode_snapshot_meta(txn.get(_SNAPSHOT, db=self._meta)).index
            first = max(first_slot, floor + 1)
            cursor = txn.cursor(db=self._log)
            if not cursor.set_range(encoding.encode_slot(first)):
                return []
            return [
                (encoding.decode_slot(key), encoding.decode_entry(value))
                for key, value in cursor.iternext()
            ]

    def applied_index(self) -> int:
        """Return the slot through which the data has applied."""
        with self._reading() as txn:
            return encoding.decode_slot(txn.get(_APPLIED, db=self._meta))

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
            return _LMDBView(txn, self).get(key)

    def range(self, start: bytes, end=None, limit: int = 0, keys_only: bool = False,
              count_only: bool = False) -> RangeResult:
        """
        L{INodeStore.range}: the records of C{start}..C{end} as of the last
        commit, read in one read transaction (records and revision agree).

        @raise InvalidArgument: a bad key, end or limit.
        """
        query = range_query(start, end, limit, keys_only, count_only)
        with self._reading() as txn:
            return machine.read_range(_LMDBView(txn, self), query)

    def read_ranges(self, queries) -> list:
        """
        L{INodeStore.read_ranges}: every query's L{RangeResult} (or the
        L{InvalidArgument} it raised), all read in one read transaction.
        """
        with self._reading() as txn:
            view = _LMDBView(txn, self)
            revision = view.revision()
            return [_read_or_error(view, query, revision) for query in queries]

    def revision(self) -> int:
        """Return the store's revision as of the last commit."""
        with self._reading() as txn:
            return _LMDBView(txn, self).revision()

    def snapshot_data(self) -> bytes:
        """
        Return the state as of the last commit, encoded with
        L{machine.encode_snapshot} (records in byte order of their keys).
        This is the L{IStateMachine} C{snapshot()}; see L{StateMachineView}.
        O(state): for a pool thread, as L{snapshot_now}.
        """
        return self.snapshot_now()[1]

    def snapshot_now(self) -> tuple[int, bytes]:
        """
        Return the applied index and L{snapshot_data} as of the last commit,
        read in one read transaction (the data is the state at that index).

        O(state), so for a pool thread; it never holds up the reactor's
        reads.  The stored bytes are copied in bounded steps, a long read of
        L{_ReadGate}, and encoded once the transaction is closed.  A commit
        that must grow the map (or abort) in the meantime makes the copy
        start over after it, which is rare: the map doubles each time.
        """
        while True:
            with self._gate.reading_long():
                with self._env.begin() as txn:
                    copied = self._copy_state(txn)
            if copied is not None:
                break
        applied, revision, next_client_id, records, sessions = copied
        return applied, machine.encode_snapshot(
            revision,
            next_client_id,
            records,
            [(encoding.decode_u64(key), value) for key, value in sessions],
        )

    def _copy_state(self, txn) -> Optional[tuple]:
        """
        Return C{(applied, revision, next_client_id, records, sessions)} as
        stored in C{txn}, records and sessions as their stored C{(key,
        bytes)} pairs in key order; or C{None} if the writer asked for the
        gate meanwhile (then the caller leaves it and starts over).
        """
        view = _LMDBView(txn, self)
        head = (
            encoding.decode_slot(txn.get(_APPLIED, db=self._meta)),
            view.revision(),
            view.next_client_id(),
        )
        tables = []
        for db in (self._kv, self._sessions):
            pairs: list = []
            items = txn.cursor(db=db).iternext()
            while _step(items, pairs, SNAPSHOT_STEP_BYTES):
                if self._gate.asked():
                    return None
            tables.append(pairs)
        return head + tuple(tables)

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
        encoded = [(encoding.encode_slot(s), s, encoding.encode_entry(e)) for s, e in entries]
        while True:
            txn = self._env.begin(write=True)
            try:
                results = self._write(txn, hard_state, encoded, snapshot, install, committed, decoded)
                if on_applied is not None and results:
                    on_applied(results)
                txn.commit()
                return results
            except lmdb.MapFullError:
                # The map is full: abort, grow and redo it all.  The gate
                # waits here (the writer thread) for a step of any snapshot
                # copy; the reactor's reads wait only for the abort and the
                # remap (see _ReadGate).
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
            txn.put(_HARD_STATE, encoding.encode_hard_state(hard_state), db=meta)

        floor = encoding.decode_snapshot_meta(txn.get(_SNAPSHOT, db=meta)).index
        if snapshot is not None:
            if install and snapshot.index < floor:
                raise ValueError(
                    f"cannot install snapshot {snapshot.index} below saved snapshot {floor}"
                )
            # A snapshot replaces one at the same or a lower index, never a
            # higher one, and the log through it is dropped.
            if snapshot.index >= floor:
                txn.put(_SNAPSHOT, encoding.encode_snapshot_meta(snapshot), db=meta)
                if snapshot.data is None:
                    # A compaction point: the data is this store's own.
                    txn.delete(_SNAPSHOT_DATA, db=self._snapshot)
                else:
                    txn.put(_SNAPSHOT_DATA, snapshot.data, db=self._snapshot)
                self._drop_log_through(txn, snapshot.index)
                floor = snapshot.index

        log = self._log
        for key, slot, record in encoded:
            if slot > floor:
                txn.put(key, record, db=log)

        applied = before = encoding.decode_slot(txn.get(_APPLIED, db=meta))
        if install:
            self._install(txn, machine.decode_snapshot(snapshot.data))
            applied = snapshot.index

        # The applied index is written below, in this same transaction.
        applied, results = apply_committed(
            _LMDBView(txn, self), committed, applied, self.limits, decoded
        )
        if applied != before or install:
            txn.put(_APPLIED, encoding.encode_slot(applied), db=meta)
        return results

    def _install(self, txn, state: machine.SnapshotState) -> None:
        """Replace the whole replicated state with C{state} (decoded, so checked)."""
        for db in (self._kv, self._sessions, self._session_use):
            txn.drop(db, delete=False)
        txn.cursor(db=self._kv).putmulti(
            (kv.key, machine.encode_record(kv)) for kv in state.records
        )
        view = _LMDBView(txn, self)
        for client_id, session in state.sessions:
            view.put_session(client_id, session)
        view.set_revision(state.revision)
        view.set_next_client_id(state.next_client_id)

    def _drop_log_through(self, txn, index: int) -> None:
        limit = encoding.encode_slot(index)
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
