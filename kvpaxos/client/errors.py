"""
The client's errors (one hierarchy under L{ClientError}, which is the API's
L{kvpaxos.api.errors.ApiError}) and how a failed RPC becomes one.

A failed RPC is read once, into a L{Failure}: its status code, its message
(kept for people: every error message quotes it) and the ErrorInfo reason
and metadata the server attached.  L{error_for} decides from the code and
the reason alone; the leader hint is the metadata's C{leader_id}.  Nothing
here reads the message's text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import grpc

from kvpaxos.api import errors as api_errors
from kvpaxos.api.errors import ApiError, InvalidArgument, Unavailable, error_details

__all__ = [
    "AuthNotEnabled", "AuthRefused", "ClientError", "CompactRefused", "Compacted", "Failure", "FutureRevision",
    "LeaseExists", "LeaseExpired", "LeaseNotFound",
    "PermissionDenied", "Unauthenticated", "InvalidArgument", "OutcomeUnknown", "RequestFailed", "SessionExpired",
    "StaleSequence", "Unavailable", "describe_failure", "error_for", "rpc_failure",
]

#: Every error the client raises derives from this: the API's own root
#: (L{InvalidArgument} and L{Unavailable} are the API's, shared with the
#: server; the rest are the client's outcomes).
ClientError = ApiError


class OutcomeUnknown(ClientError):
    """A write may or may not have been applied, and cannot be retried safely."""


class SessionExpired(OutcomeUnknown):
    """
    The write's session was expired or evicted by the cluster (reason
    C{SESSION_EXPIRED}).

    @ivar maybe_applied: an earlier attempt of the write may have been
        applied (when false, the cluster applied nothing).
    """

    def __init__(self, message: str, maybe_applied: bool) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class StaleSequence(ClientError):
    """
    The cluster saw a sequence below the session's last one (reason
    C{STALE_SEQUENCE}): a bug in this client.
    """


class RequestFailed(ClientError):
    """
    The cluster answered with a status this library does not retry
    (INTERNAL, UNIMPLEMENTED, RESOURCE_EXHAUSTED, ...).

    @ivar code: the C{grpc.StatusCode}.
    @ivar details: the server's message.
    @ivar reason: the ErrorInfo reason, or None.
    """

    def __init__(self, message: str, code: Optional[grpc.StatusCode], details: str,
                 reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details
        self.reason = reason


class Unauthenticated(RequestFailed, api_errors.Unauthenticated):
    """
    Auth is enabled and the request named no valid user (UNAUTHENTICATED):
    no user or password given, a wrong password, or a token the client
    could not renew.  Nothing changed.
    """


class PermissionDenied(RequestFailed, api_errors.PermissionDenied):
    """The client's user may not do what the request asks (PERMISSION_DENIED); nothing changed."""


class AuthRefused(RequestFailed, api_errors.AuthRefused):
    """
    An auth change whose precondition does not hold (a user that exists
    already, a role that does not, ...: FAILED_PRECONDITION, reason
    C{AUTH_REFUSED}, etcd's message); nothing changed.
    """


class AuthNotEnabled(AuthRefused, api_errors.AuthNotEnabled):
    """C{Authenticate} while auth is disabled: requests need no token."""


class CompactRefused(RequestFailed):
    """
    A compaction the cluster refused (OUT_OF_RANGE); nothing changed.

    @ivar compact_revision: the history's compacted revision when it was
        refused (None: the server did not say).
    @ivar revision: the store's revision then (None: not said).
    @ivar maybe_applied: an earlier attempt of this compaction was sent
        and may have been applied.
    """

    def __init__(self, message: str, code: Optional[grpc.StatusCode], details: str, reason: Optional[str],
                 compact_revision: Optional[int], revision: Optional[int], maybe_applied: bool = False) -> None:
        super().__init__(message, code, details, reason)
        self.compact_revision = compact_revision
        self.revision = revision
        self.maybe_applied = maybe_applied


class Compacted(CompactRefused):
    """
    The history is already compacted at or past the revision asked
    (reason C{COMPACTED}; etcd's "required revision has been compacted").
    """


class FutureRevision(CompactRefused):
    """The revision asked is above the store's (reason C{FUTURE_REVISION}; etcd's "... is a future revision")."""


class LeaseNotFound(RequestFailed):
    """
    The lease named does not exist: never granted, revoked, or expired
    (NOT_FOUND, reason C{LEASE_NOT_FOUND}; etcd's "requested lease not
    found").  Nothing was applied (a put or a transaction naming it
    changed nothing).

    @ivar lease_id: the lease (None: the server did not say).
    @ivar maybe_applied: an earlier attempt of this request was sent and
        may have been applied (a revoke resent: it may have been this
        request that revoked it).
    """

    def __init__(self, message: str, code: Optional[grpc.StatusCode], details: str, reason: Optional[str],
                 lease_id: Optional[int] = None, maybe_applied: bool = False) -> None:
        super().__init__(message, code, details, reason)
        self.lease_id = lease_id
        self.maybe_applied = maybe_applied


