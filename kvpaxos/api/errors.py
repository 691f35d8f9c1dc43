"""
How the gRPC edge reports failures: one function from an exception raised by
validation or by the node to a gRPC status code and message.

The edge translates and decides nothing: whether a request was bad or the
cluster unavailable is the node's (or L{kvpaxos.kv.commands.validate}'s)
call; this module only names the status that says so.
"""

from __future__ import annotations

from typing import Optional

import grpc

from kvpaxos.kv.commands import InvalidArgument
from kvpaxos.node.interfaces import Unavailable

#: The message of the UNAVAILABLE that failed requests get when the node
#: stops while they wait.
SHUTTING_DOWN = "node shutting down"


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


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str, bool]:
    """
    Return C{(code, details, unexpected)} for C{error}.

      - L{InvalidArgument} (the client's fault) → INVALID_ARGUMENT with its
        message;
      - L{Unavailable} → UNAVAILABLE with the known leader in the message;
      - anything else → INTERNAL with its message, and C{unexpected} true: the
        caller logs it, because it is a bug or a broken dependency, not a
        condition the client can act on.
    """
    if isinstance(error, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error), False
    if isinstance(error, Unavailable):
        return grpc.StatusCode.UNAVAILABLE, unavailable_message(str(error), error.leader), False
    detail = str(error) or type(error).__name__
    return grpc.StatusCode.INTERNAL, f"internal error: {detail}", True
