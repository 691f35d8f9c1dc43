"""
How the gRPC edge reports failures: one function from an exception raised by
validation or by the node, or a refusal the node answered with
(L{StaleSequence}, L{SessionExpired}: nothing was applied), to a gRPC status
code and message.

The edge translates and decides nothing: whether a request was bad, refused
or the cluster unavailable is the node's (or
L{kvpaxos.kv.commands.validate_request}'s) call; this module only names the
status that says so.
"""

from __future__ import annotations

from typing import Optional, Union

import grpc

from kvpaxos.kv.commands import InvalidArgument, Request, SessionExpired, StaleSequence
from kvpaxos.node.interfaces import Unavailable

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
REFUSALS = (StaleSequence, SessionExpired)


def describe_leader(leader: Optional[int]) -> str:
    """Return C{"leader is N"}, or C{"leader unknown"} when C{leader} is None."""
    return "leader unknown" if leader is None else f"leader is {leader}"


def unavailable_message(message: str, leader: Optional[int]) -> str:
    """
    Return C{message} with the known leader appended (C{"no quorum before
    deadline; leader is 2"}), unless C{message} already names it.
    """
    hint = describe_leader(leader)
    if hint in message:
        return message
    return f"{message}; {hint}" if message else hint


def status_for(
    error: Union[BaseException, StaleSequence, SessionExpired],
) -> tuple[grpc.StatusCode, str, bool]:
    """
    Return C{(code, details, unexpected)} for C{error}, an exception or one
    of L{REFUSALS}.

      - L{InvalidArgument} (the client's fault: bad keys, values, ranges,
        transactions, session fields) → INVALID_ARGUMENT with its message;
      - L{StaleSequence} (the client's fault) → FAILED_PRECONDITION
        C{"stale sequence: ..."};
      - L{SessionExpired} → FAILED_PRECONDITION L{SESSION_EXPIRED};
      - L{Unavailable} → UNAVAILABLE with the known leader in the message;
      - anything else → INTERNAL with its message, and C{unexpected} true: the
        caller logs it, because it is a bug or a broken dependency, not a
        condition the client can act on.
    """
    if isinstance(error, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error), False
    if isinstance(error, StaleSequence):
        return grpc.StatusCode.FAILED_PRECONDITION, (
            f"stale sequence: sequence {error.sequence} of session {error.client_id} is below "
            f"its last sequence, {error.last_sequence}"
        ), False
    if isinstance(error, SessionExpired):
        return grpc.StatusCode.FAILED_PRECONDITION, SESSION_EXPIRED, False
    if isinstance(error, Unavailable):
        return grpc.StatusCode.UNAVAILABLE, unavailable_message(str(error), error.leader), False
    detail = str(error) or type(error).__name__
    return grpc.StatusCode.INTERNAL, f"internal error: {detail}", True


def response_too_large(size_bytes: int, limit_bytes: int, revision: int) -> str:
    """
    Return the RESOURCE_EXHAUSTED message of a transaction that applied but
    whose answer (the records its puts and deletes replaced, which cannot be
    paged: they are gone) does not fit in one message.
    """
    return (
        f"the transaction applied at revision {revision}, but its response of {size_bytes} "
        f"bytes exceeds the {limit_bytes}-byte message limit; ask for fewer prev_kv records"
    )


def sequence_reused(request: Request) -> str:
    """
    Return the FAILED_PRECONDITION message of a session request answered
    with the saved result of a different kind of request: the client reused
    a sequence (a retry must repeat the request it retries).
    """
    return (
        f"sequence reused: sequence {request.sequence} of session {request.client_id} "
        f"was first used by another kind of request; a retry must repeat its request"
    )
