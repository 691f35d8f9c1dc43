"""
A client library for kvpaxos over its public gRPC API
(C{proto/kvpaxos/v1/kv.proto}): a blocking L{Client} on grpcio and an
L{AsyncClient} on C{grpc.aio} (asyncio), with the same methods.

    with Client("10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379") as kv:
        kv.put(b"k", b"v")
        kv.get(b"k")                                    # b"v"
        kv.cas(b"k", b"w", expected_value=b"v")         # (True, None)
        kv.txn([compare_value(b"k", "==", b"w")], [put_op(b"k", b"x")], [get_op(b"k")])

Keys and values are C{bytes}; C{str} is accepted and encoded as UTF-8.

The package, module by module: L{errors} (one hierarchy under
L{ClientError}, and how a failed RPC is read: by its code and the
ErrorInfo reason and metadata the server attached, never by its message's
text); L{requests} (the txn builders, the operations: a request, which
RPC, how to read the answer; range paging); L{retry} (L{Directory},
L{Backoff}, L{Attempts}: pure objects that are told the time and never
sleep, send or read a clock; the L{SessionPool}); L{blocking} and L{aio},
the two clients, which only drive the policy with their own I/O; L{cli},
L{txn_syntax} and L{actions}, the C{kvpaxos} command; L{admin_client} and
L{admin_cli}, its admin-port commands (AMP, the contract in
L{kvpaxos.api.admin}).

Nothing here knows how the cluster works beyond its APIs (gRPC, and the
admin port's AMP commands): the package
imports only the API's contract (C{kvpaxos.api.errors}, C{.limits},
C{.endpoints}, C{.admin}) and the generated C{kvpaxos.v1} messages, never
C{kvpaxos.kv}, C{.node}, C{.paxos} or C{.storage}
(C{tests/test_import_rules.py} enforces it).

Routing and retries
===================
  - Writes and linearizable or lease reads go to the leader when the
    client knows its address; serializable reads, and everything while the
    leader's address is unknown, go to the endpoint that last answered.
    (Any node serves any request: a follower forwards, so this only saves
    a hop.)  The client learns C{member_id -> endpoint} and the leader from
    every response header, and the leader from the C{leader_id} metadata
    of an UNAVAILABLE's ErrorInfo.  While the leader's address is unknown it
    prefers endpoints whose member id it has not seen yet, so ordinary
    traffic finds the leader without extra RPCs.
  - The endpoints given are seeds: before its first request the client
    lists the members (C{Cluster.MemberList}) and tries their client
    addresses after the seeds, so a client given one address finds the
    others.  It lists them again every C{refresh_s} seconds (30 by
    default) and after a round in which every endpoint failed, so it
    follows members that join and leave; a member without a client
    address is skipped, the seeds are always kept, and a listing that
    fails (an older server: UNIMPLEMENTED) costs the request nothing but
    that attempt (at most a second, at most half its time left).
    C{refresh_s=None} uses the endpoints given and nothing else.
  - UNAVAILABLE (which is also how grpcio reports a connection failure)
    moves on to the named leader or the next endpoint at once; once every
    endpoint has failed since the last pause, the client pauses, with
    exponential backoff and jitter (L{Backoff}), and starts another round.
    It gives up with L{Unavailable} when the next pause would pass the
    call's deadline: C{timeout_s} from the start of the call, shared by
    every RPC of the call (each RPC gets the time remaining).
  - DEADLINE_EXCEEDED is retried like UNAVAILABLE for reads and for writes
    in a session; a write without a session raises L{OutcomeUnknown}.
  - INVALID_ARGUMENT raises L{InvalidArgument} at once; any other status
    raises L{RequestFailed} at once.

One stream per member
=====================
With C{stream=True} (the default) the KV requests of concurrent calls to
one member go over one C{KV.Stream} call (L{kvpaxos.client.stream}),
several to a message when they queue up, instead of one unary RPC each:
the member's cost per request falls several-fold (BENCHMARKS.md).
Nothing else changes: each request is still its own operation, with its
own deadline (carried to the member), retries, session, result and error,
read exactly as the unary RPC's.  A stream that breaks fails the requests
it carried as UNAVAILABLE, whatever ended it (their outcome is unknown:
retried as a unary call that lost its connection would be), and is opened
again by the next request; a member without
C{KV.Stream} (UNIMPLEMENTED) is sent unary RPCs.  C{Cluster} calls (status,
member list) are always unary.  C{stream=False}: unary RPCs only.

Exactly-once writes
===================
With C{session=True} (the default) every write (put, delete, append, txn,
cas) carries C{(client_id, sequence)}: the client opens a session lazily
(OpenSession) before its first write, numbers writes 1, 2, 3, ..., and sends
every retry of one write with the same pair, so the cluster applies it at
most once and a retry gets the original answer.

Concurrency: a session has one write in flight at a time (the server
requires it).  The client keeps a small pool of sessions: a write takes an
idle one or opens a new one, and puts it back when its outcome is settled.
A client used by one thread at a time therefore uses one session; N threads
writing at once use up to N sessions.  Sessions live in the cluster's
session table (10,000 by default, least recently used evicted), so prefer
one long-lived client per process over many short-lived ones.

FAILED_PRECONDITION with reason C{SESSION_EXPIRED} drops the session (the next write
opens a new one) and raises L{SessionExpired}: the outcome of the write is
unknown when an earlier attempt of it may have been applied.  If the very
first attempt of a write found its session expired (while it was idle), the cluster applied nothing, and the write is sent once more in a
fresh session instead.  C{STALE_SEQUENCE} means this client numbered its
requests wrongly (a bug): L{StaleSequence}, and the session is dropped.

An L{Unavailable} or L{OutcomeUnknown} from a write means the outcome is
unknown (an attempt may have been applied, or still be); the next write
uses the next sequence, which the cluster handles correctly.

Without a session, a write that got UNAVAILABLE is still sent again
(at-least-once: an append may then apply twice); use sessions for
anything that is not idempotent.

Compaction
==========
C{compact(revision)} drops the history of writes (what a watch replays)
below C{revision}; it is a write without a session, sent to the leader.
Like any write without a session it is sent again after UNAVAILABLE,
which is safe here: a compaction is idempotent in effect, and a resent
one whose earlier attempt applied is refused COMPACTED with the
history's compacted revision at or past the one asked, which the client
takes for success (L{requests.compacted_by_retry}).  Refused on its only
attempt it raises L{Compacted} or L{FutureRevision} (both
L{CompactRefused}s, L{RequestFailed}s: nothing changed).  A timed-out
RPC raises L{OutcomeUnknown}, as for any write without a session;
calling C{compact} again is safe.  C{Compact} is unary, not streamed.

Leases
======
C{client.lease(ttl)} grants a lease and holds it (L{lease}): a L{Lease}
(L{AsyncLease} for the AsyncClient) renewed every third of its TTL from a
thread (a task) of its own, across changes of leader, until it is closed
(and then revoked, unless C{revoke_on_close=False}); a context manager.
C{put(key, value, lease=lease)} (and C{put_op(..., lease=)} in a Txn)
attaches a key: it is deleted when the lease ends.  Once the cluster says
the lease is gone, C{lease.lost} holds the L{LeaseExpired} that every later
operation on it (and a put naming it) raises, and C{on_lost(lease)} is
called.  The calls alone: C{lease_grant}, C{lease_revoke},
C{lease_keep_alive} (the TTL, 0 for no such lease), C{lease_time_to_live},
C{leases}.  A grant without an id gets one this client picks at random, so
that a grant resent after UNAVAILABLE is recognised as its own; a revoke
resent and refused not found is taken as done.  A lease that does not
exist is L{LeaseNotFound}; a grant of an id in use L{LeaseExists}.

Locks and elections
===================
C{client.lock(name)} is a lock (etcd's C{Mutex}: L{Lock}, L{AsyncLock}),
C{client.election(name)} a leader election (L{Election},
L{AsyncElection}: C{campaign}, C{proclaim}, C{resign}, C{leader},
C{observe}), their keys under a lease the client keeps alive (one per
turn, or a held lease given); the decisions are L{concurrency_core}'s,
with no I/O.  A lock is only as good as its lease: guard the writes it
protects with C{lock.guard()} in the same txn (L{concurrency}).

Authentication
==============
C{Client(endpoints, user="alice", password="...")} names a user once the
cluster's auth is enabled (L{auth}): the client authenticates before its
first request, sends the token with every request, and renews it once when
one is answered UNAUTHENTICATED, sending the same request again (session
fields included).  Its requests are unary.  L{Unauthenticated},
L{PermissionDenied} and L{AuthRefused} are L{RequestFailed}s; nothing
changed.  Both clients manage users, roles and permissions
(C{user_add}, C{role_grant_permission}, C{auth_enable}, ...).
"""

