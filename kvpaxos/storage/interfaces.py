"""
The storage interfaces the Paxos core reads, the node writes through and
the state machine applies through.

A provider keeps, durably, what a replica must never forget: its
L{HardState} (the promised ballot and the chosen marker), the accepted log
entries after its latest snapshot, and that snapshot.  The core reads it all
back when a replica is constructed, before it answers anyone; every later
change reaches the provider as one L{INodeStore.commit} per
L{kvpaxos.paxos.state.Ready} (L{IReplicaStorage.save} for the acceptor
state alone).

  - L{IReplicaStorage}: the acceptor state;
  - L{IStateMachine}: what the core asks of the state machine (snapshots);
  - L{INodeStore}: both, and the key-value data, in one store;
  - L{IStateView}: the transaction view a provider hands the state machine
    (L{kvpaxos.kv.machine.apply_batch}) inside its commit;
  - L{IStoreFactory}: a provider, found by name among Twisted plugins.

Providers: L{kvpaxos.storage.lmdb.LMDBStore} (the default) and
L{kvpaxos.storage.memory.MemoryStore} (tests, the simulator,
C{--storage=memory}), each an L{INodeStore} with its own L{IStateView};
L{kvpaxos.storage.memory.MemoryStorage} is a bare L{IReplicaStorage}.
Nothing here imports a provider.
"""

from dataclasses import dataclass
from typing import Optional

from zope.interface import Attribute, Interface


@dataclass(frozen=True, slots=True)
class Commit:
    """
    One L{kvpaxos.paxos.Ready}'s work for the store, done in one durable
    transaction by L{INodeStore.commit}: what to persist (C{hard_state},
    C{entries}, C{snapshot}), whether to C{install} that snapshot's state,
    the chosen slots to apply (C{committed}), and the node's own checked
    requests of commands among them (C{decoded}: encoding -> request, so
    they are applied without decoding them again).
    """

    hard_state: object = None
    entries: list = ()
    snapshot: object = None
    install: bool = False
    committed: list = ()
    decoded: Optional[dict] = None

    @classmethod
    def of(cls, ready, decoded: Optional[dict] = None) -> "Commit":
        """Return the L{Commit} of C{ready} (with the node's C{decoded})."""
        return cls(
            ready.hard_state, ready.entries, ready.snapshot, ready.install_snapshot,
            ready.committed, decoded,
        )


class IReplicaStorage(Interface):
    """
    Durable acceptor state of one replica.

    Reads return what the last completed L{save} wrote.  A L{save} is atomic:
    after a crash either all of it or none of it is there.
    """

    name = Attribute("A short name for the provider, as used in configuration.")

    def hard_state():
        """
        Return the last saved L{kvpaxos.paxos.state.HardState}, or the zero
        one if none was ever saved.
        """

    def snapshot():
        """
        Return the latest saved L{kvpaxos.paxos.messages.Snapshot}.  A
        bootstrapped store always has one (index 0 holds the initial member
        set).
        """

    def entries(first_slot):
        """
        Return the saved log entries at slots >= C{first_slot} (and after the
        snapshot), as a list of C{(slot, Entry)} in slot order.
        """

    def save(hard_state, entries, snapshot):
        """
        Durably and atomically store C{hard_state} (unless C{None}), the
        C{(slot, Entry)} pairs in C{entries} (overwriting), and C{snapshot}
        (unless C{None}; it replaces a saved snapshot at the same or a lower
        index, never a higher one, and entries at or below its index are
        dropped).  When
        this returns (or its result fires, for an asynchronous provider) the
        data survives a crash.
        """


class IStateMachine(Interface):
    """
    What the core asks of the replicated state machine: a snapshot of its
    state, so that the log before it can be dropped.

    A I{durable} state machine keeps its state together with its applied
    index (a node's store does, in one transaction), so it is its own
    snapshot: it says C{durable = True} and offers L{snapshot_now}.  The
    core then compacts its log without copying the state (an O(state) copy
    every C{snapshot_interval} slots would stall the node as the data
    grows), and takes the state only to send it to a peer that needs it.
    """

    durable = Attribute(
        "Optional, default False: the state machine keeps its state with its"
        " applied index, and offers snapshot_now()."
    )

    def snapshot():
        """
        Return the state, as C{bytes}, after applying every committed slot
        the caller has applied so far.
        """

    def snapshot_now():
        """
        Durable state machines only: return C{(index, data)}, the state as
        C{bytes} and the slot through which it has applied, read together
        (the index may be ahead of what the caller has applied yet, never of
        what is chosen).
        """


