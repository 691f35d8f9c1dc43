"""
The API's errors, as both ends name them: the exceptions every layer may
raise (L{ApiError} and its subclasses, each saying whose fault it is), the
reasons a failed RPC carries as data, and how those travel.

A failed RPC carries a C{google.rpc.Status} in its trailing metadata
(C{grpc-status-details-bin}, as C{grpcio-status} writes it) holding one
C{google.rpc.ErrorInfo}: C{domain} L{DOMAIN}, a C{reason} from L{REASONS}
and string C{metadata} (the leader's member id under L{LEADER_ID}, ...).
The status message stays a readable sentence (and etcd's wording where
etcd has one), for people; the client decides from the reason and the
metadata only (L{error_details}), never from the message's text.

The catalogue (reason: gRPC code, whose fault, metadata):

  - L{INVALID_ARGUMENT}: INVALID_ARGUMENT; the client's (bad key, value,
    range, transaction or session fields); nothing changed.
  - L{SESSION_EXPIRED}: FAILED_PRECONDITION; nobody's (the session was
    evicted or expired); L{CLIENT_ID}.  Nothing was applied.
  - L{STALE_SEQUENCE}: FAILED_PRECONDITION; the client's (a bug: a
    sequence below the session's last); L{CLIENT_ID}, L{SEQUENCE},
    L{LAST_SEQUENCE}.  Nothing was applied.
  - L{SEQUENCE_REUSED}: FAILED_PRECONDITION; the client's (a retry that
    is not the request it retries); L{CLIENT_ID}, L{SEQUENCE}.
  - L{NOT_LEADER}: UNAVAILABLE; nobody's (the node asked could not reach
    a leader for work only a leader does); L{LEADER_ID} when known.
  - L{UNAVAILABLE}: UNAVAILABLE; nobody's (no quorum, or no answer,
    before the deadline); L{LEADER_ID} when known.
  - L{SHUTTING_DOWN}: UNAVAILABLE; nobody's (the node is stopping);
    L{LEADER_ID} when known.
  - L{RESPONSE_TOO_LARGE}: RESOURCE_EXHAUSTED; the client's (it asked for
    more C{prev_kv} records than one message holds); L{REVISION} at which
    the transaction applied.
  - L{TOO_MANY_REQUESTS}: RESOURCE_EXHAUSTED; the client's (more requests
    of one C{Stream} in flight than the server takes).
  - L{NO_SPACE}: RESOURCE_EXHAUSTED; nobody's (the member's store is at its
    quota: a write that would grow it is refused, reads, deletes and
    compaction still work, and the alarm clears by itself once use falls
    under the quota); L{USED_BYTES}, L{QUOTA_BYTES}.  Nothing changed.
  - L{UNAUTHENTICATED}: UNAUTHENTICATED; the client's (auth is enabled
    and the request names no user, or by a token that is invalid, expired,
    or of a deleted user or an old password; or a wrong password).
    Nothing changed.
  - L{PERMISSION_DENIED}: PERMISSION_DENIED; the client's (its user's
    roles do not permit the request, decided when it applies for a
    write); nothing changed.
  - L{AUTH_REFUSED}: FAILED_PRECONDITION; the client's (an auth change
    whose precondition does not hold: a user or role that exists already
    or does not, auth enabled without a root user, ...); nothing changed.
  - L{AUTH_NOT_ENABLED}: FAILED_PRECONDITION; nobody's (C{Authenticate}
    while auth is disabled: a client given a user and password then
    sends its requests without a token, as etcd's clients do).
  - L{COMPACTED}: OUT_OF_RANGE; the client's (a C{Compact} at a revision
    the history is already compacted past: below the compacted revision,
    or at it once anything was compacted); L{COMPACT_REVISION} (the
    history's compacted revision), L{REVISION} (the store's).  Nothing
    changed.
  - L{FUTURE_REVISION}: OUT_OF_RANGE; the client's (a C{Compact} at a
    revision above the store's); L{REVISION}, L{COMPACT_REVISION}.
    Nothing changed.
  - L{LEASE_NOT_FOUND}: NOT_FOUND; the client's (a put, transaction,
    revoke naming a lease that does not exist: never granted, revoked, or
    expired; etcd's "requested lease not found"); L{LEASE_ID}.  Nothing
    applied.
  - L{LEASE_EXISTS}: FAILED_PRECONDITION; the client's (a grant of an id
    in use; etcd's "lease already exists", with etcd's code); L{LEASE_ID}.
    Nothing changed.
  - L{INTERNAL}: INTERNAL; the server's (a bug or a broken dependency).

Every ErrorInfo also names the member that answered (L{MEMBER_ID}).

What must not live here: anything that knows how the cluster works.  This
module imports nothing of kvpaxos, so that the state machine's
validation, the node, the gRPC edge and the client can all name the same
errors (the client imports only C{kvpaxos.api} and C{kvpaxos.v1}).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

#: The C{ErrorInfo.domain} of every kvpaxos error.
DOMAIN = "kvpaxos"
#: Where grpcio-status puts the serialized C{google.rpc.Status}.
DETAILS_KEY = "grpc-status-details-bin"

INVALID_ARGUMENT = "INVALID_ARGUMENT"
SESSION_EXPIRED = "SESSION_EXPIRED"
STALE_SEQUENCE = "STALE_SEQUENCE"
SEQUENCE_REUSED = "SEQUENCE_REUSED"
NOT_LEADER = "NOT_LEADER"
UNAVAILABLE = "UNAVAILABLE"
SHUTTING_DOWN = "SHUTTING_DOWN"
RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"
NO_SPACE = "NO_SPACE"
UNAUTHENTICATED = "UNAUTHENTICATED"
PERMISSION_DENIED = "PERMISSION_DENIED"
AUTH_REFUSED = "AUTH_REFUSED"
AUTH_NOT_ENABLED = "AUTH_NOT_ENABLED"
COMPACTED = "COMPACTED"
FUTURE_REVISION = "FUTURE_REVISION"
LEASE_NOT_FOUND = "LEASE_NOT_FOUND"
LEASE_EXISTS = "LEASE_EXISTS"
INTERNAL = "INTERNAL"

#: Each reason and the one gRPC status code it travels with.
REASONS: Mapping[str, grpc.StatusCode] = {
    INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    SESSION_EXPIRED: grpc.StatusCode.FAILED_PRECONDITION,
    STALE_SEQUENCE: grpc.StatusCode.FAILED_PRECONDITION,
    SEQUENCE_REUSED: grpc.StatusCode.FAILED_PRECONDITION,
    NOT_LEADER: grpc.StatusCode.UNAVAILABLE,
    UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    RESPONSE_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NO_SPACE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TOO_MANY_REQUESTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    AUTH_REFUSED: grpc.StatusCode.FAILED_PRECONDITION,
    AUTH_NOT_ENABLED: grpc.StatusCode.FAILED_PRECONDITION,
    COMPACTED: grpc.StatusCode.OUT_OF_RANGE,
    FUTURE_REVISION: grpc.StatusCode.OUT_OF_RANGE,
    LEASE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    LEASE_EXISTS: grpc.StatusCode.FAILED_PRECONDITION,
    INTERNAL: grpc.StatusCode.INTERNAL,
}

#: Metadata keys.
LEADER_ID = "leader_id"
MEMBER_ID = "member_id"
CLIENT_ID = "client_id"
SEQUENCE = "sequence"
LAST_SEQUENCE = "last_sequence"
REVISION = "revision"
COMPACT_REVISION = "compact_revision"
LEASE_ID = "lease_id"
USED_BYTES = "used_bytes"
QUOTA_BYTES = "quota_bytes"


# --- the exceptions ----------------------------------------------------------


class ApiError(Exception):
    """
    An error the kvpaxos API names.  The client raises only these (it calls
    this class C{ClientError}); each subclass says whose fault it is.
    """


class InvalidArgument(ApiError, ValueError):
    """
    A request is malformed or outside the limits (the client's fault):
    refused by the client library before sending, or by the server
    (INVALID_ARGUMENT, reason L{INVALID_ARGUMENT}); nothing changed.
    """


class Unavailable(ApiError):
    """
    The cluster could not serve a request before its deadline (no quorum,
    no known leader, the leader unreachable, the node stopping): nobody's
    fault, and worth trying again, elsewhere.  gRPC: UNAVAILABLE.

    @ivar leader: the leader last named (by this node, or to the client),
        or None.
    @ivar failures: in the client, the last failure of each endpoint
        tried, in endpoint order; empty on the server.
    @ivar reason: the L{REASONS} entry it travels as.
    """

    reason = UNAVAILABLE

    def __init__(self, message: str, leader: Optional[int] = None, failures: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.leader = leader
        self.failures = tuple(failures)


class NoSpace(ApiError):
    """
    The member's store is at its space quota: a write that would grow it
    is refused (RESOURCE_EXHAUSTED, reason L{NO_SPACE}); nothing changed.
    Reads, deletes and compaction still work; the alarm clears by itself.
    """

    def __init__(self, used_bytes: int, quota_bytes: int) -> None:
        super().__init__(
            f"database space exceeded: {used_bytes} of the {quota_bytes}-byte quota in use; writes that grow the "
            "store are refused until deletes bring it under the quota (the alarm then clears by itself)")
        self.used_bytes = used_bytes
        self.quota_bytes = quota_bytes


class Unauthenticated(ApiError):
    """
    Auth is enabled and the request names no valid user (no credential, a
    bad or expired token, a wrong password): UNAUTHENTICATED, reason
    L{UNAUTHENTICATED}; nothing changed.  The client authenticates again.
    """


class PermissionDenied(ApiError):
    """
    The request's user may not do what it asks: PERMISSION_DENIED, reason
    L{PERMISSION_DENIED} (C{"etcdserver: permission denied"}); nothing changed.
    """


class AuthRefused(ApiError):
    """
    An auth change whose precondition does not hold (FAILED_PRECONDITION,
    reason L{AUTH_REFUSED}, etcd's message); nothing changed.
    """


class AuthNotEnabled(AuthRefused):
    """
    C{Authenticate} while auth is disabled (FAILED_PRECONDITION, reason
    L{AUTH_NOT_ENABLED}): no token is needed.
    """


# --- the details on the wire -------------------------------------------------


@dataclass(frozen=True)
class ErrorDetails:
    """
    What a failed RPC says about itself as data: its L{REASONS} entry and
    string metadata.
    """

    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def number(self, key: str) -> Optional[int]:
        """The metadata value under C{key} as a non-negative integer, or None if absent or not one."""
        value = self.metadata.get(key, "")
        return int(value) if value.isdigit() else None


def rich_status(code: grpc.StatusCode, message: str, reason: str,
                metadata: Mapping[str, Any] = ()) -> grpc.Status:
    """
    Return the C{grpc.Status} to abort an RPC with (C{context.abort_with_status}):
    C{code} and C{message}, with an ErrorInfo of C{reason} and C{metadata}
    (values turned into strings; None values left out) in its details.
    """
    info = error_details_pb2.ErrorInfo(
        reason=reason, domain=DOMAIN,
        metadata={key: str(value) for key, value in dict(metadata).items() if value is not None},
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[detail]))


def error_details(error: Any) -> Optional[ErrorDetails]:
    """
    Return the kvpaxos L{ErrorDetails} a failed RPC (a C{grpc.RpcError}
    from a blocking or an asyncio stub) carries, or None if it carries none
    (a connection failure, a server of another kind, garbage).  Read only
    on failures: it parses the trailing metadata.
    """
    trailing = getattr(error, "trailing_metadata", None)
    try:
        pairs = trailing() if callable(trailing) else None
    except Exception:
        return None
    for key, value in pairs or ():
        if key != DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a peer's garbage is no reason
            return None
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.domain == DOMAIN:
                return ErrorDetails(info.reason, dict(info.metadata))
    return None