from __future__ import annotations

from kvpaxos.api.limits import TO_THE_END, prefix_end
from kvpaxos.client.aio import AsyncClient, open_aio_channel
from kvpaxos.client.blocking import Client, Connection, Reply, open_channel
from kvpaxos.client.concurrency import AsyncElection, AsyncLock, AsyncObservation, LockTimeout
from kvpaxos.client.concurrency_blocking import Election, Lock, Observation
from kvpaxos.client.concurrency_core import LockLost, NotElected
from kvpaxos.client.auth import Permission
from kvpaxos.client.errors import (
    AuthNotEnabled,
    AuthRefused,
    ClientError,
    CompactRefused,
    Compacted,
    FutureRevision,
    InvalidArgument,
    LeaseExists,
    LeaseExpired,
    LeaseNotFound,
    OutcomeUnknown,
    PermissionDenied,
    RequestFailed,
    SessionExpired,
    StaleSequence,
    Unauthenticated,
    Unavailable,
)
from kvpaxos.client.lease import AsyncLease, Lease
from kvpaxos.client.requests import (
    MAX_LEASE_ID,
    MAX_LEASE_TTL,
    OPEN_SESSION,
    BytesLike,
    Operation,
    RangePager,
    RangeResult,
    append_operation,
    cas_operation,
    cas_result,
    compact_operation,
    compacted_by_retry,
    compare_create_revision,
    compare_exists,
    compare_mod_revision,
    compare_value,
    compare_version,
    delete_op,
    delete_operation,
    get_op,
    get_operation,
    lease_grant_operation,
    lease_keep_alive_operation,
    lease_revoke_operation,
    lease_time_to_live_operation,
    leases_operation,
    member_list_operation,
    put_op,
    put_operation,
    range_op,
    range_request,
    status_operation,
    txn_operation,
)
from kvpaxos.client.retry import (
    Attempts, Backoff, Directory, Pause, Refresh, RetryPolicy, Session, SessionPool, Try,
)