class INodeStore(IReplicaStorage):
    """
    Everything a node keeps on disk: the acceptor state of
    L{IReplicaStorage} and the key-value data the log applies to, written
    together so that one transaction holds a Ready's persistence and its
    application (the applied index lives in the same transaction as the data
    it describes: a restart neither loses nor re-applies a command).

    Threading: L{commit} runs on the node's one writer thread;
    L{get}, L{get_record}, L{range}, L{auth_items}, L{history},
    L{compacted_revision}, L{lease_ttl}, L{lease_items}, L{lease_keys},
    L{revision}, L{applied_index} and the
    L{IReplicaStorage} reads may run on any thread.  L{snapshot_data} and
    the state machine's C{snapshot_now} are O(state), for a pool thread;
    while one runs, the reads the reactor thread makes must not wait for
    it (the reactor thread never waits behind a long operation), nor should
    L{commit} wait for more than a bounded step of it.
    """

    state_machine = Attribute(
        "An IStateMachine over this store's data: what the core asks for"
        " snapshots (IReplicaStorage.snapshot already means the saved Snapshot)."
    )

    def snapshot_data():
        """
        Return the replicated state (records, revision, session table,
        auth table, the history and its compacted revision, the lease
        table and the attached keys) as of the last L{commit}, encoded with
        L{kvpaxos.encoding.state.encode_snapshot}:
        equal states give equal bytes, whichever provider holds them.
        """

    def commit(work, on_applied=None):
        """
        Do L{Commit} C{work} in one atomic, durable (fsynced) transaction:
        store C{hard_state}, C{entries} and C{snapshot} as
        L{IReplicaStorage.save} does; if C{install}, replace the whole
        replicated state with C{snapshot}'s and set the applied index to
        C{snapshot.index}; then apply the
        C{(slot, value)} pairs of C{committed} in order (each batch through
        L{kvpaxos.kv.machine.apply_batch} with its slot and the store's
        session limits: L{kvpaxos.storage.apply.apply_committed}, over the
        provider's transaction view) and set the applied index to the last
        slot.  Never
        fails for lack of space (the store grows).  C{decoded}, if given,
        maps encoded commands to their requests, which C{apply_batch} then
        takes instead of decoding (the node's own checked requests).
        C{on_applied}, if given, is called in the committing thread with the
        results as soon as they are known, before the transaction is durable
        (and again if a full map makes the store redo it): every command in
        C{committed} is chosen, durable on a quorum whatever becomes of this
        transaction, so its result may be answered at once.

        @return: a list of C{(Request, result)} for every command applied,
            in apply order; a result is a L{kvpaxos.kv.commands.Result}
            (put, delete, append), L{kvpaxos.kv.commands.TxnResult},
            L{kvpaxos.kv.commands.SessionOpened}, or one of
            L{kvpaxos.kv.commands.StaleSequence} and
            L{kvpaxos.kv.commands.SessionExpired} (nothing applied).
        @raise ValueError: caller misuse, or a snapshot whose data is not a
            snapshot (L{kvpaxos.kv.commands.CorruptRecord}); nothing changed.

        A snapshot whose data is a L{kvpaxos.storage.staging.StagedState}
        installs the state L{staging} holds for that transfer (in this same
        transaction), and is stored as this store's own (data C{None}).
        """

    def open_snapshot_stream():
        """
        Return the state as of the last commit, to send a peer in chunks
        (issue 11): an object with C{index} (the applied slot the state is
        at), C{revision}, C{next_client_id}, C{next_chunk(max_bytes)} (the
        next chunk's records, L{kvpaxos.encoding.transfer.encode_records}:
        the records, then the sessions, then the auth table, then the
        compacted revision (one item, always), then the history, then the
        lease table, then the attached keys; or None at the end) and
        C{close()}.  It reads one consistent state
        (LMDB: one read transaction) and holds at most about one chunk in
        memory.  For a pool thread, never the reactor; C{next_chunk} may
        raise L{kvpaxos.storage.staging.StreamInterrupted} (start over).
        """

    staging = Attribute(
        """
        The incoming snapshot transfer's chunks, for the writer thread
        only: C{begin(transfer, revision, next_client_id)} discards what
        was staged; C{stage(transfer, records)} checks and stages one
        chunk's records (records, sessions, auth entries, the compacted
        revision, events, leases or attached keys; raising
        C{MalformedMessage} or C{CorruptState}, nothing staged, if
        unsound: an attached key must be a record staged before it, and
        its lease one staged before it); C{finish(transfer)} returns the
        L{kvpaxos.storage.staging.StagedState} to install (a transfer
        without a compacted revision installs no events and the compacted
        revision C{revision + 1}; one without lease tables, no leases);
        C{discard()}.
        """
    )

    def applied_index():
        """Return the slot through which the data has applied."""

    def get(key):
        """
        Return the value stored under C{key}, or C{None}.

        @raise kvpaxos.kv.commands.InvalidArgument: C{key} is not a key.
        """

    def get_record(key):
        """
        Return the L{kvpaxos.kv.commands.KeyValue} record of C{key} (value,
        version, create and mod revision), or C{None}.

        @raise kvpaxos.kv.commands.InvalidArgument: C{key} is not a key.
        """

    def range(start, end=None, limit=0, keys_only=False, count_only=False):
        """
        Return a L{kvpaxos.kv.commands.RangeResult} of the records with keys
        in C{start}..C{end}, in key order, as of the last L{commit}: C{end}
        None means the key C{start} alone; C{end}
        L{kvpaxos.kv.commands.TO_THE_END} (C{b"\\x00"}) every key >=
        C{start}; otherwise [C{start}, C{end}), empty if C{end <= start}.
        (L{kvpaxos.kv.commands.prefix_end} gives the end of a prefix.)  At
        most C{limit} records (0: all); C{count} counts all in range and
        C{more} says the limit left some out; C{keys_only} blanks values;
        C{count_only} returns no records.  C{revision} is the store's
        revision the read saw (one consistent view).  Not a log command: the
        node serves it after a read index.

        @raise kvpaxos.kv.commands.InvalidArgument: a bad key, end or limit.
        """

    def read_ranges(queries):
        """
        Return, for each L{kvpaxos.kv.commands.Range} in C{queries}, what
        L{range} would (or the L{kvpaxos.kv.commands.InvalidArgument} it
        would raise, as a value), all from one consistent view of the last
        commit: one read transaction for many reads.
        """

    def auth_items():
        """
        Return the auth table as of the last L{commit}: a list of its
        C{(key, value)} in key order, read in one consistent view.
        """

    def history(start, max_events):
        """
        Return the history of writes from revision C{start} on, as of the
        last L{commit}: a list of C{(revision, Event)}
        (L{kvpaxos.kv.history.Event}) in C{(revision, index)} order, up
        to the store's revision, whole revisions only: it stops at the
        first revision boundary at or after C{max_events} events (at least
        one revision, if there is any), never inside a revision.  Read in
        one consistent view (LMDB: one read transaction), with the check
        below in the same view.  A C{start} past the revision gives C{[]}.

        @raise kvpaxos.kv.history.HistoryCompacted: C{start} is below the
            compacted revision (carried by the error): those events were
            dropped, so the caller never gets a silent gap.
        """

    def compacted_revision():
        """
        Return the history's compacted revision as of the last L{commit}:
        every event of a revision below it was dropped, every one from it
        on is kept.  0 for a new store; C{revision + 1} for a state that
        came without a history (an older data directory, snapshot,
        transfer or backup file).
        """

    def lease_ttl(lease):
        """
        Return lease C{lease}'s TTL (seconds, as granted) as of the last
        L{commit}, or C{None} if there is no such lease.
        """

    def lease_items():
        """
        Return the lease table as of the last L{commit}: a list of every
        C{(id, ttl)} in id order, read in one consistent view.
        """

    def lease_keys(lease):
        """
        Return the keys attached to lease C{lease} as of the last
        L{commit}, a list in key order (empty for a lease with none, or
        none at all), read in one consistent view.
        """

    def revision():
        """Return the store's revision (0 before any write) as of the last commit."""

    def close():
        """Release the store's resources; no call may follow."""