class LeaseExpired(LeaseNotFound):
    """
    A lease this client held (L{kvpaxos.client.lease.Lease}) is gone: a
    keep-alive or a time-to-live found it no longer there (it ran out, or
    someone revoked it), a request naming it was refused not found, or
    this client revoked it.  Its keys are deleted.  Raised by every later
    operation on that lease, and by a put that names it.
    """


class LeaseExists(RequestFailed):
    """
    A grant of a lease id in use (FAILED_PRECONDITION, reason
    C{LEASE_EXISTS}; etcd's "lease already exists"); nothing changed.

    @ivar lease_id: the id asked for (None: the server did not say).
    @ivar maybe_applied: an earlier attempt of this grant was sent and may
        have been applied (then the lease may be this client's own).
    """

    def __init__(self, message: str, code: Optional[grpc.StatusCode], details: str, reason: Optional[str],
                 lease_id: Optional[int] = None, maybe_applied: bool = False) -> None:
        super().__init__(message, code, details, reason)
        self.lease_id = lease_id
        self.maybe_applied = maybe_applied


#: The errors of the lease reasons.
_LEASE_ERRORS = {api_errors.LEASE_NOT_FOUND: LeaseNotFound, api_errors.LEASE_EXISTS: LeaseExists}

#: The errors of the compaction reasons.
_COMPACT_ERRORS = {api_errors.COMPACTED: Compacted, api_errors.FUTURE_REVISION: FutureRevision}


#: The errors of the auth reasons, each a L{RequestFailed}.
_AUTH_ERRORS = {
    api_errors.UNAUTHENTICATED: Unauthenticated,
    api_errors.PERMISSION_DENIED: PermissionDenied,
    api_errors.AUTH_REFUSED: AuthRefused,
    api_errors.AUTH_NOT_ENABLED: AuthNotEnabled,
}
#: ... and of the codes, for an answer without ErrorInfo (from grpc itself, or a proxy).
_AUTH_CODES = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


@dataclass(frozen=True)
class Failure:
    """
    One failed RPC, read once: C{code}, C{details} (the message, for
    people), and the server's ErrorInfo C{reason} (None: none attached, as
    for a connection failure) and C{metadata}.
    """

    code: Optional[grpc.StatusCode]
    details: str
    reason: Optional[str] = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def leader(self) -> Optional[int]:
        """The leader the server named in its metadata, or None."""
        value = self.number(api_errors.LEADER_ID)
        return value if value else None

    def number(self, key: str) -> Optional[int]:
        """The metadata value under C{key} as a whole number (>= 0), or None if absent or not one."""
        value = self.metadata.get(key, "")
        return int(value) if value.isascii() and value.isdigit() else None


def rpc_failure(error: grpc.RpcError) -> Failure:
    """Return the L{Failure} of C{error}, from a blocking or an asyncio stub."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    info = error_details(error)
    return Failure(
        code() if callable(code) else None,
        (details() if callable(details) else None) or str(error),
        info.reason if info is not None else None,
        info.metadata if info is not None else {},
    )


def describe_failure(endpoint: str, failure: Failure) -> str:
    """Return C{"endpoint: CODE: details"}, the form every error message uses."""
    name = failure.code.name if failure.code is not None else "ERROR"
    return f"{endpoint}: {name}: {failure.details or 'no details'}"


def error_for(endpoint: str, failure: Failure, *, retry_deadline: bool, maybe_applied: bool) -> Optional[ClientError]:
    """
    Return the error a failed RPC means, or None when the request may be
    sent again (UNAVAILABLE; DEADLINE_EXCEEDED when C{retry_deadline}).

    @param maybe_applied: an earlier attempt of the same request was sent.
    """
    code, reason = failure.code, failure.reason
    described = describe_failure(endpoint, failure)
    if code is grpc.StatusCode.UNAVAILABLE:
        return None
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return None if retry_deadline else OutcomeUnknown(f"{described} (the write may have been applied)")
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(described)
    if reason == api_errors.SESSION_EXPIRED:
        outcome = (
            "the outcome of this write is unknown: an earlier attempt may have been applied"
            if maybe_applied else "this write was not applied"
        )
        return SessionExpired(f"{described} ({outcome}; the next write uses a new session)", maybe_applied)
    if reason == api_errors.STALE_SEQUENCE:
        return StaleSequence(f"{described} (a bug in the client: it reused a sequence number)")
    if reason in _COMPACT_ERRORS:
        return _COMPACT_ERRORS[reason](described, code, failure.details, reason,
                                       failure.number(api_errors.COMPACT_REVISION),
                                       failure.number(api_errors.REVISION), maybe_applied)
    if reason in _LEASE_ERRORS:
        return _LEASE_ERRORS[reason](described, code, failure.details, reason, failure.number(api_errors.LEASE_ID),
                                     maybe_applied)
    kind = _AUTH_ERRORS.get(reason) or _AUTH_CODES.get(code, RequestFailed)
    return kind(described, code, failure.details, reason)


def member_error(endpoint: str, failure: Failure) -> ClientError:
    """The error of a one-attempt call to one member (a status view): anything retriable is L{Unavailable}."""
    error = error_for(endpoint, failure, retry_deadline=False, maybe_applied=False)
    if error is None or isinstance(error, OutcomeUnknown):
        described = describe_failure(endpoint, failure)
        return Unavailable(described, failure.leader, [described])
    return error