__all__ = [
    "AsyncClient", "AsyncElection", "AsyncLease", "AsyncLock", "AsyncObservation",
    "Election", "Lock", "LockLost", "LockTimeout", "NotElected", "Observation", "AuthNotEnabled", "AuthRefused", "Client", "ClientError", "CompactRefused",
    "Compacted", "FutureRevision", "InvalidArgument", "Lease", "LeaseExists", "LeaseExpired", "LeaseNotFound",
    "MAX_LEASE_ID", "MAX_LEASE_TTL",
    "OutcomeUnknown", "Permission", "PermissionDenied", "RangeResult",
    "RequestFailed", "SessionExpired", "StaleSequence", "TO_THE_END", "Unauthenticated", "Unavailable",
    "compare_create_revision", "compare_exists", "compare_mod_revision", "compare_value",
    "compare_version", "delete_op", "get_op", "open_aio_channel", "open_channel", "prefix_end",
    "put_op", "range_op",
    # The operations and the policy objects, for the CLI and for tests.
    "Attempts", "Backoff", "BytesLike", "Connection", "Directory", "OPEN_SESSION", "Operation",
    "Pause", "RangePager", "Refresh", "Reply", "RetryPolicy", "Session", "SessionPool", "Try",
    "append_operation", "cas_operation", "cas_result", "compact_operation", "compacted_by_retry",
    "delete_operation", "get_operation", "lease_grant_operation", "lease_keep_alive_operation",
    "lease_revoke_operation", "lease_time_to_live_operation", "leases_operation",
    "member_list_operation",
    "put_operation", "range_request", "status_operation", "txn_operation",
]