class IStateView(Interface):
    """
    The replicated state as the state machine reads and writes it inside
    one of its store's transactions (L{kvpaxos.kv.machine},
    L{kvpaxos.kv.sessions}, L{kvpaxos.kv.auth}): records by key, the store's
    revision, the session table, the next client id, the auth table
    (opaque C{bytes -> bytes} in key order; its bounds are
    L{kvpaxos.encoding.state.AUTH_KEY_MAX_BYTES} and C{AUTH_VALUE_MAX_BYTES})
    the history of writes (L{kvpaxos.kv.history}: events at
    C{(revision, index)}, the C{index}th key written at C{revision}, and
    the compacted revision) and the leases (L{kvpaxos.kv.leases}: the
    lease table C{id -> ttl} and each attached key's lease; invariants:
    an attached key has a record, its lease is in the table, a key has one
    lease at most).  Writes become durable with the transaction
    that holds the view, together with the applied index, or are lost with
    it (a commit that fails is undone whole, the auth table's writes,
    the history's and the leases' too); a read-only view over a read
    transaction offers the reads alone.

    Providers: the LMDB store's view over an LMDB transaction
    (L{kvpaxos.storage.lmdb_view.LMDBView}) and the in-memory state
    (L{kvpaxos.storage.memory.MemoryState}), which is its own view.
    """

    def get(key):
        """Return the L{kvpaxos.kv.commands.KeyValue} record of C{key}, or C{None}."""

    def put(kv):
        """Store the L{kvpaxos.kv.commands.KeyValue} C{kv} under its key."""

    def write(key, value, revision, want_prev):
        """
        Store C{value} under C{key} at C{revision} (version 1 and created
        now, or the next version of the record there); return C{(existed,
        prev)}: whether a record was there, and that record if
        C{want_prev} (a view may return it anyway).  What
        L{kvpaxos.kv.machine.write_record} does; a view may do it on its
        stored bytes.
        """

    def delete(key):
        """Remove C{key}'s record, if there is one."""

    def write_with_event(key, value, revision, index, want_prev=True):
        """
        Do what L{write} does (C{want_prev} as there; a view may return
        the previous record anyway) and record, in the same transaction,
        the put's event at C{(revision, index)}: a
        L{kvpaxos.kv.history.EventKind.PUT} of the new record, with the
        record it replaced (or None) as C{prev}.  The hot path of every
        put: a view may do it on its stored bytes (LMDB encodes the event
        from the new record's bytes and the old one's, decoding nothing
        new).

        @return: C{(existed, prev)}, as L{write}.
        @raise AssertionError: C{(revision, index)} does not follow the
            history's last event (events are recorded in order, each
            once): a broken invariant; the commit fails and is undone.
        """

    def delete_with_event(key, revision, index):
        """
        If C{key} has a record, delete it and record the event at
        C{(revision, index)}: a L{kvpaxos.kv.history.EventKind.DELETE}
        whose C{kv} is C{KeyValue(key, b"", 0, 0, revision)} and C{prev}
        the record deleted; return that record.  Otherwise change nothing
        and return C{None}.

        @raise AssertionError: as L{write_with_event}.
        """

    def compacted_revision():
        """Return the history's compacted revision (see L{INodeStore.compacted_revision})."""

    def compact_history(revision):
        """
        Drop every event of a revision below C{revision} and make
        C{revision} the compacted revision; events from it on are kept.
        The caller (L{kvpaxos.kv.compaction}) makes sure it only grows.
        """

    def events(start, max_events):
        """
        Return what L{INodeStore.history} returns, over this view.

        @raise kvpaxos.kv.history.HistoryCompacted: C{start} is below the
            compacted revision.
        """

    def scan(start, stop):
        """
        Return an iterator over the records with C{start <= key < stop}
        (C{stop} None: no bound) in key order; the caller does not write
        while it runs.
        """

    def revision():
        """Return the store's revision (0 before any write)."""

    def set_revision(revision):
        """Set the store's revision."""

    def session(client_id):
        """Return the L{kvpaxos.kv.sessions.Session} of C{client_id}, or C{None}."""

    def session_sequence(client_id):
        """
        Return the C{sequence} of C{client_id}'s session, or C{None}: what
        L{session} would say of it, without reading the result it saves
        (every write in a session asks; only a retry needs the result).
        """

    def put_session(client_id, session):
        """Store C{session} as C{client_id}'s, replacing any."""

    def delete_session(client_id):
        """Remove C{client_id}'s session, if there is one."""

    def session_count():
        """Return how many sessions are open."""

    def sessions_by_use():
        """
        Return an iterator over C{(last_used, client_id)} of every session,
        least recently used first (ties by client id): the eviction order.
        """

    def next_client_id():
        """Return the client id the next opened session gets."""

    def set_next_client_id(client_id):
        """Set the client id the next opened session gets."""

    def auth_get(key):
        """Return the auth table's value under C{key} (C{bytes}), or C{None}."""

    def auth_put(key, value):
        """
        Store C{value} under C{key} in the auth table, replacing any.

        @raise TypeError: C{key} or C{value} is not C{bytes}.
        @raise kvpaxos.encoding.errors.EncodeError: C{key} is not of 1 to
            C{AUTH_KEY_MAX_BYTES} bytes, or C{value} is over
            C{AUTH_VALUE_MAX_BYTES} (L{kvpaxos.encoding.state.check_auth_entry}):
            the caller's fault, nothing is written.
        """

    def auth_delete(key):
        """Remove C{key} from the auth table, if it is there (no error if not)."""

    def auth_items():
        """
        Return an iterator over the auth table's C{(key, value)} in key
        order; the caller does not write while it runs.
        """

    def lease_ttl(lease):
        """Return lease C{lease}'s TTL (seconds, as granted), or C{None} if there is no such lease."""

    def lease_put(lease, ttl):
        """Store lease C{lease} (1 to L{kvpaxos.kv.commands.MAX_LEASE_ID}) of C{ttl} seconds, replacing any."""

    def lease_remove(lease):
        """
        Remove lease C{lease} (no error if there is none).

        @raise AssertionError: a key is still attached to it (the state
            machine detaches every one first): a broken invariant; the
            commit fails and is undone.
        """

    def lease_items():
        """
        Return an iterator over the lease table's C{(id, ttl)} in id
        order; the caller does not write while it runs.
        """

    def key_lease(key):
        """
        Return the lease C{key} is attached to, or 0 if none.  Every put
        asks (the hot path): a view answers a key with none, and a state
        with no attachment at all, cheaply.
        """

    def lease_attach(key, lease):
        """
        Attach C{key} (which has a record) to C{lease} (which is in the
        table).

        @raise AssertionError: C{key} is attached already (the state
            machine detaches it first): a broken invariant.
        """

    def lease_detach(key):
        """Detach C{key} from its lease, if it has one (no error if not)."""

    def lease_keys(lease):
        """
        Return an iterator over the keys attached to C{lease}, in key
        order; the caller does not write while it runs.
        """


class IStoreFactory(Interface):
    """
    A storage provider, found by name among Twisted plugins of
    L{kvpaxos.plugins} (so another package can ship one as a dropin).
    """

    name = Attribute("The name chosen with --storage, e.g. 'lmdb'.")
    description = Attribute("One line for --help.")

    def open(directory, config):
        """
        Open (creating if needed) the store kept in C{directory}; a new store
        is bootstrapped with member set C{config}
        (L{kvpaxos.paxos.messages.Config}).  Return an L{INodeStore}.
        """
