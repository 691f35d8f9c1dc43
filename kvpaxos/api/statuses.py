"""
How the gRPC edge reports failures: one function (L{status_for}) from an
exception raised by validation or by the node, or a refusal the node
answered with (L{StaleSequence}, L{SessionExpired}: nothing was applied),
to the status an RPC is aborted with — a code, a readable message, and
the ErrorInfo reason and metadata of L{kvpaxos.api.errors}.

The edge translates and decides nothing: whether a request was bad, refused
or the cluster unavailable is the node's (or
L{kvpaxos.kv.commands.validate_request}'s) call; this module only names the
status that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import grpc

from kvpaxos.api import errors
from kvpaxos.api.errors import InvalidArgument, Unavailable, rich_status
from kvpaxos.kv.auth import AuthError
from kvpaxos.kv.auth import AuthRefused as AuthRefusal
from kvpaxos.kv.commands import Request, SessionExpired, StaleSequence
from kvpaxos.kv.compaction import CompactError, CompactRefused
from kvpaxos.kv.leases import LeaseError, LeaseRefused

#: The message of the UNAVAILABLE that failed requests get when the node
#: stops while they wait.
SHUTTING_DOWN = "node shutting down"
#: The FAILED_PRECONDITION message of a request whose session is gone.
SESSION_EXPIRED = (
    "session expired: the outcome of this session's unanswered requests is unknown; "
    "open a new session"
)
#: What the node answers instead of applying a request (not exceptions:
#: the node ran the request through the log and it changed nothing).
REFUSALS = (StaleSequence, SessionExpired, AuthRefusal, LeaseRefused)


@dataclass(frozen=True)
class Status:
    """
    A failed RPC's status: C{code}, C{message} (for people) and the
    ErrorInfo C{reason} and C{metadata} (for programs).  C{unexpected}: a
    bug or a broken dependency, which the edge logs.
    """

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: Mapping[str, object] = field(default_factory=dict)
    unexpected: bool = False

    def rich(self, member_id: Optional[int] = None) -> grpc.Status:
        """This status as grpcio's (with its ErrorInfo, naming member C{member_id})."""
        metadata = dict(self.metadata)
        metadata.setdefault(errors.MEMBER_ID, member_id)
        return rich_status(self.code, self.message, self.reason, metadata)

    def abort(self, context: grpc.ServicerContext, member_id: Optional[int] = None) -> None:
        """Abort the RPC of C{context} with this status (raises, as C{context.abort} does)."""
        context.abort_with_status(self.rich(member_id))


def describe_leader(leader: Optional[int]) -> str:
    """Return C{"leader is N"}, or C{"leader unknown"} when C{leader} is None."""
    return "leader unknown" if leader is None else f"leader is {leader}"


def unavailable_message(message: str, leader: Optional[int]) -> str:
    """
    Return C{message} with the known leader appended (C{"no quorum before
    deadline; leader is 2"}), unless C{message} already names it.  For
    people only: the leader travels as metadata too.
    """
    hint = describe_leader(leader)
    if hint in message:
        return message
    return f"{message}; {hint}" if message else hint


def unavailable(message: str, leader: Optional[int], reason: str = errors.UNAVAILABLE) -> Status:
    """The UNAVAILABLE status of C{message}, naming C{leader} (None: unknown)."""
    return Status(grpc.StatusCode.UNAVAILABLE, unavailable_message(message, leader), reason,
                  {errors.LEADER_ID: leader})


def status_for(error: Union[BaseException, StaleSequence, SessionExpired, AuthRefusal]) -> Status:
    """
    Return the L{Status} for C{error}, an exception or one of L{REFUSALS}.

      - L{InvalidArgument} (the client's fault: bad keys, values, ranges,
        transactions, session fields) → INVALID_ARGUMENT with its message;
      - L{StaleSequence} (the client's fault) → FAILED_PRECONDITION
        C{"stale sequence: ..."};
      - L{SessionExpired} → FAILED_PRECONDITION L{SESSION_EXPIRED};
      - an L{AuthRefusal} result → PERMISSION_DENIED or FAILED_PRECONDITION
        with etcd's message; L{kvpaxos.api.errors.Unauthenticated},
        L{kvpaxos.api.errors.PermissionDenied} and
        L{kvpaxos.api.errors.AuthRefused} likewise;
      - L{Unavailable} (L{kvpaxos.node.interfaces.NotLeaderError} among
        them) → UNAVAILABLE with its reason and the known leader;
      - L{kvpaxos.api.errors.NoSpace} → RESOURCE_EXHAUSTED L{NO_SPACE}, with
        the bytes in use and the quota;
      - a L{LeaseRefused} result → L{lease_refused}'s NOT_FOUND or
        FAILED_PRECONDITION;
      - anything else → INTERNAL with its message, and C{unexpected} true: the
        caller logs it, because it is a bug or a broken dependency, not a
        condition the client can act on.
    """
    if isinstance(error, InvalidArgument):
        return Status(grpc.StatusCode.INVALID_ARGUMENT, str(error), errors.INVALID_ARGUMENT)
    if isinstance(error, StaleSequence):
        return Status(grpc.StatusCode.FAILED_PRECONDITION, (
            f"stale sequence: sequence {error.sequence} of session {error.client_id} is below "
            f"its last sequence, {error.last_sequence}"
        ), errors.STALE_SEQUENCE, {errors.CLIENT_ID: error.client_id, errors.SEQUENCE: error.sequence,
                                   errors.LAST_SEQUENCE: error.last_sequence})
    if isinstance(error, AuthRefusal):
        if error.error is AuthError.PERMISSION_DENIED:
            return Status(grpc.StatusCode.PERMISSION_DENIED, error.error.value, errors.PERMISSION_DENIED)
        return Status(grpc.StatusCode.FAILED_PRECONDITION, error.error.value, errors.AUTH_REFUSED)
    if isinstance(error, errors.Unauthenticated):
        return Status(grpc.StatusCode.UNAUTHENTICATED, str(error), errors.UNAUTHENTICATED)
    if isinstance(error, errors.PermissionDenied):
        return Status(grpc.StatusCode.PERMISSION_DENIED, str(error), errors.PERMISSION_DENIED)
    if isinstance(error, errors.AuthNotEnabled):
        return Status(grpc.StatusCode.FAILED_PRECONDITION, str(error), errors.AUTH_NOT_ENABLED)
    if isinstance(error, errors.AuthRefused):
        return Status(grpc.StatusCode.FAILED_PRECONDITION, str(error), errors.AUTH_REFUSED)
    if isinstance(error, SessionExpired):
        return Status(grpc.StatusCode.FAILED_PRECONDITION, SESSION_EXPIRED, errors.SESSION_EXPIRED,
                      {errors.CLIENT_ID: error.client_id})
    if isinstance(error, Unavailable):
        return unavailable(str(error), error.leader, error.reason)
    if isinstance(error, errors.NoSpace):
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), errors.NO_SPACE,
                      {errors.USED_BYTES: error.used_bytes, errors.QUOTA_BYTES: error.quota_bytes})
    if isinstance(error, LeaseRefused):
        return lease_refused(error)
    detail = str(error) or type(error).__name__
    return Status(grpc.StatusCode.INTERNAL, f"internal error: {detail}", errors.INTERNAL, unexpected=True)


