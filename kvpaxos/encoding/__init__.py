"""
Every byte format of kvpaxos, one layout per value wherever it travels (a
peer message, the data directory, a snapshot sent between nodes), read by
one bounds-checked reader:

  - L{kvpaxos.encoding.reader}: L{Reader}, the one reader of hostile bytes,
    and the fixed-width integers (all big-endian);
  - L{kvpaxos.encoding.errors}: one error per whose fault the bytes are
    (a peer's, the data directory's, the log's) and L{EncodeError} for a
    caller's value that has no encoding;
  - L{kvpaxos.encoding.values}: the Paxos core's values (ballot, slot
    value, member set, hard state, log entry, snapshot metadata) and the
    LMDB keys;
  - L{kvpaxos.encoding.messages}: the wire format of Paxos messages
    (L{WIRE_VERSION});
  - L{kvpaxos.encoding.commands}: the log format of client commands
    (L{COMMAND_VERSION});
  - L{kvpaxos.encoding.records}: a key's record and a C{KeyValue}, the
    unit the state is made of (in the store, a snapshot, a saved result,
    an event);
  - L{kvpaxos.encoding.history}: the history of writes, its keys
    (C{revision:u64 index:u32}) and events;
  - L{kvpaxos.encoding.leases}: the lease table and the keys attached to
    leases, with their bounds and references;
  - L{kvpaxos.encoding.auth}: the auth table's users and roles, and the
    auth commands;
  - L{kvpaxos.encoding.state}: the replicated state: a session entry and
    the results it saves, the auth table's bounds
    (L{AUTH_KEY_MAX_BYTES}, L{AUTH_VALUE_MAX_BYTES}), snapshots
    (L{SNAPSHOT_FORMAT}: records, sessions, auth table, history, leases;
    it re-exports L{kvpaxos.encoding.records});
  - L{kvpaxos.encoding.transfer}: the snapshot transfer's messages and a
    chunk's records (tables 1 to 7), which backup files carry too.

What must not live here: I/O, transport framing (L{kvpaxos.node.peers}),
what a value means (L{kvpaxos.paxos}, L{kvpaxos.kv}).  No pickle, eval or
dependency: a record means exactly what these modules say it means.
"""