def response_too_large(size_bytes: int, limit_bytes: int, revision: int) -> Status:
    """
    Return the RESOURCE_EXHAUSTED status of a transaction that applied but
    whose answer (the records its puts and deletes replaced, which cannot be
    paged: they are gone) does not fit in one message.
    """
    return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, (
        f"the transaction applied at revision {revision}, but its response of {size_bytes} "
        f"bytes exceeds the {limit_bytes}-byte message limit; ask for fewer prev_kv records"
    ), errors.RESPONSE_TOO_LARGE, {errors.REVISION: revision})


def sequence_reused(request: Request) -> Status:
    """
    Return the FAILED_PRECONDITION status of a session request answered
    with the saved result of a different kind of request: the client reused
    a sequence (a retry must repeat the request it retries).
    """
    return Status(grpc.StatusCode.FAILED_PRECONDITION, (
        f"sequence reused: sequence {request.sequence} of session {request.client_id} "
        f"was first used by another kind of request; a retry must repeat its request"
    ), errors.SEQUENCE_REUSED, {errors.CLIENT_ID: request.client_id, errors.SEQUENCE: request.sequence})


def internal(message: str) -> Status:
    """The INTERNAL status of a node bug the edge noticed (already logged)."""
    return Status(grpc.StatusCode.INTERNAL, message, errors.INTERNAL)


def compact_refused(refusal: CompactRefused, target: int) -> Status:
    """
    Return the OUT_OF_RANGE status of a compaction at C{target} that the
    state machine refused (L{kvpaxos.kv.compaction}; nothing changed):
    reason L{errors.COMPACTED} (the history is compacted at or past
    C{target}) or L{errors.FUTURE_REVISION} (C{target} is above the
    store's revision), its message beginning with etcd's words and naming
    the revision asked, the compacted one and the store's; the metadata
    carries the compacted and the store's revisions.
    """
    compacted, revision = refusal.compacted, refusal.revision
    metadata = {errors.COMPACT_REVISION: compacted, errors.REVISION: revision}
    if refusal.error is CompactError.FUTURE:
        return Status(grpc.StatusCode.OUT_OF_RANGE, (
            f"required revision is a future revision: cannot compact at revision {target}, the store is at "
            f"revision {revision} (its history is compacted at revision {compacted})"
        ), errors.FUTURE_REVISION, metadata)
    return Status(grpc.StatusCode.OUT_OF_RANGE, (
        f"required revision has been compacted: cannot compact at revision {target}, the history is already "
        f"compacted at revision {compacted} (the store is at revision {revision})"
    ), errors.COMPACTED, metadata)


def lease_refused(refusal: LeaseRefused) -> Status:
    """
    Return the status of a lease refusal of the state machine
    (L{kvpaxos.kv.leases}; nothing applied), its message beginning with
    etcd's words and naming the lease in decimal and as etcdctl prints it
    (16 hex digits); the metadata carries its id:

      - NOT_FOUND: NOT_FOUND, reason L{errors.LEASE_NOT_FOUND} (a put, a
        transaction's put or a revoke of a lease that is not there);
      - EXISTS: FAILED_PRECONDITION (etcd's code), reason
        L{errors.LEASE_EXISTS} (a grant of an id in use).
    """
    lease = refusal.id
    named = f"lease {lease} ({lease:016x})"
    metadata = {errors.LEASE_ID: lease}
    if refusal.error is LeaseError.EXISTS:
        return Status(grpc.StatusCode.FAILED_PRECONDITION, (
            f"lease already exists: {named} was granted before; grant another id, or 0 for one the "
            "cluster picks"), errors.LEASE_EXISTS, metadata)
    return Status(grpc.StatusCode.NOT_FOUND, (
        f"requested lease not found: {named} does not exist (never granted, revoked, or expired); nothing "
        "was applied"), errors.LEASE_NOT_FOUND, metadata)
